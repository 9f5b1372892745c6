"""Head responsiveness: scores per (layer, head), head selection, and applying a selection.

Scores are lists with one tensor per attention block (Swin's head counts differ per stage).
Heart-LoRA's training schedule (:mod:`heartlora.methods.heart_schedule`) drives these pieces;
they are public for loops and analyses of one's own.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import stages
from .base import get_method
from .factory import get_state
from .lowrank import LowRankQKV, lowrank_layers, round_half_up

log = logging.getLogger(__name__)

ACCUMULATED = ("taylor", "activation")


def _layers(model: nn.Module) -> list[LowRankQKV]:
    layers = lowrank_layers(model)
    if not layers:
        raise ValueError("model has no low-rank (lora / bilora / heart-lora) layers to score")
    return layers


class HeadScorer:
    """Accumulates responsiveness during ordinary training steps.

    ``taylor``: Σ over batches of |∂L/∂g_h| for a unit gate on each head's delta, read from the
    gradient of the head's up-projection block that backward computes anyway.
    ``activation``: mean over batches of the per-token ‖Δq_h‖ + ‖Δv_h‖.
    ``weight``: ‖s·B_h·A‖_F read from the weights when ``scores()`` is called.
    Use as a context manager around the scoring epochs.
    """

    def __init__(self, model: nn.Module, kind: str = "taylor", reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if kind not in ACCUMULATED + ("weight",):
            raise ValueError(f"score '{kind}' cannot be accumulated during training; "
                             f"use one of taylor, activation, weight (ablation: ablation_scores)")
        self.kind, self.reduce = kind, reduce  # reduce: mean over data-parallel processes
        self.layers = _layers(model)
        for layer in self.layers:
            layer.reset_scores()
            layer.score_kind = kind if kind in ACCUMULATED else None
            layer.score_reduce = reduce if kind in ACCUMULATED else None

    def scores(self) -> list[torch.Tensor]:
        if self.kind == "weight":
            return [layer.weight_scores().cpu() for layer in self.layers]
        if self.kind == "activation":  # reduced per batch already (``reduce``), equal on every rank
            return [(l.score_sum / max(l.score_batches, 1)).cpu() for l in self.layers]
        return [l.score_sum.detach().clone().cpu() for l in self.layers]

    def close(self) -> None:
        for layer in self.layers:
            layer.score_kind = None
            layer.score_reduce = None

    def __enter__(self) -> "HeadScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def scoring_paused(model: nn.Module):
    """Forward passes inside (evaluation, for instance) do not count as responsiveness
    measurements; scoring resumes as it was on exit."""
    saved = [(layer, layer.score_kind) for layer in lowrank_layers(model) if layer.score_kind is not None]
    for layer, _ in saved:
        layer.score_kind = None
    try:
        yield
    finally:
        for layer, kind in saved:
            layer.score_kind = kind


def _named_layers(model: nn.Module) -> dict[str, LowRankQKV]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LowRankQKV)}


def scoring_state(model: nn.Module) -> dict[str, dict]:
    """Every low-rank layer's accumulated scores, keyed by module name."""
    return {name: layer.score_state() for name, layer in _named_layers(model).items()}


def restore_scoring_state(model: nn.Module, state: dict[str, dict]) -> None:
    modules = _named_layers(model)
    missing = sorted(set(state) - set(modules))
    if missing:
        raise ValueError(f"scoring state names layers this model does not have: {', '.join(missing)}")
    for name, value in state.items():
        modules[name].load_score_state(value)


@torch.no_grad()
def ablation_scores(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    *,
    share_prefix: bool = True,
    max_images: int = 256,
) -> list[torch.Tensor]:
    """Exact responsiveness: loss increase when one head's delta is removed (eval mode).

    Removing a head of block l changes nothing before block l, so (``share_prefix``, on timm
    ViT and Swin) one reference pass keeps every block's input, and each variant re-runs only
    blocks l…L — several variants stacked in one batch of at most ``max_images`` images, block l's
    frozen projection computed once for all of them. That is 1 + Σ_l H·(L−l)/L block passes per
    batch instead of 1 + L·H full passes (about half on 12 blocks), with the same scores to float
    tolerance. Other backbones take the full passes."""
    layers = _layers(model)
    batches = list(batches)
    if not batches:
        raise ValueError("ablation_scores needs at least one batch")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tails = _block_tails(model, layers) if share_prefix else None
    try:
        if tails is None:
            return _ablation_full_passes(model, layers, batches, loss_fn, device)
        return _ablation_shared_prefix(model, layers, tails, batches, loss_fn, device, max_images)
    finally:
        model.train(was_training)


