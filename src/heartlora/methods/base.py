"""The method registry and the interface every method's layers share.

A method is a config dataclass + layers + an apply function (PEFT's shape). Save, load, merge
and byte counting are generic: they only talk to :class:`AdapterLayer` and to the parameters a
method leaves trainable.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class AdapterLayer(nn.Module):
    """A module a method inserts into the backbone. It owns its adapter parameters and decides
    how they are stored (``stored_tensors``); everything else that is trainable is stored as is."""

    mergeable: bool = False

    def adapter_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        raise NotImplementedError

    def stored_nbytes(self) -> int:
        """Closed-form size of ``stored_tensors()`` in bytes (checked against it in the tests)."""
        raise NotImplementedError

    def merge(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the backbone")

    def unmerge(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the backbone")


@dataclass
class MethodSpec:
    name: str
    config_cls: type
    apply_fn: Callable[[nn.Module, Any, str], None]  # (model, config, method name)
    summary: str
    paper: str
    mergeable: bool
    defaults: dict = field(default_factory=dict)
    # Whether the adapted model equals the backbone at init, given the resolved options
    # (e.g. quantised B starts non-zero). The test matrix holds every method to this.
    identity_at_init: Callable[[dict], bool] = lambda options: True

    def option_defaults(self) -> dict:
        base = {f.name: f.default for f in dataclasses.fields(self.config_cls)}
        base.update(self.defaults)
        return base

    def make_config(self, options: dict) -> Any:
        allowed = self.option_defaults()
        values = dict(allowed)
        for key, value in options.items():
            key_norm = key.replace("-", "_")
            if key_norm not in allowed:
                raise ValueError(
                    f"unknown option '{key}' for method '{self.name}'; "
                    f"valid options: {', '.join(sorted(allowed))}"
                )
            values[key_norm] = value
        hints = typing.get_type_hints(self.config_cls)
        coerced = {k: _coerce(v, hints[k], k, self.name) for k, v in values.items()}
        config = self.config_cls(**coerced)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate(self.name)
        return config


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"method '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; registered methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered() -> dict[str, MethodSpec]:
    return dict(_REGISTRY)


def _coerce(value: Any, hint: Any, key: str, method: str) -> Any:
    """Turn CLI/YAML strings into the option's type; reject what cannot be converted."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"option '{key}' of method '{method}' cannot be empty")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) and args:
        if isinstance(value, str) and value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, args[0], key, method)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(i).strip() for i in items if str(i).strip())
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"option '{key}' of method '{method}': expected {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    return value


def classifier_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classifier's parameters (timm's ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head_name = cfg.get("classifier")
    names = []
    if head_name:
        prefix = head_name + "."
        names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    if not names and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        ids = {id(p) for p in head.parameters()}
        names = [n for n, p in model.named_parameters() if id(p) in ids]
    return names


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
