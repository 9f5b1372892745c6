"""NOAH: the supernet (seeded sampling, weight sharing), the closed-form count of a sub-network,
the evolutionary search (budget, determinism) and the three phases end to end."""
import json
import random

import pytest
import torch
import torch.nn.functional as F

import heartlora
from heartlora.methods import noah

from conftest import NUM_CLASSES, tiny_swin, tiny_vit

D, L = 48, 2
GRIDS = {"prompt_grid": "0,1,3", "lora_grid": "0,1,2", "adapter_grid": "0,2,4"}


def _supernet(seed=0, **options):
    return heartlora.apply(tiny_vit(), "noah", seed=seed, **{**GRIDS, **options})


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(8, 3, 32, 32, generator=gen), torch.arange(8) % NUM_CLASSES


def _randomise(model, seed=11, std=0.1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and not n.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _random_subnet(rng, grids=((0, 1, 3), (0, 1, 2), (0, 2, 4))):
    return {b: [rng.choice(g) for _ in range(L)] for b, g in zip(noah.BRANCHES, grids)}


def _formula(subnet, n_targets=3):
    total = 0
    for p, r, k in zip(*(subnet[b] for b in noah.BRANCHES)):
        total += p * D + r * (D + n_targets * D) + ((2 * D * k + k + D) if k else 0)
    return total


# ----- supernet --------------------------------------------------------------------------------
def _sampled(seed, images, steps=6):
    model = _supernet(seed=seed).train()
    net = noah.noah_blocks(model)
    seen = []
    for _ in range(steps):
        model(images)
        seen.append((tuple(net.active), tuple(net.qkv_layer(l).active for l in range(L)),
                     tuple(net.mlp_layer(l).active for l in range(L))))
    return seen


def test_supernet_samples_a_subnet_per_training_step_deterministically(batch):
    images, _ = batch
    first = _sampled(3, images)
    assert first == _sampled(3, images)  # same seed, same sub-networks
    assert len(set(first)) > 1  # a new one every step
    assert first != _sampled(4, images)
    grids = [(0, 1, 3), (0, 1, 2), (0, 2, 4)]
    assert all(v in grid for step in first for sizes, grid in zip(step, grids) for v in sizes)


def test_supernet_eval_uses_the_fixed_subnet_and_zero_subnet_is_the_backbone(batch):
    images, _ = batch
    model = _supernet().eval()
    net = noah.noah_blocks(model)
    assert net.fixed == {"prompt": [3, 3], "lora": [2, 2], "adapter": [4, 4]}  # the largest by default
    _randomise(model)
    reference = tiny_vit().eval()
    zero = {b: [0] * L for b in noah.BRANCHES}
    noah.set_subnet(model, zero)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
        model.train()
        assert torch.equal(model.eval()(images), reference(images))  # eval is back on the fixed one


def test_supernet_slices_equal_the_retrained_subnet_with_copied_weights(batch):
    """Weight sharing: a sub-network of the supernet computes exactly what the stand-alone
    sub-network computes with the first p/r/k rows of the supernet's weights."""
    images, _ = batch
    supernet = _supernet().eval()
    _randomise(supernet)
    subnet = {"prompt": [3, 1], "lora": [1, 2], "adapter": [2, 0]}
    noah.set_subnet(supernet, subnet)
    single = heartlora.apply(tiny_vit(), "noah", subnet=subnet, **GRIDS).eval()
    big = dict(supernet.named_parameters())
    with torch.no_grad():
        for name, p in single.named_parameters():
            if p.requires_grad:
                src = big[name]
                p.copy_(src[tuple(slice(0, s) for s in p.shape)])
        assert torch.allclose(single(images), supernet(images), atol=1e-6)


def test_subnet_count_is_the_closed_form():
    rng = random.Random(0)
    for _ in range(5):
        subnet = _random_subnet(rng)
        model = heartlora.apply(tiny_vit(), "noah", subnet=subnet)
        trainable = heartlora.trainable_parameters(model, include_classifier=False)
        assert trainable == _formula(subnet) == noah.subnet_parameters(_supernet(), subnet)
        assert heartlora.adapter_bytes(model, include_classifier=False) == 4 * trainable
    q_only = heartlora.apply(tiny_vit(), "noah", subnet={"lora": [2, 0]}, lora_targets="q,v")
    assert heartlora.trainable_parameters(q_only, include_classifier=False) == 2 * (D + 2 * D)


def test_supernet_holds_the_largest_subnet():
    model = _supernet()
    largest = {"prompt": [3, 3], "lora": [2, 2], "adapter": [4, 4]}
    assert heartlora.trainable_parameters(model, include_classifier=False) == _formula(largest)


# ----- sub-network option ------------------------------------------------------------------------
def test_subnet_saved_in_adapter_config_and_reloadable(batch, tmp_path):
    images, labels = batch
    subnet = {"prompt": [1, 3], "lora": [2, 0], "adapter": [4, 2]}
    path = noah.save_subnet(subnet, tmp_path / "subnet.json")
    model = heartlora.apply(tiny_vit(), "noah", subnet=str(path))  # a JSON path, as from the CLI
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model.train()(images), labels).backward()
        opt.step()
    heartlora.save_adapter(model.eval(), tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["options"]["subnet"] == subnet
    fresh = heartlora.load_adapter(tiny_vit(), tmp_path / "adapter").eval()
    assert noah.noah_blocks(fresh).fixed == subnet
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


def test_subnet_option_accepts_json_text_and_rejects_bad_ones():
    model = heartlora.apply(tiny_vit(), "noah", subnet='{"prompt": [1, 0], "lora": [0, 1], "adapter": [0, 0]}')
    assert heartlora.get_state(model).options["subnet"]["lora"] == [0, 1]
    with pytest.raises(ValueError, match="3 entries, the backbone has 2 blocks"):
        heartlora.apply(tiny_vit(), "noah", subnet={"prompt": [1, 1, 1], "lora": [0, 0, 0], "adapter": [0, 0, 0]})
    with pytest.raises(ValueError, match="unknown branches"):
        heartlora.apply(tiny_vit(), "noah", subnet={"prefix": [1, 1]})
    with pytest.raises(ValueError, match="not a file"):
        heartlora.apply(tiny_vit(), "noah", subnet="missing.json")
    with pytest.raises(ValueError, match="'noah'.*SwinTransformer"):
        heartlora.apply(tiny_swin(), "noah")


# ----- search ----------------------------------------------------------------------------------
def _trained_supernet(batch, steps=4, seed=0):
    images, labels = batch
    torch.manual_seed(0)
    model = _supernet(seed=seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return model


def _evaluator(batch):
    images, labels = batch

    def evaluate(model):
        return -F.cross_entropy(model(images), labels).item()  # higher is better
    return evaluate


def test_search_respects_the_budget_and_is_deterministic(batch):
    model = _trained_supernet(batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    budget = 1500  # well below the largest sub-network (~2.4k)
    first = noah.search(model, _evaluator(batch), budget, population=8, generations=3, seed=5)
    assert first["params"] <= budget
    assert all(c["params"] <= budget for c in first["candidates"])
    assert first["params"] == noah.subnet_parameters(model, first["subnet"])
    assert len(first["history"]) == 3 and first["evaluations"] >= 8
    assert [h["best_score"] for h in first["history"]] == sorted(h["best_score"] for h in first["history"])
    assert noah.noah_blocks(model).fixed == first["subnet"]  # left on the winner
    model.load_state_dict(state)
    again = noah.search(model, _evaluator(batch), budget, population=8, generations=3, seed=5)
    assert again == first
    other = noah.search(model, _evaluator(batch), budget, population=8, generations=3, seed=6)
    assert other["params"] <= budget


def test_search_with_zero_budget_picks_the_empty_subnet(batch):
    model = _trained_supernet(batch, steps=1)
    result = noah.search(model, _evaluator(batch), 0, population=4, generations=2, seed=0)
    assert result["subnet"] == {b: [0] * L for b in noah.BRANCHES} and result["params"] == 0


def test_search_needs_a_supernet(batch):
    model = heartlora.apply(tiny_vit(), "noah", subnet={"prompt": [1, 1]})
    with pytest.raises(ValueError, match="supernet"):
        noah.search(model, _evaluator(batch), 100)


# ----- the three phases --------------------------------------------------------------------------
def test_run_noah_three_phases(batch, tmp_path):
    images, labels = batch
    phases = []

    def train(model, phase):
        phases.append(phase)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            opt.step()

    result = noah.run_noah(lambda: tiny_vit(), train, _evaluator(batch), budget_params=1200,
                           options=GRIDS, population=6, generations=2, seed=1, out_dir=tmp_path)
    assert phases == ["supernet", "retrain"]
    model = result["model"]
    assert heartlora.trainable_parameters(model, include_classifier=False) == result["search"]["params"] <= 1200
    assert heartlora.get_state(model).options["subnet"] == result["subnet"]
    assert set(result["timings"]) == {"supernet", "search", "retrain"}
    saved = json.loads((tmp_path / "noah_search.json").read_text())
    assert saved["subnet"] == result["subnet"]
    heartlora.save_adapter(model, tmp_path / "adapter")
    fresh = heartlora.load_adapter(tiny_vit(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), model.eval()(images))
