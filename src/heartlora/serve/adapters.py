"""One task adapter, read for serving: its effective low-rank factors per attention block, its
classifier, class names and input settings, and the backbone it was trained on.

The factors come from the normal ``load_adapter`` path, so they are exactly what the adapter
computes alone: the adapter is loaded into a *shell* of the serving backbone (a copy of its
module tree that shares every weight tensor, with the original ``qkv`` Linears back in place),
and ``LowRankQKV.effective_A`` / ``full_B`` are read off it (dequantised, scale folded in,
switched-off head rows exactly zero). The shell is then dropped; no backbone weight is copied.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..adapters_io import (
    ADAPTER_DIR,
    BACKBONE_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_adapter,
    read_adapter_config,
    read_backbone,
    resolve_adapter_dir,
)
from ..engine.build import new_classifier
from ..engine.record import read_run_record
from ..heads import check_geometry, find_attention_sites
from ..methods.base import adapter_layers, registered
from ..methods.lowrank import LowRankQKV

# backbone.json keys that must agree for two adapters to share one backbone
SAME_BACKBONE_KEYS = ("model", "kwargs", "weights_sha256", "img_size")


class ServeWarning(UserWarning):
    """Something a served task lacks that changes what users see (e.g. no class names)."""


@dataclass
class TaskAdapter:
    """What one task contributes to a :class:`~heartlora.serve.multitask.MultiTask` model. The
    tensors are released (``released()``) once the model has stacked them."""

    name: str
    directory: Path
    method: str
    num_classes: int
    width: int  # columns of the low-rank bottleneck (n_targets · rank; 0 for a linear probe)
    down: list[torch.Tensor]  # per attention block: (n_targets·r, d), the effective A
    up: list[torch.Tensor]  # per attention block: (3·H·d_h, n_targets·r), scale folded in, masked rows zero
    classifier_weight: torch.Tensor | None  # (C, D)
    classifier_bias: torch.Tensor | None  # (C,)
    class_names: list[str]
    class_names_source: str
    backbone: dict | None = None  # backbone.json, when the adapter has one
    normalize: str = "none"
    img_size: int | None = None
    options: dict = field(default_factory=dict)
    head_masks: list[list[bool]] | None = None

    def released(self) -> "TaskAdapter":
        return dataclasses.replace(self, down=[], up=[], classifier_weight=None, classifier_bias=None)

    def heads_switched_off(self) -> int:
        return sum(not on for mask in self.head_masks or [] for on in mask)

    def describe(self) -> dict:
        return {"name": self.name, "method": self.method, "num_classes": self.num_classes,
                "rank": self.options.get("rank"), "targets": list(self.options.get("targets") or []),
                "bits": self.options.get("bits"), "heads_switched_off": self.heads_switched_off(),
                "img_size": self.img_size, "normalize": self.normalize, "class_names_source": self.class_names_source,
                "adapter": str(self.directory)}


def default_task_name(directory: str | os.PathLike) -> str:
    """A task's name from its folder: the run folder's name for ``RUN/adapter``."""
    path = resolve_adapter_dir(directory).resolve()
    name = path.parent.name if path.name == ADAPTER_DIR else path.name
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "-", name).lstrip("-_.")[:128]
    return cleaned or "task"


def backbone_mismatch(reference: dict, record: dict) -> str | None:
    """Why two backbone.json records describe different backbones, or ``None``."""
    keys = list(SAME_BACKBONE_KEYS)
    if not reference.get("weights_sha256") and not record.get("weights_sha256"):
        keys.append("seed")  # randomly initialised backbones are equal only at equal seeds
    for key in keys:
        if reference.get(key) != record.get(key):
            return f"{key}={record.get(key)!r}, the served backbone has {key}={reference.get(key)!r}"
    return None


def check_same_backbone(reference: dict | None, reference_source: str, directory: Path) -> None:
    """Refuse an adapter whose backbone.json names another backbone than ``reference``."""
    record = read_backbone(directory, required=False)
    if reference is None or record is None:
        return
    problem = backbone_mismatch(reference, record)
    if problem:
        raise ValueError(f"{directory / BACKBONE_NAME}: this adapter was trained on another backbone ({problem}; "
                         f"from {reference_source}); serve it with its own backbone")


def _shell(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone``'s module tree sharing every parameter and buffer, with each wrapped
    ``qkv`` replaced by the Linear it wraps, ready for ``load_adapter``."""
    memo: dict[int, object] = {id(t): t for t in (*backbone.parameters(), *backbone.buffers())}
    for site in find_attention_sites(backbone):
        qkv = backbone.get_submodule(site.qkv_name)
        if not isinstance(qkv, nn.Linear):
            memo[id(qkv)] = qkv.base  # find_attention_sites accepts only wrappers exposing the Linear as .base
    return copy.deepcopy(backbone, memo)


def _classifier_count(config: dict, directory: Path) -> int:
    count = config.get("num_classes")
    if isinstance(count, int) and count > 0:
        return count
    from safetensors import safe_open

    names = [n for n in config.get("classifier") or [] if n.endswith("weight")]
    weights = directory / WEIGHTS_NAME
    if names and weights.is_file():
        with safe_open(str(weights), "pt") as handle:
            if names[0] in handle.keys():
                return int(handle.get_slice(names[0]).get_shape()[0])
    raise ValueError(f"{directory / CONFIG_NAME}: no 'num_classes' and no classifier weight to read it from")


