"""One tracker view per sweep: an MLflow parent run with a child run per cell, a W&B group, and
TensorBoard folders per cell below the sweep's.

:func:`heartlora.bench.sweep.run_cells` opens a :class:`SweepTracking` when its base config logs
anywhere: each tracker opens the sweep's group once, in the driving process (MLflow creates the
parent run), and the group's state is written to ``SWEEP_OUT/tracking.json`` so that rerunning the
same sweep (``--resume``, more cells, the final phase of ``--tune``) logs under the same parent.
The runner of every cell is wrapped in a :class:`GroupedRunner` that carries the group to the
process that runs the cell (in-process, a ``--parallel`` pool process, a Ray worker on another
machine: it is pickled with the runner) and makes it :func:`current_group` while the cell trains;
the run's :class:`heartlora.tracking.session.TrackingSession` picks it up from there.
"""
from __future__ import annotations

import contextvars
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig
from ..fsio import atomic_write
from .base import TrackingWarning, one_line
from .registry import TRACKERS, requested_trackers

__all__ = ["GroupedRunner", "SweepTracking", "TRACKING_NAME", "current_group", "read_state", "write_state"]

TRACKING_NAME = "tracking.json"  # in a run folder and in a sweep folder: the tracker runs logged there
_GROUP: contextvars.ContextVar[dict | None] = contextvars.ContextVar("heartlora_tracking_group", default=None)


def current_group() -> dict | None:
    """The sweep group of the cell being run in this context (None outside a tracked sweep):
    ``{"name": sweep name, "root": sweep folder, "log_dir": absolute log_dir or None,
    "trackers": {tracker name: its group state}}``."""
    return _GROUP.get()


def read_state(folder: Path | None) -> dict:
    """``folder/tracking.json`` (``{}`` when absent, or unreadable: a warning, and the trackers start new runs)."""
    path = None if folder is None else folder / TRACKING_NAME
    if path is None or not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return state
    except (OSError, ValueError) as err:
        warnings.warn(f"tracking: {path} is unreadable ({err}); the trackers start new runs", TrackingWarning,
                      stacklevel=2)
        return {}


def write_state(folder: Path | None, state: dict) -> None:
    """Write ``folder/tracking.json``; a failure is a warning (tracking never stops a run)."""
    if folder is None or not state:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / TRACKING_NAME, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
    except OSError as err:
        warnings.warn(f"tracking: cannot write {folder / TRACKING_NAME} ({err}); a resumed run will start new "
                      "tracker runs", TrackingWarning, stacklevel=2)


@dataclass(frozen=True)
class GroupedRunner:
    """A sweep's cell runner that runs each cell inside the sweep's tracking group (picklable)."""

    runner: Callable[[Any, RunConfig, dict], Any]
    group: dict

    def __call__(self, cell: Any, config: RunConfig, execution: dict) -> Any:
        token = _GROUP.set(self.group)
        try:
            return self.runner(cell, config, execution)
        finally:
            _GROUP.reset(token)


class SweepTracking:
    """The trackers' groups of one sweep folder. :meth:`open` returns None when the base config logs nowhere."""

    def __init__(self, group: dict, out_root: Path):
        self.group, self.out_root = group, out_root

    @classmethod
    def open(cls, base: RunConfig, out_root: Path) -> "SweepTracking | None":
        classes = requested_trackers(base)  # unknown or missing trackers: a ConfigError before any cell runs
        if not classes:
            return None
        out_root = Path(out_root).resolve()
        log_dir = Path(base.log_dir).resolve() if base.log_dir else None
        saved = read_state(out_root)
        states = {}
        for tracker in classes:
            try:
                states[tracker.name] = tracker.start_group(out_root.name, log_dir, saved.get(tracker.name), base.quiet)
            except Exception as err:  # the cells still log, each on its own
                warnings.warn(f"tracking: {tracker.name} could not open the sweep's group ({one_line(err)}); its "
                              "cells are logged without it", TrackingWarning, stacklevel=2)
        write_state(out_root, {**saved, **states})
        group = {"name": out_root.name, "root": str(out_root), "log_dir": None if log_dir is None else str(log_dir),
                 "trackers": states}
        return cls(group, out_root)

    def wrap(self, runner: Callable[[Any, RunConfig, dict], Any]) -> GroupedRunner:
        return GroupedRunner(runner, self.group)

    def close(self, ok: bool) -> None:
        """Close every group (e.g. end the MLflow parent run: FINISHED, or FAILED when a cell failed)."""
        for name, state in self.group["trackers"].items():
            try:
                TRACKERS[name].finish_group(state, ok)
            except Exception as err:
                warnings.warn(f"tracking: {name} could not close the sweep's group ({one_line(err)})", TrackingWarning,
                              stacklevel=2)
