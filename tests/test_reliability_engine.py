"""Reliability of a training run (issue #11, engine side): every case exits with its documented code and
one line naming the file/option, no traceback, and nothing outside --out changes.

3 run-folder lock · 4 an existing adapter/ folder · 5 a full disk (fault injection, then an exact resume) ·
6 a diverging loss, nan/inf options · 7 errors from DataLoader workers · 12 planted symlinks at old
temporary names · 14 duplicate YAML keys, `ne: true`, `--resume` on an empty folder, warm-up-only runs,
an adapter evaluated at another input size.
"""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from heartlora import fsio
from heartlora.cli import main
from heartlora.data.synthetic import make_vtab
from heartlora.engine.lock import RunLock

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
        "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet", "--amp", "off"]
TRAIN = ["train", *TINY, "--epochs", "3", "--warmup-epochs", "1", "--lr", "0.01", "--eval-every", "1", "--task", "cifar"]


@pytest.fixture
def sandbox(tmp_path):
    """A data folder, a file outside every --out (must never change) and a helper that snapshots the tree."""
    make_vtab(tmp_path / "data", tasks=("cifar",), n_train=16, n_val=8, n_test=8, image_size=32, num_classes=4)
    (tmp_path / "outside.txt").write_text("do not touch\n")

    def snapshot(exclude: Path | None = None) -> dict:
        out = {}
        for path in sorted(tmp_path.rglob("*")):
            if exclude is not None and (path == exclude or exclude in path.parents):
                continue
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(tmp_path))] = (path.stat().st_size, path.stat().st_mtime_ns)
        return out

    return tmp_path, snapshot


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("heartlora: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def curve_of(record: dict) -> list:
    return [(e["epoch"], e["lr"], e["train_loss"], e["eval_accuracy"]) for e in record["curve"]]


# ----- 3: one process per run folder ----------------------------------------------------------------
def test_a_held_run_folder_is_refused_naming_the_holder(sandbox, capsys):
    root, snapshot = sandbox
    out = root / "run"
    with RunLock(out):  # another process's run, as far as this one can tell
        before = snapshot()
        code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", out)
        assert code == 1
        line = one_line_error(err)
        assert str(out) in line and f"PID {os.getpid()}" in line and "in use by" in line
        assert snapshot() == before
    assert not out.exists()  # the lock's own folder goes away with it when nothing was written


def test_two_real_processes_into_one_out_and_resume_while_running(sandbox):
    root, _ = sandbox
    out = root / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    args = [sys.executable, "-m", "heartlora.cli", *TRAIN, "--epochs", "100000", "--eval-every", "0",
            "--data", str(root / "data"), "--out", str(out)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (out / ".lock").exists()
        for extra in ([], ["--resume"]):
            second = subprocess.run(args + extra, env=env, capture_output=True, text=True, timeout=120)
            assert second.returncode in (1, 2) and "Traceback" not in second.stderr
            assert "in use by heartlora train" in second.stderr and f"PID {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()
    # a killed holder leaves no lock behind that blocks its own resume (the kernel drops the flock)
    assert (out / ".lock").exists()
    with RunLock(out):
        pass


def test_a_stale_lock_file_of_a_dead_process_is_taken(sandbox, capsys):
    root, _ = sandbox
    out = root / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "purpose": "heartlora train"}))
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--data", root / "data", "--out", out)
    assert code == 0, err
    assert not (out / ".lock").exists()


# ----- 4: the adapter folder -----------------------------------------------------------------------
def test_an_existing_adapter_folder_is_never_replaced(sandbox, capsys):
    root, snapshot = sandbox
    out = root / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "my_notes.txt").write_text("mine\n")
    before = snapshot()
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", out)
    assert code == 2
    line = one_line_error(err)
    assert str(out / "adapter") in line and "choose another --out" in line
    assert snapshot() == before and (out / "adapter" / "my_notes.txt").read_text() == "mine\n"


