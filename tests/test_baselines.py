"""Baselines in the registry: closed-form parameter and byte counts, the semantics of each method
(where prompts go, what each adapter computes), and a tiny end-to-end run per method.
The generic properties (identity at init, gradients, save/load, merge) are in test_method_matrix."""
import math

import pytest
import torch
import torch.nn.functional as F

import heartlora
from heartlora.methods import quant, registered
from heartlora.methods.base import adapter_layers
from heartlora.methods.bottleneck import AdapterMLP, InputTap, find_mlp_blocks
from heartlora.methods.prompts import VPTBlocks

from conftest import NUM_CLASSES, tiny_swin, tiny_vit

# tiny ViT of conftest: d=48, L=2, 4 heads, 32x32 images with 8x8 patches -> 16 patches + CLS
D, L, PATCH, N_PATCHES = 48, 2, 8, 16


def _counts(model):
    return (heartlora.trainable_parameters(model, include_classifier=False),
            heartlora.adapter_bytes(model, include_classifier=False))


def _mlp_widths(model):
    return [blk.mlp.fc1.in_features for _, blk in find_mlp_blocks(model, "test")]


# ----- closed forms ----------------------------------------------------------------------------
def test_full_counts_every_backbone_parameter():
    model = heartlora.apply(tiny_vit(), "full")
    # ViT: patch embed 3·p²·d + d, class token d, positions (N+1)·d, per block 12d² + 13d
    # (norms 4d, qkv 3d²+3d, proj d²+d, fc1 4d²+4d, fc2 4d²+d), final norm 2d
    expected = 3 * PATCH**2 * D + D + D + (N_PATCHES + 1) * D + L * (12 * D * D + 13 * D) + 2 * D
    assert _counts(model) == (expected, 4 * expected)
    head = NUM_CLASSES * D + NUM_CLASSES
    assert heartlora.trainable_parameters(model) == expected + head


def test_linear_trains_only_the_classifier():
    model = heartlora.apply(tiny_vit(), "linear")
    assert _counts(model) == (0, 0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("norm_bias", [True, False])
def test_bitfit_counts_every_bias(norm_bias):
    model = heartlora.apply(tiny_vit(), "bitfit", norm_bias=norm_bias)
    # patch-embed d; per block qkv 3d + proj d + fc1 4d + fc2 d (+ norm1 d + norm2 d); final norm d
    per_block = 9 * D + (2 * D if norm_bias else 0)
    expected = D + L * per_block + (D if norm_bias else 0)
    assert _counts(model) == (expected, 4 * expected)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith("bias") or n.startswith("head.") for n in trained)


def test_bitfit_on_swin_counts_every_bias():
    model = tiny_swin()
    expected = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") and not n.startswith("head."))
    heartlora.apply(model, "bitfit")
    assert _counts(model) == (expected, 4 * expected)


@pytest.mark.parametrize("method,prompts,per_layers", [("vpt-shallow", 3, 1), ("vpt-deep", 3, L), ("vpt-deep", 10, L)])
def test_vpt_counts(method, prompts, per_layers):
    model = heartlora.apply(tiny_vit(), method, prompts=prompts)
    expected = per_layers * prompts * D  # shallow P·d, deep L·P·d
    assert _counts(model) == (expected, 4 * expected)


@pytest.mark.parametrize("method", ["adapter", "adaptformer"])
@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_adapter_counts_with_biases(method, make):
    model = make()
    widths = _mlp_widths(model)
    heartlora.apply(model, method, dim=4)
    expected = sum(2 * d * 4 + 4 + d for d in widths)  # per block 2·d·k + k + d
    assert _counts(model) == (expected, 4 * expected)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 32])
@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_bi_adaptformer_counts(bits, make):
    model = make()
    widths = _mlp_widths(model)
    k = 5
    heartlora.apply(model, "bi-adaptformer", dim=k, bits=bits)
    params = sum(2 * d * k for d in widths)  # no biases
    if bits == 32:
        stored = 4 * params
    else:  # two matrices per block: ceil(d·k·bits/8) packed bytes + fp32 μ, σ each
        stored = sum(2 * (math.ceil(d * k * bits / 8) + quant.STATS_BYTES) for d in widths)
    assert _counts(model) == (params, stored)


def test_bi_adaptformer_with_biases_stores_them_in_fp32():
    model = heartlora.apply(tiny_vit(), "bi-adaptformer", dim=4, bias=True)
    stored = L * (2 * (math.ceil(D * 4 / 8) + quant.STATS_BYTES) + 4 * (4 + D))
    assert _counts(model) == (L * (2 * D * 4 + 4 + D), stored)


def test_every_baseline_declares_defaults_and_paper():
    table = heartlora.methods()
    for name in ["full", "linear", "bitfit", "vpt-shallow", "vpt-deep", "adapter", "adaptformer",
                 "bi-adaptformer", "noah"]:
        assert name in table and table[name]["paper"] and table[name]["summary"]
    assert table["vpt-deep"]["options"] == {"prompts": 10, "dropout": 0.1}
    assert table["adapter"]["options"]["dim"] == 8
    assert table["adaptformer"]["options"]["scale"] == 0.1 and table["adaptformer"]["options"]["dim"] == 8
    bi = table["bi-adaptformer"]["options"]
    assert (bi["dim"], bi["bits"], bi["bias"], bi["input"]) == (32, 1, False, "residual")
    assert {n for n in table if table[n]["mergeable"]} == {"lora", "bilora", "heart-lora", "heart-lora-layer",
                                                           "full", "linear", "bitfit"}


