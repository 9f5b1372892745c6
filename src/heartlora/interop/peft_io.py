"""heartlora's low-rank adapters as PEFT LoRA adapters, and PEFT LoRA adapters as heartlora's.

PEFT's LoRA on timm's fused ``qkv`` has one A (R×d) and one B (3·H·d_h × R). heartlora keeps
one A_t (r×d) and per-head blocks of B_t (d_h×r) per target t ∈ {q, k, v}. Exported, the n
targets' A_t stack into A (R = n·r) and B is block structured: target t's rows use only the
columns of its own A_t, switched-off heads are exact zero rows, and quantised weights (Bi-LoRA)
are written dequantised. ``lora_alpha = s·R`` makes PEFT's scaling ``lora_alpha / R`` equal
heartlora's ``s``; the classifier goes through ``modules_to_save``. In eval mode the PEFT model
computes what the heartlora model does (PEFT drops out the input x during training, heartlora the
rank-r activations; both are off in eval).

Imported, any PEFT LoRA on ``qkv`` becomes a ``lora`` adapter with the same outputs: the block
layout above maps back exactly; any other B (e.g. trained by PEFT) keeps PEFT's shared A for every
target it writes to (rank R, the A repeated per target). Per-module ranks are zero-padded to the
largest, per-module scalings folded into B. An adapter heartlora exported carries its own
settings in the safetensors metadata, so heart-lora head masks and scores come back as they were
when the tensors still fit them.

PEFT is needed only to write the export's ``adapter_config.json`` (``pip install heartlora[peft]``);
importing reads plain JSON and safetensors.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..adapters_io import (
    BACKBONE_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterError,
    adapter_tensors,
    read_json_object,
    save_adapter,
)
from ..fsio import atomic_write
from ..tensorfile import safetensors_bytes
from ..heads import TARGET_INDEX, AttentionSite, find_attention_sites
from ..methods.base import registered
from ..methods.factory import STATE_ATTR, apply, get_state
from ..methods.base import adapter_layers, classifier_parameter_names, get_method
from ..methods.lowrank import LowRankQKV
from ..models import describe_unreadable
from ..methods.responsiveness import apply_head_selection

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "export_adapter_peft", "from_peft", "import_peft", "import_peft_folder", "read_peft",
           "to_peft"]

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"
PEFT_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."  # PeftModel → LoraModel → the timm model
META_KEY = "heartlora"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")
# LoraConfig settings a plain low-rank update of qkv cannot express
_UNSUPPORTED = ("use_dora", "lora_bias", "target_parameters", "layer_replication", "trainable_token_indices",
                "alora_invocation_tokens", "use_qalora", "use_bdlora", "arrow_config", "kasa_config")


def _require_peft():
    try:
        import peft
    except ImportError:
        raise ImportError("the PEFT export needs PEFT, which is not installed: pip install heartlora[peft]") from None
    return peft


# ------------------------------------------------------------------------------------------ export
def _lowrank_layers(model: nn.Module) -> dict[str, LowRankQKV]:
    state = get_state(model)
    if not get_method(state.method).peft_exportable:
        exportable = sorted(name for name, spec in registered().items() if spec.peft_exportable)
        raise ValueError(f"method '{state.method}' has no PEFT LoRA counterpart; the PEFT export takes {', '.join(exportable)}")
    layers = adapter_layers(model)
    other = sorted({type(m).__name__ for m in layers.values() if not isinstance(m, LowRankQKV)})
    if other:
        raise ValueError(f"method '{state.method}': layers {', '.join(other)} have no PEFT LoRA counterpart")
    return layers  # type: ignore[return-value]


def _unscaled_factors(layer: LowRankQKV) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (n·r, d), B (n, active heads, d_h, r)) as the forward uses them, without the scale s."""
    if layer.merged:
        raise ValueError(f"{layer.site.qkv_name}: the adapter is merged into the backbone; unmerge it first")
    gate = layer.head_gate[layer.active_heads].to(layer.lora_B.dtype)[None, :, None, None]
    a = layer.effective_A().detach()  # dequantised values when bits < 32
    if layer.bits >= 32:
        b = layer.lora_B.detach() * gate  # exact: round trips leave the tensors equal
    elif layer.scale == 0:
        b = torch.zeros_like(layer.lora_B)
    else:
        b = layer.effective_B().detach() / layer.scale
    return a, b


