"""The bench / report / analyze commands end to end on tiny ViT and Swin backbones and synthetic
VTAB data: every analysis writes a PDF and a PNG, bad input is one line and an exit code."""
import csv
import glob
import json
import shutil
import sys
import tempfile

import pytest

from heartlora.cli import main
from heartlora.data.synthetic import make_vtab

RECIPE = ["--image-size", "32", "--epochs", "2", "--warmup-epochs", "0", "--lr", "0.01", "--batch-size", "8", "--eval-every", "1",
          "--workers", "0", "--quiet", "--drop-path", "0", "--device", "cpu", "--opt", "score_epochs=1"]
VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "--model-kwargs", "embed_dim=48",
       "--model-kwargs", "depth=2", "--model-kwargs", "num_heads=4", *RECIPE]
SWIN = ["--model", "swin_tiny_patch4_window7_224", "--model-kwargs", "patch_size=4", "--model-kwargs", "window_size=2",
        "--model-kwargs", "embed_dim=24", "--model-kwargs", "depths=[2,1]", "--model-kwargs", "num_heads=[2,4]", *RECIPE]
BACKBONES = {"vit": VIT, "swin": SWIN}
TINY = VIT


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_vtab(root / "data", tasks=("cifar", "eurosat"), n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4)
    vit = ["bench", "vtab", *VIT, "--data", str(root / "data"), "--tasks", "cifar,eurosat",
           "--methods", "linear,heart-lora", "--seeds", "1", "--ne", "1", "--out", str(root / "sweep")]
    assert main(vit) == 0
    swin = ["bench", "vtab", *SWIN, "--data", str(root / "data"), "--tasks", "cifar", "--methods", "heart-lora",
            "--seeds", "1", "--out", str(root / "swin")]
    assert main(swin) == 0
    return root, vit


def _runs(root, folder):
    return sorted(glob.glob(str(root / folder / "vtab" / "*" / "heart-lora" / "*" / "seed1")))


def _one_error_line(err: str) -> bool:
    """One 'heartlora: error:' line and no traceback (warnings about the random backbone aside)."""
    lines = [line for line in err.splitlines() if not line.startswith("heartlora: warning:")]
    return len(lines) == 1 and lines[0].startswith("heartlora: error:") and "Traceback" not in err


def _figures(folder, stem):
    for suffix in (".pdf", ".png"):
        assert (folder / f"{stem}{suffix}").stat().st_size > 0
    assert (folder / f"{stem}.pdf").read_bytes().startswith(b"%PDF")


def test_bench_rerun_skips_and_report_prints_what_it_wrote(sweep, capsys):
    root, args = sweep
    capsys.readouterr()
    assert main(args) == 0
    assert "0 ran, 4 already finished (skipped), 0 failed" in capsys.readouterr().out
    assert main(["report", str(root / "sweep"), "--out", str(root / "report"), "--reference", "paper"]) == 0
    out = capsys.readouterr().out
    assert "| heart-lora |" in out and "Average (of groups)" in out
    for name in ("report_paper.md", "vtab_paper.csv", "vtab_paper_seeds.csv", "vtab_paper.tex",
                 "accuracy_vs_bytes_paper.png", "accuracy_vs_bytes_paper.pdf", "reproduction_paper.md",
                 "reproduction_paper.csv"):
        assert (root / "report" / name).stat().st_size > 0 and f"wrote {root / 'report' / name}" in out


@pytest.mark.parametrize("args, code, message", [
    (["report", "{root}/nowhere"], 1, "no such folder"),
    (["report", "{root}/data"], 1, "no run records"),
    (["report", "{root}/sweep", "--out", "{root}/r2", "--label", "lora=x"], 2, "option '--label'"),
    (["report", "{root}/sweep", "--out", "{root}/r2", "--reference", "{root}/none.yaml"], 1, "reference file not found"),
])
def test_report_bad_input_is_one_line(sweep, capsys, args, code, message):
    root, _ = sweep
    capsys.readouterr()
    assert main([a.format(root=root) for a in args]) == code
    err = capsys.readouterr().err
    assert message in err and _one_error_line(err)


