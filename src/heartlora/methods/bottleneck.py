"""Bottleneck adapters on each block's MLP: Adapter, AdaptFormer, Bi-AdaptFormer.

Each block's ``mlp`` (ViT ``Block`` and Swin ``SwinTransformerBlock`` alike) is wrapped by a
module that still calls the original MLP and adds a bottleneck ``up(Drop(ReLU(down(·))))``:

- ``adapter`` (sequential, after the MLP — the Houlsby/Pfeiffer adapter as the VPT/NOAH tables
  use it): ``h = mlp(x̂)``, ``out = h + s·up(ReLU(down(h)))`` (the adapter's own residual), and the
  block adds ``out`` to its residual stream as before.
- ``adaptformer`` (parallel, AdaptFormer Eq. 2): ``out = mlp(x̂) + s·up(ReLU(down(x̂)))`` where
  x̂ = LN(x) is the MLP's own (normalised) input, ``s`` = 0.1.
- ``bi-adaptformer`` (Jie et al., ICCV 2023): the parallel adapter with Bi-LoRA's quantiser on
  ``down`` and ``up`` (each matrix standardised, ``bits`` per weight, straight-through), no
  biases, and — as in their reference code — the adapter reads the block's *residual stream* x
  (the MLP sub-layer's input before its LayerNorm): ``out = mlp(LN(x)) + s·up(ReLU(down(x)))``.
  Option ``input`` ('normed' | 'residual') selects the adapter input for both parallel methods.
  'residual' is delivered by wrapping the block's ``norm2`` with a pass-through that hands its
  input to the adapter (no ``forward`` is rebound).

``up`` starts at zero (full precision), so the model equals the backbone at init; quantised
``up`` starts from a tiny trunc-normal (std 1e-3), as Bi-LoRA's B, because a zero matrix has no
spread to quantise. ``down``: Kaiming-uniform (nn.Linear's default), biases zero.

Counts per block with MLP width d and bottleneck k (the literature's convention, biases included,
e.g. 0.16 M for k=8 on ViT-B): ``2·d·k + k + d`` with biases, ``2·d·k`` without. Stored bytes:
fp32 ``4·(2dk [+ k + d])``; quantised ``2·(ceil(d·k·bits/8) + 8) [+ 4·(k + d)]``.
None of them merges: ReLU between ``down`` and ``up`` is not linear.
Swin: supported (every ``SwinTransformerBlock.mlp``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import quant
from .base import AdapterLayer, MethodSpec, documented, option, register, replace_module

INPUTS = ("normed", "residual")


def find_mlp_blocks(model: nn.Module, method: str) -> list[tuple[str, nn.Module]]:
    """(name, block) of every transformer block with an ``mlp`` and its ``norm2``, forward order."""
    found = []
    for name, module in model.named_modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Module) and isinstance(getattr(module, "norm2", None), nn.Module):
            found.append((name, module))
    if not found:
        raise ValueError(
            f"method '{method}': {type(model).__name__} has no transformer block with 'mlp' and 'norm2'; "
            "bottleneck adapters support timm VisionTransformer and SwinTransformer backbones"
        )
    return found


def mlp_width(mlp: nn.Module, name: str) -> int:
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.in_features == fc2.out_features:
        return fc1.in_features
    raise ValueError(f"{name}: expected a timm Mlp with fc1 (d → h) and fc2 (h → d)")


class Bottleneck(nn.Module):
    """``up(Drop(act(down(x))))`` with optional quantisation of the two weight matrices."""

    def __init__(self, dim: int, hidden: int, bias: bool, dropout: float, bits: int = 32,
                 act: str = "relu", device=None):
        super().__init__()
        self.dim, self.hidden, self.bits, self.act = dim, hidden, bits, act
        self.down_weight = nn.Parameter(torch.empty(hidden, dim, device=device))
        self.up_weight = nn.Parameter(torch.empty(dim, hidden, device=device))
        self.down_bias = nn.Parameter(torch.empty(hidden, device=device)) if bias else None
        self.up_bias = nn.Parameter(torch.empty(dim, device=device)) if bias else None
        self.dropout = float(dropout)  # functional: keeps the module tree to parameters only
        self.prequantized = False  # weights hold decoded codes from a loaded quantised adapter
        self._stored_cache: dict[str, torch.Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))  # nn.Linear's default
            if self.bits >= 32:
                self.up_weight.zero_()
            else:
                nn.init.trunc_normal_(self.up_weight, std=1e-3)
            for b in (self.down_bias, self.up_bias):
                if b is not None:
                    b.zero_()
        self.prequantized, self._stored_cache = False, None

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bits >= 32 or self.prequantized:
            return self.down_weight, self.up_weight
        return quant.quantize_ste(self.down_weight, self.bits), quant.quantize_ste(self.up_weight, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.weights()
        z = F.linear(x, down.to(x.dtype), None if self.down_bias is None else self.down_bias.to(x.dtype))
        z = F.gelu(z) if self.act == "gelu" else (z * torch.sigmoid(1.702 * z) if self.act == "quick_gelu" else F.relu(z))
        z = F.dropout(z, self.dropout, self.training)
        return F.linear(z, up.to(x.dtype), None if self.up_bias is None else self.up_bias.to(x.dtype))

    def parameters_list(self) -> list[nn.Parameter]:
        return [p for p in (self.down_weight, self.down_bias, self.up_weight, self.up_bias) if p is not None]

    # ----- storage ------------------------------------------------------------------------
    def stored(self) -> dict[str, torch.Tensor]:
        biases = {k: getattr(self, k).detach().float().clone() for k in ("down_bias", "up_bias") if getattr(self, k) is not None}
        if self.bits >= 32:
            return {"down_weight": self.down_weight.detach().float().clone(),
                    "up_weight": self.up_weight.detach().float().clone(), **biases}
        if self.prequantized and self._stored_cache is not None:
            return {**{k: v.clone() for k, v in self._stored_cache.items()}, **biases}
        out = {}
        for key in ("down_weight", "up_weight"):
            codes, stats = quant.encode(getattr(self, key), self.bits)
            out[f"{key}.codes"] = quant.pack(codes, self.bits)
            out[f"{key}.stats"] = stats.float()
        return {**out, **biases}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], source: str, where: str) -> None:
        def fetch(key: str) -> torch.Tensor:
            if key not in tensors:
                raise ValueError(f"{source}: missing tensor '{where}.{key}'")
            return tensors[key].to(self.down_weight.device)

        def put(param: nn.Parameter, key: str, value: torch.Tensor) -> None:
            if value.shape != param.shape:
                raise ValueError(
                    f"{source}: '{where}.{key}' has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(value)

        expected = set()
        for key in ("down_bias", "up_bias"):
            if getattr(self, key) is not None:
                put(getattr(self, key), key, fetch(key))
                expected.add(key)
        if self.bits >= 32:
            for key in ("down_weight", "up_weight"):
                put(getattr(self, key), key, fetch(key))
                expected.add(key)
        else:
            cache = {}
            for key in ("down_weight", "up_weight"):
                param = getattr(self, key)
                packed, stats = fetch(f"{key}.codes"), fetch(f"{key}.stats")
                if packed.numel() != quant.packed_nbytes(param.numel(), self.bits):
                    raise ValueError(
                        f"{source}: '{where}.{key}.codes' holds {packed.numel()} bytes, expected "
                        f"{quant.packed_nbytes(param.numel(), self.bits)} for {self.bits}-bit weights"
                    )
                values = quant.decode(quant.unpack(packed, self.bits, param.numel()), stats, self.bits)
                param.copy_(values.reshape(param.shape))
                cache[f"{key}.codes"], cache[f"{key}.stats"] = packed.clone(), stats.clone()
                expected |= {f"{key}.codes", f"{key}.stats"}
            self.prequantized, self._stored_cache = True, cache
        extra = sorted(set(tensors) - expected)
        if extra:
            raise ValueError(f"{source}: unexpected tensors {[f'{where}.{k}' for k in extra]}")

    def stored_nbytes(self) -> int:
        """Closed form: equals the bytes of :meth:`stored`."""
        n = self.dim * self.hidden
        biases = 4 * (self.hidden + self.dim) if self.down_bias is not None else 0
        if self.bits >= 32:
            return 4 * 2 * n + biases
        return 2 * (quant.packed_nbytes(n, self.bits) + quant.STATS_BYTES) + biases

    def num_parameters(self) -> int:
        return 2 * self.dim * self.hidden + ((self.hidden + self.dim) if self.down_bias is not None else 0)


class InputTap(nn.Module):
    """Pass-through wrapper of a block's ``norm2``: remembers its input (the residual stream) for
    the parallel adapter of the same block, which takes it once per forward."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self._stash: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._stash = x
        return self.base(x)

    def take(self, where: str) -> torch.Tensor:
        x, self._stash = self._stash, None
        if x is None:
            raise RuntimeError(f"{where}: the adapter reads the block's residual stream, but the block's "
                               "norm2 did not run before its mlp")
        return x