# ----- 5: a full disk -----------------------------------------------------------------------------
def test_full_disk_at_a_checkpoint_keeps_the_last_good_one_and_resumes_exactly(sandbox, capsys, monkeypatch):
    root, snapshot = sandbox
    out, whole = root / "run", root / "whole"
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_disk(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint after epoch 2: half a file, then the disk is full
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_disk)
    before = snapshot(exclude=out)
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", out)
    monkeypatch.setattr(torch, "save", real_save)
    assert code == 1
    line = one_line_error(err)
    assert str(out / "checkpoint.pt") in line and "No space left on device (ENOSPC)" in line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "data_fingerprint.json"]  # no temporaries, no lock
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["progress"]["epoch"] == 0  # the last good checkpoint
    assert snapshot(exclude=out) == before

    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", out, "--resume")
    assert code == 0, err
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", whole)
    assert code == 0, err
    resumed, reference = (json.loads((d / "run.json").read_text()) for d in (out, whole))
    assert curve_of(resumed) == curve_of(reference) and resumed["heads"] == reference["heads"]
    assert resumed["resumed_at_epochs"] == [1]
    a, b = (load_file(str(d / "adapter" / "adapter.safetensors")) for d in (out, whole))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("target", ["run.json", "adapter.safetensors"])
def test_full_disk_at_the_end_leaves_a_resumable_run(sandbox, capsys, monkeypatch, target):
    root, _ = sandbox
    out = root / "run"
    real_fsync = os.fsync

    def fsync(fd):
        if f".{target}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(fsio.os, "fsync", fsync)
    code, _, err = run(capsys, *TRAIN, "--epochs", 2, "--data", root / "data", "--out", out)
    monkeypatch.setattr(fsio.os, "fsync", real_fsync)
    assert code == 1
    assert target in one_line_error(err) and "ENOSPC" in err
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name != ".lock"]  # no temporaries
    assert not (out / "run.json").exists()
    code, _, err = run(capsys, *TRAIN, "--epochs", 2, "--data", root / "data", "--out", out, "--resume")
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# ----- 6: divergence, nan/inf options ---------------------------------------------------------------
def test_a_diverging_loss_is_one_line_and_keeps_the_checkpoint(sandbox, capsys):
    root, _ = sandbox
    out = root / "run"
    code, _, err = run(capsys, *TRAIN, "--method", "lora", "--lr", "1e12", "--warmup-epochs", 0, "--data",
                       root / "data", "--out", out)
    assert code == 1
    line = one_line_error(err)
    assert "training loss is nan" in line or "training loss is inf" in line
    assert "option 'lr'" in line and "scale" in line


@pytest.mark.parametrize("flag,value", [("--scale", "nan"), ("--scale", "inf"), ("--lr", "inf"), ("--lr", "nan")])
def test_nan_and_inf_options_are_usage_errors(sandbox, capsys, flag, value):
    root, snapshot = sandbox
    before = snapshot()
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", root / "run", flag, value)
    assert code == 2
    assert f"'{flag.lstrip('-')}'" in one_line_error(err)
    assert snapshot() == before


# ----- 7: errors inside DataLoader workers ----------------------------------------------------------
def test_a_bad_image_found_by_a_worker_gives_the_real_one_line_message(sandbox, capsys):
    root, _ = sandbox
    bad = root / "data" / "cifar" / "images" / "train800" / "000003.jpg"
    bad.write_bytes(b"not a jpeg")
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", root / "run", "--workers", 1,
                       "--no-check-images")
    assert code == 1
    line = one_line_error(err)
    assert "Caught DataError" not in err and "worker" not in line
    assert str(bad) in line and "train800val200.txt:4" in line