def _ablation_full_passes(model, layers, batches, loss_fn, device) -> list[torch.Tensor]:
    def loss() -> float:
        total = 0.0
        for images, labels in batches:
            total += float(loss_fn(model(images.to(device)), labels.to(device)))
        return total / len(batches)

    reference = loss()
    scores = []
    for layer in layers:
        per_head = torch.zeros(layer.site.num_heads)
        for head in layer.active_heads.tolist():
            layer.head_gate[head] = 0.0
            try:
                per_head[head] = loss() - reference
            finally:
                layer.head_gate[head] = 1.0
        scores.append(per_head)
    return scores


def _block_tails(model: nn.Module, layers: list[LowRankQKV]) -> list[tuple[nn.Module, Callable]] | None:
    """Per low-rank layer: (its transformer block, the rest of the network from that block's
    input to the logits), for timm's VisionTransformer and SwinTransformer; None otherwise."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    tails = []
    if type(model).forward_features is VisionTransformer.forward_features and isinstance(model.blocks, nn.Sequential):
        for layer in layers:
            parts = layer.site.name.split(".")
            if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "attn":
                return None
            j = int(parts[1])
            tails.append((model.blocks[j], lambda x, j=j: model.forward_head(model.norm(model.blocks[j:](x)))))
        return tails
    if type(model).forward_features is SwinTransformer.forward_features and isinstance(model.layers, nn.Sequential):
        for layer in layers:
            parts = layer.site.name.split(".")
            if len(parts) != 5 or parts[0] != "layers" or parts[2] != "blocks" or parts[4] != "attn":
                return None
            stage, j = int(parts[1]), int(parts[3])

            def tail(x, stage=stage, j=j):
                x = model.layers[stage].blocks[j:](x)
                return model.forward_head(model.norm(model.layers[stage + 1:](x)))

            tails.append((model.layers[stage].blocks[j], tail))
        return tails
    return None


def _ablation_shared_prefix(model, layers, tails, batches, loss_fn, device, max_images) -> list[torch.Tensor]:
    scores = [torch.zeros(layer.site.num_heads, dtype=torch.float64) for layer in layers]
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        inputs: dict[int, torch.Tensor] = {}
        hooks = [block.register_forward_pre_hook(lambda module, args, i=i: inputs.__setitem__(i, args[0]))
                 for i, (block, _) in enumerate(tails)]
        try:
            reference = float(loss_fn(model(images), labels))
        finally:
            for hook in hooks:
                hook.remove()
        per_copy = max(1, max_images // images.shape[0])
        for i, (layer, (_, tail)) in enumerate(zip(layers, tails)):
            active = layer.active_heads.tolist()
            for start in range(0, len(active), per_copy):
                heads = active[start:start + per_copy]
                stacked = inputs[i].repeat(len(heads), *([1] * (inputs[i].dim() - 1)))
                layer.ablation_heads = torch.tensor(heads, device=device)
                try:
                    logits = tail(stacked)
                finally:
                    layer.ablation_heads = None
                for k, head in enumerate(logits.reshape(len(heads), images.shape[0], -1)):
                    scores[i][heads[k]] += float(loss_fn(head, labels)) - reference
    return [(s / len(batches)).float() for s in scores]


def heads_off_counts(heads: Sequence[int], ne: int | Sequence[int] | None = None,
                     fraction: float | None = None) -> list[int]:
    """Heads to switch off in each layer: ``ne`` (one count, or one per layer) or
    ``round(fraction · H_l)``; at least one head stays active in every layer."""
    if fraction is not None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"option 'fraction'={fraction!r}: expected 0 <= fraction < 1")
        return [min(round_half_up(fraction * h), h - 1) for h in heads]
    if ne is None:
        raise ValueError("select_heads needs option 'ne' or option 'fraction'")
    counts = [ne] * len(heads) if isinstance(ne, int) else list(ne)
    if len(counts) != len(heads):
        raise ValueError(f"got {len(counts)} head counts for {len(heads)} attention blocks")
    for layer, (count, h) in enumerate(zip(counts, heads)):
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < h:
            raise ValueError(f"option 'ne'={count!r}: expected 0 <= ne < {h} (heads of attention block {layer})")
    return counts


def select_heads(
    scores: Sequence[torch.Tensor],
    ne: int | Sequence[int] | None = None,
    select: str = "global",
    fraction: float | None = None,
    normalize: bool = False,
    seed: int = 0,
    stages: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Boolean masks (True = active) per layer. The least responsive heads are switched off;
    ties go to the lower head index, so the result is deterministic.

    ``global`` accumulates scores over all layers (``R[h] = Σ_l r[l,h]``) and switches off the same
    heads everywhere; ``stage`` does the same within each stage (``stages``: stage index per layer,
    e.g. Swin's, whose stages differ in head count; one stage = ``global``); ``layer`` (and its
    alias ``fraction``) lets each layer switch off its own. How many: ``ne`` (a count, or one
    per layer) or ``fraction`` of each layer's heads. Controls: ``first`` switches off heads
    0..ne-1, ``random`` a set drawn with ``seed`` (the same in every layer, like ``global``),
    ``reverse`` the *most* responsive heads under global accumulation (ties: lower index)."""
    scores = [torch.as_tensor(s, dtype=torch.float64).flatten().cpu() for s in scores]
    if normalize:
        scores = [s / s.abs().sum() if s.abs().sum() > 0 else s for s in scores]  # ablation scores can be < 0
    heads = [s.numel() for s in scores]
    counts = heads_off_counts(heads, ne, fraction)

    def lowest(values: torch.Tensor, count: int) -> list[int]:
        order = sorted(range(values.numel()), key=lambda h: (float(values[h]), h))
        return order[:count]

    def mask_without(n_heads: int, off: list[int]) -> torch.Tensor:
        mask = torch.ones(n_heads, dtype=torch.bool)
        mask[off] = False
        return mask

    def shared_count() -> int:
        if len(set(heads)) != 1 or len(set(counts)) != 1:
            raise ValueError(f"select='{select}' needs the same head count in every layer (got {heads} heads, "
                             f"{counts} off); use select='stage' or select='layer'")
        return counts[0]

    if select in ("layer", "fraction"):
        masks = [mask_without(h, lowest(s, c)) for s, h, c in zip(scores, heads, counts)]
    elif select in ("global", "stage"):
        groups = [0] * len(scores) if select == "global" or stages is None else list(stages)
        if len(groups) != len(scores):
            raise ValueError(f"got {len(groups)} stage indices for {len(scores)} attention blocks")
        masks = [None] * len(scores)
        for group in dict.fromkeys(groups):
            members = [i for i, g in enumerate(groups) if g == group]
            if len({heads[i] for i in members}) != 1 or len({counts[i] for i in members}) != 1:
                raise ValueError(f"select='{select}' needs equal head counts within a stage, got "
                                 f"{[heads[i] for i in members]} heads, {[counts[i] for i in members]} off; "
                                 "use select='layer'" + (" or select='stage'" if select == "global" else ""))
            off = lowest(torch.stack([scores[i] for i in members]).sum(dim=0), counts[members[0]])
            for i in members:
                masks[i] = mask_without(heads[i], off)
    elif select == "first":
        # the paper's arbitrary-deactivation control (Figure 3): scores are ignored
        if len(set(counts)) != 1:
            raise ValueError(f"select='first' needs the same head count off in every layer (got {counts})")
        masks = [mask_without(h, list(range(counts[0]))) for h in heads]
    elif select == "random":
        count = shared_count()
        generator = torch.Generator().manual_seed(int(seed))
        off = sorted(torch.randperm(heads[0], generator=generator)[:count].tolist())
        masks = [mask_without(h, off) for h in heads]
    elif select == "reverse":
        count = shared_count()
        off = lowest(-torch.stack(scores).sum(dim=0), count)
        masks = [mask_without(h, off) for h in heads]
    else:
        raise ValueError(f"option 'select'={select!r}: expected global, stage, layer, fraction, first, random or reverse")
    log.info("head selection (%s): switched off %s", select,
             [torch.nonzero(~m).flatten().tolist() for m in masks])
    return masks


