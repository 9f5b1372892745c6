"""Bi-LoRA's quantiser: per-matrix standardisation, standard-normal codebook, straight-through.

``W ≈ Q((W - μ) / (σ + 1e-5)) · σ + μ`` where Q snaps to the 2^bits quantiles
``Φ⁻¹((i + ½) / 2^bits)`` of the standard normal (1 bit: ±0.6745). The gradient passes straight
through the whole quantiser. Storage is ``bits`` per weight, bit-packed, plus fp32 μ and σ.
"""
from __future__ import annotations

import math

import torch

VALID_BITS = (1, 2, 4, 8, 32)
EPS = 1e-5
STATS_BYTES = 8  # fp32 μ and σ per matrix


def _normal_quantiles(bits: int) -> torch.Tensor:
    n = 2**bits
    probs = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(probs).to(torch.float32)


# Precomputed once (a plain dict of constants also traces cleanly under torch.compile).
_CODEBOOKS = {bits: _normal_quantiles(bits) for bits in VALID_BITS if bits < 32}


def codebook(bits: int, device=None) -> torch.Tensor:
    return _CODEBOOKS[bits].to(device)


def _boundaries(bits: int, device) -> torch.Tensor:
    levels = codebook(bits, device)
    return (levels[1:] + levels[:-1]) / 2


def encode(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8, one per weight) and stats ``[μ, σ]`` (fp32) of one matrix."""
    w = weight.detach().float()
    mean = w.mean()
    std = w.std() if w.numel() > 1 else torch.zeros((), device=w.device)
    unit = (w - mean) / (std + EPS)
    codes = torch.bucketize(unit, _boundaries(bits, w.device)).to(torch.uint8)
    return codes, torch.stack([mean, std])


def decode(codes: torch.Tensor, stats: torch.Tensor, bits: int) -> torch.Tensor:
    levels = codebook(bits, codes.device)
    return levels[codes.long()] * stats[1] + stats[0]


class _StraightThrough(torch.autograd.Function):
    # Forward returns exactly the decoded values (so a reloaded adapter reproduces outputs bit
    # for bit); backward passes the gradient through unchanged.
    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int) -> torch.Tensor:
        codes, stats = encode(weight, bits)
        return decode(codes, stats, bits).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def quantize_ste(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantise ``weight`` (one matrix); gradient flows straight through."""
    if bits >= 32 or weight.numel() == 0:
        return weight
    return _StraightThrough.apply(weight, bits)


def packed_nbytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes of ``bits`` bits each, little-endian within a byte."""
    flat = codes.flatten().to(torch.uint8)
    if bits == 8:
        return flat.clone()
    per_byte = 8 // bits
    pad = (-flat.numel()) % per_byte
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, device=flat.device, dtype=torch.int32) * bits
    return (groups << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    if bits == 8:
        return packed[:numel].clone()
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & (2**bits - 1)
    return codes.flatten()[:numel].to(torch.uint8)


def check_bits(bits: int, option: str = "bits") -> int:
    if bits not in VALID_BITS:
        raise ValueError(f"option '{option}'={bits!r}: expected one of {VALID_BITS} (32 = full precision)")
    return bits
