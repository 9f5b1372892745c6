"""Engine: recipe schedule, construction order, Heart-LoRA schedule, run record, resume."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from timm.scheduler import CosineLRScheduler

import heartlora
from heartlora.config import ConfigError, RunConfig
from heartlora.engine import CosineSchedule, evaluate, train
from heartlora.engine.build import build
from heartlora.seeding import capture_rng, derive_seed, restore_rng

from conftest import TINY_RUN, interrupted_then_resumed, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

def config(vtab_root, **overrides) -> RunConfig:
    return tiny_config(vtab_root, **{"epochs": 2, "warmup_epochs": 1, "lr": 1e-2, **overrides})


def timm_lrs(epochs, warmup, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5):
    """The reference: timm's scheduler built before training, ``step(epoch)`` after each epoch."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs, warmup_t=warmup, warmup_lr_init=warmup_lr, lr_min=min_lr)
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(epoch)
    return lrs


# ----------------------------------------------------------------------------- schedule
def test_paper_schedule_equals_timm_cosine_stepped_per_epoch():
    lrs = CosineSchedule(epochs=100, warmup_epochs=10).lrs()
    assert lrs == timm_lrs(100, 10)  # bit-identical
    design = {0: "1.00e-06", 1: "1.00e-06", 2: "1.01e-04", 5: "4.01e-04", 9: "8.00e-04", 10: "9.00e-04",
              11: "9.76e-04", 20: "9.14e-04", 50: "5.21e-04", 90: "3.93e-05", 99: "1.10e-05"}  # DESIGN §4, 3 digits
    assert {epoch: f"{lrs[epoch]:.2e}" for epoch in design} == design
    assert max(lrs) == lrs[11]


@pytest.mark.parametrize("epochs,warmup", [(12, 3), (5, 0), (2, 10), (1, 0)])
def test_schedule_equals_timm_for_other_lengths(epochs, warmup):
    schedule = CosineSchedule(epochs=epochs, warmup_epochs=warmup, lr=3e-3, warmup_lr=1e-7, min_lr=1e-6)
    assert schedule.lrs() == timm_lrs(epochs, warmup, 3e-3, 1e-7, 1e-6)


def test_run_config_defaults_are_the_paper_recipe():
    c = RunConfig()
    s = c.schedule
    assert (s.lr, s.weight_decay, s.batch_size, s.drop_last, s.epochs, s.warmup_epochs) == (1e-3, 1e-4, 64, True, 100, 10)
    assert (s.warmup_lr, s.min_lr, s.eval_every, c.model.drop_path, c.seed) == (1e-6, 1e-5, 10, 0.1, 42)
    assert RunConfig.from_dict({"preset": "paper"}).to_dict() == c.to_dict()


# ----------------------------------------------------------------------------- construction
def test_construction_order_model_data_adapters_classifier(vtab_root):
    cfg = config(vtab_root, method="lora")
    model = build(cfg, torch.device("cpu")).model
    # the same order by hand: seed → headless backbone → (data: no random numbers) → adapters → nn.Linear
    import timm

    torch.manual_seed(cfg.seed)
    manual = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, drop_path_rate=0.1,
                               **TINY_RUN["model_kwargs"])
    heartlora.apply(manual, "lora")
    head = torch.nn.Linear(48, 100)  # PyTorch's default init, drawn last
    assert model.head.out_features == 100 and heartlora.get_state(model).num_classes == 100
    assert torch.equal(model.head.weight, head.weight) and torch.equal(model.head.bias, head.bias)
    for (name, a), (_, b) in zip(model.state_dict().items(), manual.state_dict().items()):
        if not name.startswith("head."):
            assert torch.equal(a, b), name
    assert model.head.weight.requires_grad


