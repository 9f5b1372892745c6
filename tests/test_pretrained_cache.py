"""--pretrained: timm's own pretrained weights from a local Hugging Face cache, offline; tagged names need weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from heartlora.cli import main
from heartlora.config import ConfigError
from heartlora.data.synthetic import make_vtab
from heartlora.models import WeightsError, create_backbone, hub_offline

NAME = "vit_tiny_patch16_224.augreg_in21k"  # timm hub id timm/vit_tiny_patch16_224.augreg_in21k, 21843 classes
KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SRC = Path(__file__).resolve().parents[1] / "src"


def plant(cache: Path, seed: int = 3) -> dict:
    """A tiny timm checkpoint where huggingface_hub keeps timm's pretrained weights for NAME:
    models--timm--NAME/snapshots/<commit>/model.safetensors, with refs/main naming the commit."""
    torch.manual_seed(seed)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=21843, **KW)
    repo = cache / f"models--timm--{NAME}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(repo / "snapshots" / COMMIT / "model.safetensors"))
    return state


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))  # read at import; point it here
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def forbid_network(monkeypatch):
    import httpx

    def refuse(*args, **kwargs):
        raise AssertionError("a network request was attempted")

    monkeypatch.setattr(httpx.Client, "send", refuse)


def test_pretrained_loads_timms_weights_from_the_cache_offline(hub_cache, monkeypatch):
    state = plant(hub_cache)
    forbid_network(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = create_backbone(NAME, pretrained=True, num_classes=0, **KW)
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)  # every backbone tensor is the cached one
    assert model.num_classes == 0
    assert "HF_HUB_OFFLINE" not in os.environ  # offline only for the load, then as it was
    with_head = create_backbone(NAME, pretrained=True, num_classes=21843, **KW)
    assert torch.equal(with_head.head.weight, state["head.weight"])  # same class count: the checkpoint's head


def test_hub_offline_restores_the_previous_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hub_constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "0" and hub_constants.HF_HUB_OFFLINE is False


def test_missing_cache_says_which_file_to_place_where(hub_cache, monkeypatch):
    forbid_network(monkeypatch)
    with pytest.raises(WeightsError) as err:
        create_backbone(NAME, pretrained=True, num_classes=0, **KW)
    message = str(err.value)
    repo = hub_cache / f"models--timm--{NAME}"
    assert f"{repo}/snapshots/<commit>/model.safetensors" in message and f"{repo}/refs/main" in message
    assert "timm/vit_tiny_patch16_224.augreg_in21k" in message and "never downloads" in message


def test_option_conflicts_are_usage_errors():
    with pytest.raises(ConfigError, match="'pretrained' and 'weights' exclude each other"):
        create_backbone(NAME, pretrained=True, weights="w.pth", num_classes=0)
    with pytest.raises(ConfigError, match="'random_init' means no pretrained weights"):
        create_backbone(NAME, pretrained=True, random_init=True, num_classes=0)


TINY = ["--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4", "--image-size", "32",
        "--batch-size", "8", "--workers", "0", "--quiet", "--epochs", "1", "--warmup-epochs", "0", "--eval-every", "1"]


def test_tagged_name_without_weights_exits_2_naming_the_fix(tmp_path, capsys):
    make_vtab(tmp_path / "data", tasks=("cifar",), n_train=8, n_val=4, n_test=4, image_size=32, num_classes=2)
    code = main(["train", "--model", NAME, *TINY, "--data", str(tmp_path / "data"), "--task", "cifar",
                 "--method", "lora", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"'{NAME}' names timm's pretrained weights" in err and "--pretrained" in err and "--random-init" in err
    assert not (tmp_path / "run").exists()


def test_cli_train_pretrained_under_hf_hub_offline_then_export(hub_cache, tmp_path, capsys):
    state = plant(hub_cache)
    make_vtab(tmp_path / "data", tasks=("cifar",), n_train=8, n_val=4, n_test=4, image_size=32, num_classes=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "PYTHONPATH": str(SRC),
           "HF_HOME": str(tmp_path / "hf-home")}
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "heartlora.cli", "train", "--model", NAME, "--pretrained", *TINY,
                             "--data", str(tmp_path / "data"), "--task", "cifar", "--method", "lora", "--out", str(run)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    backbone = json.loads((run / "adapter" / "backbone.json").read_text())
    assert backbone["model"] == NAME and backbone["pretrained"] is True and backbone["weights"] is None
    # the backbone rebuilds from the cache too: the merged export keeps the cached weights outside qkv
    assert main(["export", "--adapter", str(run), "--merged", str(tmp_path / "merged.safetensors")]) == 0
    merged = load_file(str(tmp_path / "merged.safetensors"))
    assert torch.equal(merged["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(merged["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"])
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])  # LoRA folded in
