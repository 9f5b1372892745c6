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
from torch import nn

from .version import __version__
from .fsio import atomic_write
from .tensorfile import safetensors_bytes
from .heads import check_geometry
from .methods.base import adapter_layers, classifier_parameter_names, get_method, replace_module
from .methods.factory import STATE_ATTR, apply, get_state
from .methods.responsiveness import apply_head_selection

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter folder that cannot be used: unreadable, malformed, or for another backbone."""


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
    atomic_write(directory / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"method": state.method}))
    atomic_write(directory / CONFIG_NAME, json.dumps(config, indent=2).encode("utf-8"))
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """``adapter_config.json`` of an adapter folder, checked: every key the loader uses has the
    type it needs, and ``format_version`` is one this heartlora reads (else :class:`AdapterError`)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config (expected {CONFIG_NAME} from heartlora.save_adapter)")
    config = read_json_object(path, "the JSON written by heartlora.save_adapter")
    _check_config(config, path)
    return config


def read_json_object(path: Path, expected: str) -> dict:
    """The JSON object in ``path``; an :class:`AdapterError` naming the file (and line) otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); expected {expected}") from None
    except UnicodeDecodeError:
        raise AdapterError(f"{path}: not a UTF-8 text file; expected {expected}") from None
    if not isinstance(value, dict):
        raise AdapterError(f"{path}: expected a JSON object ({expected}), got {type(value).__name__}")
    return value


def _is_int(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_config(config: dict, path: Path) -> None:
    for key in ("format_version", "method", "options", "geometry"):
        if key not in config:
            raise AdapterError(f"{path}: missing key '{key}'")

    def expect(key: str, ok: bool, expected: str) -> None:
        if not ok:
            raise AdapterError(f"{path}: key '{key}' is {json.dumps(config.get(key))[:80]}; expected {expected}")

    version = config["format_version"]
    expect("format_version", _is_int(version, 1), f"an integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise AdapterError(f"{path}: adapter format_version {version} is newer than this heartlora "
                           f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade heartlora")
    expect("method", isinstance(config["method"], str) and bool(config["method"]), "a method name")
    expect("options", isinstance(config["options"], dict), "a JSON object of method options")
    geometry = config["geometry"]
    site_keys = {"layer": 0, "in_dim": 1, "num_heads": 1, "head_dim": 1}
    expect("geometry", isinstance(geometry, list) and bool(geometry) and all(
        isinstance(g, dict) and isinstance(g.get("name"), str) and all(_is_int(g.get(k), m) for k, m in site_keys.items())
        for g in geometry), "a list of attention blocks {layer, name, in_dim, num_heads, head_dim}")
    heads = [g["num_heads"] for g in geometry]
    for key, item_ok, what in (("head_masks", lambda v: isinstance(v, bool), "true/false"),
                               ("scores", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "numbers")):
        value = config.get(key)
        expect(key, value is None or (isinstance(value, list) and len(value) == len(heads) and all(
            isinstance(row, list) and len(row) == h and all(item_ok(v) for v in row) for row, h in zip(value, heads))),
            f"null or one list of {what} per attention block (heads per block: {heads})")
    expect("selection", config.get("selection") is None or isinstance(config["selection"], dict), "null or a JSON object")
    expect("num_classes", config.get("num_classes") is None or _is_int(config["num_classes"]), "null or a class count")


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load an adapter into a fresh backbone of the same geometry (in place; returns the model)."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    source = str(directory / CONFIG_NAME)
    check_geometry(config["geometry"], model, source)
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError("load_adapter expects a backbone without a method applied")
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: adapter weights missing")
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors' own error: truncated, empty, or another format
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({err}); truncated, or not written "
                           "by heartlora.save_adapter?") from None
    try:
        apply(model, config["method"], **config["options"])
        if config.get("head_masks"):
            apply_head_selection(model, [torch.tensor(m) for m in config["head_masks"]])
    except ValueError as err:
        raise AdapterError(f"{source}: {err}") from None
    state = get_state(model)
    state.scores = config.get("scores")
    state.selection = config.get("selection") or {}

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
            raise AdapterError(f"{weights_path}: tensor '{name}' does not belong to this model")
        if param.shape != value.shape:
            raise AdapterError(
                f"{weights_path}: '{name}' has shape {tuple(value.shape)}, the model's is "
                f"{tuple(param.shape)} (wrong number of classes or another backbone?)"
            )
        with torch.no_grad():
            param.copy_(value)
        remaining.pop(name)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned and n not in tensors]
    if missing:
        raise AdapterError(f"{weights_path}: missing trainable tensors {missing[:5]}")
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


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the method into the backbone's weights and remove every heartlora wrapper, in place
    (PEFT's ``merge_and_unload``): the result is a plain timm model whose ``state_dict`` has
    exactly timm's keys, all parameters trainable as timm builds them. Irreversible.

    Raises ``ValueError`` for methods that add computation a timm model has no weights for
    (prompts, bottleneck adapters, NOAH)."""
    state = get_state(model)
    layers = adapter_layers(model)
    blocked = sorted({type(layer).__name__ for layer in layers.values()
                      if not layer.mergeable or not isinstance(getattr(layer, "base", None), nn.Module)})
    if not get_method(state.method).mergeable or blocked:
        raise ValueError(
            f"method '{state.method}' cannot be merged into the backbone: its layers ({', '.join(blocked) or 'none'}) "
            "compute what a plain timm model has no weights for; use the adapter through heartlora "
            "(load_adapter) instead"
        )
    for name, layer in layers.items():
        layer.merge()
        replace_module(model, name, layer.base)
    delattr(model, STATE_ATTR)
    for param in model.parameters():
        param.requires_grad_(True)
    return model
