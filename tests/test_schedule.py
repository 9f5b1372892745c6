"""Heart-LoRA's own schedule: a loop of one's own through the public hooks equals `heartlora train`;
byte budgets, ne=auto (never the test split), stage selection on Swin, the controls, restarts."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import heartlora
import heartlora.data as heartlora_data
from heartlora.adapters_io import adapter_tensors
from heartlora.config import ConfigError, RunConfig
from heartlora.engine.build import build
from heartlora.engine.loop import train
from heartlora.engine.schedule import CosineSchedule
from heartlora.methods.lowrank import lowrank_layers
from heartlora.precision import autocast, resolve_amp
from heartlora.seeding import derive_seed, seed_all

from conftest import interrupted_then_resumed, tiny_config, tiny_swin, tiny_vit

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

def config(vtab_root, **overrides) -> RunConfig:
    return tiny_config(vtab_root, **{"epochs": 3, "warmup_epochs": 1, "lr": 1e-2,
              "method": "heart-lora", **overrides})


# ----- a training loop of one's own -------------------------------------------------------------------
def own_loop(cfg: RunConfig):
    """A plain PyTorch loop: the same construction, seeds and lr as the recipe, the schedule's hooks."""
    model, task = (lambda b: (b.model, b.task))(build(cfg, torch.device("cpu")))
    s = cfg.schedule
    make = lambda: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr,  # noqa: E731
                                     weight_decay=s.weight_decay)
    optimizer = make()
    schedule = heartlora.schedule_for(model, epochs=s.epochs, optimizer=optimizer, warmup_epochs=s.warmup_epochs,
                                      seed=cfg.seed)
    lrs = CosineSchedule.from_config(s)
    amp = resolve_amp(cfg.amp, torch.device("cpu")).enabled  # bf16 autocast on CPUs with AMX, as the engine
    losses = []
    for epoch in range(s.epochs):
        schedule.on_epoch_start(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lrs.lr_for_epoch(epoch)
        seed_all(derive_seed(cfg.seed, "epoch", epoch))
        # the recipe's order: a seeded permutation per epoch, cut into batches (the last incomplete one dropped)
        order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "order", epoch)))
        batches = [order[i:i + s.batch_size].tolist() for i in range(0, len(order) - s.batch_size + 1, s.batch_size)]
        # a generator of its own: a DataLoader without one draws its worker seed from the global RNG,
        # which would shift dropout's random numbers (heartlora's loader never touches it)
        loader = DataLoader(task.train, batch_sampler=batches, generator=torch.Generator())
        model.train()
        total, steps = 0.0, 0
        for images, labels in loader:
            with autocast(torch.device("cpu"), amp):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / steps)
        actions = schedule.on_epoch_end(epoch)
        if actions.rebuild_optimizer:
            optimizer = make()
            schedule.attach_optimizer(optimizer)
    schedule.close()
    return model, losses, schedule.record()["heads"]


@pytest.mark.parametrize("options", [{"ne": 1}, {"ne": 2, "select": "layer", "score_epochs": 2}])
def test_own_loop_with_the_public_schedule_equals_heartlora_train(vtab_root, options):
    cfg = config(vtab_root, opt=options, eval_every=0)
    model, losses, heads = own_loop(cfg)
    record = train(cfg)
    assert losses == [e["train_loss"] for e in record["curve"]]  # bit for bit
    assert heads["switched_off"] == record["heads"]["switched_off"] and heads["scores"] == record["heads"]["scores"]


def test_own_loop_tensors_equal_the_saved_adapter_of_heartlora_train(vtab_root, tmp_path):
    cfg = config(vtab_root, opt={"ne": 1}, eval_every=0)
    model, _, _ = own_loop(cfg)
    train(cfg.replace(out=str(tmp_path / "run")))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter.safetensors"))
    mine = adapter_tensors(model)
    assert set(saved) == set(mine) and all(torch.equal(saved[k], mine[k]) for k in saved)


def test_methods_without_a_schedule_get_one_that_does_nothing():
    model = heartlora.apply(tiny_vit(), "lora")
    schedule = heartlora.schedule_for(model, epochs=3)
    assert not schedule.on_epoch_start(0) and not schedule.on_epoch_end(0) and schedule.record() == {}


# ----- byte budgets -----------------------------------------------------------------------------------
def layer_bytes(d: int, heads_kept: int, head_dim: int, rank: int, targets: int = 2) -> int:
    """Closed form (fp32): A is targets·r·d floats, B targets·heads·d_h·r floats."""
    return 4 * targets * (rank * d + heads_kept * head_dim * rank)


