"""Training engine: the DESIGN §4 recipe, the Heart-LoRA schedule, run records and resume.

::

    from heartlora.config import RunConfig, DataConfig, ModelConfig
    from heartlora.engine import train, evaluate
    record = train(RunConfig(model=ModelConfig(weights="ViT-B_16.npz"),
                             data=DataConfig(kind="vtab", root="/data/vtab-1k", task="cifar"),
                             out="runs/cifar-heart"))
    record["protocols"]["paper"]      # best test accuracy over the evaluations
"""
from ..config import ConfigError, DataConfig, MethodConfig, ModelConfig, RunConfig, ScheduleConfig
from .build import build, build_backbone, new_classifier
from .loop import ADAPTER_DIR, BACKBONE_NAME, evaluate, train
from .schedule import CosineSchedule

__all__ = [
    "ADAPTER_DIR", "BACKBONE_NAME", "ConfigError", "CosineSchedule", "DataConfig", "MethodConfig", "ModelConfig",
    "RunConfig", "ScheduleConfig", "build", "build_backbone", "evaluate", "new_classifier", "train",
]
