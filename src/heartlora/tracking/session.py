"""The training callback that logs one run to the trackers its ``log`` setting names.

:func:`heartlora.engine.loop.train` adds a :class:`TrackingSession` to its callbacks whenever
``config.log`` (or ``HEARTLORA_LOG``) names a tracker; it can also be passed by hand
(``train(config, callbacks=[TrackingSession([MyTracker()])])``). What is logged, and under which
keys, is listed in :mod:`heartlora.tracking.base`; where each tracker writes, in its module.

A tracker failure never fails or changes the run: the first error of a tracker is one warning
(:class:`heartlora.tracking.base.TrackingWarning`) and the tracker is left out for the rest of the
run; the global random states are restored around every tracker call, so a run with trackers
trains exactly as one without. ``run.json`` stays the source of truth.

Resume: the trackers' run ids are kept in the run folder's ``tracking.json``; a resumed run
continues the same tracker runs when it logs to the same place (MLflow run id, W&B run id,
TensorBoard folder, events past the checkpoint dropped), and starts new ones otherwise (e.g. with
another ``log_dir``). Only the main process of a ``torchrun`` run logs.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..callbacks import RunInfo, TrainCallback
from ..config import ConfigError, RunConfig
from ..seeding import capture_rng, restore_rng
from .base import EPOCH_METRICS, SUMMARY_METRICS, Tracker, TrackerRun, TrackingWarning, one_line
from .registry import requested_trackers
from .sweep import current_group, read_state, write_state

__all__ = ["TrackingSession", "config_params", "epoch_metrics", "head_maps", "summary_metrics"]


def config_params(config: RunConfig) -> dict[str, Any]:
    """The resolved configuration as flat parameters: dotted keys (``schedule.lr``,
    ``method.options.ne``) with JSON values, sorted by key."""
    pending = [("", json.loads(json.dumps(config.to_dict())))]
    params: dict[str, Any] = {}
    while pending:
        prefix, values = pending.pop()
        for key, value in values.items():
            if isinstance(value, dict) and value:
                pending.append((f"{prefix}{key}.", value))
            else:
                params[prefix + key] = value
    return dict(sorted(params.items()))


def epoch_metrics(entry: dict) -> dict[str, float]:
    """The metrics of one curve point (:data:`heartlora.tracking.base.EPOCH_METRICS`; missing values left out)."""
    return {key: float(entry[field]) for key, field in EPOCH_METRICS.items() if entry.get(field) is not None}


def summary_metrics(record: dict) -> dict[str, float]:
    """A run record's final numbers (:data:`heartlora.tracking.base.SUMMARY_METRICS`; missing values left out)."""
    metrics = {}
    for key, path in SUMMARY_METRICS.items():
        value: Any = record
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


def head_maps(method_record: dict) -> Iterator[tuple[str, list, list, str | None]]:
    """``(block, scores, head_masks, score kind)`` for every block of a method's record that holds a
    head selection: layer x head ``scores`` and ``head_masks`` (e.g. Heart-LoRA's ``heads`` once
    its heads are selected). What the schedule records decides; no method is known by name."""
    for block, values in method_record.items():
        if not isinstance(values, dict):
            continue
        scores, masks = values.get("scores"), values.get("head_masks")
        if isinstance(scores, list) and isinstance(masks, list) and scores and len(scores) == len(masks):
            yield block, scores, masks, values.get("score")


def _status(error: BaseException | None) -> str:
    if error is None:
        return "complete"
    return "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"


def _run_name(run: RunInfo, group: dict) -> str:
    """The run folder's name; for a sweep cell, its folder below the sweep's."""
    config = run.config
    if run.out is None:
        return f"{config.data.task}-{config.method.name}-seed{config.seed}"
    out = run.out.resolve()
    root = Path(group["root"]) if group.get("root") else None
    if root is not None and out.is_relative_to(root) and out != root:
        return out.relative_to(root).as_posix()
    return out.name