@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_analyze_responsiveness_writes_pdf_png_and_correlation(sweep, backbone, capsys):
    root, _ = sweep
    runs = _runs(root, "sweep" if backbone == "vit" else "swin")
    out = root / f"resp-{backbone}"
    assert runs and main(["analyze", "responsiveness", *runs, "--out", str(out)]) == 0
    _figures(out, "responsiveness")
    assert f"wrote {out / 'responsiveness.png'}" in capsys.readouterr().out
    with open(out / "score_correlation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["score"] for r in rows} == {"taylor", "activation", "weight"} and len(rows) == 3 * len(runs)
    with open(out / "responsiveness.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    assert {r["score_kind"] for r in scores} == {"taylor"} and any(r["active"] == "0" for r in scores)


@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_analyze_attention_over_images(sweep, backbone):
    root, _ = sweep
    runs = _runs(root, "sweep" if backbone == "vit" else "swin")[:1]
    images = sorted((root / "data" / "cifar" / "images" / "test").iterdir())[:2]
    heads = "1:0,0:1" if backbone == "vit" else "0:1,2:3"  # Swin: a stage-1 block and the stage-2 block
    out = root / f"att-{backbone}"
    assert main(["analyze", "attention", "--runs", *runs, "--images", *map(str, images), "--heads", heads,
                 "--out", str(out)]) == 0
    _figures(out, "attention")
    with open(out / "attention.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2
    shapes = {(r["layer"], r["rows"], r["cols"]) for r in rows}
    assert shapes == ({("1", "4", "4"), ("0", "4", "4")} if backbone == "vit" else {("0", "8", "8"), ("2", "4", "4")})


@pytest.mark.parametrize("heads, message", [
    ("5:0", "layer 5 out of range"),
    ("0:9", "head 9 out of range in layer 0"),
    ("0-1", "expected LAYER:HEAD"),
])
def test_analyze_attention_bad_heads_is_a_usage_error(sweep, capsys, heads, message):
    root, _ = sweep
    image = sorted((root / "data" / "cifar" / "images" / "test").iterdir())[0]
    capsys.readouterr()
    code = main(["analyze", "attention", "--runs", _runs(root, "sweep")[0], "--images", str(image), "--heads", heads,
                 "--out", str(root / "att-bad")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "'--heads'" in err and _one_error_line(err)


def test_analyze_deactivate_compares_controls_over_seeds(sweep):
    root, _ = sweep
    out = root / "deact"
    args = ["analyze", "deactivate", *VIT, "--data", str(root / "data"), "--tasks", "eurosat", "--ne-values", "1",
            "--seeds", "1,2", "--random-seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    _figures(out, "deactivate")
    with open(out / "deactivate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    settings = {}
    for r in rows:
        settings.setdefault(r["setting"], []).append(r)
    assert set(settings) == {"responsive", "first", "random", "reverse"}
    assert len(settings["random"]) == 2 * 2 and {r["select_seed"] for r in settings["random"]} == {"0", "1"}
    for r in rows:  # ratio to the ne=0 run of the same seed
        if float(r["accuracy_ne0"]) > 0:
            assert float(r["ratio_to_ne0"]) == pytest.approx(float(r["accuracy"]) / float(r["accuracy_ne0"]))
    with open(out / "deactivate_summary.csv", newline="") as f:
        summary = {r["setting"]: r for r in csv.DictReader(f)}
    for setting, r in summary.items():  # n: the seeds (random: × selection seeds) whose ne=0 run has a ratio
        assert int(r["n"]) == sum(float(x["accuracy_ne0"]) > 0 for x in settings[setting]) > 0


def test_analyze_deactivate_on_swin_runs_the_per_layer_controls(sweep, capsys):
    root, _ = sweep
    base = ["analyze", "deactivate", *SWIN, "--data", str(root / "data"), "--tasks", "eurosat", "--ne-values", "1"]
    capsys.readouterr()
    assert main([*base, "--controls", "random", "--out", str(root / "deact-x")]) == 2
    assert "need one head count" in capsys.readouterr().err
    out = root / "deact-swin"
    assert main([*base, "--out", str(out)]) == 0
    _figures(out, "deactivate")
    with open(out / "deactivate.csv", newline="") as f:
        assert {r["setting"] for r in csv.DictReader(f)} == {"responsive", "first"}


@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_analyze_ne_sweep(sweep, backbone):
    root, _ = sweep
    out = root / f"ne-{backbone}"
    assert main(["analyze", "ne-sweep", *BACKBONES[backbone], "--data", str(root / "data"), "--tasks", "eurosat",
                 "--ne-values", "0,1", "--out", str(out)]) == 0
    _figures(out, "ne_sweep")
    assert len((out / "ne_sweep.csv").read_text().splitlines()) == 1 + 2


def test_analyze_bad_ne_value_is_a_usage_error(sweep, capsys):
    root, _ = sweep
    capsys.readouterr()
    code = main(["analyze", "ne-sweep", *VIT, "--data", str(root / "data"), "--tasks", "eurosat", "--ne-values", "4",
                 "--out", str(root / "ne-bad")])
    err = capsys.readouterr().err
    assert code == 2 and "'--ne-values'" in err and "0 … 3" in err


def test_bench_bad_grid_is_a_usage_error(sweep, capsys):
    root, _ = sweep
    code = main(["bench", "vtab", *VIT, "--data", str(root / "data"), "--tasks", "cifar", "--tune", "ne",
                 "--out", str(root / "x")])
    assert code == 2 and "--grid ne=" in capsys.readouterr().err


def snapshot(root):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_bench_rerun_with_a_changed_recipe_is_refused(sweep, capsys):
    root, args = sweep
    before = snapshot(root)
    capsys.readouterr()
    assert main([*args, "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "schedule.lr: 0.01 there, 0.02 now" in err and str(root / "sweep" / "vtab") in err
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
