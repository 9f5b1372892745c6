"""A trained adapter as a plain timm checkpoint: merged, unwrapped, keys exactly timm's.

``export_merged(model, "model.safetensors")`` writes the merged state dict and, beside it,
``model.json``: the timm name and ``create_model`` arguments, the class names, and the
``pretrained_cfg_overlay`` with which timm's own loader reads the file::

    meta = json.load(open("model.json"))
    model = timm.create_model(meta["model"], pretrained=True,
                              pretrained_cfg_overlay={**meta["pretrained_cfg_overlay"], "file": "model.safetensors"},
                              **meta["kwargs"])

The overlay also carries the preprocessing the adapter was trained with (input size, mean and
std of the run's ``normalize``, bicubic resize without crop), so ``timm.data.resolve_data_config``
gives it. Only methods that merge can be exported (``heartlora.methods()`` says which).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import timm
from torch import nn

from ..adapters_io import merge_and_unload
from ..data.transforms import NORMALIZATIONS
from ..fsio import atomic_write
from ..methods.factory import get_state
from ..models import hub_offline, sha256_file
from ..tensorfile import safetensors_bytes

__all__ = ["MERGED_FORMAT", "export_merged", "load_merged", "merged_json_path"]

MERGED_FORMAT = "heartlora-merged"
MERGED_FORMAT_VERSION = 1


def merged_json_path(path: str | os.PathLike) -> Path:
    """The JSON written beside a merged checkpoint: same name, ``.json``."""
    return Path(path).with_suffix(".json")


def _overlay(file_name: str, num_classes: int, img_size: int | None, normalize: str) -> dict:
    mean_std = NORMALIZATIONS[normalize] or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    overlay = {"file": file_name, "num_classes": num_classes, "custom_load": False,  # custom_load: ViT's .npz reader
               "mean": list(mean_std[0]), "std": list(mean_std[1]), "interpolation": "bicubic", "crop_pct": 1.0}
    if img_size:
        overlay["input_size"] = [3, img_size, img_size]
    return overlay


def export_merged(model: nn.Module, path: str | os.PathLike, *, name: str, kwargs: dict | None = None,
                  img_size: int | None = None, normalize: str = "none", class_names: list[str] | None = None,
                  source: str | None = None) -> tuple[Path, Path]:
    """Write the merged plain-timm state dict of ``model`` (left unchanged) to ``path`` and its
    description to :func:`merged_json_path`; returns both paths.

    ``name`` and ``kwargs`` are the timm name and ``create_model`` arguments of the backbone
    (``img_size`` and the classifier's class count are added). Raises ``ValueError`` for methods
    that cannot merge."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the merged checkpoint is written as .safetensors; name it so")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    method = get_state(model).method
    plain = merge_and_unload(copy.deepcopy(model))
    state = {k: v.detach().contiguous().cpu() for k, v in plain.state_dict().items()}
    num_classes = getattr(plain, "num_classes", None)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a classifier of {num_classes} classes")
    create_kwargs = {**(kwargs or {}), "num_classes": num_classes}
    if img_size:
        create_kwargs["img_size"] = img_size
    description = {
        "format": MERGED_FORMAT, "format_version": MERGED_FORMAT_VERSION,
        "model": name, "kwargs": create_kwargs, "num_classes": num_classes, "class_names": class_names,
        "pretrained_cfg_overlay": _overlay(path.name, num_classes, img_size, normalize),
        "normalize": normalize, "method": method, "source": source,
    }
    metadata = {"format": "pt", "heartlora": json.dumps({k: description[k] for k in ("model", "method", "num_classes")})}
    atomic_write(path, safetensors_bytes(state, metadata=metadata))
    description["sha256"] = sha256_file(path)
    json_path = merged_json_path(path)
    atomic_write(json_path, (json.dumps(description, indent=2) + "\n").encode("utf-8"))
    return path, json_path


def load_merged(json_path: str | os.PathLike) -> nn.Module:
    """The exported model through timm's own loader (``pretrained=True`` with the file as the
    pretrained source, strict), offline."""
    json_path = Path(json_path)
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    if meta.get("format") != MERGED_FORMAT:
        raise ValueError(f"{json_path}: not a heartlora merged-checkpoint description (format {meta.get('format')!r})")
    overlay = {**meta["pretrained_cfg_overlay"]}
    overlay["file"] = str(json_path.parent / overlay["file"])
    with hub_offline():
        return timm.create_model(meta["model"], pretrained=True, pretrained_cfg_overlay=overlay, **meta["kwargs"])


def export_adapter_merged(adapter: str | os.PathLike, out: str | os.PathLike, *, weights: str | None = None,
                          overwrite: bool = False) -> tuple[Path, Path, str]:
    """``heartlora export --merged``: the adapter folder ``adapter`` (or a run folder) folded into
    its backbone, written by :func:`export_merged` to ``out`` (``.safetensors``) and its JSON.
    ``weights``: where the recorded backbone weights are now (their sha256 must be the recorded
    one). Returns (checkpoint, JSON, method)."""
    from ..adapters_io import BackboneOverrides, read_adapter_config, resolve_adapter_dir
    from ..config import ConfigError
    from ..engine.build import build_from_adapter_folder
    from ..methods.base import get_method

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"option '--merged': {out} must end in .safetensors")
    folder = resolve_adapter_dir(adapter)
    method = read_adapter_config(folder)["method"]
    try:
        mergeable = get_method(method).mergeable
    except ValueError as err:
        raise ValueError(f"{folder / 'adapter_config.json'}: {err}") from None
    if not mergeable:
        raise ConfigError(f"option '--merged': method '{method}' cannot be merged into the backbone (it adds "
                          "computation a plain timm model has no weights for); use it with heartlora itself")
    existing = [p for p in (out, merged_json_path(out)) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"option '--merged': {existing[0]} already exists; choose another path or pass --overwrite")
    model, backbone = build_from_adapter_folder(folder, BackboneOverrides(weights=weights) if weights else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = export_merged(model, out, name=backbone.model.name, kwargs=backbone.model.kwargs, img_size=backbone.img_size,
                            normalize=backbone.normalize, class_names=backbone.record.get("class_names"),
                            source=str(folder))
    return written[0], written[1], method
