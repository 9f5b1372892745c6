"""Training engine: the benchmark recipe, methods' own schedules, run records and resume.

::

    from heartlora.config import RunConfig, DataConfig, ModelConfig
    from heartlora.engine.loop import train, evaluate
    record = train(RunConfig(model=ModelConfig(weights="ViT-B_16.npz"),
                             data=DataConfig(kind="vtab", root="/data/vtab-1k", task="cifar"),
                             out="runs/cifar-heart"))
    record["protocols"]["paper"]      # best test accuracy over the evaluations

Modules: ``loop`` (``train``, ``evaluate``), ``build`` (backbone, method, classifier; a model from
an adapter folder), ``record`` (the run record), ``checkpoint``, ``schedule``, ``distributed``,
``lock``. The names below are loaded on first use, so importing one module of the engine does not
import the others.
"""
import importlib

_EXPORTS = {"train": "loop", "evaluate": "loop", "build": "build", "build_backbone": "build",
            "build_from_adapter_folder": "build", "new_classifier": "build", "CosineSchedule": "schedule"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
