"""Seeds and RNG states.

Every source of randomness of a training run is seeded from ``(seed, purpose, epoch)``:
the shuffling order of epoch ``e`` comes from its own ``torch.Generator`` and the global
torch / numpy / python RNGs (dropout, drop-path, augmentation) are re-seeded at the start of
every epoch. What happens in epoch ``e`` therefore depends only on the model and optimiser
state and on ``(seed, e)`` — which is exactly what a checkpoint holds, so a resumed run
replays the remaining epochs bit for bit. RNG states are also saved (``capture``/``restore``)
for code that draws random numbers outside an epoch.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

__all__ = ["capture_rng", "derive_seed", "restore_rng", "seed_all"]


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from ``seed`` and keys, stable across processes and Python versions."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def capture_rng() -> dict:
    """RNG states as plain Python/tensor values (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # a different number of GPUs than when saved
            pass


def _to_lists(value):
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value):
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value
