"""Backbones: any timm model name, built without touching a hub, plus local weight files.

::

    from heartlora.models import create_backbone
    model = create_backbone("vit_base_patch16_224", weights="ViT-B_16.npz", num_classes=100)

Weights come from a local file (``weights=``) or from timm's own pretrained weights in the local
Hugging Face cache (``pretrained=True``), never from the network:

* ``pretrained=True`` — ``timm.create_model(name, pretrained=True)`` itself, with the Hub in
  offline mode for the call (``HF_HUB_OFFLINE``): the tag in ``name`` (``.augreg_in21k``) picks
  the weights; a file missing from the cache is a :class:`WeightsError` saying which file to
  place where;
* ``.npz`` / ``.npy`` — Google's ViT format (``ViT-B_16.npz``, ImageNet-21k), through timm's
  own ``load_checkpoint`` → ``model.load_pretrained`` (``_load_weights``) path;
* ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` — state dicts (also nested under ``model`` /
  ``state_dict`` / EMA keys), through timm's ``load_state_dict`` and the model family's own
  ``checkpoint_filter_fn`` (position embedding / patch resampling, key remapping).

A classifier whose shape differs from the model's (a new task) is dropped and keeps its fresh
init. Any other tensor of the wrong shape, a missing or unexpected tensor, or a file that is
not the expected format raises :class:`WeightsError` naming the file and the first tensor at
fault. Nothing is ever downloaded.

A name that carries a pretrained tag (``vit_base_patch16_224.augreg_in21k``, or a deprecated
``*_in21k`` alias of one) asks for those weights: without ``weights`` or ``pretrained`` it is a
:class:`~heartlora.config.ConfigError` unless ``random_init=True`` says random weights are meant.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
from torch import nn

from .config import ConfigError

__all__ = [
    "BackboneWarning", "WEIGHT_SUFFIXES", "WeightsError", "create_backbone", "hub_offline", "load_weights",
    "describe_unreadable", "names_pretrained_weights", "pretrained_weights_file", "sha256_file",
]

WEIGHT_SUFFIXES = (".npz", ".npy", ".pth", ".pt", ".bin", ".safetensors")

# timm's deprecated ``*_in21k`` aliases resolve to AugReg checkpoints (Steiner et al. 2021), not to
# the original ViT ImageNet-21k weights (Dosovitskiy et al. 2021, ``ViT-B_16.npz``) that the
# VTAB-1K / few-shot PETL literature (VPT, NOAH, Bi-LoRA, Heart-LoRA) fine-tunes.
_ORIGINAL_IN21K_FILES = {
    "vit_base_patch16_224_in21k": "ViT-B_16.npz",
    "vit_base_patch32_224_in21k": "ViT-B_32.npz",
    "vit_large_patch16_224_in21k": "ViT-L_16.npz",
    "vit_large_patch32_224_in21k": "ViT-L_32.npz",
    "vit_huge_patch14_224_in21k": "ViT-H_14.npz",
}


class WeightsError(ValueError):
    """A weights file that cannot be used for this backbone (missing, wrong checksum, wrong shapes)."""


class BackboneWarning(UserWarning):
    """Something about the backbone that silently changes results (random init, aliased weights)."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_name(name: str) -> str:
    """Check ``name`` is a timm model (and tag); warn (loudly) about deprecated aliases."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"option 'model': expected a timm model name, got {name!r}")
    deprecated = timm.models.get_deprecated_models()
    if name in deprecated:
        target = deprecated[name]
        message = f"timm model name '{name}' is a deprecated alias of '{target}'"
        if name in _ORIGINAL_IN21K_FILES and "augreg" in target:
            message = (
                f"timm's '{name}' resolves to AugReg weights ('{target}', Steiner et al. 2021), NOT the "
                f"original ViT ImageNet-21k checkpoint ({_ORIGINAL_IN21K_FILES[name]}) that VTAB-1K / few-shot "
                f"PETL results are reported with. For those, build '{target.split('.')[0]}' and "
                f"pass the original file with --weights {_ORIGINAL_IN21K_FILES[name]}"
            )
        warnings.warn(message, BackboneWarning, stacklevel=3)
        return name
    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise ConfigError(f"option 'model': unknown timm model '{name}'{hint}")
    if tag and name not in timm.list_pretrained(name):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        raise ConfigError(f"option 'model': timm model '{base}' has no pretrained tag '{tag}'"
                          + (f"; its tags: {', '.join(tags)}" if tags else "; it has no pretrained weights"))
    return name


def names_pretrained_weights(name: str) -> bool:
    """True when the timm name picks pretrained weights: ``arch.tag`` or a deprecated alias of one."""
    target = timm.models.get_deprecated_models().get(name, name)
    return "." in name or "." in target


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    weights_sha256: str | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    num_classes: int,
    img_size: int | None = None,
    drop_path_rate: float = 0.1,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` with local ``weights``, timm's cached ``pretrained`` weights, or
    (``random_init``, or a name without a pretrained tag) random weights.

    ``weights_sha256`` (hex) is checked before anything is read. A randomly initialised backbone
    gets a :class:`BackboneWarning`. The classifier has ``num_classes`` outputs; it keeps the
    file's values only when their shape matches. Raises :class:`WeightsError` (file problems),
    ``FileNotFoundError``, or :class:`~heartlora.config.ConfigError` (unknown name, tag or
    option; timm arguments it rejects; a pretrained tag without weights).
    """
    if weights_sha256 and not weights:
        raise ConfigError("option 'weights_sha256' needs option 'weights' (a local weights file)")
    if pretrained and weights:
        raise ConfigError("options 'pretrained' and 'weights' exclude each other: pretrained weights come from "
                          "timm's cache, 'weights' from a local file; give one")
    if random_init and (pretrained or weights):
        raise ConfigError("option 'random_init' means no pretrained weights; drop it, or drop "
                          f"'{'pretrained' if pretrained else 'weights'}'")
    name = _resolve_name(name)
    path = _check_weights_file(weights, weights_sha256) if weights else None
    if path is None and not pretrained and not random_init and names_pretrained_weights(name):
        raise ConfigError(
            f"option 'model': '{name}' names timm's pretrained weights, but neither --pretrained nor --weights "
            "is given; add --pretrained (timm loads them from the local Hugging Face cache), --weights FILE, "
            "or --random-init to train from random weights"
        )
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs.setdefault("drop_path_rate", drop_path_rate)
    if pretrained:
        return _create_pretrained(name, num_classes, kwargs)
    model = _create(name, pretrained=False, num_classes=num_classes, **kwargs)
    if path is None:
        warnings.warn(
            f"backbone '{name}' has no --weights: it is randomly initialised (heartlora never downloads; "
            "pass a local .npz/.pth/.bin/.safetensors file, or --pretrained for timm's cached weights)",
            BackboneWarning, stacklevel=2,
        )
        return model
    load_weights(model, path)
    return model


