"""safetensors bytes that depend only on the tensors and the metadata.

``safetensors.torch.save`` writes the ``__metadata__`` dict in a hash map's random order, so
two saves of the same weights with two or more metadata keys differ in bytes and sha256 (the
demo backbone's recorded sha256 would not be reproducible, nor a merged or PEFT export's).
:func:`safetensors_bytes` rewrites that header with the metadata keys sorted, same length.
"""
from __future__ import annotations

import json
import struct
from typing import Mapping

import torch

__all__ = ["safetensors_bytes"]


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with a deterministic header."""
    from safetensors.torch import save

    data = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length:  # the same keys and values in another order never grow
        raise AssertionError(f"safetensors header grew from {length} to {len(text)} bytes when sorted")
    return data[:8] + text.ljust(length, b" ") + data[8 + length:]
