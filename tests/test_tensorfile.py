"""heartlora.tensorfile: the same tensors and metadata always give the same safetensors bytes."""

import hashlib

import torch
from safetensors.torch import load

from heartlora.tensorfile import safetensors_bytes


def test_bytes_do_not_depend_on_the_metadata_order_and_load_back():
    tensors = {"w": torch.randn(3, 4), "step": torch.arange(5)}
    metadata = {"format": "pt", "model_name": "vit", "heartlora": '{"a": "ü"}', "z": "1"}
    digests = {hashlib.sha256(safetensors_bytes(tensors, dict(reversed(list(metadata.items())) if i % 2 else
                                                              metadata.items()))).hexdigest() for i in range(16)}
    assert len(digests) == 1
    data = safetensors_bytes(tensors, metadata)
    assert all(load(data)[k].equal(v) for k, v in tensors.items())
    assert safetensors_bytes(tensors) == safetensors_bytes(dict(tensors))