def _peft_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str], dict]:
    """PEFT state dict, modules_to_save, and the settings heartlora stores beside them."""
    layers = _lowrank_layers(model)
    state = get_state(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        a, b = _unscaled_factors(layer)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.float().contiguous().cpu().clone()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.full_B(b).float().contiguous().cpu().clone()
    classifier = classifier_parameter_names(model)
    extra = sorted(n for n in adapter_tensors(model) if n not in classifier and not n.startswith(tuple(f"{m}." for m in layers)))
    if extra:
        raise ValueError(f"trainable tensors {extra[:3]} are neither low-rank factors nor the classifier")
    params = dict(model.named_parameters())
    for name in classifier:
        tensors[PREFIX + name] = params[name].detach().float().contiguous().cpu().clone()
    first = next(iter(layers.values()))
    meta = {"format_version": 1, "method": state.method, "options": state.options, "head_masks": state.head_masks,
            "scores": state.scores, "selection": state.selection, "rank": first.rank, "scale": first.scale,
            "targets": list(first.targets), "bits": first.bits}
    modules = sorted({n.rpartition(".")[0] for n in classifier})
    return tensors, modules, meta


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: already exists; choose another output or pass --overwrite")


def to_peft(model: nn.Module, out_dir: str | os.PathLike, *, base_model_name: str | None = None,
            backbone: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``model``'s adapter (lora, bilora, heart-lora, heart-lora-layer) as a PEFT LoRA adapter
    (``adapter_model.safetensors`` + ``adapter_config.json``) that
    ``peft.PeftModel.from_pretrained(timm_model, out_dir)`` loads onto the same timm backbone.
    ``backbone`` (heartlora's ``backbone.json``) is written beside them for ``heartlora import``."""
    peft = _require_peft()
    out = Path(out_dir)
    tensors, modules, meta = _peft_tensors(model)
    first = next(iter(_lowrank_layers(model).values()))
    rank = len(first.targets) * first.rank
    dropout = float(get_state(model).options.get("dropout", 0.0))
    config = peft.LoraConfig(r=rank, lora_alpha=first.scale * rank, target_modules=["qkv"], lora_dropout=dropout,
                             bias="none", modules_to_save=modules or None, base_model_name_or_path=base_model_name,
                             inference_mode=True)
    values = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    values["auto_mapping"] = {"base_model_class": type(model).__name__, "parent_library": type(model).__module__}
    targets = [out / PEFT_WEIGHTS, out / PEFT_CONFIG] + ([out / BACKBONE_NAME] if backbone else [])
    _refuse_existing(targets, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / PEFT_WEIGHTS, safetensors_bytes(tensors, metadata={"format": "pt", META_KEY: json.dumps(meta)}))
    atomic_write(out / PEFT_CONFIG, (json.dumps(values, indent=2, default=str) + "\n").encode("utf-8"))
    if backbone:
        atomic_write(out / BACKBONE_NAME, (json.dumps(backbone, indent=2) + "\n").encode("utf-8"))
    return out


# ------------------------------------------------------------------------------------------ import
def read_peft(peft_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """(adapter_config.json, tensors with PEFT's ``base_model.model.`` prefix removed, heartlora's
    own settings when heartlora wrote the adapter) of a PEFT adapter folder."""
    folder = Path(peft_dir)
    config_path = folder / PEFT_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no PEFT adapter config (expected {PEFT_CONFIG} from save_pretrained)")
    config = read_json_object(config_path, "a PEFT adapter config")
    meta = None
    if (folder / PEFT_WEIGHTS).is_file():
        path = folder / PEFT_WEIGHTS
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                raw = {k: handle.get_tensor(k) for k in handle.keys()}
                meta_text = (handle.metadata() or {}).get(META_KEY)
        except Exception as err:
            raise AdapterError(f"{path}: not a readable safetensors file ({err})") from None
        if meta_text:
            try:
                meta = json.loads(meta_text)
            except json.JSONDecodeError:
                meta = None
    elif (folder / PEFT_WEIGHTS_BIN).is_file():
        path = folder / PEFT_WEIGHTS_BIN
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise AdapterError(f"{path}: cannot read the adapter: {describe_unreadable(err)}") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in raw.items()):
            raise AdapterError(f"{path}: expected a state dict of named tensors")
    else:
        raise FileNotFoundError(f"{folder / PEFT_WEIGHTS}: no PEFT adapter weights (nor {PEFT_WEIGHTS_BIN})")
    tensors = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in raw.items()}
    return config, tensors, meta


def _check_config(config: dict, source: str) -> None:
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise AdapterError(f"{source}: peft_type is {config.get('peft_type')!r}; heartlora imports LoRA adapters")
    used = [k for k in _UNSUPPORTED if config.get(k)]
    if used:
        raise AdapterError(f"{source}: '{used[0]}' is set; heartlora imports plain LoRA on qkv (no {', '.join(used)})")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{source}: bias={config['bias']!r} trains backbone biases; heartlora imports bias='none'")
    if not isinstance(config.get("lora_alpha", 8), (int, float)):
        raise AdapterError(f"{source}: lora_alpha is {config.get('lora_alpha')!r}; expected a number")


def _alpha(config: dict, module: str) -> float:
    """PEFT's alpha for ``module``: the first ``alpha_pattern`` key matching its name, else lora_alpha."""
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(value)
    return float(config.get("lora_alpha", 8))


def _factors(config: dict, tensors: dict[str, torch.Tensor], sites: dict[str, AttentionSite],
             source: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]], dict[str, torch.Tensor]]:
    """Per qkv module: (A, B, scaling); and the remaining (non-LoRA) tensors."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, value in tensors.items():
        found = _LORA_KEY.match(key)
        if found:
            pairs.setdefault(found["module"], {})[found["factor"]] = value.float()
        elif ".lora_" in key:
            raise AdapterError(f"{source}: tensor '{key}' is no plain LoRA factor (embedding, DoRA magnitude, …)")
        else:
            rest[key] = value
    if not pairs:
        raise AdapterError(f"{source}: no LoRA factors (tensors '<module>.lora_A.weight' / '.lora_B.weight')")
    factors = {}
    for module, pair in pairs.items():
        if module not in sites:
            raise AdapterError(f"{source}: the adapter adapts '{module}', which is not an attention qkv of this "
                               f"backbone ({next(iter(sites))}, …); heartlora imports LoRA on qkv only")
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{source}: '{module}' has lora_{''.join(pair)} but not both factors")
        site, a, b = sites[module], pair["A"], pair["B"]
        rank = a.shape[0]
        if a.dim() != 2 or a.shape[1] != site.in_dim or b.dim() != 2 or tuple(b.shape) != (3 * site.attn_dim, rank):
            raise AdapterError(f"{source}: '{module}' factors have shapes {tuple(a.shape)}, {tuple(b.shape)}; this "
                               f"backbone needs (R, {site.in_dim}) and ({3 * site.attn_dim}, R) — another backbone?")
        divisor = math.sqrt(rank) if config.get("use_rslora") else rank
        factors[module] = (a, b, _alpha(config, module) / divisor)
    return factors, rest


def _target_rows(site: AttentionSite, target: str) -> slice:
    start = TARGET_INDEX[target] * site.attn_dim
    return slice(start, start + site.attn_dim)


def _block_layout(factors: dict, sites: dict[str, AttentionSite], targets: list[str], rank: int) -> bool:
    """True when every module's B is heartlora's block layout for ``targets`` at ``rank``."""
    if not targets or rank < 1:
        return False
    for module, (a, b, _) in factors.items():
        if a.shape[0] != len(targets) * rank:
            return False
        site = sites[module]
        for t in "qkv":
            rows = b[_target_rows(site, t)]
            if t not in targets:
                if rows.any():
                    return False
                continue
            i = targets.index(t)
            outside = torch.cat([rows[:, : i * rank], rows[:, (i + 1) * rank:]], dim=1)
            if outside.any():
                return False
    return True


def _layout(factors: dict, sites: dict, meta: dict | None) -> tuple[list[str], int, bool]:
    """(targets, rank, block layout?) that represent every module exactly."""
    if meta and isinstance(meta.get("targets"), list) and isinstance(meta.get("rank"), int):
        targets = [t for t in "qkv" if t in meta["targets"]]
        if _block_layout(factors, sites, targets, meta["rank"]):
            return targets, meta["rank"], True
    used = [t for t in "qkv" if any(b[_target_rows(sites[m], t)].any() for m, (_, b, _) in factors.items())] or list("qkv")
    ranks = {a.shape[0] for a, _, _ in factors.values()}
    if len(ranks) == 1 and next(iter(ranks)) % len(used) == 0:
        rank = next(iter(ranks)) // len(used)
        if _block_layout(factors, sites, used, rank):
            return used, rank, True
    return used, max(ranks), False


def _heartlora_factors(a, b, site: AttentionSite, targets: list[str], rank: int, block: bool,
                       fold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A (n, r, d), lora_B (n, H, d_h, r)) of one module."""
    n = len(targets)
    lora_a = a.new_zeros(n, rank, site.in_dim)
    lora_b = a.new_zeros(n, site.num_heads, site.head_dim, rank)
    for i, t in enumerate(targets):
        rows = b[_target_rows(site, t)] * fold if fold != 1.0 else b[_target_rows(site, t)]
        cols = slice(i * rank, (i + 1) * rank) if block else slice(0, a.shape[0])
        width = cols.stop - cols.start
        lora_a[i, :width] = a[cols]
        lora_b[i, :, :, :width] = rows[:, cols].reshape(site.num_heads, site.head_dim, width)
    return lora_a, lora_b


