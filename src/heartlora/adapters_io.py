"""The adapter folder, its one owner: save, load, merge and measure adapters, generically over
methods; the folder's file names; locating it from a run folder; and its backbone record.

An adapter folder holds ``adapter.safetensors`` (exactly the stored tensors),
``adapter_config.json`` (method, resolved options, head geometry, head masks, scores) and, when a
run or an import wrote it, ``backbone.json`` (how to rebuild the backbone it was trained on: timm
name, kwargs, weights and their sha256, image size, seed, normalisation, class names). Adapter
layers store their own tensors (packed when quantised); every other trainable parameter (the
classifier, BitFit's biases, …) is stored as is under its parameter name.

Every command that reads a folder (``eval``, ``predict``, ``serve``, ``export``, ``import``,
``analyze``) and the engine that writes one go through this module: :func:`resolve_adapter_dir`
finds it, :func:`read_backbone` reads its record, and :func:`backbone_config` turns that record
plus the caller's overrides into the backbone's configuration, with one rule for the weights'
sha256 (:func:`check_backbone_weights`). Building the model from it is
:func:`heartlora.engine.build.build_from_adapter_folder`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .version import __version__
from . import fsio
from .fsio import atomic_write
from .tensorfile import safetensors_bytes
from .heads import check_geometry
from .methods.base import adapter_layers, classifier_parameter_names, get_method, replace_module
from .methods.factory import STATE_ATTR, apply, get_state
from .methods.responsiveness import apply_head_selection

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
BACKBONE_NAME = "backbone.json"  # beside adapter_config.json: how to rebuild the backbone
ADAPTER_DIR = "adapter"  # a run folder's adapter folder: RUN/adapter
#: Every file an adapter folder written by heartlora holds.
ADAPTER_FILES = (WEIGHTS_NAME, CONFIG_NAME, BACKBONE_NAME)
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter folder that cannot be used: unreadable, malformed, or for another backbone."""


def _owned_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for layer in adapter_layers(model).values() for p in layer.adapter_parameters()}


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the tensors an adapter file stores, keyed by name."""
    get_state(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        for key, value in layer.stored_tensors().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    owned = _owned_parameter_ids(model)
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in owned:
            tensors[name] = param.detach().contiguous().cpu().clone()
    return tensors


def adapter_bytes(model: nn.Module, include_classifier: bool = True) -> int:
    """Bytes of stored tensor data (the file adds only a small JSON header)."""
    classifier = set(classifier_parameter_names(model))
    return sum(
        t.numel() * t.element_size()
        for name, t in adapter_tensors(model).items()
        if include_classifier or name not in classifier
    )


def trainable_parameters(model: nn.Module, include_classifier: bool = True) -> int:
    classifier = set(classifier_parameter_names(model))
    return sum(
        p.numel() for n, p in model.named_parameters()
        if p.requires_grad and (include_classifier or n not in classifier)
    )


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    state = get_state(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(model)
    config = {
        "format_version": FORMAT_VERSION,
        "heartlora_version": __version__,
        **state.to_dict(),
        "classifier": classifier_parameter_names(model),
        "adapter_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "adapter_bytes_without_classifier": adapter_bytes(model, include_classifier=False),
        "trainable_parameters": trainable_parameters(model),
    }
    atomic_write(directory / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"method": state.method}))
    atomic_write(directory / CONFIG_NAME, json.dumps(config, indent=2).encode("utf-8"))
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """``adapter_config.json`` of an adapter folder, checked: every key the loader uses has the
    type it needs, and ``format_version`` is one this heartlora reads (else :class:`AdapterError`)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config (expected {CONFIG_NAME} from heartlora.save_adapter)")
    config = read_json_object(path, "the JSON written by heartlora.save_adapter")
    _check_config(config, path)
    return config


def read_json_object(path: Path, expected: str) -> dict:
    """The JSON object in ``path``; an :class:`AdapterError` naming the file (and line) otherwise."""
    return fsio.read_json_object(path, expected, AdapterError)


