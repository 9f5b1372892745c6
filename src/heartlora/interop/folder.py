"""A trained adapter folder (``RUN/adapter``) back as a model: the backbone ``backbone.json``
describes, its new classifier, and the adapter loaded onto it.

Export and import start here: the merged checkpoint needs the backbone's real weights; the PEFT
export needs only the adapter's tensors, so it may build the backbone with random weights.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from torch import nn

from ..adapters_io import CONFIG_NAME, AdapterError, load_adapter, read_adapter_config, read_json_object
from ..config import ModelConfig
from ..engine.build import build_backbone, new_classifier
from ..engine.loop import ADAPTER_DIR, BACKBONE_NAME
from ..models import BackboneWarning, WeightsError, sha256_file

__all__ = ["load_adapter_folder", "read_backbone", "resolve_adapter_dir"]


def resolve_adapter_dir(path: str | os.PathLike) -> Path:
    """The adapter folder itself, or a run folder holding ``adapter/``."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() and (path / ADAPTER_DIR / CONFIG_NAME).is_file():
        return path / ADAPTER_DIR
    return path


def read_backbone(adapter_dir: str | os.PathLike) -> dict:
    """``backbone.json`` beside the adapter (timm name, kwargs, weights, image size, …), checked."""
    path = Path(adapter_dir) / BACKBONE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no backbone description (heartlora train writes it beside the adapter; "
                                "it names the timm model the adapter belongs to)")
    backbone = read_json_object(path, "the backbone description heartlora train writes")
    checks = (("model", lambda v: isinstance(v, str) and bool(v), "a timm model name"),
              ("kwargs", lambda v: v is None or isinstance(v, dict), "null or a JSON object"),
              ("img_size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "an image size in pixels"),
              ("weights", lambda v: v is None or isinstance(v, str), "null or a file path"))
    for key, ok, expected in checks:
        if not ok(backbone.get(key)):
            raise AdapterError(f"{path}: key '{key}' is {json.dumps(backbone.get(key))}; expected {expected}")
    return backbone


def _check_same_weights(weights: str, backbone: dict, source: Path) -> None:
    expected = backbone.get("weights_sha256")
    if expected and Path(weights).is_file():
        actual = sha256_file(weights)
        if actual != expected:
            raise WeightsError(f"{weights}: sha256 {actual} differs from that of the weights the adapter was trained "
                               f"on ({expected}, {source}); folded onto other weights it would be another model")


def load_adapter_folder(path: str | os.PathLike, *, weights: str | None = None,
                        backbone_weights: bool = True) -> tuple[nn.Module, dict]:
    """(model in eval mode with the adapter loaded, backbone description) of an adapter folder.

    ``weights`` overrides the file recorded in ``backbone.json`` (it must have the recorded
    sha256). ``backbone_weights=False`` builds the backbone with random weights: enough for
    anything that reads only the adapter's own tensors (the PEFT export)."""
    adapter = resolve_adapter_dir(path)
    config = read_adapter_config(adapter)
    backbone = read_backbone(adapter)
    kwargs = dict(backbone.get("kwargs") or {})
    if backbone_weights:
        weights = weights or backbone.get("weights")
        if weights:
            _check_same_weights(weights, backbone, adapter / BACKBONE_NAME)
        model_cfg = ModelConfig(name=backbone["model"], weights=weights, kwargs=kwargs, drop_path=0.0,
                                pretrained=bool(backbone.get("pretrained")) and not weights,
                                random_init=bool(backbone.get("random_init")) and not weights)
    else:
        model_cfg = ModelConfig(name=backbone["model"], kwargs=kwargs, drop_path=0.0, random_init=True)
    with warnings.catch_warnings():
        if not backbone_weights:
            warnings.simplefilter("ignore", BackboneWarning)  # random on purpose: only the adapter is read
        model = build_backbone(model_cfg, backbone["img_size"], backbone.get("seed", 42))
    if config.get("num_classes"):
        new_classifier(model, config["num_classes"])
    load_adapter(model, adapter)
    return model.eval(), backbone
