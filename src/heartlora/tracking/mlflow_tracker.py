"""MLflow: metrics, parameters, the head map and the adapter folder of a run, in an MLflow tracking store.

Where: with ``log_dir``, an SQLite store ``LOG_DIR/mlflow.db`` with artifacts in
``LOG_DIR/mlartifacts`` (view it with ``mlflow ui --backend-store-uri sqlite:///LOG_DIR/mlflow.db``);
without it, MLflow's own choice: ``MLFLOW_TRACKING_URI`` (a server, a database, ...) or MLflow's
default store in the working directory. The experiment is ``MLFLOW_EXPERIMENT_NAME``, else
``heartlora``. Runs are named after their run folder.

A sweep is one parent run (named after the sweep folder) with one child run per cell
(``mlflow.parentRunId``); the parent's store and id travel with every cell, so cells that run in
other processes or on other machines (Ray) log under it. A resumed run continues its own MLflow
run (the id is kept in the run folder's ``tracking.json``; tag ``heartlora.resumed_at_epoch``)
when it logs to the same store, and starts a new one otherwise.

The client API is used throughout (never MLflow's process-wide active run), so several runs and
threads in one process do not disturb each other.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .base import Tracker, TrackerRun

__all__ = ["ARTIFACTS_FOLDER", "DEFAULT_EXPERIMENT", "DATABASE", "MLflowTracker", "tracking_uri"]

DATABASE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
DEFAULT_EXPERIMENT = "heartlora"
_STATUS = {"complete": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_PARAM_LENGTH = 6000  # MLflow's longest parameter value


def tracking_uri(log_dir: Path | None) -> tuple[str, str | None]:
    """(tracking URI, artifact location of a new experiment or None for MLflow's default)."""
    if log_dir is not None:
        return f"sqlite:///{log_dir / DATABASE}", (log_dir / ARTIFACTS_FOLDER).as_uri()
    import mlflow

    return mlflow.get_tracking_uri(), None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _experiment_id(client, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another process created it in the meantime
        return client.get_experiment_by_name(name).experiment_id


def _reopen(client, saved: dict | None, uri: str, epoch: int | None = None) -> str | None:
    """The saved run's id, set running again, when it lives in the store at ``uri``; else None."""
    from mlflow.exceptions import MlflowException

    if not saved or saved.get("tracking_uri") != uri or not saved.get("run_id"):
        return None
    try:
        client.update_run(saved["run_id"], status="RUNNING")
    except MlflowException:  # deleted, or the store was replaced
        return None
    if epoch is not None:
        client.set_tag(saved["run_id"], "heartlora.resumed_at_epoch", str(epoch))
    return saved["run_id"]


class MLflowTracker(Tracker):
    name = "mlflow"
    requirement = "mlflow"
    extra = "mlflow"
    artifacts = True

    def start(self, run: TrackerRun) -> bool:
        group = run.group_state or {}
        self.uri, artifact_location = (group["tracking_uri"], None) if group else tracking_uri(run.log_dir)
        self.client = _client(self.uri)
        self.run_id = _reopen(self.client, run.saved, self.uri, run.start_epoch)
        if self.run_id is not None:
            return True
        tags = {"heartlora.sweep": run.group} if run.group else {}
        if group.get("run_id"):
            tags["mlflow.parentRunId"] = group["run_id"]
        experiment = group.get("experiment_id") or _experiment_id(self.client, artifact_location)
        self.run_id = self.client.create_run(experiment, run_name=run.name, tags=tags).info.run_id
        return False

    def state(self) -> dict:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, image, artifact_file=f"{key}.png")

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step)

    def log_artifact(self, path: Path, name: str) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
        else:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, _STATUS[status])

    # ----- sweeps: a parent run -------------------------------------------------------------------
    @classmethod
    def start_group(cls, name: str, log_dir: Path | None, saved: dict | None, quiet: bool) -> dict:
        uri, artifact_location = tracking_uri(log_dir)
        client = _client(uri)
        experiment = _experiment_id(client, artifact_location)
        parent = _reopen(client, saved, uri)
        if parent is None:
            parent = client.create_run(experiment, run_name=name, tags={"heartlora.sweep": name}).info.run_id
        return {"tracking_uri": uri, "experiment_id": experiment, "run_id": parent}

    @classmethod
    def finish_group(cls, state: dict, ok: bool) -> None:
        _client(state["tracking_uri"]).set_terminated(state["run_id"], "FINISHED" if ok else "FAILED")
