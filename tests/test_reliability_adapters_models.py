"""Reliability: broken adapter folders and backbone options give one-line errors with the right exit code
(1: bad file, 2: invalid option value), name the file or option, print no traceback, and change nothing."""
import hashlib
import re
import json
import shutil

import pytest
import torch

from heartlora.cli import main
from heartlora.data.synthetic import make_vtab

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
        "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet"]


def snapshot(root):
    """Every file and folder under ``root`` with its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def errors(err):
    return [line for line in err.splitlines() if line.startswith("heartlora: error")]


class Opaque:
    """A Python object a checkpoint should not hold."""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    make_vtab(root / "data", tasks=("cifar",), n_train=8, n_val=4, n_test=4, image_size=32, num_classes=2)
    code = main(["train", *TINY, "--data", str(root / "data"), "--task", "cifar", "--method", "heart-lora", "--ne", "1",
                 "--epochs", "2", "--warmup-epochs", "1", "--eval-every", "2", "--out", str(root / "run")])
    assert code == 0
    return root


def broken_copy(lora_run, tmp_path, damage):
    """A copy of the run (data + run folder) with ``damage(adapter_dir)`` applied."""
    shutil.copytree(lora_run / "data", tmp_path / "data")
    shutil.copytree(lora_run / "run", tmp_path / "run")
    record = tmp_path / "run" / "run.json"  # point the run's data root at the copy
    values = json.loads(record.read_text())
    values["config"]["data"]["root"] = str(tmp_path / "data")
    record.write_text(json.dumps(values))
    damage(tmp_path / "run" / "adapter")
    return tmp_path / "run"


def edit_config(**changes):
    def damage(adapter):
        path = adapter / "adapter_config.json"
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is KeyError:
                config.pop(key)
            else:
                config[key] = value
        path.write_text(json.dumps(config))
    return damage


def truncate(adapter):
    path = adapter / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:-16])


def empty(adapter):
    (adapter / "adapter.safetensors").write_bytes(b"")


ADAPTER_CASES = {
    "truncated": (truncate, r"adapter\.safetensors: not a readable safetensors file"),
    "empty": (empty, r"adapter\.safetensors: not a readable safetensors file"),
    "head_masks": (edit_config(head_masks="abc"),
                   r"adapter_config\.json: key 'head_masks' is \"abc\"; expected null or one list"),
    "options": (edit_config(options="rank=8"), r"adapter_config\.json: key 'options' is \"rank=8\"; expected a JSON object"),
    "scores": (edit_config(scores=[[1.0]]), r"adapter_config\.json: key 'scores' .*heads per block: \[4, 4\]"),
    "newer": (edit_config(format_version=99), r"adapter_config\.json: adapter format_version 99 is newer .* upgrade heartlora"),
    "no version": (edit_config(format_version=KeyError), r"adapter_config\.json: missing key 'format_version'"),
    "bad version": (edit_config(format_version="1"), r"adapter_config\.json: key 'format_version' is \"1\""),
    "geometry": (edit_config(geometry=[{"name": 3}]), r"adapter_config\.json: key 'geometry'"),
    "unknown option": (edit_config(options={"rnk": 8}), r"adapter_config\.json: unknown option 'rnk' for method 'heart-lora'"),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_broken_adapter_folder_exits_1_naming_the_file(lora_run, tmp_path, capsys, case):
    damage, message = ADAPTER_CASES[case]
    run_dir = broken_copy(lora_run, tmp_path, damage)
    before = snapshot(tmp_path)
    code, err = run(capsys, "eval", "--adapter", run_dir)
    assert code == 1 and len(errors(err)) == 1
    assert re.search(message, err), err
    out = tmp_path / "exported" / "m.safetensors"
    code, err = run(capsys, "export", "--adapter", run_dir, "--merged", out)
    assert code == 1 and re.search(message, err), err
    assert snapshot(tmp_path) == before  # nothing written, not even the output folder


@pytest.fixture
def data(tmp_path):
    make_vtab(tmp_path / "data", tasks=("cifar",), n_train=8, n_val=4, n_test=4, image_size=32, num_classes=2)
    return ["--data", str(tmp_path / "data"), "--task", "cifar", "--epochs", "1", "--warmup-epochs", "0"]


def train_fails(capsys, tmp_path, data, *argv):
    before = snapshot(tmp_path)
    code, err = run(capsys, "train", *data, "--method", "lora", "--out", tmp_path / "run", *argv)
    assert not (tmp_path / "run").exists() and snapshot(tmp_path) == before
    assert len(errors(err)) == 1
    return code, err


def test_heads_that_do_not_divide_the_width_exit_2(tmp_path, capsys, data):
    code, err = train_fails(capsys, tmp_path, data, *TINY[:2], "--model-kwargs", "embed_dim=50", "num_heads=4", *TINY[7:])
    assert code == 2 and "option 'model_kwargs'" in err and "divisible by num_heads" in err


def test_unknown_model_and_bad_kwargs_exit_2(tmp_path, capsys, data):
    code, err = train_fails(capsys, tmp_path, data, "--model", "vit_tiny_patch16_244", *TINY[2:])
    assert code == 2 and "option 'model': unknown timm model 'vit_tiny_patch16_244'" in err
    code, err = train_fails(capsys, tmp_path, data, *TINY, "--model-kwargs", "not_an_argument=1")
    assert code == 2 and "option 'model_kwargs'" in err and "not_an_argument" in err
    code, err = train_fails(capsys, tmp_path, data, "--model", "vit_tiny_patch16_224.nope", *TINY[2:])
    assert code == 2 and "has no pretrained tag 'nope'" in err


def test_malformed_sha256_exits_2(tmp_path, capsys, data):
    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pth")
    code, err = train_fails(capsys, tmp_path, data, *TINY, "--weights", tmp_path / "w.pth", "--weights-sha256", "abc")
    assert code == 2 and "option 'weights_sha256': expected 64 hex digits" in err


@pytest.mark.parametrize("content,message", [
    (lambda p: torch.save([torch.zeros(2)], p), "holds a list, not a state dict"),
    (lambda p: p.write_bytes(b"not a checkpoint at all"), "cannot read weights: not a PyTorch file of tensors"),
    (lambda p: p.write_bytes(b""), "cannot read weights: the file is empty or truncated"),
    (lambda p: torch.save({"weight": torch.zeros(2), "obj": Opaque()}, p), "holds pickled Python objects (test_reliability"),
])
def test_unusable_checkpoints_exit_1_without_unsafe_advice(tmp_path, capsys, data, content, message):
    path = tmp_path / "weights.pth"
    content(path)
    code, err = train_fails(capsys, tmp_path, data, *TINY, "--weights", path)
    assert code == 1 and f"{path}: " in err and message in err
    assert "weights_only" not in err and "allow_pickle" not in err
