"""The mini-VTAB builder, its report tables with group means, and the task-dependence analysis.

Builds use small split sizes (the default 800 / 200 / 800 takes ~10 s); runs are tiny random ViTs
through the real sweep engine, two epochs on a handful of images."""
import csv
import hashlib
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heartlora.bench.analyze import AnalysisError, head_agreement, task_dependence
from heartlora.bench.report import write_report
from heartlora.bench.sweep import plan, run_cells
from heartlora.cli import main
from heartlora.data import DataError, verify
from heartlora.data.minivtab import (FMNIST_DIR, FMNIST_TEST_IMAGES, REGISTRY, SPLIT_SIZES, _pool_slices,
                                     build_mini_vtab, files_sha256, read_idx)
from heartlora.data.tasks import MINI_VTAB_GROUPS, MINI_VTAB_TASKS, suite_of

from conftest import tiny_base

FMNIST_TEST = FMNIST_DIR / (FMNIST_TEST_IMAGES + ".gz")
needs_fmnist = pytest.mark.skipif(not FMNIST_TEST.is_file(), reason=f"{FMNIST_TEST} absent (Fashion-MNIST test "
                                  "images: apt-get install dataset-fashion-mnist)")
SMALL = {"train800": 24, "val200": 8, "test": 16}
RUN_TASKS = ("digits", "fmnist_orientation", "fmnist_count")  # one natural, two structured


@pytest.fixture(scope="module")
def only_test_file(tmp_path_factory):
    """A Fashion-MNIST folder holding the test images and nothing else: a build from it cannot have
    read a training image."""
    folder = tmp_path_factory.mktemp("fmnist")
    (folder / FMNIST_TEST.name).symlink_to(FMNIST_TEST)
    return folder