def class_names(directory: Path, count: int) -> tuple[list[str], str]:
    """(names, where they came from): backbone.json's ``class_names``, else the run's task folder
    (``classes.txt`` of a VTAB-layout task, the class folders of an ImageFolder task), else the
    label indices."""
    record = read_backbone(directory, required=False) or {}
    names = record.get("class_names")
    if isinstance(names, list) and len(names) == count:
        return [str(n) for n in names], str(directory / BACKBONE_NAME)
    found = _task_folder_names(directory, count)
    if found is not None:
        return found
    warnings.warn(f"{directory}: no class names (none in {BACKBONE_NAME}, none in the run's task folder); "
                  "labels are shown as indices", ServeWarning, stacklevel=3)
    return [str(i) for i in range(count)], "label indices"


def _task_folder_names(directory: Path, count: int) -> tuple[list[str], str] | None:
    from ..data.errors import DataError
    from ..data.loader import locate
    from ..data.vtab import CLASSES_FILE

    run = read_run_record(directory.parent, required=False) or {}
    data = (run.get("config") or {}).get("data") or {}
    if not data.get("root"):
        return None
    try:
        layout = locate(data.get("kind", "vtab"), data["root"], data.get("task"), data.get("shots"),
                        data.get("fewshot_seed"))
    except (DataError, OSError):
        return None
    if layout.classes and len(layout.classes) == count:
        return list(layout.classes), f"class folders of {layout.directory}"
    listed = layout.directory / CLASSES_FILE
    if listed.is_file():
        names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) == count:
            return names, str(listed)
    return None


@torch.no_grad()
def load_task_adapter(backbone: nn.Module, name: str, directory: str | os.PathLike) -> TaskAdapter:
    """Read one adapter folder for serving on ``backbone`` (which is left unchanged).

    Refuses, naming the file: methods outside the low-rank family (and linear probes), adapters
    made for another head geometry, and adapters whose files do not load.
    """
    directory = resolve_adapter_dir(directory)
    config = read_adapter_config(directory)
    source = str(directory / CONFIG_NAME)
    method = config["method"]
    spec = registered().get(method)
    if spec is None or not spec.servable:
        servable = sorted(name for name, s in registered().items() if s.servable)
        raise ValueError(f"{source}: method '{method}' cannot share a frozen backbone with other tasks (it changes "
                         f"the backbone's own computation); servable methods: {', '.join(servable)}")
    check_geometry(config["geometry"], backbone, source)
    shell = _shell(backbone)
    with torch.random.fork_rng(devices=[]):  # the throwaway classifier's init must not move the caller's RNG
        new_classifier(shell, _classifier_count(config, directory))
    load_adapter(shell, directory)
    head = shell.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{source}: the classifier is a {type(head).__name__}; serving needs a Linear classifier")
    layers = adapter_layers(shell)
    strange = [n for n, layer in layers.items() if not isinstance(layer, LowRankQKV)]
    owned = {id(p) for layer in layers.values() for p in layer.adapter_parameters()} | {id(p) for p in head.parameters()}
    extra = [n for n, p in shell.named_parameters() if p.requires_grad and id(p) not in owned]
    if strange or extra:
        raise ValueError(f"{source}: the adapter changes {(strange + extra)[0]}, which a shared backbone cannot hold")
    down, up = [], []
    for site in find_attention_sites(shell):
        layer = shell.get_submodule(site.qkv_name)
        if isinstance(layer, LowRankQKV):
            down.append(layer.effective_A().detach().float().clone())
            up.append(layer.full_B(layer.effective_B()).detach().float().clone())
    if down and len(down) != len(find_attention_sites(shell)):
        raise ValueError(f"{source}: the adapter covers {len(down)} of the backbone's attention blocks; expected all")
    names, names_source = class_names(directory, head.out_features)
    record = read_backbone(directory, required=False)
    bias = head.bias.detach().float().clone() if head.bias is not None else torch.zeros(head.out_features)
    return TaskAdapter(
        name=name, directory=directory, method=method, num_classes=head.out_features,
        width=int(down[0].shape[0]) if down else 0, down=down, up=up,
        classifier_weight=head.weight.detach().float().clone(), classifier_bias=bias,
        class_names=names, class_names_source=names_source, backbone=record,
        normalize=(record or {}).get("normalize") or "none", img_size=(record or {}).get("img_size"),
        options=dict(config["options"]), head_masks=config.get("head_masks"),
    )


def name_tasks(adapters: list[str], named: list[tuple[str, str]]) -> dict[str, str]:
    """Task name → adapter folder, from folders named after their run (``--adapter DIR``) and
    explicitly named ones (``--task NAME=DIR``); a name given twice is a usage error."""
    from ..config import ConfigError

    tasks: dict[str, str] = {}
    for name, directory in [(default_task_name(d), d) for d in adapters] + list(named):
        if name in tasks:
            raise ConfigError(f"option '--task': task name {name!r} is given twice (name them with --task NAME=DIR)")
        tasks[name] = directory
    if not tasks:
        raise ConfigError("option '--adapter' or '--task NAME=DIR': give at least one adapter")
    return tasks
