"""Head geometry of timm attention modules: which rows of the fused ``qkv`` belong to which head.

This is the only place that knows how timm lays out attention. Both ViT's ``Attention`` and
Swin's ``WindowAttention`` own a fused ``qkv`` Linear(d -> 3·H·d_h) whose output rows are
``[q | k | v]``, each block split into H contiguous row blocks of d_h rows (head h owns
rows ``h·d_h … (h+1)·d_h`` inside each of q, k, v).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
from torch import nn

TARGET_INDEX = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True)
class AttentionSite:
    """One attention block of a backbone, in forward order."""

    layer: int  # position among the model's attention blocks (0 = first)
    name: str  # module path of the attention module, e.g. "blocks.3.attn"
    in_dim: int  # d: input features of qkv
    num_heads: int  # H
    head_dim: int  # d_h

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def qkv_name(self) -> str:
        return f"{self.name}.qkv"

    def rows(self, target: str, head: int) -> range:
        """Rows of the fused qkv output owned by ``head`` for ``target`` (q, k or v)."""
        start = TARGET_INDEX[target] * self.attn_dim + head * self.head_dim
        return range(start, start + self.head_dim)

    def to_dict(self) -> dict:
        return asdict(self)


def _qkv_linear(module: nn.Module) -> nn.Linear | None:
    qkv = getattr(module, "qkv", None)
    # An already-wrapped qkv exposes the original Linear as ``base``.
    qkv = getattr(qkv, "base", qkv)
    return qkv if isinstance(qkv, nn.Linear) else None


def find_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """All attention blocks with a fused qkv projection, in forward (registration) order.

    Raises a ValueError naming the model class when there is none, so an unsupported backbone
    fails loudly instead of being silently left unadapted.
    """
    sites: list[AttentionSite] = []
    for name, module in model.named_modules():
        qkv = _qkv_linear(module)
        num_heads = getattr(module, "num_heads", None)
        if qkv is None or not isinstance(num_heads, int):
            continue
        attn_dim = qkv.out_features // 3
        if qkv.out_features != 3 * attn_dim or attn_dim % num_heads:
            raise ValueError(
                f"{name}.qkv has {qkv.out_features} outputs, expected 3·H·d_h with H={num_heads}"
            )
        sites.append(AttentionSite(len(sites), name, qkv.in_features, num_heads, attn_dim // num_heads))
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no attention module with a fused 'qkv' Linear and "
            "'num_heads'; heartlora supports timm VisionTransformer and SwinTransformer backbones"
        )
    return sites


def stages(sites: list[AttentionSite]) -> list[int]:
    """Stage index of every attention block: blocks of one stage share their head count (Swin's
    ``layers.<i>.blocks.<j>``; a plain ViT is one stage). A stage is the module path before
    ``.blocks.``, split further wherever the head count or width changes."""
    out: list[int] = []
    previous = None
    for site in sites:
        prefix = site.name.rsplit(".blocks.", 1)[0] if ".blocks." in site.name else ""
        key = (prefix, site.num_heads, site.in_dim)
        if key != previous:
            out.append(out[-1] + 1 if out else 0)
        else:
            out.append(out[-1])
        previous = key
    return out


def heads_per_layer(sites: list[AttentionSite]) -> list[int]:
    return [s.num_heads for s in sites]


def geometry(model: nn.Module) -> list[dict]:
    """JSON-ready description of the head geometry, stored with every adapter."""
    return [s.to_dict() for s in find_attention_sites(model)]


def check_geometry(expected: list[dict], model: nn.Module, source: str) -> None:
    """Raise if ``model``'s attention geometry differs from ``expected`` (read from ``source``)."""
    actual = geometry(model)
    if len(actual) != len(expected):
        raise ValueError(
            f"{source}: adapter was made for a backbone with {len(expected)} attention blocks, "
            f"this model has {len(actual)}"
        )
    for want, have in zip(expected, actual):
        for key in ("name", "in_dim", "num_heads", "head_dim"):
            if want[key] != have[key]:
                raise ValueError(
                    f"{source}: attention block {want['layer']} ({want['name']}) expects "
                    f"{key}={want[key]}, this model has {key}={have[key]} — the adapter belongs "
                    "to another backbone"
                )


def ones_mask(sites: list[AttentionSite]) -> list[torch.Tensor]:
    return [torch.ones(s.num_heads, dtype=torch.bool) for s in sites]
