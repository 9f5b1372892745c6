"""``heartlora demo --suite mini-vtab``: the demo backbone on the mini-VTAB, through the benchmark path.

Builds the mini-VTAB (:mod:`heartlora.data.minivtab`) under ``OUT/data`` if it is not there, runs
linear probe, LoRA, Heart-LoRA and Heart-LoRA† on its tasks with three seeds as sweep cells
(:mod:`heartlora.bench.sweep`: resumable, finished cells skipped on rerun) on ``parallel`` local
processes, then writes the report (``OUT/report``: per-task means ± std over seeds, group means,
the mean of the group means), the responsiveness maps and the task-dependence analysis of the
Heart-LoRA runs (``OUT/analysis``). Sized for about 20 minutes on 2 CPU cores: 4 tasks × 4 methods
× 3 seeds = 48 runs of 5 epochs, one test evaluation each.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

from .demo import DEMO_METHODS, demo_config, demo_method_options

SUITE = "mini-vtab"
#: the default tasks: one natural, three structured (add fmnist_scale with --tasks; it is always built)
SUITE_TASKS = ("digits", "fmnist_orientation", "fmnist_position", "fmnist_count")
SUITE_SEEDS = (42, 43, 44)
SUITE_EPOCHS = 5
SUITE_SCORE_EPOCHS = 2  # Heart-LoRA scores heads over the first 2 of 5 epochs (the digits demo: 3 of 10)
SUITE_PARALLEL = 2


def suite_cells(tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int], epochs: int):
    from .bench.sweep import plan

    options = {m: demo_method_options(m, epochs, SUITE_SCORE_EPOCHS) for m in methods}
    return plan("vtab", tasks, methods, seeds, method_options=options)


def run_suite(out: str | Path = "runs/demo-mini-vtab", epochs: int = SUITE_EPOCHS,
              methods: Sequence[str] = DEMO_METHODS, seeds: Sequence[int] = SUITE_SEEDS,
              tasks: Sequence[str] = SUITE_TASKS, parallel: int = SUITE_PARALLEL, data_seed: int = 0,
              fmnist: str | Path | None = None, correlate: bool = True, log=print, *,
              split_sizes: Mapping[str, int] | None = None) -> dict[str, Path]:
    """Run the suite into ``out``; returns ``{name: path}`` of the tables and figures written."""
    from .bench.analyze import AnalysisError, responsiveness, task_dependence
    from .bench.executors import LocalExecutor
    from .bench.report import write_report
    from .bench.sweep import run_cells
    from .data.minivtab import build_mini_vtab
    from .methods.base import get_method

    out = Path(out)
    start = time.perf_counter()
    data = out / "data"
    build_mini_vtab(data, data_seed, fmnist=fmnist, split_sizes=split_sizes, log=log)
    base = demo_config(out, epochs, seeds[0], quiet=True, data_root=data, task=None)
    base = base.replace(data={"check_images": False})  # the builder decoded every image (verify)
    cells = suite_cells(tasks, methods, seeds, epochs)
    runs = out / "runs"
    log(f"mini-VTAB suite: {len(tasks)} tasks x {len(methods)} methods x {len(seeds)} seeds = {len(cells)} runs of "
        f"{epochs} epochs, {parallel} at a time (train800val200 -> test)")
    with LocalExecutor(parallel, ["cpu"]) as executor:
        result = run_cells(cells, base, runs, retries=1, executor=executor, log=log, progress=False)
    if not result.ok:
        first = result.failed[0][1].splitlines()[0]
        raise AnalysisError(f"demo --suite {SUITE}: {len(result.failed)} of {len(cells)} runs failed (first: {first}); "
                            f"details in {runs / 'failures.jsonl'}; rerun the same command to retry them")
    trained = time.perf_counter() - start
    written = write_report(runs, out / "report", "paper")
    log(Path(written["markdown"]).read_text())
    selecting = [m for m in methods if get_method(m).selects_heads]
    analysis = out / "analysis"
    if selecting:
        chosen = selecting[0]
        first_seed = [runs / c.relative_dir() for c in cells if c.method == chosen and c.seed == seeds[0]]
        for name, path in responsiveness(first_seed, analysis / "responsiveness", correlate=correlate).items():
            written[f"responsiveness_{name}"] = path
        heart = [runs / c.relative_dir() for c in cells if c.method == chosen]
        if len(heart) >= 2:
            dependence = task_dependence(heart, analysis / "task-dependence", method=None)
            log(Path(dependence["text"]).read_text())
            written.update({f"task_dependence_{name}": path for name, path in dependence.items()})
    log(f"runs: {runs}/ (one run.json + adapter/ per cell; rerun to resume)")
    log(f"tables: {out / 'report'}/ (report_paper.md, minivtab_paper.csv / .tex / _seeds.csv, "
        "accuracy_vs_bytes_minivtab_paper.pdf/.png)")
    if selecting:
        log(f"figures: {analysis / 'responsiveness'}/responsiveness.pdf/.png (+ score_correlation.csv), "
            f"{analysis / 'task-dependence'}/task_dependence.pdf/.png (+ .csv, .txt)")
    log(f"total wall time {time.perf_counter() - start:.0f} s (training {trained:.0f} s, {len(result.done)} runs "
        f"trained now, {len(result.skipped)} finished before)")
    return written
