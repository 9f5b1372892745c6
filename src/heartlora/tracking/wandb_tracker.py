"""Weights & Biases: metrics, configuration, the head map and histogram, the adapter folder as an artifact.

Where: W&B's own settings decide — ``WANDB_MODE`` (``offline`` on machines without network or
login: runs are kept on disk for ``wandb sync``), ``WANDB_PROJECT`` (default ``heartlora``),
``WANDB_ENTITY``, ``WANDB_DIR``; ``log_dir``, when given, is the folder W&B writes its ``wandb/``
run folders into. Runs are named after their run folder; the cells of a sweep form one W&B group
named after the sweep folder. A resumed run continues its own W&B run (same id, kept in the run
folder's ``tracking.json``, ``resume="allow"``) when it logs to the same project and folder.

W&B runs a service process beside the training process; it ends when that process ends. Console
capture is off (heartlora's own output is not copied into the run).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import Tracker, TrackerRun

__all__ = ["DEFAULT_PROJECT", "WandbTracker"]

DEFAULT_PROJECT = "heartlora"


def _project(group: dict) -> str:
    return group.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


class WandbTracker(Tracker):
    name = "wandb"
    requirement = "wandb"
    extra = "wandb"
    artifacts = True
    histograms = True

    def start(self, run: TrackerRun) -> bool:
        import wandb

        project = _project(run.group_state or {})
        directory = str(run.log_dir) if run.log_dir is not None else None
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        saved = run.saved or {}
        resume_id = saved.get("id") if (saved.get("project"), saved.get("dir")) == (project, directory) else None
        self.run = wandb.init(project=project, dir=directory, name=run.name, group=run.group, job_type="train",
                              id=resume_id, resume="allow" if resume_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=run.quiet))
        self.project, self.directory = project, directory
        return resume_id is not None

    def state(self) -> dict:
        return {"id": self.run.id, "project": self.project, "dir": self.directory}

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Image(image)}, step=step)

    def log_histogram(self, key: str, values: Sequence[float], step: int) -> None:
        import wandb

        self.run.log({key: wandb.Histogram(np.asarray(values, dtype=np.float64))}, step=step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(metrics)

    def log_artifact(self, path: Path, name: str) -> None:
        import wandb

        artifact = wandb.Artifact(f"{name}-{self.run.id}", type=name)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "complete" else 1)

    @classmethod
    def start_group(cls, name: str, log_dir: Path | None, saved: dict | None, quiet: bool) -> dict:
        # a W&B group needs no run of its own: its name (the sweep's) and project travel with the cells
        return {"project": _project({})}
