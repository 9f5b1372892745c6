"""``apply``: insert a registered method into a timm backbone, and the state that travels with it.

The :class:`AdapterState` attached to an adapted model is what its adapter file records (like
timm's ``pretrained_cfg`` travels with the weights): method, resolved options, head geometry,
and — for head-selecting methods — the head masks, scores and how they were chosen.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..heads import geometry
from .base import MethodSchedule, ScheduleContext, classifier_parameter_names, get_method, option_docs, registered

STATE_ATTR = "heartlora_state"

__all__ = ["STATE_ATTR", "AdapterState", "apply", "get_state", "methods", "schedule_for"]


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
    """Registered methods: default options, each option's type and meaning, summary, source paper,
    and the declared capabilities (mergeable, PEFT-exportable, servable, head-selecting)."""
    return {
        name: {
            "options": spec.option_defaults(),
            "option_docs": option_docs(spec.config_cls, spec.defaults),
            "summary": spec.summary,
            "paper": spec.paper,
            "mergeable": spec.mergeable,
            "peft_exportable": spec.peft_exportable,
            "servable": spec.servable,
            "selects_heads": spec.selects_heads,
            "schedule": spec.schedule.__name__ if spec.schedule else None,
        }
        for name, spec in sorted(registered().items())
    }


def schedule_for(model: nn.Module, epochs: int, optimizer: Any = None, **context: Any) -> MethodSchedule:
    """The training schedule of the method applied to ``model``, for a loop of one's own.

    ``context`` takes the fields of :class:`heartlora.methods.base.ScheduleContext` (``warmup_epochs``,
    ``seed``, ``train_batches``, ``validation_batches``, ``validation_accuracy``, ``reset_classifier``).
    Methods without a schedule get one whose hooks do nothing, so a loop can always call them."""
    spec = get_method(get_state(model).method)
    schedule_cls = spec.schedule or MethodSchedule
    return schedule_cls(model, ScheduleContext(epochs=epochs, **context), optimizer)
