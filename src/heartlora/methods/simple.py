"""Baselines that add no module: full fine-tuning, linear probing, BitFit.

They only choose which backbone parameters train. Their adapter file is generic: every trainable
parameter is stored as is under its own name (``adapters_io``), so the stored tensors *are* the
weights and "merging" is a no-op (``mergeable=True``; there is no layer to fold).

Closed forms (classifier excluded): ``full`` = every backbone parameter; ``linear`` = 0;
``bitfit`` = every bias of the backbone (Linear, conv and LayerNorm biases, as in BitFit; option
``norm_bias=False`` keeps only the biases of Linear/conv layers).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import MethodSpec, documented, option, register


@dataclass
class NoOptions:
    """A method without options."""


@documented
@dataclass
class BitFitConfig:
    """Options of BitFit (bias terms only)."""

    norm_bias: bool = option(True, "also train LayerNorm/BatchNorm biases (BitFit trains every bias term)")


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def bias_parameter_names(model: nn.Module, norm_bias: bool = True) -> list[str]:
    """Names of the bias parameters BitFit trains, in registration order."""
    names = []
    for module_name, module in model.named_modules():
        bias = module._parameters.get("bias")
        if bias is None:
            continue
        if not norm_bias and isinstance(module, _NORMS):
            continue
        names.append(f"{module_name}.bias" if module_name else "bias")
    return names


def apply_full(model: nn.Module, config: NoOptions, method: str) -> None:
    for param in model.parameters():
        param.requires_grad_(True)


def apply_linear(model: nn.Module, config: NoOptions, method: str) -> None:
    """Nothing besides the classifier (which ``apply`` always makes trainable)."""


def apply_bitfit(model: nn.Module, config: BitFitConfig, method: str) -> None:
    params = dict(model.named_parameters())
    names = bias_parameter_names(model, config.norm_bias)
    if not names:
        raise ValueError(f"method '{method}': {type(model).__name__} has no bias parameters to train")
    for name in names:
        params[name].requires_grad_(True)


FULL_PAPER = "full fine-tuning of every parameter (the reference point of every PETL table, e.g. Jia et al., VPT, ECCV 2022)"
LINEAR_PAPER = "linear probing: only the new classifier trains (e.g. Jia et al., VPT, ECCV 2022)"
BITFIT_PAPER = ("Ben Zaken et al., BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models, "
                "ACL 2022")

register(MethodSpec(
    "full", NoOptions, apply_full, "every parameter trains; the adapter file is the whole model",
    FULL_PAPER, mergeable=True,
))
register(MethodSpec(
    "linear", NoOptions, apply_linear, "only the classifier trains (linear probe)", LINEAR_PAPER, mergeable=True,
    servable=True,
))
register(MethodSpec(
    "bitfit", BitFitConfig, apply_bitfit, "every bias term (+ classifier) trains", BITFIT_PAPER, mergeable=True,
))