# ----- VPT semantics ---------------------------------------------------------------------------
def _block_inputs(model):
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
             for blk in model.blocks]
    return seen, hooks


@pytest.mark.parametrize("method", ["vpt-shallow", "vpt-deep"])
def test_vpt_prompts_follow_the_class_token_and_leave_before_pooling(method, images):
    model = heartlora.apply(tiny_vit(), method, prompts=3).eval()
    assert isinstance(model.blocks, VPTBlocks)
    assert [n for n, _ in model.named_parameters() if "prompt" in n] == (
        ["blocks.prompt_tokens_0"] if method == "vpt-shallow" else ["blocks.prompt_tokens_0", "blocks.prompt_tokens_1"])
    assert "blocks.1.attn.qkv.weight" in dict(model.named_parameters())  # block names unchanged
    seen, hooks = _block_inputs(model)
    with torch.no_grad():
        features = model.forward_features(images)
    for h in hooks:
        h.remove()
    assert [t.shape[1] for t in seen] == [1 + 3 + N_PATCHES] * L
    assert torch.equal(seen[0][:, 1:4], model.blocks.prompt_tokens_0.expand(len(images), -1, -1))
    deep_input = seen[1][:, 1:4]
    if method == "vpt-deep":  # block 1's prompts replace block 0's prompt outputs
        assert torch.equal(deep_input, model.blocks.prompt_tokens_1.expand(len(images), -1, -1))
    else:  # block 0's prompt outputs travel on
        assert not torch.equal(deep_input, model.blocks.prompt_tokens_0.expand(len(images), -1, -1))
    assert features.shape == (len(images), 1 + N_PATCHES, D)  # prompts removed before the final norm


def test_vpt_average_pooling_excludes_prompts(images):
    model = heartlora.apply(tiny_vit(global_pool="avg", class_token=False, fc_norm=False), "vpt-deep", prompts=3).eval()
    assert model.num_prefix_tokens == 0
    with torch.no_grad():
        tokens = model.forward_features(images)
        assert tokens.shape[1] == N_PATCHES
        assert torch.allclose(model(images), model.head(tokens.mean(dim=1)), atol=1e-6)


def test_vpt_prompt_dropout_only_in_training(images):
    model = heartlora.apply(tiny_vit(), "vpt-shallow", prompts=3, dropout=0.5)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(images), model(images))
        model.train()
        torch.manual_seed(0)
        first = model(images)
        torch.manual_seed(1)
        assert not torch.equal(first, model(images))


def test_vpt_init_is_vpt_xavier_uniform():
    model = heartlora.apply(tiny_vit(), "vpt-deep", prompts=50)
    bound = math.sqrt(6.0 / (3 * PATCH * PATCH + D))
    prompts = model.blocks.prompt_tokens_0
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.8 * bound