@pytest.fixture(scope="module")
def small_build(only_test_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("minivtab") / "data"
    return root, build_mini_vtab(root, seed=3, fmnist=only_test_file, split_sizes=SMALL)


# ----- the builder ------------------------------------------------------------------------------------
@needs_fmnist
def test_same_seed_gives_byte_identical_tasks_and_hashes(small_build, only_test_file, tmp_path):
    root, registry = small_build
    again = build_mini_vtab(tmp_path / "b", seed=3, fmnist=only_test_file, split_sizes=SMALL)
    assert again == registry and (tmp_path / "b" / REGISTRY).read_bytes() == (root / REGISTRY).read_bytes()
    for task in MINI_VTAB_TASKS:
        assert files_sha256(tmp_path / "b" / task) == files_sha256(root / task) == registry["tasks"][task]["files_sha256"]
        assert verify("vtab", str(tmp_path / "b"), task)["manifest_hash"] == registry["tasks"][task]["manifest_hash"]
    other = build_mini_vtab(tmp_path / "c", seed=4, fmnist=only_test_file, split_sizes=SMALL,
                            tasks=["fmnist_position"])
    assert other["tasks"]["fmnist_position"]["files_sha256"] != registry["tasks"]["fmnist_position"]["files_sha256"]


@needs_fmnist
def test_a_task_does_not_depend_on_the_other_tasks_built(small_build, only_test_file, tmp_path):
    root, registry = small_build
    alone = build_mini_vtab(tmp_path / "one", seed=3, fmnist=only_test_file, split_sizes=SMALL, tasks=["fmnist_count"])
    assert alone["tasks"]["fmnist_count"]["files_sha256"] == registry["tasks"]["fmnist_count"]["files_sha256"]


@needs_fmnist
def test_every_task_verifies_with_its_groups_classes_and_balanced_labels(small_build, capsys):
    root, registry = small_build
    assert list(registry["tasks"]) == list(MINI_VTAB_TASKS)
    for task, entry in registry["tasks"].items():
        report = verify("vtab", str(root), task)
        assert report["ok"], report["problems"]
        assert report["num_classes"] == MINI_VTAB_TASKS[task] == len(entry["classes"])
        assert task in MINI_VTAB_GROUPS[entry["group"]] and suite_of(task) == "mini-vtab"
        sizes = {s: report["splits"][s]["samples"] for s in ("train800", "val200", "test")}
        assert sizes == SMALL
        labels = [int(line.split()[1]) for line in (root / task / "train800.txt").read_text().splitlines()]
        if task != "digits":  # the Fashion-MNIST tasks balance their labels; digits keeps its own mix
            assert max(labels.count(k) for k in set(labels)) - min(labels.count(k) for k in set(labels)) <= 1
        with Image.open(root / task / (root / task / "test.txt").read_text().split()[0]) as image:
            assert image.size == (32, 32)
    assert main(["data", "verify", str(root), "--task", "fmnist_orientation"]) == 0
    assert "result: OK" in capsys.readouterr().out


def test_default_sizes_fit_in_the_fashion_mnist_test_split():
    slices = _pool_slices(SPLIT_SIZES)
    spans = sorted(span for task in slices.values() for span in task.values())
    assert spans[-1][1] <= 10_000  # the test split's size: no garment is used twice
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@needs_fmnist
def test_no_fashion_mnist_training_image_is_used(small_build):
    root, _ = small_build
    train = read_idx(FMNIST_DIR / "train-images-idx3-ubyte.gz")
    test = read_idx(FMNIST_TEST)
    train_hashes = {hashlib.sha1(image.tobytes()).digest() for image in train}
    test_hashes = {hashlib.sha1(image.tobytes()).digest() for image in test}
    task = root / "fmnist_orientation"
    for line in (task / "train800.txt").read_text().splitlines() + (task / "test.txt").read_text().splitlines():
        name, label = line.split()
        upright = np.rot90(np.asarray(Image.open(task / name)), k=-int(label))[2:30, 2:30]
        digest = hashlib.sha1(np.ascontiguousarray(upright).tobytes()).digest()
        assert digest in test_hashes and digest not in train_hashes


def test_missing_fashion_mnist_says_how_to_install(tmp_path, capsys):
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*--fmnist DIR"):
        build_mini_vtab(tmp_path / "out", fmnist=tmp_path)
    assert main(["data", "make-mini-vtab", str(tmp_path / "out"), "--fmnist", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()


@needs_fmnist
def test_another_build_in_the_same_folder_is_refused(small_build, only_test_file):
    root, registry = small_build
    assert build_mini_vtab(root, seed=3, fmnist=only_test_file, split_sizes=SMALL) == registry  # idempotent
    with pytest.raises(DataError, match="another mini-VTAB build"):
        build_mini_vtab(root, seed=5, fmnist=only_test_file, split_sizes=SMALL)


# ----- tiny runs: report and task dependence ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(small_build, tmp_path_factory):
    root, _ = small_build
    out = tmp_path_factory.mktemp("runs")
    cells = plan("vtab", RUN_TASKS, ["linear", "heart-lora"], seeds=[1, 2],
                 method_options={"heart-lora": {"ne": 1, "score_epochs": 1}})
    result = run_cells(cells, tiny_base(root, warmup_epochs=0), out, log=lambda _: None, progress=False)
    assert result.ok and len(result.done) == 12
    return cells, out


def _paper(out: Path, cell) -> float:
    return json.loads((out / cell.relative_dir() / "run.json").read_text())["protocols"]["paper"]["accuracy"]


@needs_fmnist
def test_report_has_mini_vtab_group_means_and_their_mean(tiny_sweep, tmp_path):
    cells, out = tiny_sweep
    written = write_report(out, tmp_path / "report")
    assert "minivtab_csv" in written and "vtab_csv" not in written  # no VTAB-1K task ran
    with open(written["minivtab_csv"], newline="") as f:
        rows = {(r["variant"], r["column"]): r for r in csv.DictReader(f)}
    for method in ("linear", "heart-lora"):
        acc = {(c.task, c.seed): _paper(out, c) for c in cells if c.method == method}

        def per_seed(seed):
            natural = acc[("digits", seed)]
            structured = statistics.fmean(acc[(t, seed)] for t in RUN_TASKS[1:])
            return natural, structured, (natural + structured) / 2

        seeds = [per_seed(s) for s in (1, 2)]
        assert float(rows[(method, "Natural")]["mean"]) == pytest.approx(statistics.fmean(s[0] for s in seeds))
        assert float(rows[(method, "Structured")]["mean"]) == pytest.approx(statistics.fmean(s[1] for s in seeds))
        average = rows[(method, "Average (of groups)")]
        assert float(average["mean"]) == pytest.approx(statistics.fmean(s[2] for s in seeds))
        assert float(average["std"]) == pytest.approx(statistics.stdev(s[2] for s in seeds)) and average["n"] == "2"
        assert "Natural and Structured" in average["how"]
    text = Path(written["markdown"]).read_text()
    assert "## mini-VTAB" in text and "## VTAB-1K" not in text and "Average (of groups)" in text


def test_head_agreement_by_hand():
    a = {"scores": [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], "head_masks": [[False, True, True], [True, True, True]]}
    b = {"scores": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], "head_masks": [[False, True, True], [True, True, False]]}
    agreement = head_agreement(a, b)
    assert agreement["spearman"] == pytest.approx(0.0)  # +1 in layer 0, -1 in layer 1
    assert agreement["jaccard"] == pytest.approx(0.5)  # {(0,0)} vs {(0,0), (1,2)}
    assert head_agreement(a, a) == {"spearman": pytest.approx(1.0), "jaccard": 1.0}


def _heart_runs(cells, out) -> list[Path]:
    return [out / c.relative_dir() for c in cells if c.method == "heart-lora"]


@needs_fmnist
def test_task_dependence_shape_and_ranges_on_real_runs(tiny_sweep, tmp_path, capsys):
    cells, out = tiny_sweep
    code = main(["analyze", "task-dependence", str(out), "--out", str(tmp_path / "dep")])  # heart-lora runs found
    assert code == 0
    printed = capsys.readouterr().out
    assert "within-task (between seeds)" in printed and "structured vs structured" in printed
    result = json.loads((tmp_path / "dep" / "task_dependence.json").read_text())
    assert result["tasks"] == list(RUN_TASKS)
    for measure, low in (("spearman", -1.0), ("jaccard", 0.0)):
        matrix = np.array(result["matrices"][measure], dtype=float)
        assert matrix.shape == (3, 3) and np.allclose(matrix, matrix.T, equal_nan=True)
        finite = matrix[np.isfinite(matrix)]
        assert finite.size and (finite >= low - 1e-9).all() and (finite <= 1 + 1e-9).all()
    for name in ("task_dependence.pdf", "task_dependence.png", "task_dependence.csv", "task_dependence_pairs.csv"):
        assert (tmp_path / "dep" / name).stat().st_size > 0
    with open(tmp_path / "dep" / "task_dependence_pairs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 15  # 6 runs: every pair once


@needs_fmnist
def test_task_dependence_diagonal_is_one_for_identical_seed_scores(tiny_sweep, tmp_path):
    cells, out = tiny_sweep
    copies = []
    for run in _heart_runs(cells, out):
        target = tmp_path / "copies" / run.relative_to(out)
        shutil.copytree(run, target)
        copies.append(target)
    first = {}
    for copy in copies:  # every seed of a task gets the scores and selection of its first seed
        record = json.loads((copy / "run.json").read_text())
        task = record["data"]["task"]
        if task in first:
            record["heads"]["scores"], record["heads"]["head_masks"] = first[task]
            (copy / "run.json").write_text(json.dumps(record))
        else:
            first[task] = (record["heads"]["scores"], record["heads"]["head_masks"])
    written = task_dependence(copies, tmp_path / "dep", method=None)
    result = json.loads(Path(written["json"]).read_text())
    for measure in ("spearman", "jaccard"):
        assert np.allclose(np.diag(np.array(result["matrices"][measure], dtype=float)), 1.0)
        assert result["summary"][measure]["within"] == pytest.approx(1.0)
    with pytest.raises(AnalysisError, match="two runs of task"):
        task_dependence([copies[0], _twin(copies[0])], tmp_path / "dep2", method=None)


def _twin(run: Path) -> Path:
    twin = run.parent / (run.name + "-twin")
    shutil.copytree(run, twin)
    return twin


# ----- the suite's pipeline, tiny ---------------------------------------------------------------------
@needs_fmnist
def test_suite_pipeline_on_tiny_data(only_test_file, tmp_path):
    from heartlora.demo_suite import run_suite

    lines = []
    written = run_suite(tmp_path / "suite", epochs=1, methods=["linear", "heart-lora"], seeds=[42],
                        tasks=["digits", "fmnist_count"], parallel=1, data_seed=0, fmnist=only_test_file,
                        correlate=False, log=lines.append, split_sizes=SMALL)
    assert (tmp_path / "suite" / "data" / REGISTRY).is_file()
    assert written["minivtab_csv"].is_file() and written["task_dependence_png"].is_file()
    assert written["responsiveness_png"].is_file()
    text = "\n".join(lines)
    assert "## mini-VTAB" in text and "Task dependence of head responsiveness" in text and "total wall time" in text


def test_demo_options_of_the_other_suite_are_usage_errors(capsys):
    assert main(["demo", "--seeds", "1,2"]) == 2
    assert "only for --suite mini-vtab" in capsys.readouterr().err
    assert main(["demo", "--suite", "mini-vtab", "--tasks", "cifar"]) == 2
    assert "unknown mini-VTAB task 'cifar'" in capsys.readouterr().err
    assert main(["data", "make-mini-vtab", "x", "--tasks", "nope"]) == 2
