"""The interface every experiment tracker implements, and the names of what is logged.

A tracker is driven by :class:`heartlora.tracking.session.TrackingSession` (one per training run)
and, for sweeps, by :class:`heartlora.tracking.sweep.SweepTracking` (one group per sweep). It
imports its own package only when it starts, so a tracker that is not asked for costs nothing.
Its calls may raise: the session turns the first error into one warning and leaves the tracker
out for the rest of the run; ``run.json`` is written either way.

What a run logs (the keys are the same in every tracker; step = the 0-based epoch, as in ``run.json``):

- every epoch: :data:`EPOCH_METRICS` (``eval/accuracy`` only after evaluated epochs);
- once, at the start: the resolved configuration as parameters (flattened: ``schedule.lr``,
  ``method.options.ne``, ...);
- when a method's schedule records a head selection (a block of the run record holding
  ``scores`` and ``head_masks``, e.g. Heart-LoRA's ``heads``): a layer x head heatmap of the
  scores with the switched-off heads marked (``<block>/responsiveness``), a histogram of the
  scores where the tracker has histograms (``<block>/scores``) and the number of heads switched off
  (``<block>/switched_off``);
- once, at the end: :data:`SUMMARY_METRICS` (protocol accuracies, trainable parameters, adapter
  bytes, throughput), and, where the tracker keeps artifacts, the adapter folder (``adapter``)
  and the run record (``run.json``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

__all__ = ["EPOCH_METRICS", "STATUSES", "SUMMARY_METRICS", "Tracker", "TrackerRun", "TrackingWarning", "one_line"]

#: metric key → the key of a run record's curve point (``record["curve"][i]``)
EPOCH_METRICS: dict[str, str] = {
    "train/loss": "train_loss", "train/lr": "lr", "train/images_per_s": "images_per_s", "train/seconds": "seconds",
    "eval/accuracy": "eval_accuracy",
}
#: metric key → the path of the value in the run record (None values are not logged)
SUMMARY_METRICS: dict[str, tuple[str, ...]] = {
    "protocol/paper": ("protocols", "paper", "accuracy"),
    "protocol/final": ("protocols", "final", "accuracy"),
    "protocol/clean": ("protocols", "clean"),
    "adapter/trainable_parameters": ("trainable_parameters", "with_classifier"),
    "adapter/trainable_parameters_without_classifier": ("trainable_parameters", "without_classifier"),
    "adapter/bytes": ("adapter_bytes", "with_classifier"),
    "adapter/bytes_without_classifier": ("adapter_bytes", "without_classifier"),
    "adapter/file_bytes": ("adapter_file_bytes",),
    "run/images_per_s": ("images_per_s",),
    "run/wall_time_s": ("wall_time_s",),
    "run/peak_memory_bytes": ("peak_memory", "bytes"),
}
#: how a run ended, as :meth:`Tracker.finish` is told
STATUSES = ("complete", "failed", "interrupted")


class TrackingWarning(UserWarning):
    """A tracker failed; the run went on without it (its ``run.json`` is complete)."""


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (tracker errors can span pages)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@dataclass
class TrackerRun:
    """Where and under which name one training run is logged.

    ``name``: the run's name (its folder's name; for a sweep cell, the cell's folder below the
    sweep); ``out``: the run folder (None: the run writes no files); ``log_dir``: the ``log_dir``
    setting as an absolute path (None: each tracker's default); ``group``: the sweep's name for a
    sweep cell; ``group_state``: what this tracker's :meth:`Tracker.start_group` returned for the
    sweep (e.g. the MLflow parent run); ``saved``: what this tracker's :meth:`Tracker.state` was
    when the run was logged before (a resumed run), else None; ``start_epoch``: the first epoch
    this process trains; ``quiet``: the run prints nothing but errors.
    """

    name: str
    out: Path | None = None
    log_dir: Path | None = None
    group: str | None = None
    group_state: dict | None = None
    saved: dict | None = None
    start_epoch: int = 0
    quiet: bool = False


class Tracker:
    """One experiment tracker. Subclasses set the class attributes and implement the methods.

    ``name``: its name in the ``log`` setting; ``requirement``: the module it imports;
    ``extra``: the heartlora extra that installs it; ``artifacts`` / ``histograms``: whether it
    keeps files / draws histograms (the session calls :meth:`log_artifact` / :meth:`log_histogram`
    only then).
    """

    name: ClassVar[str] = ""
    requirement: ClassVar[str] = ""
    extra: ClassVar[str] = ""
    artifacts: ClassVar[bool] = False
    histograms: ClassVar[bool] = False

    @classmethod
    def check(cls, log_dir: Path | None, out: Path | None) -> None:
        """Raise :class:`heartlora.config.ConfigError` when the tracker has nowhere to write."""

    def start(self, run: TrackerRun) -> bool:
        """Open (or reopen) the tracker's run; True when it continues the run ``run.saved`` names."""
        raise NotImplementedError

    def state(self) -> dict:
        """What a resumed run needs to continue this tracker's run (JSON values)."""
        return {}

    def log_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        """``image``: height x width x 3, uint8 (RGB)."""
        raise NotImplementedError

    def log_histogram(self, key: str, values: Sequence[float], step: int) -> None:
        raise NotImplementedError

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        """The run's final numbers (logged once, after the last epoch ``step``)."""
        raise NotImplementedError

    def log_artifact(self, path: Path, name: str) -> None:
        """A folder or a file, kept under ``name``."""
        raise NotImplementedError

    def finish(self, status: str) -> None:
        """Close the run; ``status`` is one of :data:`STATUSES`."""
        raise NotImplementedError

    # ----- sweeps: one group of runs per sweep ------------------------------------------------------
    @classmethod
    def start_group(cls, name: str, log_dir: Path | None, saved: dict | None, quiet: bool) -> dict:
        """Open the sweep ``name`` (e.g. an MLflow parent run) in the process that drives it; the
        returned state (JSON values) travels with every cell to whichever process runs it, and is
        ``saved`` when the same sweep is run again."""
        return {}

    @classmethod
    def finish_group(cls, state: dict, ok: bool) -> None:
        """Close the sweep: ``ok`` is False when a cell failed."""
