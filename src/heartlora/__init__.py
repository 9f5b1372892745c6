"""heartlora: head-level low-rank adaptation (Heart-LoRA) of timm Vision Transformers.

Python API::

    import timm, heartlora
    model = timm.create_model("vit_base_patch16_224", num_classes=100)
    heartlora.apply(model, "heart-lora", ne=3)          # freeze backbone, add the method
    ...train...                                         # (heartlora.HeadScorer, select_and_apply)
    heartlora.save_adapter(model, "adapter/")           # adapter.safetensors + adapter_config.json
    heartlora.merge(model)                              # fold into qkv for inference
"""
__version__ = "0.1.0"

from .methods import apply, get_state, methods  # noqa: E402
from .responsiveness import (  # noqa: E402
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

__all__ = [
    "HeadScorer", "ablation_scores", "adapter_bytes", "adapter_tensors", "apply", "apply_head_selection",
    "find_attention_sites", "get_state", "load_adapter", "merge", "merge_and_unload", "methods", "read_adapter_config",
    "save_adapter", "scoring_paused", "select_and_apply", "select_heads", "trainable_parameters", "unmerge",
]