class TrackingSession(TrainCallback):
    """Logs one training run to ``trackers`` (see the module's docstring)."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)
        self.live: list[Tracker] = []
        self.continued: set[str] = set()
        self.seen: dict[str, str] = {}  # block → the head masks already logged

    @classmethod
    def from_config(cls, config: RunConfig) -> "TrackingSession | None":
        """The session ``config`` asks for, or None; a :class:`heartlora.config.ConfigError` for an
        unknown or missing tracker, or one with nowhere to write."""
        classes = requested_trackers(config)
        if not classes:
            return None
        out = Path(config.out) if config.out else None
        log_dir = Path(config.log_dir) if config.log_dir else None
        trackers = []
        for tracker in classes:
            try:
                tracker.check(log_dir, out)
                trackers.append(tracker())
            except ConfigError:
                raise
            except Exception as err:
                warnings.warn(f"tracking: {tracker.name} failed while setting up ({one_line(err)}); the run goes on "
                              "without it", TrackingWarning, stacklevel=2)
        return cls(trackers)

    # ----- guarded calls --------------------------------------------------------------------------
    def _call(self, tracker: Tracker, action: str, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` for a live tracker; its first error is a warning and takes it out of the run."""
        if tracker not in self.live:
            return None
        rng = capture_rng()  # a tracker must not shift the run's random numbers
        try:
            return fn(*args)
        except Exception as err:
            self.live.remove(tracker)
            warnings.warn(f"tracking: {tracker.name} failed while {action} ({one_line(err)}); the run goes on without "
                          "it, and its run.json holds every number", TrackingWarning, stacklevel=3)
            try:
                tracker.finish("failed")
            except Exception:
                pass
            return None
        finally:
            restore_rng(rng)

    def _each(self, action: str, method: str, *args: Any, only: Callable[[Tracker], bool] = lambda t: True) -> None:
        for tracker in list(self.live):
            if only(tracker):
                self._call(tracker, action, getattr(tracker, method), *args)

    # ----- the hooks --------------------------------------------------------------------------------
    def on_train_start(self, run: RunInfo) -> None:
        if not run.is_main:
            return
        group = current_group() or {}
        config = run.config
        log_dir = group.get("log_dir") or (str(Path(config.log_dir).resolve()) if config.log_dir else None)
        name = _run_name(run, group)
        saved = read_state(run.out)
        for tracker in self.trackers:
            target = TrackerRun(name=name, out=run.out, log_dir=Path(log_dir) if log_dir else None,
                                group=group.get("name"), group_state=(group.get("trackers") or {}).get(tracker.name),
                                saved=saved.get(tracker.name), start_epoch=run.start_epoch, quiet=config.quiet)
            self.live.append(tracker)
            if self._call(tracker, "starting", tracker.start, target):
                self.continued.add(tracker.name)
        states = {tracker.name: self._call(tracker, "saving its state", tracker.state) for tracker in list(self.live)}
        write_state(run.out, {**saved, **{key: value for key, value in states.items() if value is not None}})
        fresh = lambda tracker: tracker.name not in self.continued  # noqa: E731
        self._each("logging the configuration", "log_params", config_params(config), only=fresh)
        # a selection made before a resumed checkpoint: new tracker runs get it too
        self._log_selection(run, max(run.start_epoch - 1, 0), only=fresh)

    def on_epoch_end(self, epoch: int, entry: dict, run: RunInfo) -> None:
        if not self.live:
            return
        self._each(f"logging epoch {epoch + 1}", "log_metrics", epoch_metrics(entry), epoch)
        self._log_selection(run, epoch)

    def _log_selection(self, run: RunInfo, step: int, only: Callable[[Tracker], bool] = lambda t: True) -> None:
        if not self.live:
            return
        try:
            maps = list(head_maps(run.method_record()))
        except Exception as err:  # the method's record is the loop's business; tracking just looks
            warnings.warn(f"tracking: cannot read the method's record ({one_line(err)}); head maps are not logged",
                          TrackingWarning, stacklevel=3)
            return
        for block, scores, masks, kind in maps:
            signature = json.dumps(masks)
            if self.seen.get(block) == signature:
                continue
            self.seen[block] = signature
            try:
                image = self._figure(run, block, scores, masks, kind)
            except Exception as err:
                warnings.warn(f"tracking: the {block} heatmap could not be drawn ({one_line(err)})", TrackingWarning,
                              stacklevel=3)
                image = None
            values = [float(v) for row in scores for v in row]
            switched_off = {f"{block}/switched_off": float(sum(not active for row in masks for active in row))}
            if image is not None:
                self._each(f"logging the {block} heatmap", "log_image", f"{block}/responsiveness", image, step, only=only)
            self._each(f"logging the {block} histogram", "log_histogram", f"{block}/scores", values, step,
                       only=lambda t: t.histograms and only(t))
            self._each(f"logging the {block} selection", "log_metrics", switched_off, step, only=only)

    @staticmethod
    def _figure(run: RunInfo, block: str, scores: list, masks: list, kind: str | None):
        from ..plots import figure_pixels, responsiveness_figure

        title = f"{run.out.name if run.out else run.config.method.name}: {block}"
        return figure_pixels(responsiveness_figure({title: (scores, masks, kind)}))

    def on_train_end(self, record: dict, run: RunInfo) -> None:
        if not self.live:
            return
        curve = record.get("curve") or []
        step = curve[-1]["epoch"] if curve else 0
        self._each("logging the final numbers", "log_summary", summary_metrics(record), step)
        files = record.get("files") or {}
        if run.out is None or not files:
            return
        with_artifacts = lambda tracker: tracker.artifacts  # noqa: E731
        self._each("keeping the adapter folder", "log_artifact", run.out / files["adapter"], "adapter", only=with_artifacts)
        self._each("keeping run.json", "log_artifact", run.out / files["run"], "run-record", only=with_artifacts)

    def close(self, error: BaseException | None) -> None:
        self._each("finishing", "finish", _status(error))
        self.live = []
