"""Exact ablation scores with a shared prefix equal the full forward passes (ViT and Swin)."""
import pytest
import torch

import heartlora
from heartlora.methods.lowrank import LowRankQKV, lowrank_layers
from heartlora.methods.responsiveness import ablation_scores

from conftest import tiny_swin, tiny_vit

BACKBONES = {"vit": lambda: tiny_vit(depth=3), "swin": lambda: tiny_swin(depths=(2, 2), num_heads=(2, 4))}


def adapted(backbone: str, **options):
    torch.manual_seed(0)
    model = heartlora.apply(BACKBONES[backbone](), "heart-lora", **options)
    for layer in lowrank_layers(model):  # a trained-looking adapter: every head's delta matters
        torch.nn.init.normal_(layer.lora_B, std=0.3)
    return model


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("options", [{}, {"bits": 2}, {"targets": "q,k,v", "scale": 3.0}])
def test_shared_prefix_equals_full_passes(backbone, options):
    model = adapted(backbone, **options)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 3, 32, 32, generator=generator), torch.randint(0, 5, (3,), generator=generator))
               for _ in range(2)]
    full = ablation_scores(model, batches, share_prefix=False)
    for max_images in (256, 3, 7):  # all variants in one batch, one per batch, a ragged split
        shared = ablation_scores(model, batches, max_images=max_images)
        for a, b in zip(full, shared):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert all(layer.ablation_heads is None for layer in lowrank_layers(model))
    assert max(float(s.abs().max()) for s in full) > 1e-3  # the scores are not trivially zero


def test_switched_off_heads_score_zero_and_others_match():
    model = adapted("vit")
    heartlora.apply_head_selection(model, [torch.tensor([True, False, True, True])] * 3)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    full, shared = ablation_scores(model, batches, share_prefix=False), ablation_scores(model, batches)
    assert all(float(s[1]) == 0.0 for s in shared)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(full, shared))


def test_shared_prefix_runs_fewer_blocks(monkeypatch):
    model = adapted("vit")
    calls = {"blocks": 0}
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: calls.__setitem__("blocks", calls["blocks"] + 1))
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    ablation_scores(model, batches, share_prefix=False)
    full_calls, calls["blocks"] = calls["blocks"], 0
    ablation_scores(model, batches, max_images=2)  # one variant per tail call: block calls are block passes
    L, H = 3, 4
    assert full_calls == L * (1 + L * H)
    assert calls["blocks"] == L + H * sum(L - l for l in range(L))
    assert isinstance(lowrank_layers(model)[0], LowRankQKV)
