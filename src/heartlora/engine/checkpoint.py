"""Per-epoch checkpoints, written atomically (:func:`heartlora.fsio.atomic_write`).

A checkpoint holds what the run cannot recompute: the trainable tensors (adapters, classifier,
anything a method left trainable) and the persistent buffers of the method's layers, the state
of the method's own training schedule (whatever it needs to continue, e.g. Heart-LoRA's head
masks and partial head measurements), the optimiser state, RNG states, the last finished epoch
and the partial run record. The frozen backbone is not stored: it is rebuilt from the config
(same name, weights file and seed).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..fsio import atomic_write
from ..methods.base import adapter_layers

__all__ = [
    "CHECKPOINT_NAME", "FORMAT_VERSION", "atomic_write_bytes", "load_checkpoint", "model_state",
    "restore_model_state", "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 2: the method schedule keeps its own state


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, data)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Replace ``path`` atomically; on failure the previous checkpoint is intact (OutputError)."""
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable heartlora checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a heartlora checkpoint of format {FORMAT_VERSION}")
    return payload


def _adapter_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    persistent = set(model.state_dict().keys())
    out = {}
    for name, layer in adapter_layers(model).items():
        for buffer_name, buffer in layer.named_buffers():
            key = f"{name}.{buffer_name}"
            if key in persistent:
                out[key] = buffer.detach().cpu().clone()
    return out


def model_state(model: nn.Module) -> dict:
    """Trainable parameters and the method layers' persistent buffers, by name (CPU copies)."""
    return {
        "parameters": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "buffers": _adapter_buffers(model),
    }


@torch.no_grad()
def restore_model_state(model: nn.Module, state: dict, source: str) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    trainable = {n for n, p in params.items() if p.requires_grad}
    saved = state["parameters"]
    if set(saved) != trainable:
        extra = sorted(set(saved) - trainable)[:3]
        missing = sorted(trainable - set(saved))[:3]
        raise ValueError(f"{source}: trainable tensors differ from this run's model (only in checkpoint: "
                         f"{extra}, only in model: {missing}); was it written by another config?")
    for group, table in ((saved, params), (state.get("buffers", {}), buffers)):
        for name, value in group.items():
            target = table.get(name)
            if target is None or target.shape != value.shape:
                raise ValueError(f"{source}: tensor '{name}' has shape {tuple(value.shape)}, the model's is "
                                 f"{None if target is None else tuple(target.shape)}")
            target.copy_(value.to(target.device))