def heads_in_order(scores: Sequence[torch.Tensor], select: str = "global", stages: Sequence[int] | None = None,
                   seed: int = 0) -> list[list[int]]:
    """Per layer, every head from the first to the last to be switched off under ``select``:
    ``select_heads(..., ne=k)`` switches off the first ``k`` of each list (used by ``ne=auto``)."""
    heads = [torch.as_tensor(s).numel() for s in scores]
    order: list[list[int]] = [[] for _ in heads]
    previous = [torch.ones(h, dtype=torch.bool) for h in heads]
    for k in range(1, min(heads)):
        masks = select_heads(scores, ne=k, select=select, stages=stages, seed=seed)
        for i, (mask, before) in enumerate(zip(masks, previous)):
            order[i] += torch.nonzero(before & ~mask).flatten().tolist()
        previous = masks
    return order


@torch.no_grad()
def apply_head_selection(
    model: nn.Module,
    masks: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    scores: Sequence[torch.Tensor] | None = None,
) -> None:
    """Switch off heads: their B blocks are removed (zero delta, zero gradient, not stored).
    ``optimizer`` is given the new, smaller up-projection parameters in place of the old ones,
    with the state of the remaining blocks kept, sliced like the parameters."""
    layers = _layers(model)
    if len(masks) != len(layers):
        raise ValueError(f"got {len(masks)} head masks for {len(layers)} attention blocks")
    for layer, mask in zip(layers, masks):
        old = layer.lora_B
        keep = layer.set_active_heads(torch.as_tensor(mask))
        new = layer.lora_B
        if optimizer is not None and new is not old:
            for group in optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            if old in optimizer.state:
                state = optimizer.state.pop(old)
                for key, value in list(state.items()):
                    if torch.is_tensor(value) and value.dim() == 4 and value.shape[1] != new.shape[1]:
                        state[key] = value.index_select(1, keep.to(value.device)).contiguous()
                optimizer.state[new] = state
    state = get_state(model)
    state.head_masks = [layer.head_mask().tolist() for layer in layers]
    if scores is not None:
        state.scores = [torch.as_tensor(s).flatten().tolist() for s in scores]


