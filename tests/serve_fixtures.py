"""Task adapters with different class counts, ranks, targets, bits and switched-off heads, saved
the way a run saves them (adapter folder + backbone.json), on the tiny ViT of conftest."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import heartlora
from heartlora.engine.build import new_classifier
from heartlora.methods.lowrank import lowrank_layers

from conftest import tiny_vit

# name: (method, options, classes, head masks per layer (True = on) or None)
TASKS = {
    "flowers": ("lora", {"rank": 4, "scale": 0.5}, 3, None),
    "dtd": ("heart-lora-layer", {"rank": 2, "targets": "q,k,v", "ne": 1}, 7,
            [[True, False, True, True], [False, True, True, True]]),
    "pets": ("heart-lora", {"rank": 3, "bits": 2, "ne": 2, "scale": 2.0}, 2,
             [[False, True, False, True], [False, True, False, True]]),
}
BACKBONE_SEED = 0


def backbone(seed: int = BACKBONE_SEED, **overrides) -> torch.nn.Module:
    return tiny_vit(seed, num_classes=0, **overrides)


def backbone_record(seed: int = BACKBONE_SEED, class_names: list[str] | None = None) -> dict:
    """backbone.json as `heartlora train` writes it for the tiny ViT (random init from ``seed``)."""
    return {"model": "vit_tiny_patch16_224", "weights": None, "weights_sha256": None,
            "kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4}, "img_size": 32,
            "seed": seed, "drop_path": 0.0, "normalize": "none", "class_names": class_names}


def make_adapter(directory: Path, method: str, options: dict, classes: int, masks, seed: int = 1,
                 record: dict | None = None, model: torch.nn.Module | None = None) -> Path:
    """Save a trained-looking adapter: random low-rank factors and classifier."""
    model = backbone() if model is None else model
    heartlora.apply(model, method, **options)
    new_classifier(model, classes)
    if masks is not None:
        heartlora.apply_head_selection(model, [torch.tensor(m) for m in masks])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lowrank_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator) * 0.3)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.3)
        head = model.get_classifier()
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator))
        head.bias.copy_(torch.randn(head.bias.shape, generator=generator))
    heartlora.save_adapter(model, directory)
    if record is None:
        record = backbone_record(class_names=[f"{directory.name}-class{i}" for i in range(classes)])
    (directory / "backbone.json").write_text(json.dumps(record))
    return directory


def make_tasks(root: Path) -> dict[str, Path]:
    return {name: make_adapter(root / name, method, options, classes, masks, seed=i + 1)
            for i, (name, (method, options, classes, masks)) in enumerate(TASKS.items())}


def alone(directory: Path, classes: int) -> torch.nn.Module:
    """The adapter on its own backbone, through the normal load_adapter path (eval mode)."""
    model = backbone()
    new_classifier(model, classes)
    heartlora.load_adapter(model, directory)
    return model.eval()