@pytest.mark.parametrize("budget", [{"budget_ratio": 0.75}, {"budget_ratio": 0.65}, {"budget_bytes": 10000}])
def test_budget_gives_the_largest_adapter_that_fits(vtab_root, budget):
    record = train(config(vtab_root, opt=budget, epochs=2))
    d, h, dh, r, layers = 48, 4, 12, 8, 2
    lora = layers * layer_bytes(d, h, dh, r)
    limit = budget.get("budget_bytes") or int(budget["budget_ratio"] * lora)
    fits = [ne for ne in range(h) if layers * layer_bytes(d, h - ne, dh, r) <= limit]
    expected_ne = min(fits)  # the fewest heads off = the largest adapter that fits
    stored = record["adapter_bytes"]["without_classifier"]
    assert stored == layers * layer_bytes(d, h - expected_ne, dh, r) <= limit
    assert record["heads"]["heads_off"] == [expected_ne] * layers
    assert record["heads"]["budget"]["lora_bytes"] == lora


def test_budget_on_quantised_adapters_counts_packed_bytes():
    model = heartlora.apply(tiny_vit(), "heart-lora", bits=1, rank=8, budget_ratio=0.8)
    schedule = heartlora.schedule_for(model, epochs=2, warmup_epochs=1)
    budget = schedule.budget
    assert budget["stored_bytes"] <= budget["budget_bytes"] == int(0.8 * budget["lora_bytes"])
    layers = lowrank_layers(model)
    one_fewer = [max(0, c - 1) for c in budget["heads_off"]]
    if one_fewer != budget["heads_off"]:  # keeping one more head would not fit
        assert sum(l.stored_nbytes(l.site.num_heads - c) for l, c in zip(layers, one_fewer)) > budget["budget_bytes"]


def test_impossible_budget_names_both_numbers(vtab_root):
    with pytest.raises(ConfigError, match=r"1,000 bytes.*7,680 bytes"):
        train(config(vtab_root, opt={"budget_bytes": 1000}, epochs=2))


# ----- ne=auto ------------------------------------------------------------------------------------------
class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        self.reads += 1
        return self.inner[index]

    def __getattr__(self, name):  # paths, targets, ...: the inner dataset's (reading them is no image read)
        return getattr(self.inner, name)


def test_ne_auto_never_reads_the_test_split(vtab_root, monkeypatch):
    seen = {}
    real = heartlora_data.load_task

    def load_task(*args, **kwargs):
        task = real(*args, **kwargs)
        task.eval = seen["test"] = CountingDataset(task.eval)
        return task

    monkeypatch.setattr(heartlora_data, "load_task", load_task)
    record = train(config(vtab_root, opt={"ne": "auto", "score_epochs": 1, "tolerance": 100}, epochs=2, eval_every=0))
    assert seen["test"].reads == len(seen["test"])  # only the one final evaluation
    auto = record["heads"]["auto"]
    assert [p["ne"] for p in auto["curve"]] == [0, 1, 2, 3]
    assert auto["chosen_ne"] == 3 and record["heads"]["heads_off"] == [3, 3]  # tolerance 100: every count passes
    held = record["data"]["held_out"]
    assert held["source"].startswith("seeded hold-out of train800val200") and held["images"] == 3
    assert record["data"]["train_images"] == 24 + 8 - 3  # held out, not trained on


def test_ne_auto_on_the_tune_split_uses_val200(vtab_root):
    record = train(config(vtab_root, opt={"ne": "auto", "tolerance": 0.0}, split="tune", epochs=2))
    auto = record["heads"]["auto"]
    assert auto["validation"]["source"] == "val200" and record["data"]["train_images"] == 24
    reference = auto["curve"][0]["accuracy"]
    kept = [p["ne"] for p in auto["curve"] if p["accuracy"] >= reference]
    assert auto["chosen_ne"] == max(kept)


