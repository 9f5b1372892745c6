"""bench → report on synthetic VTAB-format data: tables with the right group means, finished
cells skipped on rerun, crashed cells reported and retried."""
import csv
import json
import shutil
import statistics

import pytest

from heartlora.bench.reference import load_reference
from heartlora.bench.report import write_report
from heartlora.bench.sweep import load_presets, parse_grid, plan, run_cell, run_cells, tune_then_final
from heartlora.bench.tables import vtab_table
from heartlora.bench.variants import ReportError, apply_labels, collect, group_variants
from heartlora.config import ConfigError
from heartlora.data.synthetic import make_vtab

from conftest import tiny_base

TASKS = ("cifar", "eurosat")  # one Natural, one Specialized task


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab")
    make_vtab(root, tasks=TASKS, n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4)
    return root


@pytest.fixture(scope="module")
def finished_sweep(vtab_root, tmp_path_factory):
    """A grid sweep: linear and heart-lora × score ∈ {taylor, weight} × seeds {1, 2} on two tasks."""
    out = tmp_path_factory.mktemp("runs")
    cells = plan("vtab", TASKS, ["linear", "heart-lora"], seeds=[1, 2], grid=parse_grid(["score=taylor,weight"]),
                 presets=load_presets(), method_options={"heart-lora": {"ne": 1, "score_epochs": 1}})
    result = run_cells(cells, tiny_base(vtab_root), out, log=lambda _: None)
    assert result.ok and len(result.done) == 12
    return cells, out


def _by_hand(cells, out, protocol="paper"):
    """{(method, score, task): [accuracy per seed]} read straight from the records."""
    by = {}
    for cell in cells:
        record = json.loads((out / cell.relative_dir() / "run.json").read_text())
        entry = record["protocols"][protocol]
        value = entry["accuracy"] if isinstance(entry, dict) else entry
        by.setdefault((cell.method, dict(cell.options).get("score"), cell.task), []).append(value)
    return by


def test_presets_apply_only_to_methods_with_the_option(finished_sweep):
    cells, _ = finished_sweep
    heart = [c for c in cells if c.method == "heart-lora" and c.task == "eurosat"]
    assert dict(heart[0].options)["scale"] == 10  # the shipped Bi-LoRA-lineage scale for eurosat
    linear = [c for c in cells if c.method == "linear"]
    assert all("scale" not in dict(c.options) for c in linear)


def test_grid_sweep_gives_one_row_per_score_with_seed_means(finished_sweep):
    cells, out = finished_sweep
    by = _by_hand(cells, out)
    table = vtab_table(group_variants(collect(out), "paper"), "paper")
    rows = {r.label: r for r in table.rows}
    assert set(rows) == {"linear", "heart-lora score=taylor", "heart-lora score=weight"}
    for label, method, score in (("linear", "linear", None), ("heart-lora score=taylor", "heart-lora", "taylor"),
                                 ("heart-lora score=weight", "heart-lora", "weight")):
        row = rows[label]
        assert row.variant.per_task_options.get("scale", {}) == ({"cifar": 0.1, "eurosat": 10} if score else {})
        for task in TASKS:
            values = by[(method, score, task)]
            assert row.cells[task].n == 2 and row.cells[task].mean == pytest.approx(statistics.fmean(values))
            assert row.cells[task].std == pytest.approx(statistics.stdev(values))
        natural, specialized = statistics.fmean(by[(method, score, "cifar")]), statistics.fmean(by[(method, score, "eurosat")])
        assert row.cells["Natural"].mean == pytest.approx(natural)
        assert row.cells["Specialized"].mean == pytest.approx(specialized)
        assert row.cells["Mean (tasks)"].mean == pytest.approx((natural + specialized) / 2)
        assert "Average (of groups)" not in row.cells  # no Structured task ran


