"""The method registry and the interfaces every method shares.

A method is a config dataclass + layers + an apply function (PEFT's shape), and optionally its
own training schedule. Save, load, merge and byte counting are generic: they only talk to
:class:`AdapterLayer` and to the parameters a method leaves trainable. A training loop talks to
a method's schedule only through the hooks of :class:`MethodSchedule` (PEFT's AdaLoRA shape:
the method keeps its schedule, the loop calls its hooks), so no loop knows a method by name.
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..config import coerce_option


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


Batches = list  # [(images, labels), ...]


@dataclass
class ScheduleContext:
    """What a training loop tells a method's schedule. Data reach the schedule only as callables
    (batches, an accuracy), so methods never see a dataset, and never the test split."""

    epochs: int
    warmup_epochs: int = 0
    seed: int = 0
    # n training batches drawn with the run's seed (e.g. for scores measured on training data)
    train_batches: Callable[[int], Batches] | None = None
    # n batches of held-out data (a validation split, or a hold-out slice of the training set)
    validation_batches: Callable[[int], Batches] | None = None
    # top-1 accuracy (%) of the model as it is now on the held-out data
    validation_accuracy: Callable[[], float] | None = None
    # how the held-out data were made, for the run record
    validation_info: dict | None = None
    # re-create the classifier the way the loop made it (None: reset its layers' parameters)
    reset_classifier: Callable[[], None] | None = None
    # data-parallel loops: the mean of a tensor over all processes (measurements must agree)
    all_reduce_mean: Callable[[Any], Any] | None = None


@dataclass
class ScheduleActions:
    """What a hook asks the loop to do before the next step."""

    rebuild_optimizer: bool = False  # the trainable parameters were re-initialised: a fresh optimiser
    restart_lr: bool = False  # start the learning-rate schedule afresh from the next epoch
    messages: list[str] = field(default_factory=list)  # lines for the loop's log

    def __bool__(self) -> bool:
        return self.rebuild_optimizer or self.restart_lr or bool(self.messages)


class MethodSchedule:
    """A method's own training schedule, driven by any training loop through these hooks::

        schedule = SomeSchedule(model, ScheduleContext(epochs=E, ...), optimizer)
        for epoch in range(E):
            schedule.on_epoch_start(epoch)         # act on what it returns, as below
            ...train one epoch...
            actions = schedule.on_epoch_end(epoch)
            if actions.rebuild_optimizer: optimizer = make(); schedule.attach_optimizer(optimizer)
            with schedule.paused(): ...evaluate...

    ``state_dict``/``load_state_dict`` carry it through checkpoints (load before the model's
    trainable tensors: the schedule may change their shapes); ``record`` gives the blocks it adds to
    a run record. The base class is a schedule that does nothing.
    """

    def __init__(self, model: nn.Module, context: ScheduleContext, optimizer: Any = None):
        self.model, self.context, self.optimizer = model, context, optimizer

    @classmethod
    def holdout_fraction(cls, options: dict) -> float | None:
        """Fraction of the training set the loop must hold out for ``validation_*`` when the run's
        own evaluation split is the test split; ``None``: this schedule needs no held-out data."""
        return None

    def attach_optimizer(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def on_epoch_start(self, epoch: int) -> ScheduleActions:
        return ScheduleActions()

    def on_epoch_end(self, epoch: int) -> ScheduleActions:
        return ScheduleActions()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside (evaluation) are not part of the schedule's measurements."""
        yield

    def phase(self, epoch: int) -> str:
        return "train"

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def record(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A method option as a dataclass field: its default and its one-line meaning, which
    ``heartlora methods NAME``, the docs and ``help()`` of the config class show. ``metadata`` may
    declare ``allow_nonfinite=True`` for a float option that accepts inf/nan."""
    return field(default=default, metadata={"help": help, **metadata})


def option_docs(config_cls: type, defaults: dict | None = None) -> list[dict]:
    """One entry per option of ``config_cls``: name, type, default (``defaults`` override the
    field's, as a registered method's do) and meaning."""
    hints = typing.get_type_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        default = (defaults or {}).get(f.name, f.default)
        rows.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                     "help": f.metadata.get("help", "")})
    return rows


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"comma list of {_type_name(args[0])}" if args else "comma list"
    if args:
        return " | ".join(_type_name(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def documented(config_cls: type) -> type:
    """Class decorator for method configs: appends the option list (name, type, default, meaning)
    to the class docstring, so ``help(LoRAConfig)`` shows what ``heartlora methods`` shows."""
    lines = [f"    {r['name']} ({r['type']}, default {r['default']!r}): {r['help']}" for r in option_docs(config_cls)]
    doc = (config_cls.__doc__ or "").rstrip()
    if dataclasses.is_dataclass(config_cls) and doc.startswith(config_cls.__name__ + "("):
        doc = ""  # dataclass' generated signature: replaced by the option list
    config_cls.__doc__ = (doc + "\n\n" if doc else "") + "Options:\n" + "\n".join(lines) if lines else doc
    return config_cls


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
    # The method's own training schedule (a MethodSchedule subclass), or None.
    schedule: type | None = None
    # Capabilities, declared once and read by the parts that depend on them (never a list of
    # method names elsewhere):
    # the method switches off attention heads (head masks and responsiveness scores in its adapter
    # and run record)
    selects_heads: bool = False
    # ``heartlora export --to peft`` writes it as a PEFT LoRA adapter (interop.peft_io)
    peft_exportable: bool = False
    # many adapters of it share one frozen backbone in a mixed batch (serve.multitask): its layers
    # add a per-sample low-rank update, or it has no layer at all (a linear probe)
    servable: bool = False
    # a training step may leave some trainable parameters without a gradient (NOAH's supernet
    # samples branches of size 0): data-parallel loops must allow for it
    step_may_skip_parameters: bool = False

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
        fields = {f.name: f for f in dataclasses.fields(self.config_cls)}
        coerced = {k: coerce_option(v, hints[k], f"option '{k}' of method '{self.name}'",
                                    allow_nonfinite=bool(fields[k].metadata.get("allow_nonfinite")))
                   for k, v in values.items()}
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
