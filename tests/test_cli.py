"""The `heartlora` CLI: train / eval on all three data layouts, data verify, methods, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from heartlora.cli import main
from heartlora.data.synthetic import make_fewshot, make_folder, make_vtab

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
        "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet"]
TRAIN = ["train", *TINY, "--epochs", "2", "--warmup-epochs", "1", "--lr", "0.01", "--eval-every", "1"]

LAYOUTS = {
    "vtab": (lambda root: make_vtab(root, tasks=("cifar",), n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4),
             ["--data-kind", "vtab", "--task", "cifar100"]),  # an alias of 'cifar'
    "fewshot": (lambda root: make_fewshot(root, dataset="oxford_pets", shots=(1,), seeds=(0,), n_test=10, image_size=32),
                ["--data-kind", "fewshot", "--task", "oxford_pets", "--shots", "1", "--fewshot-seed", "0"]),
    "folder": (lambda root: make_folder(root, classes=3, per_split=(12, 3, 6), image_size=32), ["--data-kind", "folder"]),
}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch Heart-LoRA run per layout: (data args, out dir, exit code)."""
    runs = {}
    for kind, (make, args) in LAYOUTS.items():
        base = tmp_path_factory.mktemp(kind)
        make(base / "data")
        out = base / "run"
        code = main([*TRAIN, "--data", str(base / "data"), *args, "--out", str(out)])
        runs[kind] = (["--data", str(base / "data"), *args], out, code)
    return runs


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_train_writes_complete_record_and_eval_reproduces_accuracy(trained, capsys, kind):
    data_args, out, code = trained[kind]
    assert code == 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["data"]["kind"] == kind
    assert {"torch", "timm", "heartlora", "python", "git"} <= set(record["versions"])
    assert record["versions"]["torch"] == torch.__version__ and record["device"]["type"] == "cpu"
    assert record["seed"] == 42 and len(record["data"]["manifest_hash"]) == 64
    curve = record["curve"]
    assert [e["epoch"] for e in curve] == [0, 1]
    assert all(isinstance(e["train_loss"], float) and e["lr"] > 0 and e["eval_accuracy"] is not None for e in curve)
    assert {"paper", "final", "clean"} <= set(record["protocols"]) and record["protocols"]["final"]["epoch"] == 1
    heads = record["heads"]
    assert heads["switched_off"] and heads["scores"] and heads["head_masks"]
    assert record["trainable_parameters"]["with_classifier"] > record["trainable_parameters"]["without_classifier"] > 0
    assert record["adapter_bytes"]["with_classifier"] > record["adapter_bytes"]["without_classifier"] > 0
    assert record["peak_memory"]["bytes"] > 0 and record["images_per_s"] > 0 and record["wall_time_s"] > 0
    assert (out / "checkpoint.pt").is_file() and (out / "adapter" / "adapter.safetensors").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # same accuracy through `heartlora eval`, with data given explicitly or taken from run.json
    code, stdout, _ = run_cli(capsys, "eval", "--adapter", out / "adapter", *data_args, "--batch-size", 8, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["accuracy"] == record["protocols"]["final"]["accuracy"]
    assert result["manifest_hash"] == record["data"]["manifest_hash"]
    code, stdout, _ = run_cli(capsys, "eval", "--adapter", out, "--batch-size", 8)
    assert code == 0 and f"accuracy {record['protocols']['final']['accuracy']:.2f}%" in stdout


def test_data_verify_prints_the_hash_runs_record(trained, capsys):
    data_args, out, _ = trained["vtab"]
    record = json.loads((out / "run.json").read_text())
    code, stdout, _ = run_cli(capsys, "data", "verify", data_args[1], "--kind", "vtab", "--task", "cifar")
    assert code == 0 and f"manifest hash: {record['data']['manifest_hash']}" in stdout and "result: OK" in stdout
    image = Path(data_args[1]) / "cifar" / "images" / "test" / "000002.jpg"
    good = image.read_bytes()
    image.write_bytes(b"not an image")
    try:
        code, stdout, _ = run_cli(capsys, "data", "verify", data_args[1], "--task", "cifar")
    finally:
        image.write_bytes(good)
    assert code == 1 and "000002.jpg" in stdout and "FAILED" in stdout


def test_methods_lists_registry_with_defaults(capsys):
    code, stdout, _ = run_cli(capsys, "methods")
    assert code == 0 and "heart-lora" in stdout and "score=taylor" in stdout and "lora " in stdout
    code, stdout, _ = run_cli(capsys, "methods", "--json")
    table = json.loads(stdout)
    assert table["heart-lora"]["options"]["rank"] == 8 and table["bilora"]["options"]["bits"] == 1


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    for expected in ("--lr LR", "(default: 0.001)", "(default: 0.0001)", "(default: 64)", "(default: 100)",
                     "(default: 42)", "(default: heart-lora)", "--config YAML", "--resume"):
        assert expected in text, expected
    for command in (["eval"], ["data", "verify"], ["methods"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "usage: heartlora" in capsys.readouterr().out


def test_yaml_config_and_flag_precedence(trained, tmp_path, capsys):
    data_args, _, _ = trained["folder"]
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "model: vit_tiny_patch16_224\nmodel-kwargs: {patch_size: 8, embed_dim: 48, depth: 2, num_heads: 4}\n"
        f"data-kind: folder\ndata: {data_args[1]}\nimage_size: 32\nbatch-size: 8\nworkers: 0\n"
        "epochs: 3\nwarmup_epochs: 1\nlr: 0.5\nmethod: heart-lora\nopt: {score: weight}\nne: 2\nquiet: true\n")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--config", yaml_file, "--epochs", 1, "--lr", 0.01, "--out", out)
    assert code == 0, err
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["schedule"]["epochs"] == 1 and config["schedule"]["lr"] == 0.01  # flags override
    assert config["schedule"]["warmup_epochs"] == 1 and config["method"]["options"] == {"score": "weight", "ne": 2}
    # run.json is itself a config file
    code, _, err = run_cli(capsys, "train", "--config", out / "run.json", "--out", tmp_path / "again", "--quiet")
    assert code == 0, err

    yaml_file.write_text("epochs: 1\nlearning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", "--config", yaml_file, "--out", tmp_path / "bad")
    assert code == 2 and f"{yaml_file}:2" in err and "learning_rate" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_resume_through_the_cli(trained, tmp_path, capsys):
    data_args, _, _ = trained["vtab"]
    out = tmp_path / "run"
    from heartlora.engine import train as engine_train

    class Killed(Exception):
        pass

    def kill(epoch, entry):
        raise Killed

    from heartlora.cli.common import run_config

    argv = [*TRAIN, "--epochs", "3", *data_args, "--out", str(out)]  # the later --epochs wins
    with pytest.raises(Killed):
        engine_train(run_config(argv), callbacks=[kill])
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--resume" in err  # never silently overwritten
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--quiet")  # settings come from the checkpoint
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["resumed_at_epochs"] == [1] and len(record["curve"]) == 3
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--lr", "0.5")
    assert code == 2 and "schedule.lr" in err


# ----------------------------------------------------------------------------- bad input
def _vtab(tmp_path):
    root = tmp_path / "data"
    make_vtab(root, tasks=("cifar",), n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4)
    return root, root / "cifar"


def _replace_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = text
    path.write_text("".join(lines))


BAD_DATA = {
    "missing split file": (lambda t: (t / "test.txt").unlink(), [], ["test.txt", "not found"]),
    "label out of range": (lambda t: _replace_line(t / "train800val200.txt", 2, "images/train800/000002.jpg 100\n"), [],
                           ["train800val200.txt:3", "label 100"]),
    "malformed line": (lambda t: _replace_line(t / "test.txt", 0, "images/test/000000.jpg\n"), [], ["test.txt:1", "malformed"]),
    "unreadable image": (lambda t: (t / "images" / "test" / "000003.jpg").write_bytes(b"garbage"), [],
                         ["000003.jpg", "test.txt:4"]),
    "wrong --num-classes": (lambda t: None, ["--num-classes", "10"], ["--num-classes", "100 classes"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_clearly_and_writes_nothing(tmp_path, capsys, case):
    mutate, extra, expected = BAD_DATA[case]
    root, task = _vtab(tmp_path)
    mutate(task)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--task", "cifar", "--out", out, *extra)
    assert code == 1, err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err and not out.exists()


BAD_OPTIONS = {
    "ne >= heads": (["--ne", "4"], ["option 'ne'=4", "heads"]),
    "unknown method": (["--method", "lorra"], ["unknown method 'lorra'", "heart-lora"]),
    "unknown option": (["--opt", "rnak=4"], ["unknown option 'rnak'", "rank"]),
    "option of another method": (["--method", "lora", "--ne", "1"], ["unknown option 'ne'", "'lora'"]),
    "bad option value": (["--opt", "score=magic"], ["option 'score'", "taylor"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_are_usage_errors(tmp_path, capsys, case):
    extra, expected = BAD_OPTIONS[case]
    root, _ = _vtab(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--task", "cifar", "--out", out, *extra)
    assert code == 2, err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err and not out.exists()


def test_wrong_weights_fail_with_file_and_tensor(tmp_path, capsys):
    root, _ = _vtab(tmp_path)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2,
                              num_heads=4, num_classes=3)
    weights = tmp_path / "other.pth"
    torch.save(other.state_dict(), weights)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--task", "cifar", "--out", out, "--weights", weights)
    assert code == 1 and str(weights) in err and "wrong shape" in err and "tensor '" in err and "64" in err
    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--task", "cifar", "--out", out, "--weights", tmp_path / "nope.pth")
    assert code == 1 and "nope.pth" in err and "not found" in err
    assert not out.exists()


def test_adapter_for_another_backbone(trained, capsys):
    data_args, out, _ = trained["vtab"]
    code, _, err = run_cli(capsys, "eval", "--adapter", out / "adapter", *data_args, "--model-kwargs", "embed_dim=64")
    assert code == 1 and "adapter_config.json" in err and "another backbone" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "eval", "--adapter", out / "nothing-here", *data_args)
    assert code == 1 and "nothing-here" in err


def test_usage_errors_exit_2_from_the_console_script(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "heartlora.cli", "train", "--epochs", "zero"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2 and "--epochs" in result.stderr and "Traceback" not in result.stderr


def test_train_and_eval_with_local_npz_weights(tmp_path, capsys):
    from test_models import to_google_npz

    root, _ = _vtab(tmp_path)
    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48, depth=2,
                               num_heads=4, num_classes=11)
    weights = tmp_path / "ViT-T_8.npz"
    to_google_npz(source, weights)
    from heartlora.models import sha256_file

    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *TRAIN, "--epochs", 1, "--data", root, "--task", "cifar", "--out", out,
                           "--weights", weights, "--weights-sha256", sha256_file(weights))
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["weights_sha256"] == sha256_file(weights)
    code, stdout, err = run_cli(capsys, "eval", "--adapter", out / "adapter", "--batch-size", 8, "--json")
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == record["protocols"]["final"]["accuracy"]