class AdapterMLP(AdapterLayer):
    """A block's MLP plus a bottleneck adapter, sequential (after the MLP) or parallel (beside it)."""

    mergeable = False

    def __init__(self, base: nn.Module, name: str, dim: int, hidden: int, *, parallel: bool, scale: float,
                 bias: bool, dropout: float, bits: int = 32, tap: InputTap | None = None):
        super().__init__()
        self.base = base
        self.name = name
        self.parallel = parallel
        self.scale = float(scale)
        device = next(base.parameters()).device
        self.adapter = Bottleneck(dim, hidden, bias, dropout, bits, device=device)
        object.__setattr__(self, "_tap", tap)  # a reference, not a child module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if not self.parallel:
            return h + self.scale * self.adapter(h)
        source = self._tap.take(self.name) if self._tap is not None else x
        return h + self.scale * self.adapter(source)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return self.adapter.parameters_list()

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {f"adapter.{k}": v for k, v in self.adapter.stored().items()}

    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        own = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
        extra = sorted(k for k in tensors if not k.startswith("adapter."))
        if extra:
            raise ValueError(f"{source}: unexpected tensors {[f'{self.name}.{k}' for k in extra]}")
        self.adapter.load(own, source, f"{self.name}.adapter")

    def stored_nbytes(self) -> int:
        return self.adapter.stored_nbytes()

    def extra_repr(self) -> str:
        kind = "parallel" if self.parallel else "sequential"
        src = "" if not self.parallel else (", input=residual" if self._tap is not None else ", input=normed")
        return f"{kind}, dim={self.adapter.hidden}, scale={self.scale}, bits={self.adapter.bits}{src}"