def test_report_files_carry_the_protocol_and_parse_as_numbers(finished_sweep, tmp_path):
    cells, out = finished_sweep
    by = _by_hand(cells, out, "clean")
    for protocol in ("paper", "clean"):
        written = write_report(out, tmp_path, protocol=protocol)
        for name in (f"vtab_{protocol}.csv", f"vtab_{protocol}_seeds.csv", f"vtab_{protocol}.tex",
                     f"report_{protocol}.md", f"accuracy_vs_bytes_{protocol}.pdf", f"accuracy_vs_bytes_{protocol}.png"):
            assert (tmp_path / name).stat().st_size > 0 and (tmp_path / name) in written.values()
    with open(tmp_path / "vtab_clean.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["protocol"] for r in rows} == {"clean"}
    for r in rows:
        mean, std, low, high = (float(r[k]) for k in ("mean", "std", "ci95_low", "ci95_high"))
        assert int(r["n"]) == 2 and low <= mean <= high and std >= 0
        assert r["tuned_on_val200"] == "no (options fixed beforehand)"  # the sweep was not tuned: said so
    average = [r for r in rows if r["column"] == "Mean (tasks)"]
    assert average and all("plain mean of the task means" in r["how"] for r in average)
    cifar = next(r for r in rows if r["variant"] == "heart-lora score=weight" and r["column"] == "cifar")
    assert float(cifar["mean"]) == pytest.approx(statistics.fmean(by[("heart-lora", "weight", "cifar")]))
    with open(tmp_path / "vtab_clean_seeds.csv", newline="") as f:
        seeds = list(csv.DictReader(f))
    assert len(seeds) == 12 and all(float(r["accuracy"]) >= 0 for r in seeds)
    assert "Not tuned on val200" in (tmp_path / "report_clean.md").read_text()
    tex = (tmp_path / "vtab_clean.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex and "n = 2" in tex and "clean protocol" in tex


def test_records_with_another_recipe_are_separate_rows(finished_sweep, vtab_root, tmp_path):
    _, out = finished_sweep
    longer = tiny_base(vtab_root).replace(schedule={"epochs": 3})
    cells = plan("vtab", ["cifar"], ["linear"], seeds=[1, 2])
    assert run_cells(cells, longer, tmp_path / "longer", log=lambda _: None).ok
    shutil.copytree(out, tmp_path / "shorter")
    variants = group_variants(collect(tmp_path), "paper")
    linear = {v.label: v for v in variants if v.method == "linear"}
    assert set(linear) == {"linear epochs=2", "linear epochs=3"}
    assert {r.recipe["epochs"] for r in linear["linear epochs=3"].records} == {3}
    assert len([r for r in linear["linear epochs=3"].records if r.task == "cifar"]) == 2
    assert all(v.label.endswith("epochs=2") for v in variants if v.method == "heart-lora")


def _copy_record(out, tmp_path, edit=None):
    """The sweep plus one more copy of a linear record (optionally edited) in another folder."""
    shutil.copytree(out, tmp_path / "a")
    source = next((tmp_path / "a").rglob("linear/seed1/run.json"))
    target = tmp_path / "b" / "run.json"
    target.parent.mkdir(parents=True)
    record = json.loads(source.read_text())
    if edit:
        edit(record)
    target.write_text(json.dumps(record))
    return source, target


def test_a_seed_counted_twice_is_refused(finished_sweep, tmp_path):
    source, target = _copy_record(finished_sweep[1], tmp_path)
    with pytest.raises(ReportError, match="two records") as err:
        group_variants(collect(tmp_path), "paper")
    assert str(source) in str(err.value) or str(target) in str(err.value)


def test_results_on_different_data_are_refused(finished_sweep, tmp_path):
    def other_data(record):
        record["seed"] = 7
        record["data"]["manifest_hash"] = "f" * 64

    _copy_record(finished_sweep[1], tmp_path, other_data)
    with pytest.raises(ReportError, match="different data"):
        group_variants(collect(tmp_path), "paper")


def test_incomplete_record_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(ReportError, match="x/run.json.*'complete'"):
        collect(tmp_path)


def test_labels_rename_one_row(finished_sweep):
    variants = group_variants(collect(finished_sweep[1]), "paper")
    apply_labels(variants, ["heart-lora score=weight=Heart-LoRA (weight)"])
    assert "Heart-LoRA (weight)" in {v.label for v in variants}
    with pytest.raises(ConfigError, match="matches 2 rows"):
        apply_labels(group_variants(collect(finished_sweep[1]), "paper"), ["heart-lora=x"])
    with pytest.raises(ConfigError, match="matches no row"):
        apply_labels(variants, ["lora=x"])


REFERENCE = """
benchmark: vtab
protocol: paper
sources: {mine: "a hand-made fixture"}
rows:
  - name: Linear (fixture)
    source: mine
    method: linear
    tasks: {cifar100: 50.0, eurosat: 40.0}
    natural: 55.0
  - name: context only
    source: mine
    average: 70.0
"""


def test_reference_report_differences_by_hand(finished_sweep, tmp_path):
    cells, out = finished_sweep
    by = _by_hand(cells, out)
    (tmp_path / "ref.yaml").write_text(REFERENCE)
    written = write_report(out, tmp_path / "report", reference=str(tmp_path / "ref.yaml"))
    with open(written["reproduction_csv"], newline="") as f:
        rows = {r["column"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"cifar", "eurosat"}  # our Natural mean covers cifar only: not the published one
    for column, task, published in (("cifar", "cifar", 50.0), ("eurosat", "eurosat", 40.0)):
        values = by[("linear", None, task)]
        mean, half = statistics.fmean(values), 12.7062 * statistics.stdev(values) / 2 ** 0.5
        r = rows[column]
        assert r["variant"] == "linear" and r["reference"] == "Linear (fixture)"
        assert float(r["difference"]) == pytest.approx(mean - published)
        assert float(r["ci95_low"]) == pytest.approx(mean - half, abs=1e-3)
        assert r["within_ci95"] == ("yes" if abs(mean - published) <= half else "no")
    assert "Linear (fixture)" in written["reproduction_md"].read_text()


def test_reference_differences_only_under_matching_conditions(finished_sweep, tmp_path):
    """A random-init tiny ViT trained 2 epochs on 24 images at 32 px is never set beside published ViT-B numbers:
    each pairing is listed with the reasons; a reference whose conditions the runs meet is compared."""
    _, out = finished_sweep
    written = write_report(out, tmp_path / "shipped", reference="paper")
    text = written["reproduction_md"].read_text()
    assert "Conditions of the comparison" in text and "pretrained weights, 100 epochs, 224 px" in text
    assert "## Not compared: conditions differ" in text
    linear = next(line for line in text.splitlines() if line.startswith("| linear | Linear (V-PETL Bench README / NOAH"))
    for reason in ("random-init backbone", "2 of 100 epochs", "32 px images, the reference's are 224 px",
                   "trained on 24 images, the reference on 1,000", "backbone vit_tiny_patch16_224, the reference's is "
                   "vit_base_patch16*"):
        assert reason in linear, reason
    with open(written["reproduction_csv"], newline="") as f:
        assert list(csv.DictReader(f)) == []  # not one difference shown
    for conditions, compared in (("{epochs: 2, image_size: 32, train_images: 24, eval_split: test}", True),
                                 ("{epochs: 100}", False), ("{weights: pretrained}", False)):
        (tmp_path / "ref.yaml").write_text(REFERENCE + f"conditions: {conditions}\n")
        written = write_report(out, tmp_path / "fixture", reference=str(tmp_path / "ref.yaml"))
        with open(written["reproduction_csv"], newline="") as f:
            assert bool(list(csv.DictReader(f))) == compared, conditions
    written = write_report(out, tmp_path / "clean", protocol="clean", reference=str(tmp_path / "ref.yaml"))
    assert "clean protocol, the reference reports the paper protocol" in written["reproduction_md"].read_text()


def test_shipped_reference_names_a_source_for_every_row():
    reference = load_reference("paper")
    assert len(reference.rows) >= 15
    for row in reference.rows:
        assert row.sources and all(reference.sources[k] for k in row.sources)
        published = row.values.get("Average (of groups)")
        groups = [row.values.get(c) for c in ("Natural", "Specialized", "Structured")]
        if published and not published[1] and all(g is not None and g[1] for g in groups):
            # transcription check: the per-task numbers reproduce the published Average (rounded to 0.1)
            assert statistics.fmean(g[0] for g in groups) == pytest.approx(published[0], abs=0.11), row.name
    names = {row.name for row in reference.rows}
    assert {"LoRA (NOAH Table 1)", "Heart-LoRA (Heart-LoRA Table A2, Swin-B)", "Bi-LoRA-32 (binary adapters README)",
            "AdaptFormer (V-PETL Bench README)"} <= names


@pytest.mark.parametrize("text, message", [
    ("rows: [{name: x, source: nope, average: 50}]\nsources: {a: b}", "'source' must name"),
    ("rows: [{name: x, source: a, tasks: {imagenet: 50}}]\nsources: {a: b}", "unknown VTAB-1K task"),
    ("rows: [{name: x, source: a, average: 150}]\nsources: {a: b}", "0..100"),
    ("rows: [{name: x, source: a, avg: 50}]\nsources: {a: b}", "unknown key"),
    ("rows: [{name: x, source: a, average: 50, conditions: {epoch: 100}}]\nsources: {a: b}", "unknown condition"),
    ("conditions: {weights: imagenet}\nrows: [{name: x, source: a, average: 50}]\nsources: {a: b}", "'pretrained'"),
])
def test_bad_reference_files_name_the_row(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ReportError, match=message):
        load_reference(str(tmp_path / "r.yaml"))


def test_rerun_runs_no_finished_cell(finished_sweep, vtab_root):
    cells, out = finished_sweep
    calls = []
    result = run_cells(cells, tiny_base(vtab_root), out, runner=lambda *a: calls.append(a), log=lambda _: None)
    assert calls == [] and len(result.skipped) == len(cells) and result.ok


def test_crashed_cell_is_reported_and_retried(vtab_root, tmp_path):
    cells = plan("vtab", ["cifar"], ["linear"], seeds=[1, 2])
    attempts = {}

    def flaky(cell, config, execution):
        attempts[cell.seed] = attempts.get(cell.seed, 0) + 1
        if cell.seed == 2 and attempts[cell.seed] == 1:
            raise RuntimeError("simulated crash")
        return run_cell(cell, config, execution)

    messages = []
    result = run_cells(cells, tiny_base(vtab_root), tmp_path, retries=1, runner=flaky, log=messages.append)
    assert result.ok and attempts == {1: 1, 2: 2}
    assert any("simulated crash" in m for m in messages)
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and "seed2" in failures[0]["cell"]


def test_cell_failing_every_retry_fails_the_sweep(vtab_root, tmp_path):
    cells = plan("vtab", ["cifar"], ["linear"], seeds=[1])

    def broken(*args):
        raise RuntimeError("always broken")

    result = run_cells(cells, tiny_base(vtab_root), tmp_path, retries=2, runner=broken, log=lambda _: None)
    assert not result.ok and len(result.failed) == 1 and "always broken" in result.summary()
    assert len((tmp_path / "failures.jsonl").read_text().splitlines()) == 3


def test_tune_picks_by_val_accuracy_then_trains_final(vtab_root, tmp_path):
    grid = parse_grid(["scale=0.1,10"])
    cells = plan("vtab", ["cifar"], ["lora"], seeds=[1], grid=grid, split="tune")
    result = tune_then_final(tiny_base(vtab_root), tmp_path, cells, log=lambda _: None)
    assert result.ok
    choice = json.loads((tmp_path / "tuned.json").read_text())[0]
    best = max(choice["candidates"], key=lambda c: c["val_accuracy"])
    assert choice["chosen"] == best["options"]
    rows = collect(tmp_path)
    finals = [r for r in rows if r.split == "final"]
    assert len(finals) == 1 and finals[0].clean is not None  # the clean protocol's number
    assert all(r.clean is None for r in rows if r.split == "tune")
    assert finals[0].tuned_keys == {"scale"}
    written = write_report(tmp_path, tmp_path / "report", protocol="clean")
    with open(written["vtab_csv"], newline="") as f:
        lines = list(csv.DictReader(f))
    assert {r["variant"] for r in lines} == {"lora [tuned: scale]"} and {r["tuned_on_val200"] for r in lines} == {"yes (scale)"}


def test_fewshot_report_pools_list_seeds_and_averages_datasets(tmp_path):
    from heartlora.data.synthetic import make_fewshot

    datasets = ("oxford_pets", "fgvc_aircraft")
    for dataset in datasets:
        make_fewshot(tmp_path / "data", dataset, shots=(1, 2), seeds=(0, 1), n_test=8)
    base = tiny_base(tmp_path / "data").replace(data={"kind": "fewshot"})
    cells = plan("fewshot", datasets, ["linear"], seeds=[1], shots=(1, 2), fewshot_seeds=(0, 1))
    assert run_cells(cells, base, tmp_path / "runs", log=lambda _: None).ok
    written = write_report(tmp_path / "runs", tmp_path / "report")
    for name in ("fewshot_paper.csv", "fewshot_paper_seeds.csv", "fewshot_paper.tex", "fewshot_paper.pdf",
                 "fewshot_paper.png"):
        assert (tmp_path / "report" / name) in written.values()
    with open(tmp_path / "report" / "fewshot_paper.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cell = {(r["section"], r["column"]): r for r in rows}
    by = {}
    for c in cells:
        record = json.loads((tmp_path / "runs" / c.relative_dir() / "run.json").read_text())
        by.setdefault((c.task, c.shots), []).append(record["protocols"]["paper"]["accuracy"])
    for dataset in datasets:
        for shots in (1, 2):
            r = cell[(dataset, f"{shots}-shot")]
            assert int(r["n"]) == 2 and float(r["mean"]) == pytest.approx(statistics.fmean(by[(dataset, shots)]))
    average = cell[("average over datasets (fgvc_aircraft, oxford_pets)", "2-shot")]
    assert float(average["mean"]) == pytest.approx(statistics.fmean(statistics.fmean(by[(d, 2)]) for d in datasets))


def test_cell_identity_is_the_resolved_recipe_not_where_it_runs(vtab_root, tmp_path):
    from heartlora.bench.sweep import identity, identity_hash

    base = tiny_base(vtab_root)
    moved = base.replace(out=str(tmp_path / "elsewhere"), device="cuda", quiet=False, data={"workers": 4})
    assert identity(base) == identity(moved) and identity_hash(base) == identity_hash(moved)
    changed = base.replace(schedule={"lr": 0.01})
    assert identity(changed)["schedule.lr"] == 0.01 and identity_hash(changed) != identity_hash(base)


def test_only_folders_holding_results_are_checked(vtab_root, tmp_path):
    from heartlora.bench.sweep import CellMismatch, check_identities, write_cell_file

    cell = plan("vtab", ["cifar"], ["linear"], seeds=[1])[0]
    old, new = (tiny_base(vtab_root).replace(schedule={"epochs": e}) for e in (2, 3))
    directory = tmp_path / cell.relative_dir()
    write_cell_file(cell, cell.config(old, tmp_path), directory)
    check_identities([(cell, cell.config(new, tmp_path))], tmp_path)  # never started: the new recipe may run
    (directory / "checkpoint.pt").write_bytes(b"")  # an interrupted run (cell.json names its settings)
    with pytest.raises(CellMismatch, match=r"seed1: .*schedule\.epochs: 2 there, 3 now"):
        check_identities([(cell, cell.config(new, tmp_path))], tmp_path)
    check_identities([(cell, cell.config(old, tmp_path))], tmp_path)


def test_folders_from_before_cell_identities_are_checked_by_their_record(finished_sweep, vtab_root):
    from heartlora.bench.sweep import CellMismatch, check_identities

    cells, out = finished_sweep
    cell = cells[0]
    cell_file = out / cell.relative_dir() / "cell.json"
    saved = cell_file.read_text()
    legacy = {k: v for k, v in json.loads(saved).items() if k not in ("config", "config_hash")}
    try:
        cell_file.write_text(json.dumps(legacy))
        changed = tiny_base(vtab_root).replace(schedule={"batch_size": 4})
        with pytest.raises(CellMismatch, match="schedule.batch_size: 8 there, 4 now"):
            check_identities([(cell, cell.config(changed, out))], out)
    finally:
        cell_file.write_text(saved)


def test_cell_folder_names_never_merge_two_values():
    from heartlora.bench.sweep import make_cell

    a, b = (make_cell("vtab", "cifar", "lora", {"scale": v}, 42) for v in (0.1234567, 0.1234568))
    assert a.relative_dir() != b.relative_dir()
    assert "scale=0.1," not in str(make_cell("vtab", "cifar", "lora", {"scale": 0.1}, 42).relative_dir())
    assert make_cell("vtab", "cifar", "lora", {"scale": 10.0}, 42).relative_dir().parts[3] == "scale=10"


def test_folders_from_before_a_new_setting_still_continue(finished_sweep, vtab_root):
    from heartlora.bench.sweep import check_identities

    cells, out = finished_sweep
    cell = cells[0]
    cell_file = out / cell.relative_dir() / "cell.json"
    saved = cell_file.read_text()
    stored = json.loads(saved)
    del stored["config"]["data"]["fingerprint"]  # written before the setting existed
    try:
        cell_file.write_text(json.dumps(stored))
        check_identities([(cell, cell.config(tiny_base(vtab_root), out))], out)  # the default: no mismatch
    finally:
        cell_file.write_text(saved)
