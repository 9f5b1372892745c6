"""Heart-LoRA specifics: head masks, equivalence with LoRA / Bi-LoRA at ne=0, closed-form counts,
selection rules, and the responsiveness scores."""
import pytest
import torch
import torch.nn.functional as F

import heartlora
from heartlora.heads import find_attention_sites
from heartlora.methods import quant
from heartlora.methods.lowrank import lowrank_layers

from conftest import BACKBONES, tiny_swin, tiny_vit


def _step(model, images, labels, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    return optimizer


def _randomise_b(model, seed=5, std=0.1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lowrank_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * std)


# ----- head masks ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [32, 1])
def test_switched_off_head_has_zero_delta_and_zero_gradient(bits, images):
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1, bits=bits, dropout=0.0)
    _randomise_b(model)
    layer = model.blocks[0].attn.qkv
    site = layer.site
    tokens = torch.randn(2, 5, site.in_dim)
    before = layer(tokens).detach()

    off = 2
    mask = torch.ones(site.num_heads, dtype=torch.bool)
    mask[off] = False
    heartlora.apply_head_selection(model, [mask] * 2)
    out = layer(tokens)
    base = layer.base(tokens)
    q_rows, v_rows = list(site.rows("q", off)), list(site.rows("v", off))
    assert torch.equal(out[..., q_rows], base[..., q_rows])  # exactly zero delta on q
    assert torch.equal(out[..., v_rows], base[..., v_rows])  # and on v
    if bits == 32:
        # the mask removes only head `off`: every other row is bit-identical to before
        other = [r for r in range(3 * site.attn_dim) if r not in q_rows + v_rows]
        assert torch.equal(out[..., other], before[..., other])
    # the switched-off head's rows send no gradient into any adapter parameter
    out[..., q_rows + v_rows].sum().backward()
    for param in layer.adapter_parameters():
        assert param.grad is None or torch.count_nonzero(param.grad) == 0
    # and it is not a parameter at all any more
    assert layer.lora_B.shape[1] == site.num_heads - 1


def test_masking_is_not_head_pruning(images):
    """The frozen attention of a switched-off head still runs: only its update is removed."""
    model = tiny_vit().eval()
    reference = tiny_vit().eval()
    heartlora.apply(model, "heart-lora", ne=3)
    heartlora.select_and_apply(model, [torch.arange(4.0)] * 2)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))  # B=0: still the full backbone


def test_selection_keeps_optimizer_state_of_active_heads(images, labels):
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1)
    optimizer = _step(model, images, labels)
    layer = model.blocks[0].attn.qkv
    avg_before = optimizer.state[layer.lora_B]["exp_avg"].clone()
    heartlora.select_and_apply(model, [torch.tensor([3.0, 0.0, 2.0, 1.0])] * 2, optimizer)
    kept = [0, 2, 3]
    assert torch.equal(optimizer.state[layer.lora_B]["exp_avg"], avg_before[:, kept])
    _step_with(optimizer, model, images, labels)


def _step_with(optimizer, model, images, labels):
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()


# ----- ne = 0 reproduces LoRA / Bi-LoRA exactly ------------------------------------------------
@pytest.mark.parametrize("backbone", ["vit", "swin"])
@pytest.mark.parametrize("reference,bits", [("lora", 32), ("bilora", 1)])
def test_ne_zero_reproduces_plain_method(backbone, reference, bits, images, labels):
    def run(method, **extra):
        model = BACKBONES[backbone](0)
        torch.manual_seed(7)
        heartlora.apply(model, method, rank=4, bits=bits, **extra)
        torch.manual_seed(11)  # same dropout masks
        outputs, grads = [], []
        with heartlora.HeadScorer(model, "taylor") if method.startswith("heart") else _null():
            for _ in range(2):
                optimizer = _step(model, images, labels)
                grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        if method.startswith("heart"):
            sites = find_attention_sites(model)
            heartlora.select_and_apply(model, [torch.arange(float(s.num_heads)) for s in sites], optimizer)
        _step_with(optimizer, model, images, labels)
        model.eval()
        with torch.no_grad():
            outputs.append(model(images))
        return outputs, grads

    extra = {"fraction": 0.0} if backbone == "swin" else {"ne": 0}
    heart_out, heart_grads = run("heart-lora", **extra)
    ref_out, ref_grads = run(reference)
    assert all(torch.equal(a, b) for a, b in zip(heart_out, ref_out))
    for step_a, step_b in zip(heart_grads, ref_grads):
        assert all(torch.equal(a, b) for a, b in zip(step_a, step_b))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# ----- closed-form counts ----------------------------------------------------------------------