def _is_int(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_config(config: dict, path: Path) -> None:
    for key in ("format_version", "method", "options", "geometry"):
        if key not in config:
            raise AdapterError(f"{path}: missing key '{key}'")

    def expect(key: str, ok: bool, expected: str) -> None:
        if not ok:
            raise AdapterError(f"{path}: key '{key}' is {json.dumps(config.get(key))[:80]}; expected {expected}")

    version = config["format_version"]
    expect("format_version", _is_int(version, 1), f"an integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise AdapterError(f"{path}: adapter format_version {version} is newer than this heartlora "
                           f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade heartlora")
    expect("method", isinstance(config["method"], str) and bool(config["method"]), "a method name")
    expect("options", isinstance(config["options"], dict), "a JSON object of method options")
    geometry = config["geometry"]
    site_keys = {"layer": 0, "in_dim": 1, "num_heads": 1, "head_dim": 1}
    expect("geometry", isinstance(geometry, list) and bool(geometry) and all(
        isinstance(g, dict) and isinstance(g.get("name"), str) and all(_is_int(g.get(k), m) for k, m in site_keys.items())
        for g in geometry), "a list of attention blocks {layer, name, in_dim, num_heads, head_dim}")
    heads = [g["num_heads"] for g in geometry]
    for key, item_ok, what in (("head_masks", lambda v: isinstance(v, bool), "true/false"),
                               ("scores", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "numbers")):
        value = config.get(key)
        expect(key, value is None or (isinstance(value, list) and len(value) == len(heads) and all(
            isinstance(row, list) and len(row) == h and all(item_ok(v) for v in row) for row, h in zip(value, heads))),
            f"null or one list of {what} per attention block (heads per block: {heads})")
    expect("selection", config.get("selection") is None or isinstance(config["selection"], dict), "null or a JSON object")
    expect("num_classes", config.get("num_classes") is None or _is_int(config["num_classes"]), "null or a class count")


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load an adapter into a fresh backbone of the same geometry (in place; returns the model)."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    source = str(directory / CONFIG_NAME)
    check_geometry(config["geometry"], model, source)
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError("load_adapter expects a backbone without a method applied")
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: adapter weights missing")
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors' own error: truncated, empty, or another format
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({err}); truncated, or not written "
                           "by heartlora.save_adapter?") from None
    try:
        apply(model, config["method"], **config["options"])
        if config.get("head_masks"):
            apply_head_selection(model, [torch.tensor(m) for m in config["head_masks"]])
    except ValueError as err:
        raise AdapterError(f"{source}: {err}") from None
    state = get_state(model)
    state.scores = config.get("scores")
    state.selection = config.get("selection") or {}

    remaining = dict(tensors)
    params = dict(model.named_parameters())
    owned = _owned_parameter_ids(model)
    plain = {n for n, p in params.items() if id(p) not in owned}
    for name, layer in adapter_layers(model).items():
        prefix = name + "."
        own = {k[len(prefix):]: remaining.pop(k) for k in list(remaining) if k.startswith(prefix) and k not in plain}
        layer.load_stored_tensors(own, str(weights_path))
    for name, value in list(remaining.items()):
        param = params.get(name)
        if param is None or id(param) in owned:
            raise AdapterError(f"{weights_path}: tensor '{name}' does not belong to this model")
        if param.shape != value.shape:
            raise AdapterError(
                f"{weights_path}: '{name}' has shape {tuple(value.shape)}, the model's is "
                f"{tuple(param.shape)} (wrong number of classes or another backbone?)"
            )
        with torch.no_grad():
            param.copy_(value)
        remaining.pop(name)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned and n not in tensors]
    if missing:
        raise AdapterError(f"{weights_path}: missing trainable tensors {missing[:5]}")
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter layer into the backbone's weights (inference at backbone cost)."""
    layers = adapter_layers(model)
    for name, layer in layers.items():
        if not layer.mergeable:
            raise ValueError(f"method '{get_state(model).method}' cannot be merged ({name})")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    for layer in adapter_layers(model).values():
        if layer.mergeable:
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the method into the backbone's weights and remove every heartlora wrapper, in place
    (PEFT's ``merge_and_unload``): the result is a plain timm model whose ``state_dict`` has
    exactly timm's keys, all parameters trainable as timm builds them. Irreversible.

    Raises ``ValueError`` for methods that add computation a timm model has no weights for
    (prompts, bottleneck adapters, NOAH)."""
    state = get_state(model)
    layers = adapter_layers(model)
    blocked = sorted({type(layer).__name__ for layer in layers.values()
                      if not layer.mergeable or not isinstance(getattr(layer, "base", None), nn.Module)})
    if not get_method(state.method).mergeable or blocked:
        raise ValueError(
            f"method '{state.method}' cannot be merged into the backbone: its layers ({', '.join(blocked) or 'none'}) "
            "compute what a plain timm model has no weights for; use the adapter through heartlora "
            "(load_adapter) instead"
        )
    for name, layer in layers.items():
        layer.merge()
        replace_module(model, name, layer.base)
    delattr(model, STATE_ATTR)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


# ------------------------------------------------------------------------- the adapter folder
def resolve_adapter_dir(path: str | os.PathLike) -> Path:
    """The adapter folder ``path`` names: ``path/adapter`` when ``path`` is a run folder (it holds
    ``adapter/adapter_config.json``; that wins even if someone wrote other adapter files into the
    run folder itself), else ``path`` itself, which must hold ``adapter_config.json``."""
    path = Path(path)
    if (path / ADAPTER_DIR / CONFIG_NAME).is_file():
        return path / ADAPTER_DIR
    if (path / CONFIG_NAME).is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: adapter folder not found (expected a folder holding {CONFIG_NAME}, or a run "
                                f"folder holding {ADAPTER_DIR}/{CONFIG_NAME})")
    raise FileNotFoundError(f"{path}: not an adapter folder (no {CONFIG_NAME}, and no {ADAPTER_DIR}/{CONFIG_NAME} of a "
                            "run); expected the folder heartlora train or heartlora import wrote")


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an adapter folder or a run folder holding one."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() or (path / ADAPTER_DIR / CONFIG_NAME).is_file()


def refuse_run_folder(path: str | os.PathLike, option: str) -> None:
    """Writers of adapter files (``import --out``, ``export --to peft``) never write into a run folder:
    its own adapter is ``RUN/adapter`` and a second one beside it would be mistaken for it."""
    from .config import ConfigError

    path = Path(path)
    if (path / ADAPTER_DIR / CONFIG_NAME).is_file():
        raise ConfigError(f"option '{option}': {path} is a run folder (its adapter is {path / ADAPTER_DIR}); "
                          "write into a new folder instead")


def _backbone_checks() -> tuple:
    def is_int(v, minimum=0):
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    return (("model", lambda v: isinstance(v, str) and bool(v), "a timm model name"),
            ("kwargs", lambda v: v is None or isinstance(v, dict), "null or a JSON object"),
            ("img_size", lambda v: is_int(v, 1), "an image size in pixels"),
            ("weights", lambda v: v is None or isinstance(v, str), "null or a file path"),
            ("weights_sha256", lambda v: v is None or (isinstance(v, str) and len(v) == 64), "null or 64 hex digits"),
            ("seed", lambda v: v is None or is_int(v), "null or a seed >= 0"),
            ("pretrained", lambda v: v is None or isinstance(v, bool), "true or false"),
            ("random_init", lambda v: v is None or isinstance(v, bool), "true or false"),
            ("normalize", lambda v: v is None or isinstance(v, str), "null or a normalisation name"),
            ("class_names", lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
             "null or a list of class names"))


def read_backbone(adapter_dir: str | os.PathLike, required: bool = True) -> dict | None:
    """``backbone.json`` of an adapter folder, every key checked (:class:`AdapterError` naming the
    key otherwise); ``None`` when it is missing and not ``required``."""
    path = Path(adapter_dir) / BACKBONE_NAME
    if not path.is_file():
        if not required:
            return None
        raise FileNotFoundError(f"{path}: no backbone description (heartlora train and heartlora import write it beside "
                                "the adapter; it names the timm model the adapter belongs to)")
    record = read_json_object(path, "the backbone description heartlora train writes")
    for key, ok, expected in _backbone_checks():
        if not ok(record.get(key)):
            raise AdapterError(f"{path}: key '{key}' is {json.dumps(record.get(key))[:80]}; expected {expected}")
    return record


def backbone_record(*, model: str, weights: str | None, weights_sha256: str | None, kwargs: dict, img_size: int,
                    seed: int, drop_path: float, normalize: str, class_names: list[str] | None, pretrained: bool,
                    random_init: bool, **extra) -> dict:
    """The ``backbone.json`` of an adapter folder (the engine's and the importer's one spelling)."""
    return {"model": model, "weights": weights, "weights_sha256": weights_sha256, "kwargs": dict(kwargs or {}),
            "img_size": int(img_size), "seed": int(seed), "drop_path": drop_path, "normalize": normalize,
            "class_names": class_names, "pretrained": bool(pretrained), "random_init": bool(random_init), **extra}


def install_adapter_folder(model: nn.Module, folder: str | os.PathLike, backbone: dict) -> Path:
    """Write the adapter folder ``folder`` as a whole (adapter files and ``backbone.json``): into a
    fresh private folder beside it, then renamed into place. An existing folder is replaced only if
    it holds nothing but adapter files; anything else in it is never deleted (:class:`OutputError`)."""
    import shutil
    import tempfile

    from .fsio import OutputError, umask

    final = Path(folder)
    parent = final.parent
    foreign = sorted(p.name for p in final.iterdir() if p.name not in ADAPTER_FILES) if final.is_dir() else []
    if foreign or (final.exists() and not final.is_dir()):
        raise OutputError(f"{final}: exists and holds files this run did not write ({', '.join(foreign) or final.name}); "
                          "move them away, or choose another --out")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}."))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the installed folder gets the usual mode
    try:
        save_adapter(model, tmp)
        atomic_write(tmp / BACKBONE_NAME, (json.dumps(backbone, indent=2, default=str) + "\n").encode("utf-8"))
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.old."))
            final.rename(old / final.name)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclasses.dataclass
class BackboneOverrides:
    """What a caller may change about the backbone an adapter folder records (``None``: keep the
    record's). Giving any of ``weights`` / ``pretrained`` / ``random_init`` replaces the record's
    choice of weights as a whole; ``kwargs`` update the record's (for the same model)."""

    model: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    pretrained: bool | None = None
    random_init: bool | None = None
    kwargs: dict | None = None
    seed: int | None = None
    img_size: int | None = None
    normalize: str | None = None


@dataclasses.dataclass
class FolderBackbone:
    """A backbone configuration resolved from an adapter folder's record and the caller's overrides."""

    model: "ModelConfig"  # noqa: F821  (heartlora.config.ModelConfig; imported lazily: config imports nothing of ours)
    img_size: int
    seed: int
    normalize: str
    record: dict  # backbone.json as read ({} when the folder has none)
    source: str  # where the record came from (its path), for messages


def backbone_config(record: dict | None, overrides: BackboneOverrides | None = None, source: str = "") -> FolderBackbone:
    """The backbone an adapter belongs to: ``record`` (a folder's ``backbone.json``; may be empty,
    e.g. an adapter imported from elsewhere) updated by ``overrides``. The one place that turns a
    record into a :class:`~heartlora.config.ModelConfig`; its weights are checked by
    :func:`check_backbone_weights` when the model is built."""
    from .config import ConfigError, ModelConfig
    from .models import names_pretrained_weights

    record, o = dict(record or {}), overrides or BackboneOverrides()
    name = o.model or record.get("model")
    if not name:
        raise ConfigError(f"option '--model': required ({source or 'the adapter'} names no backbone; give its timm name)")
    kwargs = dict(record.get("kwargs") or {}) if name == record.get("model") else {}
    kwargs.update(o.kwargs or {})
    if o.weights is not None or o.pretrained is not None or o.random_init is not None:
        weights, pretrained = o.weights, bool(o.pretrained)
        random_init = bool(o.random_init) and not (weights or pretrained)
        moved = weights is not None and record.get("weights") is not None and not pretrained
    else:
        weights, pretrained = record.get("weights"), bool(record.get("pretrained"))
        random_init = bool(record.get("random_init")) and not (weights or pretrained)
        moved = False
    if not (weights or pretrained or random_init) and names_pretrained_weights(name):
        raise ConfigError(f"option '--model': '{name}' names timm's pretrained weights and {source or 'the adapter'} says "
                          "none were used; say which: --pretrained (timm's, from the local cache), --weights FILE, or "
                          "--random-init")
    # the sha256 the weights must have: the caller's, else the record's when they are the record's file
    # (or a moved copy of it: --weights names where it is now)
    expected = o.weights_sha256 or (record.get("weights_sha256") if weights and (moved or weights == record.get("weights"))
                                    else None)
    img_size = o.img_size or kwargs.pop("img_size", None) or record.get("img_size")
    if not img_size:
        raise ConfigError(f"option '--image-size': required ({source or 'the adapter'} records no image size)")
    model = ModelConfig(name=name, weights=weights, weights_sha256=expected, kwargs=kwargs, drop_path=0.0,
                        pretrained=pretrained, random_init=random_init)
    seed = o.seed if o.seed is not None else record.get("seed", 42)
    return FolderBackbone(model=model, img_size=int(img_size), seed=int(seed if seed is not None else 42),
                          normalize=o.normalize or record.get("normalize") or "none", record=record, source=source)


def check_backbone_weights(backbone: FolderBackbone) -> None:
    """The one sha256 rule of every command that rebuilds an adapter's backbone: a weights file
    must exist and, when a sha256 is known (the record's, or the caller's), have it — else the
    adapter would be folded onto, evaluated or served with other weights than it was trained on."""
    from .models import WeightsError, sha256_file

    weights, expected = backbone.model.weights, backbone.model.weights_sha256
    if not weights:
        return
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: backbone weights not found (named in {backbone.source or 'the adapter'}); if "
                                "the file moved, give its new path with --weights")
    if expected:
        actual = sha256_file(weights)
        if actual != expected.strip().lower():
            raise WeightsError(f"{weights}: sha256 {actual} differs from that of the weights the adapter was trained on "
                               f"({expected}, {backbone.source or 'the adapter'}); with other weights it would be "
                               "another model")
