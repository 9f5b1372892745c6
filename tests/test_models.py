"""Backbones from timm names and local weight files (.npz Google ViT format, .pth, .bin, .safetensors)."""
import warnings

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from heartlora.config import ConfigError
from heartlora.models import BackboneWarning, WeightsError, create_backbone, sha256_file

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4)


def tiny(num_classes=5, seed=0, **overrides):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **{**KW, **overrides})


def to_google_npz(model, path):
    """Write a timm ViT in the key layout of Google's ViT-B_16.npz (inverse of timm's _load_weights)."""
    t = lambda x: x.detach().numpy()  # noqa: E731
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": t(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
        "embedding/bias": t(model.patch_embed.proj.bias),
        "cls": t(model.cls_token),
        "Transformer/posembed_input/pos_embedding": t(model.pos_embed),
        "Transformer/encoder_norm/scale": t(model.norm.weight), "Transformer/encoder_norm/bias": t(model.norm.bias),
        "head/kernel": t(model.head.weight.T), "head/bias": t(model.head.bias),
    }
    for i, block in enumerate(model.blocks):
        p, m = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = block.attn.qkv.weight.chunk(3), block.attn.qkv.bias.chunk(3)
        for n, wt, b in zip(("query", "key", "value"), qkv_w, qkv_b):
            w[f"{m}{n}/kernel"] = t(wt.T.reshape(d, heads, -1))
            w[f"{m}{n}/bias"] = t(b.reshape(heads, -1))
        w[f"{m}out/kernel"] = t(block.attn.proj.weight.T.reshape(heads, -1, d))
        w[f"{m}out/bias"] = t(block.attn.proj.bias)
        for ln, norm in (("LayerNorm_0", block.norm1), ("LayerNorm_2", block.norm2)):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = t(norm.weight), t(norm.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"], w[f"{p}MlpBlock_3/Dense_{r}/bias"] = t(fc.weight.T), t(fc.bias)
    np.savez(path, **w)


def assert_backbone_equal(a, b, skip_head=True):
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        if skip_head and key.startswith("head."):
            continue
        assert torch.equal(sa[key], sb[key]), key


def test_npz_google_format_loads_through_timm(tmp_path):
    source = tiny(num_classes=7, seed=1)
    to_google_npz(source, tmp_path / "ViT-T.npz")
    model = create_backbone("vit_tiny_patch16_224", weights=tmp_path / "ViT-T.npz", num_classes=3, **KW)
    assert_backbone_equal(source, model)
    assert model.head.out_features == 3  # new classifier kept its own init
    same = create_backbone("vit_tiny_patch16_224", weights=tmp_path / "ViT-T.npz", num_classes=7, **KW)
    assert torch.equal(same.head.weight, source.head.weight)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_state_dict_files_load_and_drop_a_different_classifier(tmp_path, suffix):
    source = tiny(num_classes=7, seed=2)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()} if suffix == ".bin" else source.state_dict(), path)
    model = create_backbone("vit_tiny_patch16_224", weights=path, num_classes=3, **KW)
    assert_backbone_equal(source, model)
    headless = create_backbone("vit_tiny_patch16_224", weights=path, num_classes=0, **KW)
    assert_backbone_equal(source, headless)


