"""The method registry: every method is a config + layers + an apply function (PEFT's shape).

Importing this package registers the methods; :func:`apply` inserts one into a timm backbone.
"""
from .base import (AdapterLayer, MethodSchedule, MethodSpec, ScheduleActions, ScheduleContext, adapter_layers, get_method,
                   register, registered)
from .factory import STATE_ATTR, AdapterState, apply, get_state, methods
from . import lowrank, heart_lora  # noqa: F401,E402  (lora, bilora; heart-lora, heart-lora-layer)
from . import simple, prompts, bottleneck, noah  # noqa: F401,E402  (baselines: full, linear, bitfit, vpt-*, adapter, adaptformer, bi-adaptformer, noah)

__all__ = [
    "AdapterLayer", "AdapterState", "MethodSchedule", "MethodSpec", "STATE_ATTR", "ScheduleActions", "ScheduleContext",
    "adapter_layers", "apply", "get_method", "get_state", "methods", "register", "registered",
]
