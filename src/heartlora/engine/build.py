"""Construction of a run's pieces, in the order that makes seeds bit-exact.

Order (the Bi-LoRA lineage's, for bit-exact seeds): **model → data → adapters → classifier**. The global
RNG is seeded with the run seed, then

1. the backbone is built *headless* (``num_classes=0``) and its local weights are loaded;
2. the task's datasets are loaded (no random numbers are drawn; with ``cache=auto`` each split is
   decoded and resized once here, see ``heartlora.data.cache``);
3. the method is applied through the registry (``heartlora.apply``), which draws the adapter
   initialisation (e.g. LoRA's Kaiming-uniform A);
4. the new classifier is created last with ``model.reset_classifier(num_classes)``: PyTorch's
   default ``nn.Linear`` init (Bi-LoRA lineage), or trunc-normal(0.02) with zero bias (NOAH).

Because the classifier is created after the method is applied, its parameters are trainable
like every method's classifier; ``get_state(model).num_classes`` is set to the task's count.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters_io import (
    BACKBONE_NAME,
    BackboneOverrides,
    FolderBackbone,
    backbone_config,
    check_backbone_weights,
    load_adapter,
    read_adapter_config,
    read_backbone,
    resolve_adapter_dir,
)
from ..methods.factory import apply, get_state
from ..config import CLASSIFIER_INITS, ConfigError, MethodConfig, ModelConfig, RunConfig
from ..precision import AmpDecision
from ..precision import resolve_amp as _resolve_amp
from ..methods.base import get_method
from ..models import BackboneWarning, create_backbone
from ..seeding import seed_all

__all__ = ["CACHE_DIR_NAME", "Built", "build", "build_backbone", "build_from_adapter_folder", "cache_dir", "check_method",
           "new_classifier", "probe_method", "resolve_amp", "resolve_device"]


CACHE_DIR_NAME = "data_cache"  # inside the run folder: decoded-image files of splits over the memory budget


def cache_dir(config: RunConfig) -> str | None:
    """Where a run's decoded-image cache files go: ``--cache-dir``, else ``OUT/data_cache``, else nowhere."""
    if config.data.cache_dir:
        return config.data.cache_dir
    return str(Path(config.out) / CACHE_DIR_NAME) if config.out else None


@dataclass
class Built:
    model: nn.Module
    task: Any  # heartlora.data.TaskData
    device: torch.device
    num_classes: int


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"option 'device': got {spec!r} but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"option 'device': got {spec!r} but MPS is not available here; use --device cpu")
    return device