@pytest.mark.parametrize("bits", [32, 1, 2, 4, 8])
@pytest.mark.parametrize("ne", [0, 1, 3])
def test_counts_equal_closed_form(bits, ne):
    model = tiny_vit()
    rank = 4
    heartlora.apply(model, "heart-lora", ne=ne, rank=rank, bits=bits)
    heartlora.select_and_apply(model, [torch.arange(4.0)] * 2)
    sites = find_attention_sites(model)
    classifier_params = sum(p.numel() for p in model.get_classifier().parameters())
    targets = 2  # q, v
    params = sum(targets * (rank * s.in_dim + (s.num_heads - ne) * s.head_dim * rank) for s in sites)
    assert heartlora.trainable_parameters(model) == params + classifier_params
    assert heartlora.trainable_parameters(model, include_classifier=False) == params
    if bits == 32:
        adapter = 4 * params
    else:  # bits/8 bytes per weight (packed) + fp32 mean and std per matrix
        adapter = sum(
            targets * (-(-rank * s.in_dim * bits // 8) + 8 + -(-(s.num_heads - ne) * s.head_dim * rank * bits // 8) + 8)
            for s in sites
        )
    assert heartlora.adapter_bytes(model, include_classifier=False) == adapter
    assert heartlora.adapter_bytes(model) == adapter + 4 * classifier_params


def test_saved_file_holds_no_switched_off_block(tmp_path):
    from safetensors import safe_open

    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=3)
    heartlora.select_and_apply(model, [torch.arange(4.0)] * 2)
    heartlora.save_adapter(model, tmp_path)
    with safe_open(str(tmp_path / "adapter.safetensors"), "pt") as f:
        assert f.get_tensor("blocks.0.attn.qkv.lora_B").shape == (2, 1, 12, 8)
    config = heartlora.read_adapter_config(tmp_path)
    assert config["head_masks"] == [[False, False, False, True]] * 2


# ----- selection ---------------------------------------------------------------------------------
def test_global_selection_same_heads_every_layer_layer_selection_may_differ():
    scores = [torch.tensor([0.1, 0.5, 0.2, 0.9]), torch.tensor([0.8, 0.1, 0.9, 0.2])]
    global_masks = heartlora.select_heads(scores, ne=2, select="global")
    # R = [0.9, 0.6, 1.1, 1.1]: heads 1 and 0 off everywhere
    assert [m.tolist() for m in global_masks] == [[False, False, True, True]] * 2
    layer_masks = heartlora.select_heads(scores, ne=2, select="layer")
    assert [m.tolist() for m in layer_masks] == [[False, True, False, True], [True, False, True, False]]


def test_ties_switch_off_lower_index_and_fraction_rounds_per_layer():
    masks = heartlora.select_heads([torch.zeros(4)] * 2, ne=1, select="global")
    assert masks[0].tolist() == [False, True, True, True]
    masks = heartlora.select_heads([torch.zeros(2), torch.zeros(4), torch.zeros(8)], select="fraction", fraction=0.25)
    assert [int((~m).sum()) for m in masks] == [1, 1, 2]  # round-half-up(0.25·H_l)


def test_first_selection_ignores_scores():
    masks = heartlora.select_heads([torch.tensor([9.0, 8.0, 0.0, 0.0])] * 2, ne=2, select="first")
    assert [m.tolist() for m in masks] == [[False, False, True, True]] * 2


def test_normalize_scales_layers_before_accumulating():
    scores = [torch.tensor([10.0, 20.0, 30.0, 40.0]), torch.tensor([0.97, 0.01, 0.01, 0.01])]
    assert (~heartlora.select_heads(scores, ne=1, select="global")[0]).nonzero().item() == 0
    # normalised: [0.1, 0.2, 0.3, 0.4] + [0.97, 0.01, 0.01, 0.01] -> head 1 is the least responsive
    assert (~heartlora.select_heads(scores, ne=1, select="global", normalize=True)[0]).nonzero().item() == 1


def test_swin_defaults_to_stage_selection_of_a_fraction_and_rejects_global():
    model = tiny_swin()
    heartlora.apply(model, "heart-lora")
    options = heartlora.get_state(model).options
    assert options["select"] == "stage" and options["fraction"] == 0.25
    layer = heartlora.apply(tiny_swin(), "heart-lora-layer")
    assert heartlora.get_state(layer).options["select"] == "layer"
    with pytest.raises(ValueError, match="same number of heads"):
        heartlora.apply(tiny_swin(), "heart-lora", ne=1, select="global")


def test_default_ne_is_a_quarter_of_the_heads():
    model = tiny_vit(num_heads=12, embed_dim=96)
    heartlora.apply(model, "heart-lora")
    assert heartlora.get_state(model).options["ne"] == 3


@pytest.mark.parametrize("options,message", [
    ({"ne": 4}, "'ne'=4"),
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"bits": 3}, "'bits'=3"),
    ({"targets": "q,x"}, "'targets'"),
    ({"score": "magic"}, "'score'='magic'"),
    ({"rank": "eight"}, "option 'rank'"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        heartlora.apply(tiny_vit(), "heart-lora", **options)


def test_unknown_method_lists_registered():
    with pytest.raises(ValueError, match="registered methods: .*heart-lora"):
        heartlora.apply(tiny_vit(), "heart-loar")


def test_adapter_for_another_backbone_is_refused(tmp_path):
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1)
    heartlora.save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="num_heads=4.*num_heads=8|another backbone"):
        heartlora.load_adapter(tiny_vit(num_heads=8), tmp_path)


