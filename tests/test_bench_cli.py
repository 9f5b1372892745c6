"""The bench / report / analyze commands end to end on a tiny ViT and synthetic VTAB data."""
import glob

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
