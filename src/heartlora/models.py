"""Backbones: any timm model name, built without touching a hub, plus local weight files.

::

    from heartlora.models import create_backbone
    model = create_backbone("vit_base_patch16_224", weights="ViT-B_16.npz", num_classes=100)

Weights are read offline from a local file only:

* ``.npz`` / ``.npy`` — Google's ViT format (``ViT-B_16.npz``, ImageNet-21k), through timm's
  own ``load_checkpoint`` → ``model.load_pretrained`` (``_load_weights``) path;
* ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` — state dicts (also nested under ``model`` /
  ``state_dict`` / EMA keys), through timm's ``load_state_dict`` and the model family's own
  ``checkpoint_filter_fn`` (position embedding / patch resampling, key remapping).

A classifier whose shape differs from the model's (a new task) is dropped and keeps its fresh
init. Any other tensor of the wrong shape, a missing or unexpected tensor, or a file that is
not the expected format raises :class:`WeightsError` naming the file and the first tensor at
fault. Nothing is ever downloaded: ``pretrained=False`` always.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

__all__ = [
    "BackboneWarning", "WEIGHT_SUFFIXES", "WeightsError", "create_backbone", "load_weights", "sha256_file",
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
    """Check ``name`` is a timm model; warn (loudly) about deprecated aliases."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"option 'model': expected a timm model name, got {name!r}")
    deprecated = timm.models.get_deprecated_models()
    if name in deprecated:
        target = deprecated[name]
        message = f"timm model name '{name}' is a deprecated alias of '{target}'"
        if name in _ORIGINAL_IN21K_FILES and "augreg" in target:
            message = (
                f"timm's '{name}' resolves to AugReg weights ('{target}', Steiner et al. 2021), NOT the "
                f"original ViT ImageNet-21k checkpoint ({_ORIGINAL_IN21K_FILES[name]}) that VTAB-1K / few-shot "
                f"PETL results are reported with. heartlora never downloads: build '{target.split('.')[0]}' and "
                f"pass the original file with --weights {_ORIGINAL_IN21K_FILES[name]}"
            )
        warnings.warn(message, BackboneWarning, stacklevel=3)
        return name
    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise ValueError(f"option 'model': unknown timm model '{name}'{hint}")
    return name


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    weights_sha256: str | None = None,
    num_classes: int,
    img_size: int | None = None,
    drop_path_rate: float = 0.1,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` (``pretrained=False``) and load local ``weights`` if given.

    ``weights_sha256`` (hex) is checked before anything is read. Without ``weights`` the
    backbone is randomly initialised (a :class:`BackboneWarning` says so). The classifier has
    ``num_classes`` outputs; it keeps the file's values only when their shape matches.
    Raises :class:`WeightsError` (file problems) or ``ValueError`` (unknown name / option).
    """
    if weights_sha256 and not weights:
        raise ValueError("option 'weights_sha256' needs option 'weights' (a local weights file)")
    path = _check_weights_file(weights, weights_sha256) if weights else None
    name = _resolve_name(name)
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs.setdefault("drop_path_rate", drop_path_rate)
    with warnings.catch_warnings():
        # our own louder warning covers deprecated names
        warnings.filterwarnings("ignore", message="Mapping deprecated model name")
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        except TypeError as err:
            raise ValueError(f"option 'model_kwargs' for timm model '{name}': {err}") from None
    if path is None:
        warnings.warn(
            f"backbone '{name}' has no --weights: it is randomly initialised (heartlora never downloads; "
            "pass a local .npz/.pth/.bin/.safetensors file)", BackboneWarning, stacklevel=2,
        )
        return model
    load_weights(model, path)
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
            raise ValueError(f"option 'weights_sha256': expected 64 hex digits, got {expected_sha256!r}")
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
def _load_state_dict_file(model: nn.Module, path: Path) -> None:
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as err:  # corrupted file, pickle not allowed with weights_only, …
        raise WeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise WeightsError(f"{path}: expected a state dict of named tensors")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
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
        raise WeightsError(f"{path}: cannot read as .npz ({type(err).__name__}: {err})") from None
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
        blocks_in_file = sum(1 for k in shapes if k.startswith(f"{prefix}Transformer/encoderblock_") and k.endswith("/LayerNorm_0/scale"))
        n_blocks = len(list(model.blocks.children()))
        if blocks_in_file != n_blocks:
            raise WeightsError(f"{path}: the file has {blocks_in_file} transformer blocks, the model has {n_blocks} (another architecture?)")
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