def test_sha256_check(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(tiny().state_dict(), path)
    digest = sha256_file(path)
    create_backbone("vit_tiny_patch16_224", weights=path, weights_sha256=digest.upper(), num_classes=5, **KW)
    with pytest.raises(WeightsError, match=f"{path}: sha256 is {digest}, but option 'weights_sha256' expects 0+"):
        create_backbone("vit_tiny_patch16_224", weights=path, weights_sha256="0" * 64, num_classes=5, **KW)
    with pytest.raises(ValueError, match="64 hex digits"):
        create_backbone("vit_tiny_patch16_224", weights=path, weights_sha256="abc", num_classes=5, **KW)


def test_wrong_shapes_name_file_and_tensor(tmp_path):
    pth = tmp_path / "wide.pth"
    torch.save(tiny(embed_dim=64).state_dict(), pth)
    with pytest.raises(WeightsError, match=r"wide\.pth: weights of the wrong shape.*tensor '.*' has shape .*64"):
        create_backbone("vit_tiny_patch16_224", weights=pth, num_classes=5, **KW)
    npz = tmp_path / "wide.npz"
    to_google_npz(tiny(embed_dim=64), npz)
    with pytest.raises(WeightsError, match=r"wide\.npz: weights of the wrong shape.*embedding/kernel"):
        create_backbone("vit_tiny_patch16_224", weights=npz, num_classes=5, **KW)
    mlp = tmp_path / "mlp.npz"
    to_google_npz(tiny(mlp_ratio=2.0), mlp)
    with pytest.raises(WeightsError, match=r"mlp\.npz: .*MlpBlock_3/Dense_0/kernel' has shape \(48, 96\).*blocks\.0\.mlp\.fc1"):
        create_backbone("vit_tiny_patch16_224", weights=mlp, num_classes=5, **KW)
    deep = tmp_path / "deep.pth"
    torch.save(tiny(depth=3).state_dict(), deep)
    with pytest.raises(WeightsError, match=r"deep\.pth: tensor 'blocks\.2\..*' in the file does not exist in the model"):
        create_backbone("vit_tiny_patch16_224", weights=deep, num_classes=5, **KW)
    shallow = tmp_path / "shallow.npz"
    to_google_npz(tiny(depth=1), shallow)
    with pytest.raises(WeightsError, match=r"shallow\.npz: the file has 1 transformer blocks, the model has 2"):
        create_backbone("vit_tiny_patch16_224", weights=shallow, num_classes=5, **KW)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz: weights file not found"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "missing.npz", num_classes=5, **KW)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format '.ckpt'"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "w.ckpt", num_classes=5, **KW)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pth: cannot read weights"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "broken.pth", num_classes=5, **KW)
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(WeightsError, match="other.npz: not a Google ViT checkpoint"):
        create_backbone("vit_tiny_patch16_224", weights=tmp_path / "other.npz", num_classes=5, **KW)


def test_names_aliases_and_random_init_warnings():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_patch16_244'.*did you mean.*vit_tiny_patch16_224"):
        create_backbone("vit_tiny_patch16_244", num_classes=5)
    with pytest.warns(BackboneWarning, match="AugReg.*NOT the original ViT ImageNet-21k checkpoint.*ViT-B_16.npz"):
        create_backbone("vit_base_patch16_224_in21k", num_classes=5, img_size=32, depth=1, random_init=True)
    # a name that picks pretrained weights, without them, is an error unless random weights are asked for
    with pytest.raises(ConfigError, match="names timm's pretrained weights.*--pretrained.*--weights.*--random-init"):
        create_backbone("vit_base_patch16_224_in21k", num_classes=5, img_size=32, depth=1)
    with pytest.raises(ConfigError, match="'vit_tiny_patch16_224' has no pretrained tag 'nope'; its tags: augreg"):
        create_backbone("vit_tiny_patch16_224.nope", num_classes=5, random_init=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BackboneWarning, match="randomly initialised"):
            create_backbone("vit_tiny_patch16_224", num_classes=5, **KW)


def test_never_touches_a_hub(monkeypatch, tmp_path):
    import timm.models._builder as builder

    def forbidden(*args, **kwargs):
        raise AssertionError("a hub download was attempted")

    monkeypatch.setattr(builder, "load_pretrained", forbidden)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny().state_dict().items()}, str(path))
    create_backbone("vit_tiny_patch16_224", weights=path, num_classes=5, **KW)
    create_backbone("vit_base_patch16_224.augreg_in21k", num_classes=5, img_size=32, depth=1, random_init=True)


def test_drop_path_and_timm_kwargs_pass_through():
    model = create_backbone("vit_tiny_patch16_224", num_classes=5, drop_path_rate=0.2, **KW)
    assert len(model.blocks) == 2 and model.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    with pytest.raises(ValueError, match="model_kwargs"):
        create_backbone("vit_tiny_patch16_224", num_classes=5, not_an_argument=1, **KW)