# ----- 12: temporaries never follow a planted symlink ---------------------------------------------
def test_symlinks_planted_at_old_temporary_names_are_never_followed(sandbox, capsys):
    root, _ = sandbox
    out = root / "run"
    out.mkdir()
    victim = root / "outside.txt"
    for name in (".run.json.tmp", ".checkpoint.pt.tmp", ".adapter.tmp", "adapter_config.json.tmp"):
        (out / name).symlink_to(victim)
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--data", root / "data", "--out", out)
    assert code == 0, err
    assert victim.read_text() == "do not touch\n"
    assert all((out / name).is_symlink() for name in (".run.json.tmp", ".checkpoint.pt.tmp", ".adapter.tmp"))


# ----- 14: smaller -------------------------------------------------------------------------------
def test_duplicate_yaml_keys_are_refused_with_both_lines(sandbox, capsys):
    root, snapshot = sandbox
    settings = root / "settings.yaml"
    settings.write_text("epochs: 2\nlr: 0.01\nepochs: 5\n")
    before = snapshot()
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", root / "run", "--config", settings)
    assert code == 2
    line = one_line_error(err)
    assert f"{settings}:3" in line and "'epochs' given twice" in line and "line 1" in line
    assert snapshot() == before


def test_ne_true_is_not_one(sandbox, capsys):
    root, _ = sandbox
    settings = root / "settings.yaml"
    settings.write_text("ne: true\n")
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", root / "run", "--config", settings)
    assert code == 2 and "'ne'" in one_line_error(err)


def test_resume_on_a_folder_without_a_run_is_refused(sandbox, capsys):
    root, snapshot = sandbox
    (root / "empty").mkdir()
    before = snapshot()
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", root / "empty", "--resume")
    assert code == 2
    line = one_line_error(err)
    assert "--resume" in line and str(root / "empty") in line and "without --resume" in line
    assert snapshot() == before


def test_a_run_that_never_leaves_the_warm_up_is_warned_about(sandbox, capsys):
    root, _ = sandbox
    code, _, err = run(capsys, *TRAIN, "--epochs", 2, "--warmup-epochs", 10, "--data", root / "data", "--out",
                       root / "run")
    assert code == 0
    assert "warning: option 'epochs'=2 with 'warmup_epochs'=10" in err and "lower --warmup-epochs" in err


def test_evaluating_at_another_image_size_warns(sandbox, capsys):
    root, _ = sandbox
    out = root / "run"
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--data", root / "data", "--out", out)
    assert code == 0, err
    code, _, err = run(capsys, "eval", "--adapter", out / "adapter", "--image-size", 48, "--amp", "off")
    assert "another input geometry" in err and "image size 32 → 48" in err


# ----- 10: images changed between a kill and --resume ---------------------------------------------
def test_images_changed_before_a_resume_are_named(sandbox, capsys):
    root, snapshot = sandbox
    out = root / "run"
    stop = {"after": 0}

    from heartlora.config import RunConfig
    from heartlora.engine.loop import train

    def kill(epoch, entry):
        if epoch == stop["after"]:
            raise KeyboardInterrupt

    config = RunConfig.from_dict({"model": "vit_tiny_patch16_224", "model_kwargs": {"patch_size": 8, "embed_dim": 48,
                                  "depth": 2, "num_heads": 4}, "image_size": 32, "batch_size": 8, "workers": 0,
                                  "quiet": True, "data": str(root / "data"), "task": "cifar", "epochs": 3,
                                  "warmup_epochs": 1, "lr": 0.01, "eval_every": 1, "out": str(out), "amp": "off"})
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[kill])
    image = root / "data" / "cifar" / "images" / "train800" / "000002.jpg"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(image, quality=50)  # other pixels, other size
    before = snapshot(exclude=out)
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", out, "--resume")
    assert code == 1
    line = one_line_error(err)
    assert str(out / "data_fingerprint.json") in line and "images/train800/000002.jpg" in line and "size" in line
    assert snapshot(exclude=out) == before
    code, _, err = run(capsys, *TRAIN, "--data", root / "data", "--out", out, "--resume", "--data-fingerprint", "off")
    assert code == 0 and "without checking that its images are unchanged" in err
