"""Learning-rate schedule: timm's ``CosineLRScheduler`` as the Bi-LoRA lineage steps it.

The reference code builds ``CosineLRScheduler(opt, t_initial=epochs, warmup_t=warmup,
warmup_lr_init=1e-6, lr_min=1e-5)`` before training and calls ``step(epoch)`` *after* each
epoch, so the lr used during epoch ``e`` is the scheduler's value at ``t = e - 1`` (and the
initial warm-up lr for ``e = 0``): 1e-6 for epochs 0 and 1, 1.01e-4 (2), 4.01e-4 (5), 8.00e-4 (9),
9.00e-4 (10), 9.76e-4 (11, the peak), 9.14e-4 (20), 5.21e-4 (50), 3.93e-5 (90), 1.10e-5 (99).

The lr is a pure function of the epoch (no state to save), computed with timm's arithmetic so
the values are bit-identical to the real scheduler's (checked in the tests).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["CosineSchedule"]


@dataclass(frozen=True)
class CosineSchedule:
    epochs: int  # t_initial
    warmup_epochs: int = 10  # warmup_t
    lr: float = 1e-3  # base lr (the optimiser's lr)
    warmup_lr: float = 1e-6  # warmup_lr_init
    min_lr: float = 1e-5  # lr_min

    @classmethod
    def from_config(cls, schedule) -> "CosineSchedule":
        return cls(schedule.epochs, schedule.warmup_epochs, schedule.lr, schedule.warmup_lr, schedule.min_lr)

    def value(self, t: int) -> float:
        """timm ``CosineLRScheduler._get_lr(t)`` for one param group (cycle_mul = cycle_decay =
        k_decay = 1, cycle_limit = 1, warmup_prefix = False)."""
        if t < self.warmup_epochs:
            step = (self.lr - self.warmup_lr) / self.warmup_epochs
            return self.warmup_lr + t * step
        i = t // self.epochs
        t_i = self.epochs
        t_curr = t - (self.epochs * i)
        if i < 1:
            lr_max = self.lr * (1.0 ** i)
            return self.min_lr + 0.5 * (lr_max - self.min_lr) * (1 + math.cos(math.pi * t_curr ** 1.0 / t_i ** 1.0))
        return self.min_lr

    def lr_for_epoch(self, epoch: int) -> float:
        """The lr in effect during ``epoch`` (0-based) when ``step(epoch)`` runs after each epoch."""
        if epoch <= 0:
            # timm sets warmup_lr_init at construction, or leaves the base lr without warm-up
            return self.warmup_lr if self.warmup_epochs else self.lr
        return self.value(epoch - 1)

    def lrs(self) -> list[float]:
        return [self.lr_for_epoch(e) for e in range(self.epochs)]

    def to_dict(self) -> dict:
        return {"kind": "timm CosineLRScheduler, step(epoch) after each epoch", **asdict(self)}