def _create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with the arguments it rejects reported as option errors."""
    with warnings.catch_warnings():
        # our own louder warning covers deprecated names
        warnings.filterwarnings("ignore", message="Mapping deprecated model name")
        try:
            return timm.create_model(name, **kwargs)
        except (TypeError, AssertionError) as err:  # unknown argument; shapes timm asserts (width % heads)
            reason = str(err) or type(err).__name__
            raise ConfigError(f"option 'model_kwargs' for timm model '{name}': timm rejects them ({reason})") from None


# ----------------------------------------------------------------------------- pretrained (cache)
@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face Hub offline mode for the duration (the env var, and huggingface_hub's own flag,
    which it reads at import): a file missing from the cache fails instead of downloading."""
    previous_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # timm then only knows URL / file sources
        hub_constants = None
    previous = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = previous
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def _hub_candidates(filename: str | None) -> list[str]:
    """The files timm's ``load_state_dict_from_hf`` tries, in its order (safetensors first)."""
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives

    filename = filename or HF_WEIGHTS_NAME
    if filename.endswith(".safetensors"):
        return [filename]
    return [*_get_safe_alternatives(filename), filename]


def pretrained_weights_file(name: str) -> Path:
    """Where timm's pretrained weights for ``name`` lie in the local cache; the source timm itself
    resolves (``pretrained_cfg``: file, then Hugging Face Hub, then URL). Raises
    :class:`WeightsError` saying which file to place where when it is not there."""
    from timm.models import get_pretrained_cfg

    resolved = timm.models.get_deprecated_models().get(name, name)
    cfg = get_pretrained_cfg(resolved)
    if cfg is None:
        raise ConfigError(f"option 'pretrained': timm has no pretrained weights for '{name}'")
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: timm's pretrained file for '{name}' is missing")
        return path
    try:
        import huggingface_hub
        from huggingface_hub import constants as hub_constants
    except ImportError:
        huggingface_hub = None
    if cfg.hf_hub_id and huggingface_hub is not None:
        from timm.models._hub import hf_split

        repo, revision = hf_split(cfg.hf_hub_id)
        candidates = _hub_candidates(cfg.hf_hub_filename)
        for filename in candidates:
            hit = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(hit, str):
                return Path(hit)
        cache = Path(hub_constants.HF_HUB_CACHE)
        folder = cache / f"models--{repo.replace('/', '--')}"
        raise WeightsError(
            f"{folder}: timm's pretrained weights for '{name}' are not in the local Hugging Face cache, and "
            f"heartlora never downloads. Place '{candidates[0]}' of the Hub repo '{repo}' at "
            f"{folder}/snapshots/<commit>/{candidates[0]} with <commit> written in {folder}/refs/"
            f"{revision or 'main'} (what `hf download {repo} {candidates[0]}` leaves where there is network; "
            "copy that cache here, or point HF_HUB_CACHE / HF_HOME at it), or pass a local file with --weights"
        )
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        if not path.is_file():
            raise WeightsError(
                f"{path}: timm's pretrained weights for '{name}' are not in the local torch hub cache, and heartlora "
                f"never downloads. Place the file from {cfg.url} there (TORCH_HOME selects the cache), or pass it "
                "with --weights"
            )
        return path
    raise ConfigError(f"option 'pretrained': timm has no pretrained weights for '{name}'")


