"""Mixed precision: when bf16 autocast pays, decided from the hardware, and said why.

``--amp auto`` (the default) runs the forward pass under ``torch.autocast(dtype=bfloat16)`` on CUDA
and on CPUs whose matmul kernels compute in bf16 natively (Intel AMX: oneDNN's ``amx_bf16`` /
``amx_tile`` kernels), where it roughly halves a ViT training step; elsewhere it stays fp32,
because without native kernels bf16 is emulated and slower (measured: 1.06 → 1.83 s per ViT-Ti
step on a CPU without AMX). ``bf16`` and ``off`` force it. Master weights, the loss, the
quantiser's statistics and codebook and the head scores stay fp32 whatever the choice (the
loops cast logits to fp32 before the loss; the quantiser and the scorers compute in fp32).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["AMP_CHOICES", "AmpDecision", "autocast", "cpu_bf16_support", "resolve_amp"]

AMP_CHOICES = ("auto", "bf16", "off", "none")  # none: the older spelling of off


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU has native bf16 matmul (AMX), and what that was read from."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            if probe():
                return True, "CPU has AMX tiles (torch.cpu._is_amx_tile_supported): oneDNN runs bf16 matmuls natively"
            return False, "CPU has no AMX (torch.cpu._is_amx_tile_supported is False): bf16 would be emulated"
        except RuntimeError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False, "CPU features unknown (no torch probe, no /proc/cpuinfo): fp32"
    if "amx_bf16" in flags and "amx_tile" in flags:
        return True, "CPU flags amx_bf16 amx_tile (/proc/cpuinfo): native bf16 matmul"
    return False, "CPU flags lack amx_bf16/amx_tile (/proc/cpuinfo): bf16 would be emulated"


@dataclass(frozen=True)
class AmpDecision:
    enabled: bool
    requested: str
    reason: str

    @property
    def dtype(self) -> str:
        return "bf16" if self.enabled else "fp32"

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, **asdict(self)}


def resolve_amp(spec: str, device: torch.device) -> AmpDecision:
    """``auto``: bf16 on CUDA and on CPUs with native bf16 matmul, fp32 elsewhere; ``bf16`` / ``off``."""
    if spec not in AMP_CHOICES:
        raise ValueError(f"option 'amp': got {spec!r}; expected one of auto, bf16, off")
    if spec in ("off", "none"):
        return AmpDecision(False, spec, "fp32 requested")
    if device.type == "cuda":
        return AmpDecision(True, spec, "CUDA device: bf16 autocast" + (" requested" if spec == "bf16" else ""))
    if device.type != "cpu":
        if spec == "bf16":
            raise ValueError(f"option 'amp': bf16 autocast is supported on CUDA and CPU devices, not {device.type}")
        return AmpDecision(False, spec, f"{device.type} device: fp32")
    native, why = cpu_bf16_support()
    if spec == "bf16":
        return AmpDecision(True, spec, "bf16 requested" + ("" if native else f" (slower here: {why})"))
    return AmpDecision(native, spec, why)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
