"""The bench / report / analyze commands end to end on a tiny ViT and synthetic VTAB data."""
import glob
import json
import shutil
import sys
import tempfile

import pytest

from heartlora.cli import main
from heartlora.data.synthetic import make_vtab

TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "--model-kwargs", "embed_dim=48",
        "--model-kwargs", "depth=2", "--model-kwargs", "num_heads=4", "--image-size", "32", "--epochs", "2",
        "--warmup-epochs", "1", "--batch-size", "8", "--eval-every", "1", "--workers", "0", "--quiet",
        "--drop-path", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_vtab(root / "data", tasks=("cifar", "eurosat"), n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4)
    args = ["bench", "vtab", *TINY, "--data", str(root / "data"), "--tasks", "cifar,eurosat",
            "--methods", "linear,heart-lora", "--seeds", "1", "--ne", "1", "--out", str(root / "sweep")]
    assert main(args) == 0
    return root, args


def test_bench_rerun_skips_and_report_writes_tables(sweep, capsys):
    root, args = sweep
    capsys.readouterr()
    assert main(args) == 0
    assert "0 ran, 4 already finished (skipped), 0 failed" in capsys.readouterr().out
    assert main(["report", str(root / "sweep"), "--out", str(root / "report")]) == 0
    out = capsys.readouterr().out
    assert "| heart-lora |" in out and "Average (of groups)" in out
    for name in ("report.md", "vtab.csv", "vtab.tex", "accuracy_vs_bytes.png"):
        assert (root / "report" / name).stat().st_size > 0


def test_analyze_responsiveness_and_attention(sweep):
    root, _ = sweep
    runs = sorted(glob.glob(str(root / "sweep" / "vtab" / "*" / "heart-lora" / "*" / "seed1")))
    assert len(runs) == 2
    assert main(["analyze", "responsiveness", *runs, "--out", str(root / "resp")]) == 0
    correlation = (root / "resp" / "score_correlation.csv").read_text().splitlines()
    assert correlation[0] == "run,score,spearman_vs_ablation,heads" and len(correlation) == 1 + 2 * 3 and len({r.split(",")[0] for r in correlation[1:]}) == 2
    assert (root / "resp" / "responsiveness.png").stat().st_size > 0
    image = sorted((root / "data" / "cifar" / "images" / "test").iterdir())[0]
    assert main(["analyze", "attention", "--runs", *runs, "--images", str(image), "--heads", "1:0,0:2",
                 "--out", str(root / "att")]) == 0
    assert len((root / "att" / "attention.csv").read_text().splitlines()) == 1 + 2 * 2


def test_analyze_deactivate_runs_first_and_selected(sweep):
    root, _ = sweep
    args = ["analyze", "deactivate", *TINY, "--data", str(root / "data"), "--tasks", "cifar", "--ne-values", "1",
            "--out", str(root / "deact")]
    assert main(args) == 0
    rows = (root / "deact" / "deactivate.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["baseline", "first ne=1", "responsive ne=1"]


def test_bench_bad_grid_is_a_usage_error(sweep, capsys):
    root, _ = sweep
    code = main(["bench", "vtab", *TINY, "--data", str(root / "data"), "--tasks", "cifar", "--tune", "ne",
                 "--out", str(root / "x")])
    assert code == 2 and "--grid ne=" in capsys.readouterr().err


def snapshot(root):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_bench_rerun_with_a_changed_recipe_is_refused(sweep, capsys):
    root, args = sweep
    before = snapshot(root)
    capsys.readouterr()
    assert main([*args, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "schedule.lr: 0.001 there, 0.01 now" in err and str(root / "sweep" / "vtab") in err
    assert "4 of 4 cells differ" in err and "another --out" in err and "Traceback" not in err
    assert snapshot(root) == before  # nothing written, nothing skipped or run


@pytest.mark.parametrize("flags, option", [(["--tasks", "../escape"], "--tasks"), (["--tasks", "cifar/.."], "--tasks"),
                                           (["--tasks", "cifar", "--grid", "select=a/../../b"], "--grid")])
def test_bench_cell_folders_never_leave_out(sweep, tmp_path, capsys, flags, option):
    root, _ = sweep
    code = main(["bench", "vtab", *TINY, "--data", str(root / "data"), *flags, "--methods", "heart-lora",
                 "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and f"option '{option}" in err and "cannot name a cell folder" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even --out


@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-cell", "1"], "option '--gpus-per-cell': only with --executor ray"),
    (["--executor", "ray", "--parallel", "2"], "option '--parallel': only with --executor local"),
])
def test_bench_executor_options_are_checked(sweep, tmp_path, capsys, flags, message):
    root, _ = sweep
    code = main(["bench", "vtab", *TINY, "--data", str(root / "data"), "--tasks", "cifar", "--methods", "linear",
                 *flags, "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_bench_fractional_gpus_above_one_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "vtab", "--executor", "ray", "--gpus-per-cell", "1.5", "--out", "unused"])
    assert exit_info.value.code == 2 and "--gpus-per-cell" in capsys.readouterr().err


def test_bench_ray_without_ray_says_how_to_install(sweep, tmp_path, capsys, monkeypatch):
    root, _ = sweep
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = main(["bench", "vtab", *TINY, "--data", str(root / "data"), "--tasks", "cifar", "--methods", "linear",
                 "--executor", "ray", "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install heartlora[cluster]" in err and "Traceback" not in err


@pytest.fixture
def ray_temp(monkeypatch):
    temp = tempfile.mkdtemp(prefix="ray")  # Ray's session files; short, as its socket paths must be
    monkeypatch.setenv("RAY_TMPDIR", temp)
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def test_bench_executor_ray_on_a_local_instance(sweep, tmp_path, capsys, ray_temp):
    ray = pytest.importorskip("ray")
    root, args = sweep
    out = tmp_path / "sweep"
    ray_args = ["bench", "vtab", *TINY, "--data", str(root / "data"), "--tasks", "cifar,eurosat", "--methods", "linear",
                "--seeds", "1", "--executor", "ray", "--address", "local", "--cpus-per-cell", "1", "--out", str(out)]
    assert main(ray_args) == 0
    assert "2 ran, 0 already finished (skipped), 0 failed" in capsys.readouterr().out
    for task in ("cifar", "eurosat"):
        ray_record = json.loads((out / "vtab" / task / "linear" / "seed1" / "run.json").read_text())
        local_record = json.loads((root / "sweep" / "vtab" / task / "linear" / "seed1" / "run.json").read_text())
        assert ray_record["execution"]["executor"] == "ray" and local_record["execution"]["executor"] == "local"
        assert ray_record["protocols"] == local_record["protocols"]
        cell = json.loads((out / "vtab" / task / "linear" / "seed1" / "cell.json").read_text())
        assert cell["task"] == task and cell["config"]["schedule"]["epochs"] == 2 and len(cell["config_hash"]) == 64
    assert not ray.is_initialized()  # the instance bench started is shut down
