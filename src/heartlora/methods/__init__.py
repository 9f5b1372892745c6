"""Method registry and ``apply``: insert a method into a timm backbone in place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..heads import geometry
from .base import (
    AdapterLayer,
    MethodSpec,
    adapter_layers,
    classifier_parameter_names,
    get_method,
    register,
    registered,
)
from . import lowrank  # noqa: F401  (registers lora, bilora, heart-lora, heart-lora-layer)
from . import simple, prompts, bottleneck, noah  # noqa: F401,E402  (baselines: full, linear, bitfit, vpt-*, adapter, adaptformer, bi-adaptformer, noah)

STATE_ATTR = "heartlora_state"


@dataclass
class AdapterState:
    """What travels with an adapted model and its adapter file (like timm's pretrained_cfg)."""

    method: str
    options: dict
    architecture: str | None
    num_classes: int | None
    geometry: list[dict]
    head_masks: list[list[bool]] | None = None
    scores: list[list[float]] | None = None
    selection: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def get_state(model: nn.Module) -> AdapterState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} has no heartlora method applied; call heartlora.apply first")
    return state


def apply(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Insert ``method`` into ``model`` in place: freeze the backbone, add the method's trainable
    parts, keep the classifier trainable. Returns the same model."""
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError(f"model already has method '{get_state(model).method}' applied")
    spec = get_method(method)
    config = spec.make_config(options)
    geom = geometry(model)
    for param in model.parameters():
        param.requires_grad_(False)
    spec.apply_fn(model, config, method)  # parameters it creates are trainable
    classifier = set(classifier_parameter_names(model))
    for name, param in model.named_parameters():
        if name in classifier:
            param.requires_grad_(True)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    state = AdapterState(
        method=method,
        options=dataclasses.asdict(config),
        architecture=cfg.get("architecture"),
        num_classes=getattr(model, "num_classes", None),
        geometry=geom,
    )
    object.__setattr__(model, STATE_ATTR, state)
    return model


def methods() -> dict[str, dict]:
    """Registered methods with their default options, summary, source paper and mergeability."""
    return {
        name: {
            "options": spec.option_defaults(),
            "summary": spec.summary,
            "paper": spec.paper,
            "mergeable": spec.mergeable,
        }
        for name, spec in sorted(registered().items())
    }


__all__ = [
    "AdapterLayer", "AdapterState", "MethodSpec", "adapter_layers", "apply", "get_method",
    "get_state", "methods", "register", "registered",
]