def test_backbone_without_class_token(images):
    model = tiny_vit(class_token=False, global_pool="avg")
    reference = tiny_vit(class_token=False, global_pool="avg").eval()
    heartlora.apply(model, "heart-lora", ne=1)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), reference(images))


def test_methods_lists_options_and_papers():
    listing = heartlora.methods()
    assert {"lora", "bilora", "heart-lora", "heart-lora-layer"} <= set(listing)
    assert listing["bilora"]["options"]["bits"] == 1 and listing["bilora"]["options"]["rank"] == 32
    assert "2404.08894" in listing["heart-lora"]["paper"]


# ----- quantiser ---------------------------------------------------------------------------------
def test_one_bit_codebook_and_packing_round_trip():
    assert torch.allclose(quant.codebook(1), torch.tensor([-0.6745, 0.6745]), atol=1e-4)
    for bits in (1, 2, 4, 8):
        codes = torch.randint(0, 2**bits, (37,), dtype=torch.uint8)
        packed = quant.pack(codes, bits)
        assert packed.numel() == quant.packed_nbytes(37, bits)
        assert torch.equal(quant.unpack(packed, bits, 37), codes)


def test_quantiser_is_straight_through():
    weight = torch.randn(8, 16, requires_grad=True)
    quantised = quant.quantize_ste(weight, 1)
    assert quantised.unique().numel() == 2
    quantised.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


