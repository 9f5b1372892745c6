"""The serving backbone rebuilt from an adapter's backbone.json (timm name, kwargs, local weights
checked against their sha256, image size, seed of a randomly initialised backbone)."""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..adapters_io import read_adapter_config
from ..config import ModelConfig
from ..engine.build import build_backbone
from ..engine.loop import BACKBONE_NAME
from .adapters import read_json_file, resolve_adapter_dir


def backbone_from_adapter(directory: str | os.PathLike, weights: str | os.PathLike | None = None
                          ) -> tuple[nn.Module, dict, str]:
    """(headless backbone, its backbone.json record, the record's path). ``weights`` replaces the
    recorded weights path (e.g. the file moved); its sha256 must still be the recorded one."""
    directory = resolve_adapter_dir(directory)
    read_adapter_config(directory)  # an adapter folder at all, before any backbone is built
    path = directory / BACKBONE_NAME
    record = read_json_file(Path(path))
    if record is None:
        raise FileNotFoundError(f"{path}: no backbone record (written by heartlora train); build the backbone "
                                "yourself and pass it to MultiTask(backbone, tasks)")
    if not record.get("model") or not record.get("img_size"):
        raise ValueError(f"{path}: expected keys 'model' and 'img_size'")
    config = ModelConfig(name=record["model"], weights=str(weights) if weights else record.get("weights"),
                         weights_sha256=record.get("weights_sha256"), kwargs=dict(record.get("kwargs") or {}),
                         drop_path=0.0)
    backbone = build_backbone(config, int(record["img_size"]), int(record.get("seed", 42)))
    return backbone.eval(), record, str(path)
