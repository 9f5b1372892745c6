"""scripts/pretrain_demo_backbone.py: a training split into sittings ends with the same weights."""

from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of Fashion-MNIST: magic (ubyte, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def script():
    yield from load_benchmark("pretrain_demo_backbone.py", "pretrain_demo_backbone", folder="scripts")


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for prefix, n in (("train", 64), ("t10k", 16)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


@pytest.fixture(autouse=True)
def _keep_global_state():
    """The script seeds the global RNGs and sets torch's thread count; give them back."""
    threads, torch_rng, np_rng, py_rng = torch.get_num_threads(), torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


def _args(data: Path, work: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--epochs", "3", "--batch-size", "16", "--threads", "1", "--amp", "none",
            "--warmup-epochs", "1", "--work", str(work), "--out", str(out), *extra]


def test_sittings_end_with_the_weights_of_one_run(script, fake_fmnist, tmp_path, capsys):
    assert script.main(_args(fake_fmnist, tmp_path / "w1", tmp_path / "o1")) == 0
    # the same training in three sittings of one epoch each
    for sitting in range(3):
        script.main(_args(fake_fmnist, tmp_path / "w2", tmp_path / "o2", "--sitting-epochs", "1"))
        assert (tmp_path / "o2" / "demo_vit_fmnist.json").is_file() == (sitting == 2)
    assert "resuming from" in capsys.readouterr().out
    one, three = (json.loads((tmp_path / o / "demo_vit_fmnist.json").read_text()) for o in ("o1", "o2"))
    assert one["sha256"] == three["sha256"]
    assert (tmp_path / "o1" / "demo_vit_fmnist.safetensors").read_bytes() == \
        (tmp_path / "o2" / "demo_vit_fmnist.safetensors").read_bytes()
    assert [h["train_loss"] for h in one["history"]] == [h["train_loss"] for h in three["history"]]
    assert one["epochs"] == len(one["history"]) == 3 and one["seed"] == 0


def test_resume_with_other_settings_is_refused(script, fake_fmnist, tmp_path):
    script.main(_args(fake_fmnist, tmp_path / "w", tmp_path / "o", "--sitting-epochs", "1"))
    with pytest.raises(SystemExit, match=r"checkpoint\.pt: written with other settings \{'lr': \(0\.001, 0\.002\)\}"):
        script.main(_args(fake_fmnist, tmp_path / "w", tmp_path / "o", "--lr", "2e-3"))
    assert not (tmp_path / "o").exists()  # nothing written on refusal