@documented
@dataclass
class AdapterConfig:
    """Options of the sequential bottleneck adapter."""

    dim: int = option(8, "bottleneck width")
    scale: float = option(1.0, "scale of the adapter's output")
    dropout: float = option(0.1, "dropout in the bottleneck during training")
    bias: bool = option(True, "the down and up projections have biases")

    def validate(self, method: str) -> None:
        if self.dim < 1:
            raise ValueError(f"option 'dim'={self.dim} of method '{method}': expected a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"option 'dropout'={self.dropout} of method '{method}': expected 0 <= dropout < 1")


@documented
@dataclass
class AdaptFormerConfig(AdapterConfig):
    """Options of AdaptFormer's parallel bottleneck (and Bi-AdaptFormer's, quantised)."""

    scale: float = option(0.1, "scale of the adapter's output")
    bits: int = option(32, "bits per stored weight: 32 = full precision; 1, 2, 4, 8 = Bi-LoRA's quantiser")
    input: str = option("normed", "what the adapter reads: normed (the MLP's input LN(x)) | residual (the block's "
                                  "residual stream x)")

    def validate(self, method: str) -> None:
        super().validate(method)
        quant.check_bits(self.bits)
        if self.input not in INPUTS:
            raise ValueError(f"option 'input'={self.input!r} of method '{method}': expected one of {INPUTS}")


def _apply_bottleneck(model: nn.Module, config: AdapterConfig, method: str, parallel: bool) -> None:
    bits = getattr(config, "bits", 32)
    for name, block in find_mlp_blocks(model, method):
        dim = mlp_width(block.mlp, f"{name}.mlp")
        tap = None
        if parallel and config.input == "residual":
            tap = InputTap(block.norm2)
            replace_module(model, f"{name}.norm2" if name else "norm2", tap)
        mlp_name = f"{name}.mlp" if name else "mlp"
        layer = AdapterMLP(block.mlp, mlp_name, dim, config.dim, parallel=parallel, scale=config.scale,
                           bias=config.bias, dropout=config.dropout, bits=bits, tap=tap)
        replace_module(model, mlp_name, layer)


def apply_adapter(model: nn.Module, config: AdapterConfig, method: str) -> None:
    _apply_bottleneck(model, config, method, parallel=False)


def apply_adaptformer(model: nn.Module, config: AdaptFormerConfig, method: str) -> None:
    _apply_bottleneck(model, config, method, parallel=True)


def _full_precision(options: dict) -> bool:
    return options.get("bits", 32) >= 32


ADAPTER_PAPER = ("Houlsby et al., Parameter-Efficient Transfer Learning for NLP, ICML 2019 "
                 "(sequential after-MLP placement as in the VPT/NOAH baselines)")
ADAPTFORMER_PAPER = "Chen et al., AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition, NeurIPS 2022"
BI_ADAPTFORMER_PAPER = ("Jie et al., Revisiting the Parameter Efficiency of Adapters from the Perspective of "
                        "Precision Redundancy, ICCV 2023")

register(MethodSpec(
    "adapter", AdapterConfig, apply_adapter,
    "sequential bottleneck after each block's MLP: h + up(ReLU(down(h))), h = mlp(x)", ADAPTER_PAPER,
    mergeable=False,
))
register(MethodSpec(
    "adaptformer", AdaptFormerConfig, apply_adaptformer,
    "parallel bottleneck beside each block's MLP: mlp(x) + s·up(ReLU(down(x)))", ADAPTFORMER_PAPER,
    mergeable=False, identity_at_init=_full_precision,
))
register(MethodSpec(
    "bi-adaptformer", AdaptFormerConfig, apply_adaptformer,
    "AdaptFormer with Bi-LoRA's quantiser (1 bit, dim 32, no bias), adapter on the residual stream",
    BI_ADAPTFORMER_PAPER, mergeable=False, identity_at_init=_full_precision,
    defaults={"dim": 32, "bits": 1, "bias": False, "input": "residual"},
))