def _create_pretrained(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` from the local cache only.

    It is built with the checkpoint's own class count, so timm loads every tensor strictly (timm
    loads non-strictly, and silently, once the classifier is dropped), then the classifier is
    reset to ``num_classes`` outputs."""
    from timm.models import get_pretrained_cfg

    source = pretrained_weights_file(name)
    cfg = get_pretrained_cfg(timm.models.get_deprecated_models().get(name, name))
    checkpoint_classes = cfg.num_classes if cfg.num_classes is not None else num_classes
    try:
        with hub_offline():
            model = _create(name, pretrained=True, num_classes=checkpoint_classes, **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # a cached file of another architecture, or a corrupt one
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise WeightsError(f"{source}: timm cannot load these pretrained weights into '{name}' with the given "
                           f"arguments ({type(err).__name__}: {first})") from None
    if checkpoint_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


def _check_weights_file(weights: str | os.PathLike, expected_sha256: str | None) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found (option 'weights')")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path}: unknown weights format '{path.suffix}'; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    if expected_sha256:
        expected = expected_sha256.strip().lower()
        if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
            raise ConfigError(f"option 'weights_sha256': expected 64 hex digits, got {expected_sha256!r}")
        actual = sha256_file(path)
        if actual != expected:
            raise WeightsError(
                f"{path}: sha256 is {actual}, but option 'weights_sha256' expects {expected} "
                "(a different or corrupted file)"
            )
    return path


def _classifier_prefix(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    return head if isinstance(head, str) and head else None


def load_weights(model: nn.Module, weights: str | os.PathLike) -> nn.Module:
    """Load a local weights file into ``model`` (in place). See the module docstring."""
    path = Path(weights)
    if path.suffix.lower() in (".npz", ".npy"):
        _load_npz(model, path)
    else:
        _load_state_dict_file(model, path)
    return model


# ------------------------------------------------------------------------------------------ .pth
def describe_unreadable(err: BaseException) -> str:
    """Why a weights file cannot be read, in one line, without torch's advice to unpickle code."""
    text = str(err)
    if isinstance(err, EOFError) or not text.strip():
        return "the file is empty or truncated"
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds pickled Python objects ({found.group(1)}), not only tensors, and heartlora never "
                "unpickles code; save the tensors alone (torch.save(model.state_dict(), PATH) or safetensors)")
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return "not a PyTorch file of tensors (truncated, or another format?)"
    if "PytorchStreamReader" in text:
        return "a truncated or corrupted PyTorch file (its zip archive cannot be read)"
    return f"{type(err).__name__}: {text.strip().splitlines()[0]}"


def _read_state_dict(path: Path) -> dict:
    """The state dict in a ``.pth``/``.bin``/``.safetensors`` file, nested keys picked as timm's
    ``load_state_dict`` does (EMA first), tensors only; never unpickles code."""
    from safetensors.torch import load_file
    from timm.models import clean_state_dict

    try:
        if path.suffix.lower() == ".safetensors":
            checkpoint = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot read weights: {describe_unreadable(err)}") from None
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if checkpoint.get(key) is not None:
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict (a mapping of tensor "
                           "names to tensors, as torch.save(model.state_dict(), PATH) writes)")
    if not all(isinstance(k, str) for k in checkpoint):
        raise WeightsError(f"{path}: expected a state dict of named tensors, found non-string keys")
    return clean_state_dict({k: v for k, v in checkpoint.items() if torch.is_tensor(v)})


def _load_state_dict_file(model: nn.Module, path: Path) -> None:
    state = _read_state_dict(path)
    if not state:
        raise WeightsError(f"{path}: holds no tensors (expected the backbone's state dict)")
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as err:
            first = _first_mismatch(state, model)
            raise WeightsError(
                f"{path}: does not fit timm model {type(model).__name__}"
                + (f": {first}" if first else f" ({type(err).__name__}: {err})")
            ) from None
    own = model.state_dict()
    classifier = _classifier_prefix(model)
    if classifier:
        for key in [k for k in state if k.startswith(classifier + ".")]:
            if key not in own or state[key].shape != own[key].shape:
                del state[key]  # a new (or no) classifier for a new task: keep the model's own
    first = _first_mismatch(state, model)
    if first:
        raise WeightsError(f"{path}: weights of the wrong shape for this backbone: {first}")
    missing = [k for k in own if k not in state and not (classifier and k.startswith(classifier + "."))]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise WeightsError(
            f"{path}: tensor '{missing[0]}' of the model is missing from the file "
            f"({len(missing)} missing in all; weights of another architecture?)"
        )
    if unexpected:
        raise WeightsError(
            f"{path}: tensor '{unexpected[0]}' in the file does not exist in the model "
            f"({len(unexpected)} unexpected in all; weights of another architecture?)"
        )
    model.load_state_dict(state, strict=False)


def _first_mismatch(state: dict, model: nn.Module) -> str | None:
    own = model.state_dict()
    classifier = _classifier_prefix(model)
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            if classifier and key.startswith(classifier + "."):
                continue
            return f"tensor '{key}' has shape {tuple(value.shape)} in the file, the model expects {tuple(own[key].shape)}"
    return None


# ------------------------------------------------------------------------------------------ .npz
def _npz_expected(model: nn.Module) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """Expected shapes of the Google ViT ``.npz`` keys for a timm VisionTransformer (unprefixed,
    one ``encoderblock_i`` per block). ``None`` when the model is not that kind of ViT."""
    blocks = getattr(model, "blocks", None)
    norm = getattr(model, "norm", None)
    if blocks is None or not hasattr(model, "patch_embed") or not hasattr(model, "embed_dim"):
        return None
    d = model.embed_dim
    expected: dict[str, tuple[tuple[int, ...], str]] = {}
    if hasattr(norm, "weight"):
        expected["Transformer/encoder_norm/scale"] = ((d,), "norm.weight")
    for i, block in enumerate(blocks.children()):
        attn = getattr(block, "attn", None)
        mlp = getattr(block, "mlp", None)
        if attn is None or mlp is None or not hasattr(attn, "qkv") or not hasattr(mlp, "fc1"):
            return None
        qkv = getattr(attn.qkv, "base", attn.qkv)
        heads = attn.num_heads
        head_dim = qkv.out_features // 3 // heads
        p = f"Transformer/encoderblock_{i}/"
        m = f"{p}MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            expected[f"{m}{n}/kernel"] = ((qkv.in_features, heads, head_dim), f"blocks.{i}.attn.qkv.weight")
        expected[f"{m}out/kernel"] = ((heads, head_dim, attn.proj.out_features), f"blocks.{i}.attn.proj.weight")
        expected[f"{p}LayerNorm_0/scale"] = ((d,), f"blocks.{i}.norm1.weight")
        expected[f"{p}LayerNorm_2/scale"] = ((d,), f"blocks.{i}.norm2.weight")
        expected[f"{p}MlpBlock_3/Dense_0/kernel"] = ((mlp.fc1.in_features, mlp.fc1.out_features), f"blocks.{i}.mlp.fc1.weight")
        expected[f"{p}MlpBlock_3/Dense_1/kernel"] = ((mlp.fc2.in_features, mlp.fc2.out_features), f"blocks.{i}.mlp.fc2.weight")
    return expected


def _load_npz(model: nn.Module, path: Path) -> None:
    import numpy as np
    from timm.models import load_checkpoint

    if not hasattr(model, "load_pretrained"):
        raise WeightsError(f"{path}: .npz weights are Google's ViT format; timm model {type(model).__name__} cannot read them")
    try:
        with np.load(path) as npz:
            shapes = {k: tuple(npz[k].shape) for k in npz.files}
    except Exception as err:
        # numpy's own text suggests allow_pickle=True, which heartlora never does
        raise WeightsError(f"{path}: cannot read as .npz (not a NumPy .npz archive of arrays, or truncated: "
                           f"{type(err).__name__})") from None
    expected = _npz_expected(model)
    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        raise WeightsError(f"{path}: not a Google ViT checkpoint (no 'embedding/kernel' tensor)")
    if expected is not None and f"{prefix}Transformer/encoderblock_0/LayerNorm_0/scale" in shapes:
        embed = shapes[f"{prefix}embedding/kernel"]
        if embed[-1] != model.embed_dim:
            raise WeightsError(
                f"{path}: weights of the wrong shape for this backbone: tensor '{prefix}embedding/kernel' has "
                f"shape {embed} in the file (width {embed[-1]}), the model expects width {model.embed_dim} "
                "(patch_embed.proj.weight)"
            )
        blocks_in_file = sum(1 for k in shapes
                             if k.startswith(f"{prefix}Transformer/encoderblock_") and k.endswith("/LayerNorm_0/scale"))
        n_blocks = len(list(model.blocks.children()))
        if blocks_in_file != n_blocks:
            raise WeightsError(f"{path}: the file has {blocks_in_file} transformer blocks, the model has {n_blocks} "
                               "(another architecture?)")
        for key, (shape, param) in expected.items():
            key = prefix + key
            if key not in shapes:
                raise WeightsError(f"{path}: tensor '{key}' for {param} is missing from the file")
            if shapes[key] != shape:
                raise WeightsError(
                    f"{path}: weights of the wrong shape for this backbone: tensor '{key}' has shape "
                    f"{shapes[key]} in the file, the model's {param} needs {shape}"
                )
    try:
        with torch.no_grad():
            load_checkpoint(model, str(path))  # → model.load_pretrained → timm's _load_weights
    except Exception as err:
        raise WeightsError(f"{path}: does not fit timm model {type(model).__name__} ({type(err).__name__}: {err})") from None
