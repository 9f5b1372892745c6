"""bench → report on synthetic VTAB-format data: tables with the right group means, finished
cells skipped on rerun, crashed cells reported and retried."""
import json
import statistics

import pytest

from heartlora.bench import report as report_mod
from heartlora.bench.sweep import load_presets, parse_grid, plan, run_cell, run_cells, tune_then_final
from heartlora.config import DataConfig, ModelConfig, RunConfig, ScheduleConfig
from heartlora.data.synthetic import make_vtab

TASKS = ("cifar", "eurosat")  # one Natural, one Specialized task


def tiny_base(root) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name="vit_tiny_patch16_224", kwargs={"patch_size": 8, "embed_dim": 48, "depth": 2,
                                                               "num_heads": 4}, drop_path=0.0),
        data=DataConfig(kind="vtab", root=str(root), image_size=32, workers=0, check_images=False),
        schedule=ScheduleConfig(epochs=2, warmup_epochs=1, batch_size=8, eval_every=1),
        device="cpu", quiet=True,
    )


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab")
    make_vtab(root, tasks=TASKS, n_train=16, n_val=8, n_test=16, image_size=32, num_classes=4)
    return root


@pytest.fixture(scope="module")
def finished_sweep(vtab_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cells = plan("vtab", TASKS, ["linear", "heart-lora"], seeds=[1, 2], presets=load_presets(),
                 method_options={"heart-lora": {"ne": 1, "score_epochs": 1}})
    result = run_cells(cells, tiny_base(vtab_root), out, log=lambda _: None)
    assert result.ok and len(result.done) == 8
    return cells, out


def test_presets_apply_only_to_methods_with_the_option(finished_sweep):
    cells, _ = finished_sweep
    heart = [c for c in cells if c.method == "heart-lora" and c.task == "eurosat"]
    assert dict(heart[0].options)["scale"] == 10  # the shipped Bi-LoRA-lineage scale for eurosat
    linear = [c for c in cells if c.method == "linear"]
    assert all("scale" not in dict(c.options) for c in linear)


def test_report_group_means_match_hand_computation(finished_sweep, tmp_path):
    cells, out = finished_sweep
    # hand computation straight from the records
    by = {}
    for cell in cells:
        record = json.loads((out / cell.relative_dir() / "run.json").read_text())
        by.setdefault((cell.method, cell.task), []).append(record["protocols"]["paper"]["accuracy"])
    written = report_mod.write_report(out, tmp_path / "report", protocol="paper")
    summary = report_mod.vtab_summary(report_mod.collect(out), "paper")
    for method in ("linear", "heart-lora"):
        natural = statistics.fmean(by[(method, "cifar")])
        specialized = statistics.fmean(by[(method, "eurosat")])
        groups = summary[method]["groups"]
        assert groups["natural"] == pytest.approx(natural)
        assert groups["specialized"] == pytest.approx(specialized)
        assert groups["structured"] is None and groups["average"] is None  # no Structured task ran
        assert groups["mean_tasks"] == pytest.approx((natural + specialized) / 2)
        assert summary[method]["tasks"]["cifar"][2] == 2  # two seeds
    markdown = written["markdown"].read_text()
    assert "Average (of groups)" in markdown and "Mean (tasks)" in markdown and "heart-lora" in markdown
    assert (tmp_path / "report" / "vtab.csv").is_file() and (tmp_path / "report" / "vtab.tex").is_file()
    assert written["accuracy_vs_bytes"].stat().st_size > 0


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
    rows = report_mod.collect(tmp_path)
    finals = [r for r in rows if r.split == "final"]
    assert len(finals) == 1 and finals[0].clean is not None  # the clean protocol's number
    assert all(r.clean is None for r in rows if r.split == "tune")


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