def _restored_method(meta: dict | None, block: bool, per_layer: dict, sites: dict) -> tuple[str, dict, list | None]:
    """heartlora's own method, options and head masks when the tensors still fit them; else plain lora."""
    spec = registered().get(meta.get("method")) if meta else None
    if not (spec is not None and block and spec.peft_exportable):
        return "lora", {}, None
    options = dict(meta.get("options") or {})
    masks = meta.get("head_masks")
    if meta["method"] in ("lora", "bilora"):
        return "lora", {k: options[k] for k in ("dropout",) if k in options}, None
    if masks:
        ordered = [s for s in sites.values()]
        for site, mask in zip(ordered, masks):
            lora_b = per_layer.get(site.qkv_name, (None, None))[1]
            if lora_b is not None and lora_b[:, [h for h, on in enumerate(mask) if not on]].any():
                warnings.warn("the adapter's switched-off heads were trained further outside heartlora; importing it "
                              "as plain lora (all heads)", stacklevel=3)
                return "lora", {k: options[k] for k in ("dropout",) if k in options}, None
    options.pop("bits", None)
    return meta["method"], options, masks


def from_peft(model: nn.Module, peft_dir: str | os.PathLike) -> nn.Module:
    """Turn the PEFT LoRA adapter in ``peft_dir`` (on a timm ViT/Swin's ``qkv``) into a heartlora
    adapter on ``model`` — a backbone without a method, with the classifier the adapter was trained
    with (``modules_to_save`` tensors overwrite it) — in place; returns the model, whose outputs
    equal those of ``PeftModel.from_pretrained(model, peft_dir)``. Save it with ``save_adapter``."""
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError("from_peft expects a backbone without a heartlora method applied")
    folder = Path(peft_dir)
    config, tensors, meta = read_peft(folder)
    source = str(folder / PEFT_CONFIG)
    _check_config(config, source)
    sites = {s.qkv_name: s for s in find_attention_sites(model)}
    factors, rest = _factors(config, tensors, sites, str(folder / PEFT_WEIGHTS))
    classifier = set(classifier_parameter_names(model))
    strangers = sorted(k for k in rest if k not in classifier)
    if strangers:
        raise AdapterError(f"{folder / PEFT_WEIGHTS}: tensor '{strangers[0]}' is neither a LoRA factor on qkv nor the "
                           "classifier; a heartlora lora adapter stores only those")
    targets, rank, block = _layout(factors, sites, meta)
    scalings = {round(s, 12) for _, _, s in factors.values()}
    uniform = len(scalings) == 1
    scale = next(iter(factors.values()))[2] if uniform else 1.0
    same_scale = isinstance((meta or {}).get("scale"), (int, float)) and math.isclose(meta["scale"], scale, rel_tol=1e-9)
    if uniform and meta and block and same_scale:
        scale = float(meta["scale"])  # exact, not alpha/R recomputed
    per_layer = {m: _heartlora_factors(a, b, sites[m], targets, rank, block, 1.0 if uniform else s)
                 for m, (a, b, s) in factors.items()}
    method, options, masks = _restored_method(meta, block, per_layer, sites)
    options.setdefault("dropout", float(config.get("lora_dropout", 0.0) or 0.0))
    options.update(rank=rank, scale=scale, targets=",".join(targets), bits=32)
    try:
        apply(model, method, **options)
        if masks:
            apply_head_selection(model, [torch.tensor(m) for m in masks])
    except ValueError as err:
        raise AdapterError(f"{source}: {err}") from None
    state = get_state(model)
    if masks and meta:
        state.scores, state.selection = meta.get("scores"), meta.get("selection") or {}
    for name, layer in adapter_layers(model).items():
        lora_a, lora_b = per_layer.get(name, (torch.zeros_like(layer.lora_A), None))
        if lora_b is None:  # a layer PEFT left alone (layers_to_transform): no update
            lora_b = torch.zeros(layer.lora_B.shape[0], layer.site.num_heads, *layer.lora_B.shape[2:])
        layer.load_stored_tensors({"lora_A": lora_a, "lora_B": lora_b[:, layer.active_heads.cpu()]}, source)
    params = dict(model.named_parameters())
    for name, value in rest.items():
        if params[name].shape != value.shape:
            raise AdapterError(f"{folder / PEFT_WEIGHTS}: '{name}' has shape {tuple(value.shape)}, the model's is "
                               f"{tuple(params[name].shape)} (build the backbone with that many classes)")
        with torch.no_grad():
            params[name].copy_(value)
    return model