def resolve_amp(spec: str, device: torch.device) -> AmpDecision:
    """:func:`heartlora.precision.resolve_amp`, with option errors as ConfigError."""
    try:
        return _resolve_amp(spec, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_method(method: MethodConfig) -> None:
    """Unknown method or option, or a value of the wrong type → ConfigError (before any work)."""
    try:
        get_method(method.name).make_config(dict(method.options))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _img_size(model: ModelConfig, image_size: int) -> tuple[int, dict]:
    kwargs = dict(model.kwargs)
    given = kwargs.pop("img_size", None) or model.img_size
    if given is not None and given != image_size:
        raise ConfigError(f"option 'img_size': the model takes {given}x{given} images but the data are resized to "
                          f"{image_size}x{image_size} (option 'image_size'); make them equal")
    return image_size, kwargs


def probe_method(config: RunConfig) -> None:
    """Apply the method to a weightless copy of the backbone (on the meta device) to catch option
    errors that depend on the backbone (e.g. ``ne`` >= heads) before data are read."""
    import timm

    img_size, kwargs = _img_size(config.model, config.data.image_size)
    try:
        with warnings.catch_warnings(), torch.device("meta"), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            probe = timm.create_model(config.model.name, pretrained=False, num_classes=0, img_size=img_size,
                                      drop_path_rate=config.model.drop_path, **kwargs)
    except Exception:  # the real build reports backbone problems with its own messages
        return
    try:
        with torch.random.fork_rng(devices=[]):
            apply(probe, config.method.name, **config.method.options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except Exception:
        return


def build_backbone(model: ModelConfig, image_size: int, seed: int) -> nn.Module:
    """Seed, then build the headless backbone with its weights (step 1)."""
    img_size, kwargs = _img_size(model, image_size)
    seed_all(seed)
    return create_backbone(model.name, weights=model.weights, weights_sha256=model.weights_sha256, num_classes=0,
                           pretrained=model.pretrained, random_init=model.random_init,
                           img_size=img_size, drop_path_rate=model.drop_path, **kwargs)


@torch.no_grad()
def new_classifier(model: nn.Module, num_classes: int, init: str = "torch") -> None:
    """Replace the classifier by a new one with ``num_classes`` outputs (trainable)."""
    if not hasattr(model, "reset_classifier"):
        raise ValueError(f"{type(model).__name__} has no reset_classifier(); heartlora needs a timm classifier model")
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    if init not in CLASSIFIER_INITS:
        raise ConfigError(f"option 'classifier_init': got {init!r}; expected one of {', '.join(CLASSIFIER_INITS)}")
    if init == "trunc_normal":
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    for param in head.parameters():
        param.requires_grad_(True)
    state = getattr(model, "heartlora_state", None)
    if state is not None:
        state.num_classes = num_classes


def build(config: RunConfig, device: torch.device) -> Built:
    """Steps 1-4 of the module docstring; returns the model on ``device`` and the task data."""
    from ..data import load_task

    m, d = config.model, config.data
    model = build_backbone(m, d.image_size, config.seed)
    task = load_task(d.kind, d.root, d.task, split=d.split, shots=d.shots, seed=d.fewshot_seed,
                     image_size=d.image_size, normalize=d.normalize, augment=d.augment, num_classes=d.num_classes,
                     check_images=d.check_images, allow_outside_root=d.allow_outside_root, cache=d.cache,
                     cache_memory_mb=d.cache_memory_mb, cache_dir=cache_dir(config), cache_threads=max(1, d.workers))
    try:
        apply(model, config.method.name, **config.method.options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    new_classifier(model, task.num_classes, m.classifier_init)
    model.to(device)
    return Built(model, task, device, task.num_classes)


def method_summary(model: nn.Module) -> dict:
    state = get_state(model)
    return {"name": state.method, "options": dict(state.options), "architecture": state.architecture}


def config_diff(saved: dict, current: dict, ignore: set[str], prefix: str = "") -> list[str]:
    """Differences between two config dicts (dotted keys), skipping ``ignore``."""
    out = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and dotted.count(".") < 1:
            out += config_diff(a, b, ignore, dotted + ".")
        elif a != b:
            out.append(f"{dotted}: {a!r} in the checkpoint, {b!r} now")
    return out


def asdict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def build_from_adapter_folder(path: str | os.PathLike, overrides: BackboneOverrides | None = None, *,
                              load: bool = True, backbone_weights: bool = True,
                              num_classes: int | None = None) -> tuple[nn.Module, FolderBackbone]:
    """The one place that builds a backbone from an adapter folder's record (``backbone.json``) and
    the caller's overrides; ``eval``, ``predict``, ``serve``, ``export``, ``import`` and ``analyze``
    all come here. Returns (model in eval mode, the resolved backbone).

    ``load``: give the model its new classifier and load the adapter (else the headless backbone,
    as serving shares it between adapters). ``backbone_weights=False`` builds it with random
    weights: enough for anything that reads only the adapter's own tensors (the PEFT export).
    ``num_classes`` replaces the adapter's recorded class count (an adapter that records none)."""
    folder = resolve_adapter_dir(path)
    config = read_adapter_config(folder)  # an adapter folder at all, before any backbone is built
    record = read_backbone(folder, required=overrides is None or overrides.model is None)
    backbone = backbone_config(record, overrides, str(folder / BACKBONE_NAME))
    model_cfg = backbone.model
    if backbone_weights:
        check_backbone_weights(backbone)
        model_cfg = dataclasses.replace(model_cfg, weights_sha256=None)  # checked just now, once
    else:
        model_cfg = dataclasses.replace(model_cfg, weights=None, weights_sha256=None, pretrained=False, random_init=True)
    with warnings.catch_warnings():
        if not backbone_weights:
            warnings.simplefilter("ignore", BackboneWarning)  # random on purpose: only the adapter is read
        model = build_backbone(model_cfg, backbone.img_size, backbone.seed)
    if load:
        classes = num_classes or config.get("num_classes")
        if classes:
            new_classifier(model, classes)
        load_adapter(model, folder)
    return model.eval(), backbone
