"""Low-rank adaptation of the fused qkv projection, head by head: LoRA and Bi-LoRA (Heart-LoRA
builds on this layer in :mod:`heartlora.methods.heart_lora`).

``Δ = s · B · Drop(A · x)`` is added to the q/k/v rows chosen by ``targets``. B is kept per head
(``lora_B[t, h]`` ∈ R^{d_h×r}) and only the *active* heads exist as parameters, so a
switched-off head has exactly zero delta and zero gradient, and is neither trained nor stored.
All targets share one down-projection matmul and one dropout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import TARGET_INDEX, AttentionSite, find_attention_sites
from . import quant
from .base import AdapterLayer, MethodSpec, documented, option, register, replace_module


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@documented
@dataclass
class LoRAConfig:
    """Options of the low-rank update ``Δ = s · B · Drop(A · x)`` on the chosen q/k/v rows."""

    rank: int = option(8, "rank r of each target's A (r×d) and B (d×r)")
    scale: float = option(1.0, "scale s of the update (the Bi-LoRA lineage tunes it per task over 0.01, 0.1, 1, 10)")
    dropout: float = option(0.1, "dropout on the rank-r activations A·x during training")
    targets: tuple[str, ...] = option(("q", "v"), "which of q, k, v receive an update (comma list)")
    bits: int = option(32, "bits per stored weight: 32 = full precision; 1, 2, 4, 8 = Bi-LoRA's quantiser "
                           "(standard-normal codebook, straight-through), B then starts tiny instead of zero")

    def validate(self, method: str) -> None:
        if self.rank < 1:
            raise ValueError(f"option 'rank'={self.rank} of method '{method}': expected a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"option 'dropout'={self.dropout} of method '{method}': expected 0 <= dropout < 1")
        quant.check_bits(self.bits)
        bad = [t for t in self.targets if t not in TARGET_INDEX]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f"option 'targets'={','.join(self.targets)!r} of method '{method}': expected a "
                "non-empty subset of q,k,v without repeats"
            )
        self.targets = tuple(t for t in "qkv" if t in self.targets)  # canonical order


class LowRankQKV(AdapterLayer):
    """Wraps an attention block's fused qkv Linear and adds the per-head low-rank update."""

    mergeable = True

    def __init__(self, base: nn.Linear, site: AttentionSite, config: LoRAConfig):
        super().__init__()
        self.base = base
        self.site = site
        self.rank = config.rank
        self.scale = float(config.scale)
        self.bits = config.bits
        self.targets = tuple(config.targets)
        device = base.weight.device
        n_targets, heads, head_dim = len(self.targets), site.num_heads, site.head_dim
        self.lora_A = nn.Parameter(torch.empty(n_targets, self.rank, site.in_dim, device=device))
        self.lora_B = nn.Parameter(torch.empty(n_targets, heads, head_dim, self.rank, device=device))
        self.dropout = nn.Dropout(config.dropout)
        self.register_buffer("active_heads", torch.arange(heads, device=device), persistent=False)
        self.register_buffer("head_gate", torch.ones(heads, device=device), persistent=False)
        self.register_buffer("_rows", self._rows_for(self.active_heads), persistent=False)
        self.merged = False
        self._weight_backup: torch.Tensor | None = None
        self.prequantized = False  # weights hold decoded codes from a loaded quantised adapter
        self._loaded_versions: tuple[int, int] | None = None
        self._stored_cache: dict[str, torch.Tensor] | None = None
        self.score_kind: str | None = None
        self.score_reduce = None  # set by HeadScorer(reduce=...) in data-parallel loops
        # exact ablation with a shared prefix: the batch holds one copy of the same input per entry,
        # and copy i has head ablation_heads[i]'s delta removed (see ablation_scores)
        self.ablation_heads: torch.Tensor | None = None
        self.register_buffer("score_sum", torch.zeros(heads, device=device), persistent=False)
        self.score_batches = 0
        self.reset_parameters()

    # ----- construction -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.site.in_dim)  # nn.Linear's Kaiming-uniform (a=√5)
            self.lora_A.uniform_(-bound, bound)
            if self.bits >= 32:
                self.lora_B.zero_()  # the model equals the backbone at init
            else:
                # a zero matrix has no spread to quantise, so quantised B starts tiny, not zero
                nn.init.trunc_normal_(self.lora_B, std=1e-3)
        self.prequantized, self._stored_cache = False, None

    def _rows_for(self, active: torch.Tensor) -> torch.Tensor:
        site = self.site
        offsets = torch.arange(site.head_dim, device=active.device)
        head_rows = (active[:, None] * site.head_dim + offsets[None, :]).flatten()
        return torch.stack([TARGET_INDEX[t] * site.attn_dim + head_rows for t in self.targets])

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]

    def extra_repr(self) -> str:
        return (
            f"targets={','.join(self.targets)}, rank={self.rank}, scale={self.scale}, bits={self.bits}, "
            f"active_heads={self.active_heads.numel()}/{self.site.num_heads}"
        )

    # ----- effective weights --------------------------------------------------------------
    def _loaded_codes_current(self) -> bool:
        """True while the weights still hold exactly the codes of a loaded quantised adapter;
        once they are trained further they are quantised (and stored) afresh."""
        if self.prequantized and self._loaded_versions != (self.lora_A._version, self.lora_B._version):
            self.prequantized, self._stored_cache = False, None
        return self.prequantized

    def _quantized(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.bits >= 32 or self._loaded_codes_current():
            return stacked
        n = stacked.shape[0]
        return torch.stack([quant.quantize_ste(stacked[i], self.bits) for i in range(n)])

    def effective_A(self) -> torch.Tensor:
        """(n_targets·r, d) down-projection as used in the forward pass."""
        return self._quantized(self.lora_A).reshape(-1, self.site.in_dim)

    def effective_B(self) -> torch.Tensor:
        """(n_targets, active heads, d_h, r): quantised, scaled and gated per head."""
        n, h, dh, r = self.lora_B.shape
        b = self._quantized(self.lora_B.reshape(n, h * dh, r)).reshape(n, h, dh, r)
        gate = self.head_gate[self.active_heads].to(b.dtype)
        return b * (self.scale * gate)[None, :, None, None]

    def full_B(self, b_eff: torch.Tensor) -> torch.Tensor:
        """Scatter the active head blocks into the (3·H·d_h, n_targets·r) up-projection."""
        n, r = len(self.targets), self.rank
        full = b_eff.new_zeros(3 * self.site.attn_dim, n, r)
        for t in range(n):
            full[self._rows[t], t] = b_eff[t].reshape(-1, r)
        return full.reshape(3 * self.site.attn_dim, n * r)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (3·H·d_h, d) that merging adds to qkv.weight."""
        return self.full_B(self.effective_B()) @ self.effective_A()

    # ----- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.active_heads.numel() == 0:
            return self.base(x)
        if self.ablation_heads is not None:
            return self._forward_ablation_variants(x)
        b_eff = self.effective_B()
        if self.score_kind == "taylor" and b_eff.requires_grad:
            b_eff.register_hook(self._taylor_hook(b_eff.detach()))
        z = self.dropout(F.linear(x, self.effective_A().to(x.dtype)))
        up = self.full_B(b_eff)
        if self.score_kind == "activation":
            # statistics on the side, so scoring never changes the numbers training sees
            self._accumulate_activation(F.linear(z.detach(), up.detach().to(z.dtype)))
        # qkv(x) + z·Bᵀ as one addmm plus one in-place addmm on a fresh (non-view) tensor:
        # no extra (tokens × 3d) tensor, and Linear's backward never reads its own output.
        x2d, z2d = x.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1])
        weight, bias = self.base.weight, self.base.bias
        out = torch.mm(x2d, weight.t().to(x2d.dtype)) if bias is None else torch.addmm(
            bias.to(x2d.dtype), x2d, weight.t().to(x2d.dtype))
        out.addmm_(z2d, up.to(out.dtype).t())
        return out.view(*x.shape[:-1], out.shape[-1])

    @torch.no_grad()
    def _forward_ablation_variants(self, x: torch.Tensor) -> torch.Tensor:
        """The batch is ``len(ablation_heads)`` copies of one input (variant-major); the frozen
        projection and the full delta are computed once, and copy i drops head i's rows."""
        heads = self.ablation_heads
        copies = heads.numel()
        single = x.reshape(copies, -1, x.shape[-1])[0]
        base = self.base(single)
        delta = F.linear(self.dropout(F.linear(single, self.effective_A().to(single.dtype))),
                         self.full_B(self.effective_B()).to(single.dtype))
        site = self.site
        keep = torch.ones(copies, 3 * site.attn_dim, dtype=delta.dtype, device=delta.device)
        offsets = torch.arange(site.head_dim, device=delta.device)
        for t in self.targets:
            rows = TARGET_INDEX[t] * site.attn_dim + heads.to(delta.device)[:, None] * site.head_dim + offsets[None]
            keep.scatter_(1, rows, 0.0)
        out = base.unsqueeze(0) + delta.unsqueeze(0) * keep[:, None, :]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    # ----- responsiveness -----------------------------------------------------------------
    def _taylor_hook(self, b_eff: torch.Tensor):
        # |∂L/∂g_h| for a gate g_h = 1 on head h's delta equals |Σ ∂L/∂B_h ⊙ B_h| over its block
        # (targets summed: one gate per head), so it costs no extra pass.
        reduce = self.score_reduce

        def hook(grad: torch.Tensor) -> None:
            # tensor ops only (no Python counters): keeps the hook inside a torch.compile graph
            signed = (grad.detach().float() * b_eff.float()).sum(dim=(0, 2, 3))
            if reduce is not None:  # data-parallel: this step's gradient is the mean over processes
                signed = reduce(signed)
            self.score_sum.index_add_(0, self.active_heads, signed.abs())

        return hook

    @torch.no_grad()
    def _accumulate_activation(self, delta: torch.Tensor) -> None:
        site = self.site
        per_token = delta.detach().float().reshape(-1, 3, site.num_heads, site.head_dim)
        ids = [TARGET_INDEX[t] for t in self.targets]
        norms = per_token[:, ids].norm(dim=-1).sum(dim=1).mean(dim=0)  # (H,)
        if self.score_reduce is not None:  # data-parallel: every rank accumulates the same numbers
            norms = self.score_reduce(norms)
        self.score_sum += norms
        self.score_batches += 1

    @torch.no_grad()
    def weight_scores(self) -> torch.Tensor:
        """‖s·B^(h)·A‖_F per head, targets summed; zero for switched-off heads."""
        a = self._quantized(self.lora_A)  # (n, r, d)
        b = self.effective_B()  # (n, Ha, dh, r)
        per = torch.einsum("nhdr,nrk->nhdk", b.float(), a.float()).flatten(2).norm(dim=-1).sum(dim=0)
        scores = torch.zeros(self.site.num_heads, device=per.device)
        scores[self.active_heads] = per
        return scores

    def reset_scores(self) -> None:
        self.score_sum.zero_()
        self.score_batches = 0

    def score_state(self) -> dict:
        """Accumulated responsiveness so far (for checkpoints taken mid-scoring)."""
        return {"sum": self.score_sum.detach().cpu().clone(), "batches": int(self.score_batches)}

    @torch.no_grad()
    def load_score_state(self, state: dict) -> None:
        self.score_sum.copy_(state["sum"].to(self.score_sum.device))
        self.score_batches = int(state["batches"])

    # ----- head selection -----------------------------------------------------------------
    @torch.no_grad()
    def set_active_heads(self, active_mask: torch.Tensor) -> torch.Tensor:
        """Keep only heads where ``active_mask`` is True; ``lora_B`` becomes a new, smaller
        Parameter. Returns the kept positions inside the previous ``lora_B`` (dim 1), so callers
        can slice optimiser state the same way (:func:`apply_head_selection` does)."""
        if self.merged:
            raise RuntimeError(f"{self.site.qkv_name}: unmerge before changing the head selection")
        active_mask = active_mask.to(torch.bool).cpu()
        current = self.active_heads.cpu()
        if active_mask.numel() != self.site.num_heads:
            raise ValueError(
                f"{self.site.name}: head mask has {active_mask.numel()} entries, layer has {self.site.num_heads} heads"
            )
        current_set = set(current.tolist())
        switched_on = [h for h in torch.nonzero(active_mask).flatten().tolist() if h not in current_set]
        if switched_on:
            raise ValueError(f"{self.site.name}: heads {switched_on} were switched off before and cannot come back")
        keep = torch.nonzero(active_mask[current]).flatten().to(self.lora_B.device)
        # A new Parameter, not ``.data`` surgery: autograd caches a leaf's gradient accumulator with
        # its shape for as long as any old graph (e.g. the last loss of a user's loop) is alive.
        old = self.lora_B
        self.lora_B = nn.Parameter(old.detach().index_select(1, keep).contiguous(), requires_grad=old.requires_grad)
        if old.grad is not None:
            self.lora_B.grad = old.grad.index_select(1, keep).contiguous()
        self.active_heads = self.active_heads.index_select(0, keep)
        self._rows = self._rows_for(self.active_heads)
        self._stored_cache = None
        return keep

    def head_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.site.num_heads, dtype=torch.bool)
        mask[self.active_heads.cpu()] = True
        return mask

    # ----- storage ------------------------------------------------------------------------
    def stored_tensors(self) -> dict[str, torch.Tensor]:
        if self._loaded_codes_current() and self._stored_cache is not None:
            return dict(self._stored_cache)
        a, b = self.lora_A.detach(), self.lora_B.detach()
        if self.bits >= 32:
            return {"lora_A": a.float().clone(), "lora_B": b.float().clone()}
        out = {}
        n, h, dh, r = b.shape
        for t, name in enumerate(self.targets):
            for key, matrix in (("lora_A", a[t]), ("lora_B", b[t].reshape(h * dh, r))):
                codes, stats = quant.encode(matrix, self.bits)
                out[f"{key}.{name}.codes"] = quant.pack(codes, self.bits)
                out[f"{key}.{name}.stats"] = stats.float()
        return out

    @torch.no_grad()
    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        def fetch(key: str) -> torch.Tensor:
            if key not in tensors:
                raise ValueError(f"{source}: missing tensor '{self.site.qkv_name}.{key}'")
            return tensors[key].to(self.lora_A.device)

        if self.bits >= 32:
            for key, param in (("lora_A", self.lora_A), ("lora_B", self.lora_B)):
                value = fetch(key)
                if value.shape != param.shape:
                    raise ValueError(
                        f"{source}: '{self.site.qkv_name}.{key}' has shape {tuple(value.shape)}, "
                        f"expected {tuple(param.shape)}"
                    )
                param.copy_(value)
            return
        n, h, dh, r = self.lora_B.shape
        cache = {}
        for t, name in enumerate(self.targets):
            for key, param, numel in (("lora_A", self.lora_A, r * self.site.in_dim), ("lora_B", self.lora_B, h * dh * r)):
                packed, stats = fetch(f"{key}.{name}.codes"), fetch(f"{key}.{name}.stats")
                if packed.numel() != quant.packed_nbytes(numel, self.bits):
                    raise ValueError(
                        f"{source}: '{self.site.qkv_name}.{key}.{name}.codes' holds {packed.numel()} bytes, "
                        f"expected {quant.packed_nbytes(numel, self.bits)} for {self.bits}-bit weights"
                    )
                values = quant.decode(quant.unpack(packed, self.bits, numel), stats, self.bits)
                param[t].copy_(values.reshape(param[t].shape))
                cache[f"{key}.{name}.codes"], cache[f"{key}.{name}.stats"] = packed.clone(), stats.clone()
        self.prequantized, self._stored_cache = True, cache
        self._loaded_versions = (self.lora_A._version, self.lora_B._version)

    def stored_nbytes(self, active_heads: int | None = None) -> int:
        """Closed-form stored size; equals the bytes of ``stored_tensors()``. With
        ``active_heads``: the size this layer would have with that many heads kept."""
        n, h, dh, r = self.lora_B.shape
        h = h if active_heads is None else active_heads
        sizes = (r * self.site.in_dim, h * dh * r)
        if self.bits >= 32:
            return 4 * n * sum(sizes)
        return n * sum(quant.packed_nbytes(s, self.bits) + quant.STATS_BYTES for s in sizes)

    # ----- merge --------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        weight = self.base.weight
        self._weight_backup = weight.detach().clone()
        weight.add_(self.delta_weight().to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight.copy_(self._weight_backup)
        self._weight_backup = None
        self.merged = False


def lowrank_layers(model: nn.Module) -> list[LowRankQKV]:
    return [m for m in model.modules() if isinstance(m, LowRankQKV)]


def _full_precision(options: dict) -> bool:
    return options["bits"] >= 32


def apply_lowrank(model: nn.Module, config: LoRAConfig, method: str) -> None:
    sites = find_attention_sites(model)
    resolve = getattr(config, "resolve", None)  # options that depend on the head counts (Heart-LoRA)
    if resolve is not None:
        resolve(sites, method)
    for site in sites:
        qkv = model.get_submodule(site.qkv_name)
        replace_module(model, site.qkv_name, LowRankQKV(qkv, site, config))


LORA_PAPER = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022"
BILORA_PAPER = ("Jie et al., Revisiting the Parameter Efficiency of Adapters from the Perspective of Precision Redundancy, "
                "ICCV 2023")

register(MethodSpec(
    "lora", LoRAConfig, apply_lowrank,
    "low-rank update of q,v (every head), full precision", LORA_PAPER, mergeable=True, identity_at_init=_full_precision,
    peft_exportable=True, servable=True,
))
register(MethodSpec(
    "bilora", LoRAConfig, apply_lowrank,
    "LoRA with standard-normal-codebook quantised A and B (straight-through)", BILORA_PAPER,
    mergeable=True, defaults={"rank": 32, "bits": 1}, identity_at_init=_full_precision,
    peft_exportable=True, servable=True,
))
