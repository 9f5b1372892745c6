"""Tiny random timm backbones for fast CPU tests."""
import os

import pytest
import timm
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tiny models: one thread beats two (less threading overhead, no contention between workers)
torch.set_num_threads(1)

NUM_CLASSES = 5


def tiny_vit(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=8, embed_dim=48,
                  depth=2, num_heads=4)
    kwargs.update(overrides)
    return timm.create_model("vit_tiny_patch16_224", **kwargs)


def tiny_swin(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=4, window_size=2,
                  embed_dim=24, depths=(1, 1), num_heads=(2, 4))
    kwargs.update(overrides)
    return timm.create_model("swin_tiny_patch4_window7_224", **kwargs)


BACKBONES = {"vit": tiny_vit, "swin": tiny_swin}


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(123)
    return torch.randn(4, 3, 32, 32, generator=generator)


@pytest.fixture
def labels():
    return torch.tensor([0, 1, 2, 3])
