"""Attention maps of timm backbones on the image grid, for drawing.

timm's fused attention kernel never materialises the probabilities, so the explicit path is
switched on only while a map is taken, and the probabilities are read where they enter
``attn_drop`` (the model's outputs are unchanged).

- ViT (``Attention``): the class token's attention to every patch (a model without a class token:
  the attention each patch receives, averaged over all query tokens), on the patch grid.
- Swin (``WindowAttention``): attention is computed inside windows, so there is no global query.
  Each token's map value is the attention it *receives* inside its window, averaged over the
  window's query tokens; windows are put back on the stage's token grid (undoing the padding and
  the cyclic shift of shifted-window blocks), which is coarser in later stages.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import ConfigError


def _sites(model):
    from ..heads import find_attention_sites

    return find_attention_sites(model)


def check_heads(model, heads: list[tuple[int, int]], source: str) -> None:
    """Raise a ConfigError naming ``--heads`` and the valid ranges if a layer or head does not exist."""
    sites = _sites(model)
    counts = [s.num_heads for s in sites]
    ranges = (f"heads per layer: {counts[0]}" if len(set(counts)) == 1 else
              "heads per layer: " + ", ".join(map(str, counts)))
    for layer, head in heads:
        if not 0 <= layer < len(sites):
            raise ConfigError(f"option '--heads': layer {layer} out of range for {source} (layers 0–{len(sites) - 1}; "
                              f"{ranges})")
        if not 0 <= head < counts[layer]:
            raise ConfigError(f"option '--heads': head {head} out of range in layer {layer} of {source} "
                              f"(heads 0–{counts[layer] - 1})")


def _capture(model, images: torch.Tensor, layer: int):
    """(probabilities (B·windows, H, N, N), the attention module, its block's input) of one forward."""
    site = _sites(model)[layer]
    attn = model.get_submodule(site.name)
    block = model.get_submodule(site.name.rsplit(".", 1)[0]) if "." in site.name else model
    probs, inputs = [], []
    hooks = [attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(i[0].detach())),
             block.register_forward_pre_hook(lambda m, i: inputs.append(i[0].shape))]
    fused = getattr(attn, "fused_attn", False)
    attn.fused_attn = False
    try:
        with torch.no_grad():
            model(images)
    finally:
        attn.fused_attn = fused
        for hook in hooks:
            hook.remove()
    if not probs:
        raise ValueError(f"{site.name}: no attention probabilities captured (its attention does not run through "
                         "'attn_drop' on the explicit path)")
    return probs[0], block, inputs[0]


def _is_window_attention(block) -> bool:
    return hasattr(block, "window_size") and hasattr(block, "shift_size")


def windows_to_grid(values: torch.Tensor, batch: int, window: tuple[int, int], shift: tuple[int, int], height: int,
                    width: int) -> torch.Tensor:
    """Per-window token values (B·nW, wh·ww, C), in timm's window order, back on the (B, H, W, C)
    token grid: the inverse of a Swin block's cyclic shift, padding and ``window_partition``."""
    wh, ww = window
    channels = values.shape[-1]
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    grid = values.reshape(batch, hp // wh, wp // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(batch, hp, wp, channels)[:, :height, :width]
    if any(shift):
        grid = torch.roll(grid, shifts=shift, dims=(1, 2))
    return grid


def attention_grid(model, images: torch.Tensor, layer: int) -> tuple[np.ndarray, str]:
    """(maps of shape (batch, heads, rows, cols) on the token grid, what a value means)."""
    probs, block, shape = _capture(model, images, layer)
    batch = images.shape[0]
    if _is_window_attention(block):
        _, height, width, _ = shape  # Swin blocks take (B, H, W, C)
        received = probs.mean(dim=-2).transpose(1, 2)  # (B·nW, N, H): attention each token receives in its window
        grid = windows_to_grid(received, batch, tuple(block.window_size), tuple(block.shift_size), height, width)
        return grid.permute(0, 3, 1, 2).numpy(), "attention received within the window (mean over its queries)"
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    has_class = getattr(model, "cls_token", None) is not None
    patches = probs.shape[-1] - prefix
    grid_size = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    rows, cols = grid_size if grid_size else (int(round(patches ** 0.5)),) * 2
    if rows * cols != patches:
        raise ValueError(f"attention block {layer}: {patches} patch tokens do not fill a {rows}×{cols} grid")
    if has_class:
        values, meaning = probs[:, :, 0, prefix:], "class-token attention to each patch"
    else:
        values, meaning = probs[:, :, prefix:, prefix:].mean(dim=-2), "attention each patch receives (mean over queries)"
    return values.reshape(batch, -1, rows, cols).numpy(), meaning