def test_rng_capture_restore_and_derived_seeds():
    assert derive_seed(42, "epoch", 3) == derive_seed(42, "epoch", 3) != derive_seed(42, "epoch", 4)
    state = capture_rng()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    restore_rng(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# ----------------------------------------------------------------------------- run record
def test_heart_lora_run_record_and_schedule(vtab_root, tmp_path):
    cfg = config(vtab_root, epochs=4, warmup_epochs=2, eval_every=2, out=str(tmp_path / "run"))
    record = train(cfg)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["curve"] == record["curve"]
    assert [e["lr"] for e in record["curve"]] == timm_lrs(4, 2, lr=1e-2)
    # score_epochs None → the warm-up length (2): epochs 0-1 score, selection after epoch 1
    assert [e["phase"] for e in record["curve"]] == ["score", "score", "train", "train"]
    heads = record["heads"]
    assert heads["score_epochs"] == 2 and heads["selected_after_epoch"] == 1 and heads["ne"] == 1
    assert len(heads["switched_off"]) == 2 and all(len(off) == 1 for off in heads["switched_off"])
    assert heads["switched_off"][0] == heads["switched_off"][1]  # global selection
    assert all(sum(mask) == 3 for mask in heads["head_masks"]) and len(heads["scores"][0]) == 4
    assert any(s > 0 for s in heads["scores"][0])  # taylor scores accumulated during training
    # evaluations after epochs 1 and 3 ((e+1) % 2 == 0), protocols derived from them
    assert [e["epoch"] for e in record["evaluations"]] == [1, 3]
    best = max(record["evaluations"], key=lambda e: e["accuracy"])["accuracy"]
    assert record["protocols"]["paper"]["accuracy"] == best
    assert record["protocols"]["final"] == {"accuracy": record["evaluations"][-1]["accuracy"], "epoch": 3}
    assert record["protocols"]["clean"] == record["evaluations"][-1]["accuracy"]
    # parameters and bytes: 2 layers x (A: 2x8x48 + B: 2 targets x 3 heads x 12 x 8) + classifier 48x100+100
    lora = 2 * (2 * 8 * 48 + 2 * 3 * 12 * 8)
    assert record["trainable_parameters"] == {"with_classifier": lora + 4900, "without_classifier": lora}
    assert record["adapter_bytes"] == {"with_classifier": 4 * (lora + 4900), "without_classifier": 4 * lora}
    # the adapter reloads into a fresh backbone with the recorded accuracy
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "backbone.json").read_text())["model"] == "vit_tiny_patch16_224"
    from heartlora.engine.build import build_backbone, new_classifier

    fresh = build_backbone(cfg.model, 32, cfg.seed)
    new_classifier(fresh, 100)
    heartlora.load_adapter(fresh, adapter)
    task = build(cfg, torch.device("cpu")).task
    assert evaluate(fresh, task.eval, 8) == record["protocols"]["final"]["accuracy"]


def test_ne0_heart_lora_equals_lora_in_the_engine(vtab_root):
    a = train(config(vtab_root, method="heart-lora", opt={"ne": 0}))
    b = train(config(vtab_root, method="lora"))
    assert [e["train_loss"] for e in a["curve"]] == [e["train_loss"] for e in b["curve"]]
    assert a["evaluations"] == b["evaluations"] and a["adapter_bytes"] == b["adapter_bytes"]
    assert "heads" not in b and a["heads"]["switched_off"] == [[], []]


@pytest.mark.parametrize("options", [{"score": "ablation"}, {"score": "weight", "restart": True, "score_epochs": 1},
                                     {"score": "activation", "select": "layer"}])
def test_score_kinds_and_restart(vtab_root, options):
    record = train(config(vtab_root, epochs=2, opt=options))
    heads = record["heads"]
    assert heads["score"] == options["score"] and heads["selected_after_epoch"] == 0
    assert all(len(off) == 1 for off in heads["switched_off"])
    assert record["trainable_parameters"]["without_classifier"] == 2 * (2 * 8 * 48 + 2 * 3 * 12 * 8)
    if options["score"] == "ablation":
        assert any(s != 0 for s in heads["scores"][0])


def test_non_selecting_method_runs_without_head_schedule(vtab_root):
    record = train(config(vtab_root, method="bitfit", epochs=1))
    assert "heads" not in record and record["method"]["name"] == "bitfit"
    assert record["trainable_parameters"]["without_classifier"] > 0


# ----------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def kill_after(k):
    def callback(epoch, entry):
        if epoch == k:
            raise Killed(f"simulated kill after epoch {k}")
    return callback


