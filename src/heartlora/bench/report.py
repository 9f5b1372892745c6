"""``heartlora report``: tables and figures from run records only.

Rows are variants (:mod:`heartlora.bench.variants`): records that differ only in their seed. Every
cell is a mean over seeds with its std, n and 95% interval (:mod:`heartlora.bench.tables`). Files
carry the protocol in their names and state it inside:

- ``report_<protocol>.md``: everything below, readable;
- ``vtab_<protocol>.csv`` / ``.tex`` / ``_seeds.csv``: VTAB-1K per task, group means, "Average (of
  groups)" (the literature's mean of the three group means) and "Mean (tasks)"; the ``_seeds`` file
  has one line per record;
- ``minivtab_<protocol>.*``: the same for the mini-VTAB tasks (``heartlora data make-mini-vtab``),
  with its own groups (``TASK_SUITES``) and the mean of its group means;
- ``fewshot_<protocol>.*``: accuracy per dataset × shots and the average over datasets, plus the
  accuracy-vs-shots figure; ``folder_<protocol>.*`` for ImageFolder tasks;
- ``accuracy_vs_bytes_<protocol>.pdf/.png``: accuracy against stored adapter bytes, Pareto front;
- with ``reference``: ``reproduction_<protocol>.md`` / ``.csv``, our numbers beside published ones.

Protocols: ``paper`` = best test accuracy over the evaluations of a ``split=final`` run; ``clean`` =
its final-epoch test accuracy (options fixed beforehand, or chosen on train800→val200 by ``bench
--tune``; rows that were not tuned say so). ``split=tune`` runs never enter a table.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ..data import VTAB_TASKS
from ..data.tasks import TASK_SUITES
from ..fsio import atomic_write
from ..plots import plot_accuracy_vs_bytes, plot_fewshot
from .aggregate import summarize
from .reference import compare, comparison_csv, comparison_markdown, load_reference
from .tables import (PROTOCOL_TEXT, Table, caption, fewshot_tables, group_column, latex, markdown, seeds_csv,
                     suites_present, summary_csv, vtab_table)
from .variants import RUN_NAME, ReportError, Variant, apply_labels, collect, fmt_value, group_variants

__all__ = ["ReportError", "write_report"]


def _write(path: Path, text: str | bytes, written: dict[str, Path], name: str) -> None:
    atomic_write(path, text if isinstance(text, bytes) else text.encode())
    written[name] = path


def _options_notes(variants: Sequence[Variant]) -> list[str]:
    lines = []
    for v in variants:
        for key, per_task in v.per_task_options.items():
            values = ", ".join(f"{task} {fmt_value(value)}" for task, value in sorted(per_task.items()))
            lines.append(f"- {v.label}: `{key}` differs per task ({values})")
    return lines


def _average_label(table: Table) -> str:
    """'Average of the three group means (%)' on VTAB-1K, 'two' on the mini-VTAB: as many as the table has."""
    names = getattr(table, "group_names", None) or []
    count = {2: "two ", 3: "three "}.get(len(names), "")
    return f"Average of the {count}group means (%)"


def _bytes_points(table: Table) -> tuple[list[dict], str]:
    """One point per row: the Average of groups when every row has it, else the mean over the tasks
    every row ran (so all points average the same tasks)."""
    average = "Average (of groups)"
    if all(average in r.cells for r in table.rows):
        return ([{"method": r.label, "accuracy": r.cells[average].mean, "std": r.cells[average].std,
                  "adapter_bytes": r.adapter_bytes or 0.0} for r in table.rows], _average_label(table))
    tasks = [c for c in table.columns if c in table.how and table.how[c].startswith("mean over seeds")]
    common = [t for t in tasks if all(t in r.cells for r in table.rows)]
    if not common:
        return [], ""
    points = []
    for r in table.rows:
        per_seed: dict[int, list[float]] = defaultdict(list)
        for rec in r.records or r.variant.records:
            if rec.task in common:
                per_seed[rec.seed].append(rec.value(table.protocol))
        complete = [statistics.fmean(v) for v in per_seed.values() if len(v) == len(common)]
        spread = summarize(complete).std if complete else float("nan")
        points.append({"method": r.label, "accuracy": statistics.fmean(r.cells[t].mean for t in common), "std": spread,
                       "adapter_bytes": r.adapter_bytes or 0.0})
    if len(common) == 1:
        return points, f"{common[0]} test accuracy (%)"
    return points, f"mean over the {len(common)} tasks every row ran (%)"


def _table_files(table: Table, variants, protocol: str, stem: str, out: Path, records: int,
                 written: dict[str, Path], suite: str | None = None) -> None:
    _write(out / f"{stem}_{protocol}.csv", summary_csv([table]), written, f"{stem}_csv")
    _write(out / f"{stem}_{protocol}_seeds.csv", seeds_csv(variants, protocol, table.benchmark, suite), written,
           f"{stem}_seeds_csv")
    _write(out / f"{stem}_{protocol}.tex", latex(table, caption(table, records), f"tab:{stem}-{protocol}"), written,
           f"{stem}_tex")
    points, ylabel = _bytes_points(table)
    if len(points) >= 1:
        files = plot_accuracy_vs_bytes(points, out / f"accuracy_vs_bytes_{protocol}" if stem == "vtab"
                                       else out / f"accuracy_vs_bytes_{stem}_{protocol}",
                                       title=f"{table.section} ({protocol} protocol)", ylabel=ylabel)
        written[f"{stem}_accuracy_vs_bytes_pdf"], written[f"{stem}_accuracy_vs_bytes_png"] = files


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None, protocol: str = "paper",
                 reference: str | None = None, labels: Sequence[str] = ()) -> dict[str, Path]:
    """Write every table and figure the records allow; returns ``{name: path}`` of the files written."""
    records = collect(runs_dir)
    if not records:
        raise ReportError(f"{runs_dir}: no run records ({RUN_NAME}) found")
    variants = group_variants(records, protocol)
    apply_labels(variants, labels)
    if not variants:
        hint = " (clean numbers come from split=final runs; tune runs have none)" if protocol == "clean" else ""
        raise ReportError(f"{runs_dir}: no split=final run record has a {protocol} accuracy{hint}")
    ref = load_reference(reference) if reference else None
    out = Path(out_dir or Path(runs_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    tune_runs = sum(r.split == "tune" for r in records)
    tabulated = sum(len(v.records) for v in variants)
    md = [f"# heartlora report ({protocol} protocol)", "",
          f"{tabulated} run records from `{runs_dir}` in {len(variants)} rows"
          + (f" ({tune_runs} split=tune runs, the clean protocol's validation, not tabulated)" if tune_runs else "")
          + f". Numbers: {PROTOCOL_TEXT[protocol]}.", "",
          "A row pools records that differ only in their seed; any other difference (an option taking several "
          "values within a task, a different recipe) makes a separate row, named by what differs. Cells: top-1 "
          "accuracy (%), mean ± std over the row's n seeds (– : one seed, no spread); the CSV files add the 95% "
          "t-interval. 'Average (of groups)' is the mean of the group means (VTAB-1K: of the Natural, Specialized "
          "and Structured means, the literature's Average); 'Mean (tasks)' is the plain mean over the tasks present. "
          "Params and bytes "
          "exclude the classifier. Best mean per column in bold.", ""]
    notes = _options_notes(variants)
    if notes:
        md += ["Options that differ between tasks within one row (per-task presets or choices):", "", *notes, ""]
    if protocol == "clean":
        untuned = [v.label for v in variants if not v.tuned]
        if untuned:
            md += [f"Not tuned on val200 (options fixed beforehand, then tested once): {'; '.join(untuned)}.", ""]

    suites = suites_present(variants)
    vtab = vtab_table(variants, protocol) if "vtab" in suites else None
    if vtab is not None:
        md += ["## VTAB-1K", "", markdown(vtab), ""]
        partial = [r.label for r in vtab.rows if any(t not in r.cells for t in VTAB_TASKS)]
        if partial:
            md += [f"Partial VTAB-1K ({'; '.join(partial)}): group means cover the tasks present only; the "
                   "Average needs all three groups.", ""]
        _table_files(vtab, variants, protocol, "vtab", out, tabulated, written, "vtab")
    for suite in suites:
        if suite == "vtab":
            continue
        table = vtab_table(variants, protocol, suite=suite)
        title, groups = TASK_SUITES[suite]
        stem = suite.replace("-", "")
        members = "; ".join(f"{group_column(g)}: {', '.join(tasks)}" for g, tasks in groups.items())
        md += [f"## {title}", "", markdown(table), "",
               f"{title} groups ({members}); group means cover the tasks present; 'Average (of groups)' is the "
               f"mean of the {' and '.join(group_column(g) for g in groups)} means.", ""]
        _table_files(table, variants, protocol, stem, out, tabulated, written, suite)
    folder = vtab_table(variants, protocol, "folder") if any(v.kind == "folder" for v in variants) else None
    if folder is not None:
        md += ["## Image-folder tasks", "", markdown(folder), ""]
        _table_files(folder, variants, protocol, "folder", out, tabulated, written)

    few = fewshot_tables(variants, protocol)
    if few:
        for table in few:
            md += [f"## Few-shot: {table.section}", "", markdown(table), ""]
        _write(out / f"fewshot_{protocol}.csv", summary_csv(few), written, "fewshot_csv")
        _write(out / f"fewshot_{protocol}_seeds.csv", seeds_csv(variants, protocol, "fewshot"), written,
               "fewshot_seeds_csv")
        _write(out / f"fewshot_{protocol}.tex", "\n".join(latex(t, caption(t, tabulated), f"tab:fewshot-{i}-{protocol}")
                                                         for i, t in enumerate(few)), written, "fewshot_tex")
        panels = {}
        for table in few:
            panels[table.section if not table.section.startswith("average") else "average over datasets"] = {
                row.label: ([int(c.split("-")[0]) for c in table.columns if c in row.cells],
                            [row.cells[c].mean for c in table.columns if c in row.cells],
                            [row.cells[c].mean - _std0(row.cells[c].std) for c in table.columns if c in row.cells],
                            [row.cells[c].mean + _std0(row.cells[c].std) for c in table.columns if c in row.cells])
                for row in table.rows}
        files = plot_fewshot(panels, out / f"fewshot_{protocol}", band="band: ± std over seeds",
                             title=f"Few-shot ({protocol} protocol)")
        written["fewshot_pdf"], written["fewshot_png"] = files

    if ref is not None:
        if vtab is None:
            raise ReportError(f"{runs_dir}: option '--reference' compares VTAB-1K rows, and no VTAB-1K record is here")
        comparisons, skipped = compare(vtab, ref, protocol)
        _write(out / f"reproduction_{protocol}.md", comparison_markdown(vtab, ref, comparisons, protocol, skipped),
               written, "reproduction_md")
        _write(out / f"reproduction_{protocol}.csv", comparison_csv(comparisons, protocol), written, "reproduction_csv")
        md += [f"Reproduction report against `{ref.path}`: {len(comparisons)} comparisons in "
               f"`reproduction_{protocol}.md`" + (f"; {len(skipped)} pairings not compared (conditions differ, "
                                                   "reasons listed there)" if skipped else "") + ".", ""]
    _write(out / f"report_{protocol}.md", "\n".join(md), written, "markdown")
    return written


def _std0(std: float) -> float:
    return 0.0 if std != std else std  # NaN (one seed): no band
