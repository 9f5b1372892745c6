"""heartlora: head-level low-rank adaptation (Heart-LoRA) of timm Vision Transformers.

Python API::

    import timm, heartlora
    model = timm.create_model("vit_base_patch16_224", num_classes=100)
    heartlora.apply(model, "heart-lora", ne=3)          # freeze backbone, add the method
    schedule = heartlora.schedule_for(model, epochs=100, optimizer=optimizer, warmup_epochs=10)
    ...train, calling schedule.on_epoch_start(e) / schedule.on_epoch_end(e)...
    heartlora.save_adapter(model, "adapter/")           # adapter.safetensors + adapter_config.json
    heartlora.merge(model)                              # fold into qkv for inference
"""
from .version import __version__  # noqa: F401
from .methods.base import MethodSchedule, ScheduleActions, ScheduleContext  # noqa: E402
from .methods.factory import apply, get_state, methods, schedule_for  # noqa: E402
from .methods.responsiveness import (  # noqa: E402
    HeadScorer,
    ablation_scores,
    apply_head_selection,
    scoring_paused,
    select_and_apply,
    select_heads,
)
from .adapters_io import (  # noqa: E402
    adapter_bytes,
    adapter_tensors,
    load_adapter,
    merge,
    merge_and_unload,
    read_adapter_config,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from .heads import find_attention_sites  # noqa: E402


def __getattr__(name: str):
    # the serving model loads lazily: `import heartlora` stays light and free of import circles
    if name == "MultiTask":
        from .serve.multitask import MultiTask

        return MultiTask
    raise AttributeError(f"module 'heartlora' has no attribute {name!r}")


__all__ = [
    "HeadScorer", "MethodSchedule", "MultiTask", "ScheduleActions", "ScheduleContext", "ablation_scores",
    "adapter_bytes", "adapter_tensors", "apply", "apply_head_selection", "find_attention_sites", "get_state",
    "load_adapter", "merge", "merge_and_unload", "methods", "read_adapter_config", "save_adapter", "schedule_for",
    "scoring_paused", "select_and_apply", "select_heads", "trainable_parameters", "unmerge",
]