# ----- Swin: global selection within each stage ----------------------------------------------------
def test_swin_stage_selection_differs_from_per_layer_and_equals_per_stage_global():
    def swin():
        return tiny_swin(depths=(2, 2), num_heads=(2, 4))

    scores = [torch.tensor([1.0, 5.0]), torch.tensor([5.0, 0.1]),
              torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0, 10.0])]
    stage_model, layer_model = heartlora.apply(swin(), "heart-lora"), heartlora.apply(swin(), "heart-lora-layer")
    stage_masks = heartlora.select_and_apply(stage_model, scores)
    layer_masks = heartlora.select_and_apply(layer_model, scores)
    assert heartlora.get_state(stage_model).options["select"] == "stage"
    assert [m.tolist() for m in stage_masks] != [m.tolist() for m in layer_masks]
    # per stage: sum the stage's layers, switch off its lowest round(0.25·H) heads in all of them
    expected = []
    for pair in ((scores[0], scores[1]), (scores[2], scores[3])):
        total = pair[0] + pair[1]
        off = sorted(range(total.numel()), key=lambda h: (float(total[h]), h))[:max(1, round(0.25 * total.numel()))]
        expected += [[h not in off for h in range(total.numel())]] * 2
    assert [m.tolist() for m in stage_masks] == expected
    assert [m.tolist() for m in layer_masks] == [[False, True], [True, False], [True, True, True, False],
                                                 [False, True, True, True]]


# ----- controls -------------------------------------------------------------------------------------
def test_random_and_reverse_controls_are_deterministic():
    scores = [torch.tensor([3.0, 1.0, 4.0, 2.0, 5.0, 0.5])] * 3
    a = heartlora.select_heads(scores, ne=2, select="random", seed=7)
    b = heartlora.select_heads(scores, ne=2, select="random", seed=7)
    others = {tuple((~m).nonzero().flatten().tolist()) for s in range(10)
              for m in heartlora.select_heads(scores, ne=2, select="random", seed=s)[:1]}
    assert [m.tolist() for m in a] == [m.tolist() for m in b] and len(others) > 1
    assert all(torch.equal(m, a[0]) for m in a)  # the same heads in every layer
    reverse = heartlora.select_heads(scores, ne=2, select="reverse")
    assert (~reverse[0]).nonzero().flatten().tolist() == [2, 4]  # the two most responsive
    assert (~heartlora.select_heads(scores, ne=2, select="global")[0]).nonzero().flatten().tolist() == [1, 5]


def test_controls_run_through_the_engine(vtab_root):
    first = train(config(vtab_root, opt={"ne": 2, "select": "first"}, epochs=2))
    random = train(config(vtab_root, opt={"ne": 2, "select": "random", "select_seed": 3}, epochs=2))
    again = train(config(vtab_root, opt={"ne": 2, "select": "random", "select_seed": 3}, epochs=2))
    assert first["heads"]["switched_off"] == [[0, 1], [0, 1]]
    assert random["heads"]["switched_off"] == again["heads"]["switched_off"]


# ----- restart, held-out ablation ------------------------------------------------------------------
def test_restart_schedule_rewarms_the_learning_rate(vtab_root):
    plain = train(config(vtab_root, opt={"ne": 1, "restart": True, "score_epochs": 1}, epochs=4))
    rewarm = train(config(vtab_root, opt={"ne": 1, "restart": True, "restart_schedule": True, "score_epochs": 1},
                          epochs=4))
    s = plain["config"]["schedule"]
    assert [e["lr"] for e in plain["curve"]] == CosineSchedule(4, 1, s["lr"], s["warmup_lr"], s["min_lr"]).lrs()
    rest = CosineSchedule(3, 1, s["lr"], s["warmup_lr"], s["min_lr"]).lrs()
    assert [e["lr"] for e in rewarm["curve"]] == [plain["curve"][0]["lr"], *rest]
    assert rewarm["schedule"]["restarted_at_epoch"] == 1


def test_restart_schedule_needs_restart(vtab_root):
    with pytest.raises(ConfigError, match="restart_schedule"):
        train(config(vtab_root, opt={"restart_schedule": True}))


def test_ablation_scores_on_held_out_batches(vtab_root):
    record = train(config(vtab_root, opt={"score": "ablation", "ablation_data": "holdout", "holdout": 0.25}, epochs=2))
    assert record["heads"]["score"] == "ablation" and record["data"]["held_out"]["images"] == 8
    assert record["data"]["train_images"] == 24
    assert len(record["heads"]["scores"]) == 2


def test_resume_of_a_budget_and_auto_run_equals_uninterrupted(vtab_root, tmp_path):
    resumed, whole = interrupted_then_resumed(config(vtab_root, opt={"ne": "auto", "score_epochs": 1}, epochs=3),
                                              tmp_path, 1)
    assert [e["train_loss"] for e in resumed["curve"]] == [e["train_loss"] for e in whole["curve"]]
    assert resumed["heads"] == whole["heads"] and resumed["resumed_at_epochs"] == [2]