# ----- adapter semantics -----------------------------------------------------------------------
def _randomise(model, seed=3, std=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for p in layer.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _bottleneck(adapter, x):
    z = F.relu(F.linear(x, adapter.down_weight, adapter.down_bias))
    return F.linear(z, adapter.up_weight, adapter.up_bias)


@pytest.mark.parametrize("method,options", [
    ("adapter", {}), ("adaptformer", {}), ("adaptformer", {"input": "residual"}), ("bi-adaptformer", {"bits": 32}),
])
def test_block_output_matches_the_paper_formula(method, options):
    torch.manual_seed(0)
    model = heartlora.apply(tiny_vit(), method, dim=4, **options).eval()
    _randomise(model)
    block = model.blocks[0]
    layer = block.mlp
    assert isinstance(layer, AdapterMLP)
    x = torch.randn(2, 1 + N_PATCHES, D)
    with torch.no_grad():
        norm2 = block.norm2.base if isinstance(block.norm2, InputTap) else block.norm2
        mid = x + block.attn(block.norm1(x))
        h = layer.base(norm2(mid))
        s = layer.scale
        if method == "adapter":  # sequential, its own residual: h + up(ReLU(down(h)))
            expected = mid + h + s * _bottleneck(layer.adapter, h)
        elif options.get("input", "residual" if method == "bi-adaptformer" else "normed") == "normed":
            expected = mid + h + s * _bottleneck(layer.adapter, norm2(mid))  # AdaptFormer Eq. 2
        else:  # the reference code of AdaptFormer / Bi-AdaptFormer: adapter on the residual stream
            expected = mid + h + s * _bottleneck(layer.adapter, mid)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_adaptformer_scale_and_dim_defaults_apply():
    model = heartlora.apply(tiny_vit(), "adaptformer")
    layer = model.blocks[0].mlp
    assert layer.scale == 0.1 and layer.adapter.hidden == 8 and layer.adapter.down_bias is not None
    bi = heartlora.apply(tiny_vit(), "bi-adaptformer").blocks[0].mlp
    assert bi.adapter.hidden == 32 and bi.adapter.bits == 1 and bi.adapter.down_bias is None
    assert isinstance(heartlora.apply(tiny_vit(), "bi-adaptformer").blocks[0].norm2, InputTap)


def test_quantised_adapter_uses_codebook_values(images):
    model = heartlora.apply(tiny_vit(), "bi-adaptformer", dim=4, bits=1)
    down, up = model.blocks[0].mlp.adapter.weights()
    for w, raw in ((down, model.blocks[0].mlp.adapter.down_weight), (up, model.blocks[0].mlp.adapter.up_weight)):
        assert w.unique().numel() == 2  # one bit: two levels μ ± 0.6745·σ
        assert torch.allclose(w.unique().mean(), raw.mean(), atol=1e-5)


@pytest.mark.parametrize("method,options", [("adapter", {"dim": 0}), ("adaptformer", {"input": "x"}),
                                            ("bi-adaptformer", {"bits": 3}), ("vpt-deep", {"prompts": 0}),
                                            ("vpt-shallow", {"dropout": 1.0}), ("bitfit", {"rank": 2})])
def test_bad_options_raise_clear_errors(method, options):
    key = next(iter(options))
    with pytest.raises(ValueError, match=key):
        heartlora.apply(tiny_vit(), method, **options)


def test_options_from_strings_are_coerced():
    model = heartlora.apply(tiny_vit(), "adaptformer", dim="4", scale="0.5", bias="false", bits="1")
    layer = model.blocks[0].mlp
    assert (layer.adapter.hidden, layer.scale, layer.adapter.down_bias, layer.adapter.bits) == (4, 0.5, None, 1)


# ----- tiny end-to-end run per method --------------------------------------------------------
E2E = {
    "full": {}, "linear": {}, "bitfit": {}, "vpt-shallow": {"prompts": 2}, "vpt-deep": {"prompts": 2},
    "adapter": {"dim": 4}, "adaptformer": {"dim": 4}, "bi-adaptformer": {"dim": 4},
    "noah": {"subnet": {"prompt": [1, 0], "lora": [2, 1], "adapter": [0, 3]}},
    "lora": {}, "bilora": {"rank": 4}, "heart-lora": {"ne": 1}, "heart-lora-layer": {"ne": 1},
}


def test_e2e_table_covers_every_method():
    assert set(E2E) == set(registered())


@pytest.mark.parametrize("method", sorted(E2E))
def test_tiny_end_to_end_run(method, tmp_path):
    """Synthetic data → apply → a few training steps (loss goes down) → save → load → same outputs."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=gen)
    labels = torch.arange(16) % NUM_CLASSES
    model = heartlora.apply(tiny_vit(), method, **E2E[method])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-4)
    losses = []
    for _ in range(6):
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    heartlora.save_adapter(model, tmp_path)
    fresh = heartlora.load_adapter(tiny_vit(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


# ----- `heartlora train` per method (the CLI of the engine) ------------------------------------
CLI_OPTS = {
    "vpt-shallow": ["prompts=2"], "vpt-deep": ["prompts=2"], "adapter": ["dim=4"], "adaptformer": ["dim=4"],
    "bi-adaptformer": ["dim=4"], "bilora": ["rank=4"], "heart-lora": ["ne=1"], "heart-lora-layer": ["ne=1"],
    "noah": ['subnet={"prompt": [1, 0], "lora": [2, 1], "adapter": [0, 3]}'],
}
CLI_MODEL = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2",
             "num_heads=4", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    synthetic = pytest.importorskip("heartlora.data.synthetic", reason="the data package is not in this tree")
    root = tmp_path_factory.mktemp("vtab")
    synthetic.make_vtab(root, tasks=("cifar",), n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4)
    return root


@pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")
@pytest.mark.parametrize("method", sorted(E2E))
def test_heartlora_train_per_method(method, vtab_root, tmp_path):
    """`heartlora train --method M` on a synthetic VTAB task: completes, records the method's counts,
    and its adapter/ reloads into a fresh backbone."""
    import json

    cli = pytest.importorskip("heartlora.cli", reason="the CLI is not in this tree")
    out = tmp_path / "run"
    argv = ["train", *CLI_MODEL, "--epochs", "2", "--warmup-epochs", "1", "--lr", "0.01", "--eval-every", "1",
            "--data", str(vtab_root), "--data-kind", "vtab", "--task", "cifar", "--method", method, "--out", str(out)]
    for option in CLI_OPTS.get(method, []):
        argv += ["--opt", option]
    assert cli.main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete"
    fresh = tiny_vit(num_classes=heartlora.read_adapter_config(out / "adapter")["num_classes"])
    heartlora.load_adapter(fresh, out / "adapter")
    assert heartlora.get_state(fresh).method == method
    assert record["trainable_parameters"]["without_classifier"] == heartlora.trainable_parameters(fresh, include_classifier=False)
