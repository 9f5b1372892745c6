"""The shipped demo backbone and the digits demo task."""
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import heartlora
from heartlora.data import load_task
from heartlora.demo import demo_backbone, prepare_digits, run_demo
from heartlora.engine.build import build_backbone, new_classifier


def test_shipped_backbone_checksum_and_geometry():
    model_cfg, meta = demo_backbone()
    weights = Path(model_cfg.weights)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["sha256"] == model_cfg.weights_sha256
    model = build_backbone(model_cfg, meta["image_size"][-1], seed=0)  # loads and checks the weights
    sites = heartlora.find_attention_sites(model)
    assert len(sites) == 6 and {s.num_heads for s in sites} == {6} and {s.in_dim for s in sites} == {192}
    assert meta["test_accuracy_stored"] > 70.0  # it learned Fashion-MNIST (the README gives the number)


def test_one_heart_lora_step_on_digits(tmp_path):
    task_dir = prepare_digits(tmp_path)
    lines = {s: (task_dir / f"{s}.txt").read_text().splitlines() for s in ("train800", "val200", "test")}
    assert [len(lines[s]) for s in ("train800", "val200", "test")] == [800, 200, 797]
    model_cfg, meta = demo_backbone()
    model = build_backbone(model_cfg, 32, seed=0)
    task = load_task("vtab", tmp_path, "digits", image_size=32)
    assert task.num_classes == 10 and len(task.train) == 1000 and len(task.eval) == 797
    heartlora.apply(model, "heart-lora")
    new_classifier(model, task.num_classes)
    images, labels = zip(*(task.train[i] for i in range(16)))
    images, labels = torch.stack(images), torch.tensor(labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with heartlora.HeadScorer(model) as scorer:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        scores = scorer.scores()
    masks = heartlora.select_and_apply(model, scores, optimizer)
    assert all(int((~m).sum()) == 2 for m in masks)  # round(6/4) = 2 heads off per layer
    assert torch.isfinite(loss)


def test_demo_writes_table_records_and_figures(tmp_path):
    rows = run_demo(tmp_path, epochs=1, methods=["linear", "heart-lora"], quiet=True, log=lambda _: None)
    assert [r["method"] for r in rows] == ["linear", "heart-lora"]
    assert rows[0]["adapter_bytes"] == 0 and rows[1]["adapter_bytes"] > 0
    for name in ("responsiveness.png", "accuracy_vs_bytes.png", "summary.json", "heart-lora/run.json"):
        assert (tmp_path / name).stat().st_size > 0
    record = json.loads((tmp_path / "heart-lora" / "run.json").read_text())
    assert record["data"]["task"] == "digits" and record["heads"]["switched_off"]
