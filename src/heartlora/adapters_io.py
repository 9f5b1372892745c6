"""Save, load, merge and measure adapters, generically over methods.

An adapter directory holds ``adapter.safetensors`` (exactly the stored tensors) and
``adapter_config.json`` (method, resolved options, backbone name and head geometry, head masks,
scores). Adapter layers store their own tensors (packed when quantised); every other trainable
parameter (the classifier, BitFit's biases, …) is stored as is under its parameter name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from .version import __version__
from .fsio import atomic_write
from .heads import check_geometry
from .methods.base import adapter_layers, classifier_parameter_names
from .methods.factory import STATE_ATTR, apply, get_state
from .methods.responsiveness import apply_head_selection

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1


def _owned_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for layer in adapter_layers(model).values() for p in layer.adapter_parameters()}


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the tensors an adapter file stores, keyed by name."""
    get_state(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        for key, value in layer.stored_tensors().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    owned = _owned_parameter_ids(model)
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in owned:
            tensors[name] = param.detach().contiguous().cpu().clone()
    return tensors


def adapter_bytes(model: nn.Module, include_classifier: bool = True) -> int:
    """Bytes of stored tensor data (the file adds only a small JSON header)."""
    classifier = set(classifier_parameter_names(model))
    return sum(
        t.numel() * t.element_size()
        for name, t in adapter_tensors(model).items()
        if include_classifier or name not in classifier
    )


def trainable_parameters(model: nn.Module, include_classifier: bool = True) -> int:
    classifier = set(classifier_parameter_names(model))
    return sum(
        p.numel() for n, p in model.named_parameters()
        if p.requires_grad and (include_classifier or n not in classifier)
    )


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    state = get_state(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(model)
    config = {
        "format_version": FORMAT_VERSION,
        "heartlora_version": __version__,
        **state.to_dict(),
        "classifier": classifier_parameter_names(model),
        "adapter_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "adapter_bytes_without_classifier": adapter_bytes(model, include_classifier=False),
        "trainable_parameters": trainable_parameters(model),
    }
    atomic_write(directory / WEIGHTS_NAME, save_safetensors(tensors, metadata={"method": state.method}))
    atomic_write(directory / CONFIG_NAME, json.dumps(config, indent=2).encode("utf-8"))
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config (expected {CONFIG_NAME} from heartlora.save_adapter)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    for key in ("method", "options", "geometry"):
        if key not in config:
            raise ValueError(f"{path}: missing key '{key}'")
    return config


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load an adapter into a fresh backbone of the same geometry (in place; returns the model)."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    source = str(directory / CONFIG_NAME)
    check_geometry(config["geometry"], model, source)
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError("load_adapter expects a backbone without a method applied")
    apply(model, config["method"], **config["options"])
    state = get_state(model)
    if config.get("head_masks"):
        apply_head_selection(model, [torch.tensor(m) for m in config["head_masks"]])
    state.scores = config.get("scores")
    state.selection = config.get("selection") or {}

    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: adapter weights missing")
    tensors = load_file(str(weights_path))
    remaining = dict(tensors)
    params = dict(model.named_parameters())
    owned = _owned_parameter_ids(model)
    plain = {n for n, p in params.items() if id(p) not in owned}
    for name, layer in adapter_layers(model).items():
        prefix = name + "."
        own = {k[len(prefix):]: remaining.pop(k) for k in list(remaining) if k.startswith(prefix) and k not in plain}
        layer.load_stored_tensors(own, str(weights_path))
    for name, value in list(remaining.items()):
        param = params.get(name)
        if param is None or id(param) in owned:
            raise ValueError(f"{weights_path}: tensor '{name}' does not belong to this model")
        if param.shape != value.shape:
            raise ValueError(
                f"{weights_path}: '{name}' has shape {tuple(value.shape)}, the model's is "
                f"{tuple(param.shape)} (wrong number of classes or another backbone?)"
            )
        with torch.no_grad():
            param.copy_(value)
        remaining.pop(name)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned and n not in tensors]
    if missing:
        raise ValueError(f"{weights_path}: missing trainable tensors {missing[:5]}")
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter layer into the backbone's weights (inference at backbone cost)."""
    layers = adapter_layers(model)
    for name, layer in layers.items():
        if not layer.mergeable:
            raise ValueError(f"method '{get_state(model).method}' cannot be merged ({name})")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    for layer in adapter_layers(model).values():
        if layer.mergeable:
            layer.unmerge()
    return model
