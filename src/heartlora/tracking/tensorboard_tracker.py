"""TensorBoard: event files of scalars, images, histograms, the configuration (text and HParams).

Where: with ``log_dir``, ``LOG_DIR/RUN`` (``RUN`` = the run folder's name) and, for a sweep cell,
``LOG_DIR/SWEEP/CELL`` (``CELL`` = the cell's folder below the sweep); without it, the run
folder's ``tensorboard/`` — so ``tensorboard --logdir SWEEP_OUT`` shows every cell of a sweep,
and ``tensorboard --logdir LOG_DIR`` every run and sweep logged there. A resumed run writes on in
the same folder and drops the events it had logged past its checkpoint (``purge_step``).

The files are written with tensorboardX (the ``tensorboard`` extra installs it and the
TensorBoard viewer): ``torch.utils.tensorboard`` imports TensorFlow whenever it is installed,
which costs seconds and memory in every training process for nothing TensorBoard needs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ConfigError
from .base import EPOCH_METRICS, SUMMARY_METRICS, Tracker, TrackerRun

__all__ = ["FOLDER", "TensorBoardTracker", "tensorboard_folder"]

FOLDER = "tensorboard"  # inside the run folder, without log_dir


def tensorboard_folder(run: TrackerRun) -> Path:
    """The event folder of ``run`` (see the module's docstring)."""
    if run.log_dir is not None:
        return run.log_dir / run.group / run.name if run.group else run.log_dir / run.name
    if run.out is None:
        raise ConfigError("option 'log': tensorboard writes under --log-dir or the run folder (--out); give one")
    return run.out / FOLDER


def _hparam(value: Any) -> int | float | str | bool:
    """A value the HParams dashboard shows: numbers, text and booleans as they are, the rest as JSON."""
    return value if isinstance(value, (int, float, str, bool)) else json.dumps(value)


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    requirement = "tensorboardX"
    extra = "tensorboard"
    histograms = True

    @classmethod
    def check(cls, log_dir: Path | None, out: Path | None) -> None:
        tensorboard_folder(TrackerRun(name="", out=out, log_dir=log_dir))

    def start(self, run: TrackerRun) -> bool:
        from tensorboardX import SummaryWriter

        self.folder = tensorboard_folder(run)
        continued = (run.saved or {}).get("log_dir") == str(self.folder)
        # a resumed run replays its epochs from start_epoch: events logged there before are dropped
        self.writer = SummaryWriter(str(self.folder), purge_step=run.start_epoch if run.start_epoch > 0 else None)
        return continued

    def state(self) -> dict:
        return {"log_dir": str(self.folder)}

    def log_params(self, params: dict[str, Any]) -> None:
        from tensorboardX.summary import hparams

        metrics = {key: 0.0 for key in (*EPOCH_METRICS, *SUMMARY_METRICS)}  # the values shown are the scalars'
        writer = self.writer._get_file_writer()
        for summary in hparams({key: _hparam(value) for key, value in params.items()}, metrics):
            writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=1) + "\n```", 0)
        self.writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(key, image, step, dataformats="HWC")
        self.writer.flush()

    def log_histogram(self, key: str, values: Sequence[float], step: int) -> None:
        self.writer.add_histogram(key, np.asarray(values, dtype=np.float64), step)
        self.writer.flush()

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step)

    def finish(self, status: str) -> None:
        self.writer.close()