def select_and_apply(
    model: nn.Module,
    scores: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> list[torch.Tensor]:
    """Select heads with the model's own options (ne / fraction / select / normalize) and apply.
    Byte budgets and ``ne=auto`` are decided by the method's schedule (``heartlora.schedule_for``)."""
    state = get_state(model)
    opts = state.options
    if not get_method(state.method).selects_heads:
        raise ValueError(f"method '{state.method}' does not select heads")
    if opts.get("ne") == "auto" or opts.get("budget_bytes") is not None or opts.get("budget_ratio") is not None:
        raise ValueError(f"method '{state.method}': ne=auto and byte budgets are chosen by the method's schedule; "
                         "use heartlora.schedule_for(model, ...)")
    masks = select_heads(scores, ne=opts.get("ne"), select=opts["select"], fraction=opts.get("fraction"),
                         normalize=opts.get("normalize", False), seed=opts.get("select_seed", 0),
                         stages=stages([layer.site for layer in _layers(model)]))
    apply_head_selection(model, masks, optimizer=optimizer, scores=scores)
    off = [torch.nonzero(~m).flatten().tolist() for m in masks]
    state.selection = {"score": opts.get("score"), "select": opts["select"], "ne": opts.get("ne"),
                       "fraction": opts.get("fraction"), "heads_off": [len(x) for x in off], "switched_off": off}
    return masks
