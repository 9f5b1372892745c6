"""What a training loop tells the code that watches it: the callbacks of :func:`heartlora.engine.loop.train`.

A callback is either a plain function ``fn(epoch, entry)``, called after each epoch's checkpoint
is written (``entry`` is that epoch's point of the run record's ``curve``), or a
:class:`TrainCallback`, whose hooks see the whole run::

    on_train_start(run)             # model built, a resumed run's state restored, before its first epoch
    on_epoch_end(epoch, entry, run) # after each epoch's checkpoint
    on_train_end(record, run)       # after run.json and the adapter folder are written
    close(error)                    # always, last; error: the exception that ended the run, or None

``run`` is a :class:`RunInfo`. An exception raised in a hook stops the run as a kill would (the
last checkpoint stays, ``--resume`` continues it); code that must never stop a run, such as the
experiment trackers of :mod:`heartlora.tracking`, catches its own errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Union

from .config import RunConfig

__all__ = ["Callback", "FunctionCallback", "RunInfo", "TrainCallback", "as_callbacks"]


@dataclass
class RunInfo:
    """One training run as its callbacks see it.

    ``config``: the resolved settings; ``out``: the run folder (None: the run writes nothing);
    ``start_epoch``: the first epoch this process trains (0, or the one after a resumed checkpoint);
    ``resumed``: the run continues from a checkpoint; ``is_main``: this process writes the run's
    files (False on the other ranks of a ``torchrun`` run); ``method_record``: the blocks the
    method's own schedule adds to the run record, as they are now (e.g. Heart-LoRA's ``heads``:
    its scores and, once selected, its switched-off heads; ``{}`` for methods without a schedule).
    """

    config: RunConfig
    out: Path | None
    start_epoch: int = 0
    resumed: bool = False
    is_main: bool = True
    method_record: Callable[[], dict] = field(default=dict)


class TrainCallback:
    """Base class of callbacks with the whole run in view; every hook is optional (does nothing)."""

    def on_train_start(self, run: RunInfo) -> None:
        """The model is built (and a resumed run's state restored); no epoch of this process has run."""

    def on_epoch_end(self, epoch: int, entry: dict, run: RunInfo) -> None:
        """Epoch ``epoch`` (0-based) is trained, evaluated if due, and checkpointed; ``entry`` is its
        curve point (``train_loss``, ``lr``, ``images_per_s``, ``eval_accuracy`` or None, ...)."""

    def on_train_end(self, record: dict, run: RunInfo) -> None:
        """The run finished: ``record`` is its run record (written to ``run.out/run.json`` when ``out`` is set)."""

    def close(self, error: BaseException | None) -> None:
        """Called once when ``train`` returns or raises (``error``), even if ``on_train_start`` never ran."""


class FunctionCallback(TrainCallback):
    """A plain ``fn(epoch, entry)`` as a :class:`TrainCallback`."""

    def __init__(self, fn: Callable[[int, dict], None]):
        self.fn = fn

    def on_epoch_end(self, epoch: int, entry: dict, run: RunInfo) -> None:
        self.fn(epoch, entry)


Callback = Union[TrainCallback, Callable[[int, dict], None]]


def as_callbacks(callbacks: Iterable[Callback]) -> list[TrainCallback]:
    """Every callback as a :class:`TrainCallback` (plain functions wrapped)."""
    out = []
    for callback in callbacks:
        if isinstance(callback, TrainCallback):
            out.append(callback)
        elif callable(callback):
            out.append(FunctionCallback(callback))
        else:
            raise TypeError(f"callbacks: expected a TrainCallback or a function fn(epoch, entry), got {callback!r}")
    return out