def import_peft(peft_dir: str | os.PathLike, out_dir: str | os.PathLike, model: nn.Module,
                backbone: dict) -> Path:
    """:func:`from_peft` onto ``model``, then write a heartlora adapter folder ``out_dir``
    (``adapter.safetensors``, ``adapter_config.json`` and ``backbone.json`` = ``backbone``)."""
    out = Path(out_dir)
    _refuse_existing([out / CONFIG_NAME, out / WEIGHTS_NAME, out / BACKBONE_NAME], False)
    from_peft(model, peft_dir)
    save_adapter(model, out)
    atomic_write(out / BACKBONE_NAME, (json.dumps(backbone, indent=2) + "\n").encode("utf-8"))
    return out


def export_adapter_peft(adapter: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, str]:
    """``heartlora export --to peft``: the adapter folder ``adapter`` (or a run folder) as a PEFT
    LoRA adapter in ``out_dir`` (with its ``backbone.json`` for ``heartlora import``); only the
    adapter's own tensors are read, so the backbone is built without its weights. Returns
    (``out_dir``, method)."""
    from ..adapters_io import read_adapter_config, refuse_run_folder, resolve_adapter_dir
    from ..config import ConfigError
    from ..engine.build import build_from_adapter_folder
    from ..methods.base import get_method

    folder = resolve_adapter_dir(adapter)
    method = read_adapter_config(folder)["method"]
    if not get_method(method).peft_exportable:
        exportable = sorted(name for name, spec in registered().items() if spec.peft_exportable)
        raise ConfigError(f"option '--to peft': method '{method}' has no PEFT LoRA counterpart; the PEFT export takes "
                          f"{', '.join(exportable)}")
    out = Path(out_dir)
    refuse_run_folder(out, "OUT")
    existing = [p for p in (out / PEFT_WEIGHTS, out / PEFT_CONFIG) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"option 'OUT': {existing[0]} already exists; choose another path or pass --overwrite")
    model, backbone = build_from_adapter_folder(folder, backbone_weights=False)
    to_peft(model, out, base_model_name=backbone.model.name, backbone=backbone.record, overwrite=True)
    return out, method


