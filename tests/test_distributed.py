"""One run on several processes with torchrun (DDP, gloo on CPU): the same losses, heads and adapter
tensors as one process with the same global batch; only rank 0 writes; a killed DDP run resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from heartlora.cli import main
from heartlora.data.synthetic import make_vtab
from heartlora.engine.distributed import GlobalBatchSampler

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

ARGS = ["train", "--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2",
        "num_heads=4", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet", "--warmup-epochs", "1",
        "--lr", "0.01", "--eval-every", "1", "--task", "cifar", "--drop-path", "0", "--opt", "dropout=0",
        "--method", "heart-lora", "--ne", "1", "--amp", "off"]


def env():
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


def torchrun(*argv, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "heartlora",
               *map(str, argv)]
    if not wait:
        return subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    make_vtab(root / "data", tasks=("cifar",), n_train=20, n_val=8, n_test=8, image_size=32, num_classes=4)
    common = [*ARGS, "--epochs", 8, "--data", root / "data"]  # enough epochs to kill one run midway
    assert main([str(a) for a in common] + ["--out", str(root / "single")]) == 0
    result = torchrun(*common, "--out", root / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, common


def record(folder):
    return json.loads((folder / "run.json").read_text())


def test_ddp_equals_one_process_with_the_same_global_batch(runs):
    root, _ = runs
    single, ddp = record(root / "single"), record(root / "ddp")
    for a, b in zip(single["curve"], ddp["curve"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["eval_accuracy"] == b["eval_accuracy"] and a["images"] == b["images"]
    assert single["heads"]["switched_off"] == ddp["heads"]["switched_off"]
    for x, y in zip(single["heads"]["scores"], ddp["heads"]["scores"]):
        assert x == pytest.approx(y, rel=1e-4, abs=1e-9)
    a, b = (load_file(str(root / d / "adapter" / "adapter.safetensors")) for d in ("single", "ddp"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    assert ddp["execution"] == {"executor": "torchrun", "world_size": 2, "nodes": single["execution"]["nodes"],
                                "backend": "gloo"}
    # rank 0 alone writes: one record, one adapter, one checkpoint, no stray files
    assert sorted(p.name for p in (root / "ddp").iterdir()) == ["adapter", "checkpoint.pt", "data_fingerprint.json", "run.json"]


def test_heartlora_train_nproc_launches_torchrun(runs, capfd):
    root, common = runs
    code = main([str(a) for a in common] + ["--out", str(root / "nproc"), "--nproc", "2"])
    assert code == 0
    assert record(root / "nproc")["curve"] == record(root / "ddp")["curve"] or all(
        a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        for a, b in zip(record(root / "nproc")["curve"], record(root / "ddp")["curve"]))
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m heartlora train" in capfd.readouterr().err


def test_a_killed_ddp_run_resumes_to_the_same_record(runs):
    root, common = runs
    out = root / "killed"
    process = torchrun(*common, "--out", out, wait=False)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if (out / "checkpoint.pt").exists():
                if torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["epoch"] >= 0:
                    break
            time.sleep(0.05)
        # torchrun's workers run in sessions of their own: kill -9 every process of this run
        subprocess.run(["pkill", "-9", "-f", f"out {out}"], check=False)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "run.json").exists()
    result = torchrun(*common, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, whole = record(out), record(root / "ddp")
    assert resumed["resumed_at_epochs"] and resumed["resumed_at_epochs"][0] >= 1
    assert [(e["train_loss"], e["eval_accuracy"]) for e in resumed["curve"]] == \
        [(e["train_loss"], e["eval_accuracy"]) for e in whole["curve"]]
    assert resumed["heads"] == whole["heads"]
    a, b = (load_file(str(d / "adapter" / "adapter.safetensors")) for d in (out, root / "ddp"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_global_batches_are_split_into_contiguous_rank_slices():
    one = list(GlobalBatchSampler(11, 4, drop_last=False, seed=3))
    two = [list(GlobalBatchSampler(11, 4, drop_last=False, seed=3, world_size=2, rank=r)) for r in (0, 1)]
    assert [len(b) for b in one] == [4, 4, 3]
    assert [a + b for a, b in zip(*two)] == one  # the union of the ranks' slices is the one-process batch
    assert len(GlobalBatchSampler(11, 4, drop_last=True, seed=3)) == 2 == len(list(GlobalBatchSampler(11, 4, True, 3)))


def test_noah_supernet_trains_under_ddp(runs):
    root, common = runs
    args = [a for a in common]
    args[args.index("heart-lora")] = "noah"
    args = [a for i, a in enumerate(args) if a not in ("--ne",) and (i == 0 or args[i - 1] != "--ne")]
    args[args.index("--epochs") + 1] = 1
    result = torchrun(*args, "--out", root / "noah")
    assert result.returncode == 0, result.stderr[-3000:]
    assert record(root / "noah")["execution"]["world_size"] == 2
