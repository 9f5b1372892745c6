"""Visual Prompt Tuning (Jia et al., ECCV 2022): VPT-Shallow and VPT-Deep.

Learnable prompt tokens enter the token sequence right after the prefix tokens (class token,
and register/distillation tokens where the model has them): ``[CLS, P, E]`` as in VPT.

- ``vpt-shallow``: ``prompts`` tokens inserted at the input of the first block only; their
  outputs travel through every later block.
- ``vpt-deep``: every block gets its own ``prompts`` tokens; block l's prompts *replace* the
  prompt outputs of block l-1.

Prompts carry no position embedding, prompt dropout (0.1) applies to the learnable tokens, and
the init is VPT's Xavier-uniform ``U(-v, v)``, ``v = sqrt(6 / (3·patch_h·patch_w + d))``.
The prompt outputs are removed after the last block, so whatever pooling the model does
(class token, average of patch tokens, attention pooling) sees exactly the backbone's layout:
average-pooling models do not average the prompts.

Implementation: ``model.blocks`` (an ``nn.Sequential``) is replaced by :class:`PromptedSequential`
holding the *same* blocks under the same names (``blocks.3.attn.qkv`` stays ``blocks.3.attn.qkv``)
plus the prompt parameters ``blocks.prompt_tokens_<l>`` (``p_l × d``); no block's ``forward`` is
touched. Like any timm model, the prompts are only seen on the ``model.blocks(x)`` path: timm's
gradient checkpointing (``set_grad_checkpointing``) and ``forward_intermediates`` iterate the
blocks themselves and are not supported with prompts.

Counts (classifier excluded): shallow ``P·d``, deep ``L·P·d``; stored fp32 (4 bytes each).
Not mergeable (extra tokens cannot fold into weights). Swin: not supported (ValueError) — its
blocks attend within local windows of a spatial grid and have no class token, so there is no
token sequence to extend (VPT's Swin variant adds prompts per window; not implemented).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, MethodSpec, documented, option, register

VPT_PAPER = "Jia et al., Visual Prompt Tuning, ECCV 2022"


def vit_token_blocks(model: nn.Module, method: str) -> nn.Sequential:
    """``model.blocks`` of a ViT-style token model, or a clear error naming method and backbone."""
    blocks = getattr(model, "blocks", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    embed_dim = getattr(model, "embed_dim", None)
    if not isinstance(blocks, nn.Sequential) or not isinstance(prefix, int) or not isinstance(embed_dim, int):
        raise ValueError(
            f"method '{method}' does not support {type(model).__name__} backbones: prompt tokens need a "
            "ViT-style token sequence (timm VisionTransformer: 'blocks', 'num_prefix_tokens', 'embed_dim'). "
            "Swin attends within local windows of a spatial grid and has no class token, so there is no "
            "sequence to insert prompts into (VPT's per-window Swin variant is not implemented)"
        )
    if getattr(model, "grad_checkpointing", False):
        raise ValueError(
            f"method '{method}': timm gradient checkpointing iterates model.blocks directly and would "
            "skip the prompts; call model.set_grad_checkpointing(False) first"
        )
    return blocks


def vpt_init_bound(model: nn.Module) -> float:
    """VPT's Xavier-uniform bound ``sqrt(6 / (3·patch_h·patch_w + d))``."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (16, 16))
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
    return math.sqrt(6.0 / float(3 * patch[0] * patch[1] + model.embed_dim))


