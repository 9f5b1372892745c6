"""``heartlora eval``: a saved adapter on a task's evaluation split.

The backbone comes from the adapter folder's record (:func:`heartlora.engine.build.build_from_adapter_folder`);
the data settings default to those of the run that wrote the folder (``RUN/run.json`` beside
``RUN/adapter``), so ``heartlora eval --adapter RUN`` evaluates a run as it was trained.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..adapters_io import (
    ADAPTER_DIR,
    BACKBONE_NAME,
    CONFIG_NAME,
    BackboneOverrides,
    backbone_config,
    read_adapter_config,
    read_backbone,
    resolve_adapter_dir,
)
from ..config import ConfigError
from ..data.errors import DataError
from ..data.loader import load_task
from .build import build_from_adapter_folder, resolve_amp, resolve_device
from .loop import evaluate
from .record import read_run_record

__all__ = ["DATA_SETTINGS", "evaluate_adapter"]

#: Data settings ``evaluate_adapter`` takes (the run's own unless given), with their defaults.
DATA_SETTINGS = {"kind": "vtab", "root": None, "task": None, "split": "final", "shots": None, "fewshot_seed": None,
                 "num_classes": None, "image_size": None, "normalize": None, "workers": 0, "check_images": False}


def _run_data(folder: Path) -> dict:
    """The data settings of the run that wrote ``folder`` (when it is ``RUN/adapter``)."""
    if folder.name != ADAPTER_DIR:
        return {}
    run = read_run_record(folder.parent, required=False) or {}
    data = (run.get("config") or {}).get("data")
    return dict(data) if isinstance(data, dict) else {}


def evaluate_adapter(adapter: str | os.PathLike, *, backbone: BackboneOverrides | None = None,
                     data: dict[str, Any] | None = None, batch_size: int = 64, device: str = "auto", amp: str = "auto",
                     progress: bool = False) -> dict:
    """Accuracy (%) of the adapter folder ``adapter`` (or a run folder) on a task's evaluation split.

    ``backbone``: changes to the recorded backbone (its weights are checked by the folder's one
    sha256 rule). ``data``: settings of :data:`DATA_SETTINGS`; when ``root`` is not given, every
    setting not given is the run's own (``run.json`` beside the folder), else the defaults there;
    the image size and normalisation default to the adapter's record. Returns a dict with the
    accuracy, image count, task, split, manifest hash, adapter, method and model."""
    folder = resolve_adapter_dir(adapter)
    adapter_config = read_adapter_config(folder)
    given = {k: v for k, v in (data or {}).items() if v is not None}
    unknown = sorted(set(given) - set(DATA_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown data setting '{unknown[0]}'; expected one of {', '.join(DATA_SETTINGS)}")
    run_data = _run_data(folder) if "root" not in given else {}
    settings = {k: given.get(k, run_data.get(k, default)) for k, default in DATA_SETTINGS.items()}
    if "check_images" not in given:
        settings["check_images"] = False  # the run checked its images; evaluation decodes them anyway
    if settings["root"] is None:
        raise ConfigError("option '--data': required (the data root; no run.json beside the adapter to take it from)")

    overrides = _with_image_size(backbone, settings["image_size"])
    record = read_backbone(folder, required=overrides is None or overrides.model is None)
    resolved = backbone_config(record, overrides, str(folder / BACKBONE_NAME))
    settings["image_size"] = settings["image_size"] or resolved.img_size
    settings["normalize"] = settings["normalize"] or resolved.normalize
    recorded_kwargs = resolved.record.get("kwargs") or {}
    trained = {"image size": resolved.record.get("img_size"), "patch size": recorded_kwargs.get("patch_size")}
    now = {"image size": settings["image_size"], "patch size": resolved.model.kwargs.get("patch_size")}
    changed = [f"{k} {trained[k]} → {now[k]}" for k in trained if trained[k] is not None and trained[k] != now[k]]
    if changed:
        warnings.warn(f"{folder / BACKBONE_NAME}: the adapter was trained at another input geometry ({'; '.join(changed)}); "
                      "accuracy will not match the run", stacklevel=2)
    task = load_task(settings["kind"], settings["root"], settings["task"], split=settings["split"], shots=settings["shots"],
                     seed=settings["fewshot_seed"], image_size=settings["image_size"], normalize=settings["normalize"],
                     num_classes=settings["num_classes"], check_images=settings["check_images"])
    classes = adapter_config.get("num_classes")
    if classes is not None and classes != task.num_classes:
        raise DataError(f"{folder / CONFIG_NAME}: the adapter's classifier has {classes} classes, but {settings['kind']} "
                        f"task '{task.name}' has {task.num_classes}")
    model, _ = build_from_adapter_folder(folder, overrides, num_classes=classes or task.num_classes)
    torch_device = resolve_device(device)
    model.to(torch_device)
    with torch.no_grad():
        accuracy = evaluate(model, task.eval, batch_size, device=torch_device, workers=settings["workers"],
                            amp=resolve_amp(amp, torch_device).enabled, progress=progress)
    return {"accuracy": accuracy, "eval_images": len(task.eval), "task": task.name, "split": settings["split"],
            "eval_split": task.manifest.get("eval_split"), "manifest_hash": task.manifest_hash, "adapter": str(folder),
            "method": adapter_config.get("method"), "model": resolved.model.name}


def _with_image_size(backbone: BackboneOverrides | None, image_size: int | None) -> BackboneOverrides | None:
    if image_size is None:
        return backbone
    import dataclasses

    return dataclasses.replace(backbone or BackboneOverrides(), img_size=image_size)