def comparable(record):
    return {
        "curve": [{k: e.get(k) for k in ("epoch", "lr", "train_loss", "phase", "images", "eval_accuracy")}
                  for e in record["curve"]],
        "evaluations": record["evaluations"], "protocols": record["protocols"], "heads": record.get("heads"),
        "adapter_bytes": record["adapter_bytes"], "trainable": record["trainable_parameters"],
    }


@pytest.mark.parametrize("kill_epoch,options", [
    (0, {}),  # inside the scoring phase: partial Taylor scores must survive
    (1, {"restart": True}),  # right after selection + restart
    (2, {"score_epochs": 1}),  # after selection, with dropout / drop-path / augmentation RNG
])
def test_resume_after_kill_equals_uninterrupted_run(vtab_root, tmp_path, kill_epoch, options):
    base = dict(epochs=4, warmup_epochs=2, augment=True, opt=options)
    full = train(config(vtab_root, out=str(tmp_path / "full"), **base))

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train(config(vtab_root, out=str(out), **base), callbacks=[kill_after(kill_epoch)])
    assert (out / "checkpoint.pt").is_file()
    assert not (out / "run.json").exists() and not (out / "adapter").exists()  # nothing half-written
    with pytest.raises(ConfigError, match="--resume"):
        train(config(vtab_root, out=str(out), **base))  # refuses to overwrite a run silently
    resumed = train(config(vtab_root, out=str(out), resume=True, **base))

    assert resumed["resumed_at_epochs"] == [kill_epoch + 1]
    assert comparable(resumed) == comparable(full)
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter.safetensors"))
    b = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished run returns its record
    again = train(config(vtab_root, out=str(out), resume=True, **base))
    assert again["finished_at"] == resumed["finished_at"]


def test_resume_refuses_other_settings(vtab_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(config(vtab_root, out=str(out), epochs=3), callbacks=[kill_after(0)])
    with pytest.raises(ConfigError, match="schedule.lr"):
        train(config(vtab_root, out=str(out), epochs=3, lr=0.5, resume=True))


def test_bad_schedule_values_name_the_option(vtab_root):
    with pytest.raises(ConfigError, match="option 'epochs'"):
        train(config(vtab_root, epochs=0))
    with pytest.raises(ConfigError, match="option 'batch_size'"):
        train(config(vtab_root, batch_size=64))  # drop_last leaves no batch of 24 images
    with pytest.raises(ConfigError, match="score_epochs"):
        train(config(vtab_root, epochs=2, opt={"score_epochs": 3}))
    assert math.isfinite(train(config(vtab_root, epochs=1, batch_size=64, drop_last=False))["curve"][0]["train_loss"])


def test_loader_workers_give_the_same_run(vtab_root):
    a = train(config(vtab_root, epochs=1, workers=0))
    b = train(config(vtab_root, epochs=1, workers=2))
    assert a["curve"][0]["train_loss"] == b["curve"][0]["train_loss"] and a["evaluations"] == b["evaluations"]


def test_restart_needs_epochs_after_scoring(tmp_path):
    from heartlora.cli import main
    from heartlora.data.synthetic import make_folder

    make_folder(tmp_path / "data", classes=3, per_split=(6, 3, 6), image_size=32)
    code = main(["train", "--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "--model-kwargs",
                 "embed_dim=48", "--model-kwargs", "depth=2", "--model-kwargs", "num_heads=4", "--image-size", "32",
                 "--data-kind", "folder", "--data", str(tmp_path / "data"), "--epochs", "2", "--batch-size", "4",
                 "--workers", "0", "--quiet", "--ne", "1", "--opt", "score_epochs=2", "--opt", "restart=true",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run" / "run.json").exists()


def test_noah_supernet_resumes_exactly(vtab_root, tmp_path):
    """NOAH's sub-network sampler is re-seeded per epoch by its schedule, so a kill loses nothing."""
    resumed, whole = interrupted_then_resumed(config(vtab_root, method="noah", epochs=3, amp="off"), tmp_path, 0)
    assert [e["train_loss"] for e in resumed["curve"]] == [e["train_loss"] for e in whole["curve"]]


def test_split_paper_is_recorded_as_final(vtab_root):
    record = train(config(vtab_root, method="lora", split="paper", epochs=1))
    assert record["data"]["split"] == "final" and record["protocols"]["clean"] is not None