class PromptedSequential(nn.Sequential):
    """The model's blocks, same children and names, with prompt tokens entering before block l.

    ``lengths[l]`` prompt tokens are stored for block l (``prompt_tokens_<l>``, p_l × d; none when
    0). ``active[l]`` (≤ lengths[l]) of them are used: when ``active[l] > 0`` the prompt tokens
    currently in the sequence are replaced by the first ``active[l]`` tokens of block l; when it
    is 0 the current prompt outputs carry on (VPT-Shallow is ``[P, 0, …, 0]``, VPT-Deep
    ``[P, …, P]``; NOAH varies them per layer and per step). Prompts are dropped after the last
    block. The prompt parameters are plain parameters (stored as is by ``adapters_io``).
    """

    def __init__(self, blocks: Sequence[nn.Module], num_prefix_tokens: int, embed_dim: int,
                 lengths: Sequence[int], dropout: float, init_bound: float):
        super().__init__(*blocks)
        if len(lengths) != len(blocks):
            raise ValueError(f"{len(lengths)} prompt lengths for {len(blocks)} blocks")
        self.num_prefix_tokens = num_prefix_tokens
        self.embed_dim = embed_dim
        self.prompt_p = float(dropout)  # not an nn.Dropout child: children must stay the blocks
        self.lengths = [int(n) for n in lengths]
        self.active = list(self.lengths)
        device = next((p.device for p in self.parameters()), None)
        for layer, n in enumerate(self.lengths):
            if n > 0:
                param = nn.Parameter(torch.empty(n, embed_dim, device=device))
                with torch.no_grad():
                    param.uniform_(-init_bound, init_bound)
                self.register_parameter(f"prompt_tokens_{layer}", param)

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, f"prompt_tokens_{l}") for l, n in enumerate(self.lengths) if n > 0]

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # a slice is a plain Sequential of the blocks (no prompts)
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_prefix = self.num_prefix_tokens
        current = 0  # prompt tokens now in the sequence, right after the prefix tokens
        for layer, block in enumerate(self):
            use = self.active[layer]
            if use > 0:
                prompts = getattr(self, f"prompt_tokens_{layer}")[:use].to(x.dtype)
                prompts = F.dropout(prompts, self.prompt_p, self.training)
                prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :n_prefix], prompts, x[:, n_prefix + current:]], dim=1)
                current = use
            x = block(x)
        if current:
            x = torch.cat([x[:, :n_prefix], x[:, n_prefix + current:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"prompts per block={self.active}, prefix tokens={self.num_prefix_tokens}, dropout={self.prompt_p}"


class VPTBlocks(AdapterLayer, PromptedSequential):
    """VPT's prompted blocks: owns and stores its prompts (fp32); cannot be merged."""

    mergeable = False

    def adapter_parameters(self) -> list[nn.Parameter]:
        return self.prompt_parameters()

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {f"prompt_tokens_{l}": getattr(self, f"prompt_tokens_{l}").detach().float().clone()
                for l, n in enumerate(self.lengths) if n > 0}

    @torch.no_grad()
    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        for layer, n in enumerate(self.lengths):
            if n == 0:
                continue
            key = f"prompt_tokens_{layer}"
            param = getattr(self, key)
            if key not in tensors:
                raise ValueError(f"{source}: missing tensor 'blocks.{key}'")
            if tensors[key].shape != param.shape:
                raise ValueError(
                    f"{source}: 'blocks.{key}' has shape {tuple(tensors[key].shape)}, expected "
                    f"{tuple(param.shape)} (another number of prompts?)"
                )
            param.copy_(tensors[key])
        extra = sorted(set(tensors) - {f"prompt_tokens_{l}" for l, n in enumerate(self.lengths) if n > 0})
        if extra:
            raise ValueError(f"{source}: unexpected tensors {['blocks.' + k for k in extra]}")

    def stored_nbytes(self) -> int:
        return 4 * sum(self.lengths) * self.embed_dim


@documented
@dataclass
class VPTConfig:
    """Options of visual prompt tuning."""

    prompts: int = option(10, "prompt tokens inserted after the class token")
    dropout: float = option(0.1, "dropout on the prompt tokens during training")

    def validate(self, method: str) -> None:
        if self.prompts < 1:
            raise ValueError(f"option 'prompts'={self.prompts} of method '{method}': expected a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"option 'dropout'={self.dropout} of method '{method}': expected 0 <= dropout < 1")


def _apply_vpt(model: nn.Module, config: VPTConfig, method: str, deep: bool) -> None:
    blocks = vit_token_blocks(model, method)
    n = len(blocks)
    lengths = [config.prompts] * n if deep else [config.prompts] + [0] * (n - 1)
    model.blocks = VPTBlocks(list(blocks), model.num_prefix_tokens, model.embed_dim, lengths,
                             config.dropout, vpt_init_bound(model))


def apply_vpt_shallow(model: nn.Module, config: VPTConfig, method: str) -> None:
    _apply_vpt(model, config, method, deep=False)


def apply_vpt_deep(model: nn.Module, config: VPTConfig, method: str) -> None:
    _apply_vpt(model, config, method, deep=True)


def _never_identity(options: dict) -> bool:
    return False  # the class token attends to the prompts from the first step


register(MethodSpec(
    "vpt-shallow", VPTConfig, apply_vpt_shallow,
    "prompt tokens after the class token at the first block's input (ViT only)", VPT_PAPER,
    mergeable=False, identity_at_init=_never_identity,
))
register(MethodSpec(
    "vpt-deep", VPTConfig, apply_vpt_deep,
    "new prompt tokens at every block's input, replacing the previous block's prompt outputs (ViT only)",
    VPT_PAPER, mergeable=False, identity_at_init=_never_identity,
))