# ----- responsiveness scores -----------------------------------------------------------------
def test_all_four_scores_rank_the_head_that_matters_first():
    """Head 2's update is made large in every layer and the labels are the model's own
    predictions, so removing head 2's update costs the most: every score must rank it first."""
    torch.manual_seed(0)
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1, dropout=0.0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lowrank_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 1e-4)
            layer.lora_B[:, 2] = torch.randn(layer.lora_B[:, 2].shape, generator=generator) * 2.0
        # a confident classifier: the loss sits near its minimum at the model's own predictions,
        # so removing any head's update can only raise it
        model.head.weight.mul_(50.0)
        model.head.bias.mul_(50.0)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    with torch.no_grad():
        labels = model.eval()(images).argmax(dim=1)
    model.train()
    batches = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    results = {}
    for kind in ("taylor", "activation", "weight"):
        with heartlora.HeadScorer(model, kind) as scorer:
            for x, y in batches:
                model.zero_grad()
                F.cross_entropy(model(x), y).backward()
            results[kind] = scorer.scores()
    results["ablation"] = heartlora.ablation_scores(model, batches)
    for kind, scores in results.items():
        for layer_scores in scores:
            assert int(layer_scores.argmax()) == 2, (kind, layer_scores)
        # and global selection never switches it off
        masks = heartlora.select_heads(scores, ne=3, select="global")
        assert all(bool(m[2]) for m in masks), kind


def test_taylor_score_equals_gate_gradient():
    """The free estimate (from B's gradient) equals the gradient of an explicit unit gate."""
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1, dropout=0.0)
    _randomise_b(model)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with heartlora.HeadScorer(model, "taylor") as scorer:
        F.cross_entropy(model(images), labels).backward()
        free = scorer.scores()
    layers = lowrank_layers(model)
    gates = []
    for layer in layers:
        layer.head_gate.requires_grad_(True)
        gates.append(layer.head_gate)
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    for score, gate in zip(free, gates):
        assert torch.allclose(score, gate.grad.abs(), rtol=1e-4, atol=1e-8)


# ----- edge cases found in review ------------------------------------------------------------
def test_loaded_quantised_adapter_is_quantised_again_once_trained(tmp_path, images, labels):
    model = tiny_vit()
    heartlora.apply(model, "bilora", rank=4)
    heartlora.save_adapter(model, tmp_path / "a")
    fresh = tiny_vit()
    heartlora.load_adapter(fresh, tmp_path / "a")
    layer = fresh.blocks[0].attn.qkv
    assert layer.prequantized
    _step(fresh, images, labels)  # the weights move off the loaded codes
    assert layer.effective_A()[:4].unique().numel() == 2  # quantised afresh, 1 bit
    assert not layer.prequantized
    heartlora.save_adapter(fresh, tmp_path / "b")
    reloaded = tiny_vit()
    heartlora.load_adapter(reloaded, tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(images), fresh.eval()(images))


def test_activation_scoring_does_not_change_the_forward(images):
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1, dropout=0.0)
    _randomise_b(model)
    model.eval()
    with torch.no_grad():
        plain = model(images)
        with heartlora.HeadScorer(model, "activation") as scorer:
            scored = model(images)
            assert all(s.sum() > 0 for s in scorer.scores())
    assert torch.equal(plain, scored)


def test_explicit_select_is_never_overridden_on_swin():
    for select in ("first", "global"):
        with pytest.raises(ValueError, match=f"select='{select}'"):
            heartlora.apply(tiny_swin(), "heart-lora", select=select)


def test_fraction_keeps_one_head_per_layer():
    masks = heartlora.select_heads([torch.zeros(2), torch.zeros(4)], select="fraction", fraction=0.8)
    assert [int(m.sum()) for m in masks] == [1, 1]


def test_integer_head_counts_stay_integers_whatever_union_spelling_typing_cached():
    # typing caches Union[str, int] and Union[int, str] as one object: once a library (torch.compile
    # does) has built the str-first spelling, get_args of the option's hint lists str first
    import typing

    from heartlora.config import coerce_option

    hint = typing.Union[str, int, None]  # what get_args returns then, however the option is written
    assert typing.get_args(hint)[0] is str
    assert coerce_option(1, hint, "ne") == 1 and coerce_option("2", hint, "ne") == 2
    assert coerce_option("auto", hint, "ne") == "auto"
    model = tiny_vit()
    heartlora.apply(model, "heart-lora", ne=1)