def _timm_name(hub_name) -> str | None:
    """timm name of a PEFT ``base_model_name_or_path`` (``timm/NAME``, ``hf-hub:timm/NAME`` or NAME)."""
    if not isinstance(hub_name, str) or not hub_name:
        return None
    return hub_name.removeprefix("hf-hub:").removeprefix("timm/")


def import_peft_folder(peft_dir: str | os.PathLike, out_dir: str | os.PathLike, overrides=None, *,
                       normalize: str | None = None) -> tuple[Path, str]:
    """``heartlora import --from peft``: the PEFT LoRA adapter ``peft_dir`` as a heartlora adapter
    folder ``out_dir`` (new). The backbone is ``peft_dir``'s ``backbone.json`` (heartlora's own
    exports write one), else the adapter's ``base_model_name_or_path``, changed by ``overrides``
    (:class:`heartlora.adapters_io.BackboneOverrides`); ``normalize`` defaults to the record's, else
    the one whose mean matches the timm model's pretrained mean. Returns (``out_dir``, method)."""
    from ..adapters_io import BackboneOverrides, backbone_config, backbone_record, read_backbone, refuse_run_folder
    from ..config import ConfigError
    from ..data.transforms import NORMALIZATIONS
    from ..engine.build import build_backbone, new_classifier

    source, out = Path(peft_dir), Path(out_dir)
    refuse_run_folder(out, "--out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"option '--out': {out} exists and is not a folder; choose a new folder")
    if (out / CONFIG_NAME).exists() or (out / BACKBONE_NAME).exists():
        raise ConfigError(f"option '--out': {out} already holds an adapter; choose a new folder")
    peft_config, tensors, _ = read_peft(source)
    stored = read_backbone(source, required=False) or {}
    overrides = overrides or BackboneOverrides()
    if not stored and overrides.model is None:
        name = _timm_name(peft_config.get("base_model_name_or_path"))
        if not name:
            raise ConfigError("option '--model': required (the timm name of the backbone the PEFT adapter was trained on; "
                              "its adapter_config.json names none)")
        stored = {"model": name}
    if not stored.get("img_size") and overrides.img_size is None:
        name = overrides.model or stored["model"]
        kwargs = {**(stored.get("kwargs") or {}), **(overrides.kwargs or {})}
        stored = {**stored, "img_size": _default_img_size(name, kwargs)}
    resolved = backbone_config(stored, overrides, str(source / BACKBONE_NAME) if stored.get("kwargs") is not None
                               else str(source / PEFT_CONFIG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # built for its shapes only; the weights are recorded, not needed
        model_cfg = dataclasses.replace(resolved.model, weights=None, weights_sha256=None, pretrained=False, random_init=True)
        model = build_backbone(model_cfg, resolved.img_size, resolved.seed)
    head = (model.pretrained_cfg or {}).get("classifier")
    if f"{head}.weight" not in tensors:
        raise ValueError(f"{source}: the PEFT adapter stores no classifier ('{head}' in modules_to_save); heartlora "
                         f"adapters carry their classifier — save the PEFT adapter with modules_to_save=['{head}']")
    new_classifier(model, tensors[f"{head}.weight"].shape[0])
    mean = tuple(round(v, 4) for v in (model.pretrained_cfg or {}).get("mean", ()))
    inferred = next((k for k, v in NORMALIZATIONS.items() if v and tuple(round(x, 4) for x in v[0]) == mean), "none")
    weights = resolved.model.weights
    from ..models import sha256_file

    record = backbone_record(
        model=resolved.model.name, weights=weights,
        weights_sha256=sha256_file(weights) if weights and Path(weights).is_file() else resolved.model.weights_sha256,
        kwargs=resolved.model.kwargs, img_size=resolved.img_size, seed=resolved.seed,
        drop_path=stored.get("drop_path", 0.1), normalize=normalize or stored.get("normalize") or inferred,
        class_names=stored.get("class_names"), pretrained=resolved.model.pretrained, random_init=resolved.model.random_init,
        imported_from={"format": "peft", "path": str(source)})
    import_peft(source, out, model, record)
    from ..adapters_io import read_adapter_config

    return out, read_adapter_config(out)["method"]


def _default_img_size(name: str, kwargs: dict) -> int:
    """The input size timm builds ``name`` for with ``kwargs`` (its patch embedding's, else its
    pretrained config's), found on the meta device: no weights are made."""
    import timm

    if kwargs.get("img_size"):
        size = kwargs["img_size"]
        return int(size[-1] if isinstance(size, (list, tuple)) else size)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception:  # an unknown name or bad kwargs: the real build reports it with its own message
        return 224
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm ViT / Swin
    if built:
        return int(built[0] if isinstance(built, (list, tuple)) else built)
    return int((model.pretrained_cfg or {}).get("input_size", [224])[-1])
