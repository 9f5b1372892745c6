"""The trackers by name, and the ``log`` setting that picks them.

Settings (:class:`heartlora.config.RunConfig`; flat keys ``log``, ``log_dir``; CLI ``--log``, ``--log-dir``):

- ``log`` (str, default ``""``): a comma list of tracker names — ``tensorboard``, ``mlflow``,
  ``wandb``, in any combination. ``""``: the list in the environment variable ``HEARTLORA_LOG``
  (unset or empty: no tracking); ``none`` (or ``off``): no tracking, whatever ``HEARTLORA_LOG`` says.
- ``log_dir`` (str or None, default None): the folder the trackers write into (TensorBoard event
  folders, an MLflow SQLite store, W&B's run folders; see each tracker's module). None: the run
  folder for TensorBoard, and MLflow's and W&B's own environment variables (``MLFLOW_TRACKING_URI``,
  ``WANDB_MODE=offline``, ``WANDB_DIR``, ...).

Both only say where a run is watched from: neither is part of a sweep cell's identity, and both
may change when a run is resumed. Each tracker is an optional extra (``pip install
heartlora[tensorboard]``, ``[mlflow]``, ``[wandb]``), imported only when asked for.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Type

from ..config import ConfigError, RunConfig
from .base import Tracker
from .mlflow_tracker import MLflowTracker
from .tensorboard_tracker import TensorBoardTracker
from .wandb_tracker import WandbTracker

__all__ = ["LOG_ENV", "NO_TRACKING", "TRACKERS", "parse_log", "register", "requested_trackers"]

LOG_ENV = "HEARTLORA_LOG"
NO_TRACKING = ("none", "off")
TRACKERS: dict[str, Type[Tracker]] = {}


def register(cls: Type[Tracker]) -> Type[Tracker]:
    """Add a tracker class under ``cls.name``."""
    if not cls.name or cls.name in TRACKERS:
        raise ValueError(f"tracker name {cls.name!r} is empty or already registered")
    TRACKERS[cls.name] = cls
    return cls


for _cls in (TensorBoardTracker, MLflowTracker, WandbTracker):
    register(_cls)


def parse_log(value: str, source: str = "option 'log'") -> tuple[str, ...]:
    """``"tensorboard,wandb"`` → ``("tensorboard", "wandb")``; ``""``, ``none``, ``off`` → ``()``.
    Unknown names raise :class:`ConfigError` naming ``source``."""
    text = (value or "").strip()
    if text.lower() in ("", *NO_TRACKING):
        return ()
    names = [part.strip().lower() for part in text.split(",")]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or "" in names:
        raise ConfigError(f"{source}: got {value!r}; expected a comma list of {', '.join(TRACKERS)} (or none)")
    return tuple(dict.fromkeys(names))


def requested_trackers(config: RunConfig) -> list[Type[Tracker]]:
    """The tracker classes ``config`` asks for (its ``log``, else ``HEARTLORA_LOG``), each checked
    to be installed: a missing one raises :class:`ConfigError` saying how to install it."""
    if (config.log or "").strip():
        names, source = parse_log(config.log), "option 'log'"
    else:
        source = f"environment variable {LOG_ENV}"
        names = parse_log(os.environ.get(LOG_ENV, ""), source)
    classes = [TRACKERS[name] for name in names]
    for cls in classes:
        if cls.requirement and importlib.util.find_spec(cls.requirement) is None:
            raise ConfigError(f"{source}: {cls.name} needs the package {cls.requirement}, which is not installed; "
                              f"pip install heartlora[{cls.extra}]")
    return classes
