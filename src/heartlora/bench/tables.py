"""Result tables built from variants, and their writers: CSV (numbers), Markdown and LaTeX.

A :class:`Table` is rows (variants) × columns (tasks, groups, shots) of :class:`Summary` cells:
mean, sample std, n and the 95% t-interval, all over seeds. Aggregate columns state how they are
formed (``how``); every writer carries the protocol and those rules along, so a file read alone
says what its numbers are.
"""
from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .aggregate import Summary, group_means, summarize, t_quantile_975
from .variants import Record, Variant

PROTOCOL_TEXT = {
    "paper": "paper protocol: best test accuracy over the evaluations of a final-split run (VTAB-1K: "
             "train800val200; test-set model selection, as the literature reports)",
    "clean": "clean protocol: final-epoch test accuracy of a final-split run whose options were fixed "
             "beforehand (tuned on train800 → val200 where marked)",
}
GROUP_COLUMNS = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured",
                 "average": "Average (of groups)", "mean_tasks": "Mean (tasks)"}
HOW = {
    "task": "mean over seeds; std and 95% t-interval over seeds",
    "group": "mean of the group's task means; std and 95% t-interval over the seeds that ran every task of the group",
    "average": "mean of the Natural, Specialized and Structured means (the literature's Average); spread over "
               "the seeds that ran every task",
    "mean_tasks": "plain mean of the task means; spread over the seeds that ran every task",
    "shots": "mean over run seeds x few-shot list seeds; std and 95% t-interval over those",
    "datasets": "mean of the dataset means at this shot count; spread over the seed pairs that ran every dataset",
}


@dataclass
class Row:
    variant: Variant
    cells: dict[str, Summary]
    parameters_m: float | None = None
    adapter_bytes: float | None = None
    records: list[Record] | None = None  # the records this table's cells come from (default: the variant's)

    @property
    def label(self) -> str:
        return self.variant.label

    def n_text(self) -> str:
        ns = sorted({c.n for c in self.cells.values() if c.n})
        if not ns:
            return "–"
        return str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


@dataclass
class Table:
    benchmark: str  # "vtab" | "fewshot"
    section: str  # "VTAB-1K", a few-shot dataset, or "average over datasets"
    protocol: str
    columns: list[str]
    how: dict[str, str]  # column -> rule
    rows: list[Row] = field(default_factory=list)
    groups: list[tuple[str, int]] = field(default_factory=list)  # header spans (name, columns) for LaTeX
    group_names: list[str] = field(default_factory=list)  # the group-mean columns (VTAB-layout suites)

    def best(self, column: str) -> float | None:
        means = [r.cells[column].mean for r in self.rows if column in r.cells]
        return max(means) if len(means) > 1 else None


def _aggregate(mean: float, per_seed: list[float]) -> Summary:
    """An aggregate column: the literature's mean, with a spread over the seeds that have it all."""
    if len(per_seed) < 2:
        return Summary(mean, math.nan, len(per_seed), math.nan, math.nan)
    std = statistics.stdev(per_seed)
    half = t_quantile_975(len(per_seed) - 1) * std / math.sqrt(len(per_seed))
    return Summary(mean, std, len(per_seed), mean - half, mean + half)


def _sizes(records: list[Record]) -> tuple[float | None, float | None]:
    params = [r.parameters for r in records if r.parameters is not None]
    nbytes = [r.adapter_bytes for r in records if r.adapter_bytes is not None]
    return (statistics.fmean(params) / 1e6 if params else None, statistics.fmean(nbytes) if nbytes else None)


# ----- VTAB-1K and other suites of VTAB-layout tasks -------------------------------------------------
def group_column(group: str) -> str:
    """The table column of a group mean (``natural`` -> ``Natural``)."""
    return GROUP_COLUMNS.get(group, group.replace("_", " ").capitalize())


def _suite_order(tasks: set[str], groups: dict[str, list[str]]) -> tuple[list[str], list[tuple[str, int]]]:
    ordered, spans = [], []
    for group, members in groups.items():
        present = [t for t in members if t in tasks]
        if present:
            ordered += present
            spans.append((group_column(group), len(present)))
    own = sorted(tasks - set(ordered))  # tasks of one's own in the VTAB layout come last
    if own:
        spans.append(("other", len(own)))
    return ordered + own, spans


def _in_suite(task: str, kind: str, suite: str) -> bool:
    """Which table a record of ``task`` enters: its suite's (mini-VTAB, …); VTAB-1K tasks and tasks
    of one's own enter the VTAB-1K table; every ``folder`` task the folder table."""
    from ..data.tasks import suite_of

    if kind != "vtab":
        return True
    found = suite_of(task)
    return found == suite or (suite == "vtab" and found is None)


def suites_present(variants: list[Variant]) -> list[str]:
    """The suites (``TASK_SUITES`` keys) whose table the ``vtab`` records fill, in registry order."""
    from ..data.tasks import TASK_SUITES

    tasks = {r.task for v in variants if v.kind == "vtab" for r in v.records}
    return [suite for suite in TASK_SUITES if any(_in_suite(t, "vtab", suite) for t in tasks)]


def vtab_table(variants: list[Variant], protocol: str, kind: str = "vtab", suite: str = "vtab") -> Table:
    """Per-task columns, then the group means, Average and Mean (tasks), for the rows of ``kind``
    (``vtab``, or ``folder``: tasks of one's own, where only the plain mean applies). ``suite``
    (a ``TASK_SUITES`` key: ``vtab`` = VTAB-1K, ``mini-vtab``) picks the tasks and their groups;
    the VTAB-1K table also holds the VTAB-layout tasks of one's own (plain mean only)."""
    from ..data.tasks import TASK_SUITES

    title, groups = TASK_SUITES[suite]
    chosen = []
    for v in variants:
        if v.kind != kind:
            continue
        records = [r for r in v.records if _in_suite(r.task, kind, suite)]
        if records:
            chosen.append((v, records))
    tasks, spans = _suite_order({r.task for _, records in chosen for r in records}, groups)
    names = [group_column(g) for g in groups]
    columns = tasks + names + [GROUP_COLUMNS["average"], GROUP_COLUMNS["mean_tasks"]]
    how = {t: HOW["task"] for t in tasks}
    how.update({name: HOW["group"] for name in names})
    how[GROUP_COLUMNS["average"]] = HOW["average"] if suite == "vtab" else (
        f"mean of the {' and '.join(names) if len(names) < 3 else ', '.join(names)} means; spread over the seeds "
        "that ran every task")
    how[GROUP_COLUMNS["mean_tasks"]] = HOW["mean_tasks"]
    section = title if kind == "vtab" else "Image-folder tasks"
    table = Table(kind, section, protocol, columns, how, groups=spans, group_names=names)
    for variant, records in chosen:
        values: dict[str, dict[int, float]] = defaultdict(dict)
        for r in records:
            values[r.task][r.seed] = r.value(protocol)
        cells = {task: summarize(list(v.values())) for task, v in values.items()}
        means = group_means({t: c.mean for t, c in cells.items()}, groups)
        for group in [*groups, "average", "mean_tasks"]:
            if means.get(group) is None:
                continue
            wanted = [t for t in values if t in groups[group]] if group in groups else list(values)
            seeds = set.intersection(*(set(values[t]) for t in wanted)) if wanted else set()
            per_seed = [group_means({t: values[t][s] for t in wanted}, groups)[group] for s in sorted(seeds)]
            cells[group_column(group)] = _aggregate(means[group], [p for p in per_seed if p is not None])
        params, nbytes = _sizes(records)
        table.rows.append(Row(variant, cells, params, nbytes, records))
    return table


# ----- few-shot ------------------------------------------------------------------------------------
def fewshot_tables(variants: list[Variant], protocol: str) -> list[Table]:
    """One table per dataset (columns: shots) and the average over datasets."""
    few = [v for v in variants if v.kind == "fewshot"]
    datasets = sorted({r.task for v in few for r in v.records})
    tables = []
    per_variant: dict[int, dict[str, dict[int, dict[tuple, float]]]] = {}
    for i, variant in enumerate(few):
        values: dict[str, dict[int, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
        for r in variant.records:
            values[r.task][r.shots][r.replicate] = r.value(protocol)
        per_variant[i] = values
    for dataset in datasets:
        shots = sorted({k for v in per_variant.values() for k in v.get(dataset, {})})
        columns = [f"{k}-shot" for k in shots]
        table = Table("fewshot", dataset, protocol, columns, {c: HOW["shots"] for c in columns})
        for i, variant in enumerate(few):
            if dataset not in per_variant[i]:
                continue
            cells = {f"{k}-shot": summarize(list(v.values())) for k, v in per_variant[i][dataset].items()}
            params, nbytes = _sizes([r for r in variant.records if r.task == dataset])
            table.rows.append(Row(variant, cells, params, nbytes))
        tables.append(table)
    if len(datasets) > 1:
        shots = sorted({k for v in per_variant.values() for d in v.values() for k in d})
        columns = [f"{k}-shot" for k in shots]
        table = Table("fewshot", f"average over datasets ({', '.join(datasets)})", protocol, columns,
                      {c: HOW["datasets"] for c in columns})
        for i, variant in enumerate(few):
            values = per_variant[i]
            cells = {}
            for k in shots:
                if not all(k in values.get(d, {}) for d in datasets):
                    continue  # an average over fewer datasets would not be the same average
                mean = statistics.fmean(statistics.fmean(values[d][k].values()) for d in datasets)
                pairs = set.intersection(*(set(values[d][k]) for d in datasets))
                cells[f"{k}-shot"] = _aggregate(mean, [statistics.fmean(values[d][k][p] for d in datasets)
                                                       for p in sorted(pairs)])
            if cells:
                params, nbytes = _sizes(variant.records)
                table.rows.append(Row(variant, cells, params, nbytes))
        if table.rows:
            tables.append(table)
    return tables


# ----- writers -------------------------------------------------------------------------------------
def _num(value: float | None) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def tuned_text(variant: Variant, protocol: str) -> str:
    if protocol != "clean":
        return ""
    return f"yes ({','.join(sorted(variant.tuned_keys))})" if variant.tuned else "no (options fixed beforehand)"


SUMMARY_HEADER = ["protocol", "benchmark", "section", "variant", "method", "column", "mean", "std", "n",
                  "ci95_low", "ci95_high", "parameters_m", "adapter_bytes", "tuned_on_val200", "how"]


def summary_csv(tables: list[Table]) -> bytes:
    """One line per (row, column): mean, std, n and the 95% interval as plain numbers (``nan`` where a
    single seed gives no spread)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(SUMMARY_HEADER)
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                if column not in row.cells:
                    continue
                c = row.cells[column]
                writer.writerow([table.protocol, table.benchmark, table.section, row.label, row.variant.method, column,
                                 _num(c.mean), _num(c.std), c.n, _num(c.low), _num(c.high), _num(row.parameters_m),
                                 _num(row.adapter_bytes), tuned_text(row.variant, table.protocol) or "n/a",
                                 table.how[column]])
    return out.getvalue().encode()


SEEDS_HEADER = ["protocol", "benchmark", "variant", "method", "task", "shots", "seed", "list_seed", "accuracy",
                "options", "manifest_hash", "record"]


def seeds_csv(variants: list[Variant], protocol: str, kind: str, suite: str | None = None) -> bytes:
    """Long format: one line per run record that entered a table (of ``suite``, when given)."""
    from .variants import fmt_value

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(SEEDS_HEADER)
    for variant in variants:
        if variant.kind != kind:
            continue
        records = [r for r in variant.records if suite is None or _in_suite(r.task, kind, suite)]
        for r in sorted(records, key=lambda r: (r.task, r.shots or 0, r.seed, r.list_seed or 0)):
            options = " ".join(f"{k}={fmt_value(v)}" for k, v in sorted(r.options.items()))
            writer.writerow([protocol, kind, variant.label, variant.method, r.task, "" if r.shots is None else r.shots,
                             r.seed, "" if r.list_seed is None else r.list_seed, _num(r.value(protocol)), options,
                             r.manifest or "", str(r.path)])
    return out.getvalue().encode()


def _cell_text(c: Summary, bold: bool, markdown: bool) -> str:
    std = "–" if math.isnan(c.std) else f"{c.std:.1f}"
    if markdown:
        mean = f"**{c.mean:.1f}**" if bold else f"{c.mean:.1f}"
        return f"{mean} ± {std}"
    mean = rf"\textbf{{{c.mean:.1f}}}" if bold else f"{c.mean:.1f}"
    return rf"{mean}{{\scriptsize$\pm${std}}}"


def _is_best(table: Table, row: Row, column: str) -> bool:
    best = table.best(column)
    return best is not None and column in row.cells and math.isclose(row.cells[column].mean, best, abs_tol=1e-9)


def _size_texts(row: Row) -> list[str]:
    params = "–" if row.parameters_m is None else f"{row.parameters_m:.3f}"
    nbytes = "–" if row.adapter_bytes is None else f"{row.adapter_bytes:,.0f}"
    return [params, nbytes]


def markdown(table: Table) -> str:
    clean = table.protocol == "clean"
    header = ["variant", "n", "params (M)", "adapter bytes", *table.columns] + (["tuned on val200"] if clean else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [_cell_text(row.cells[c], _is_best(table, row, c), True) if c in row.cells else "–"
                 for c in table.columns]
        extra = [tuned_text(row.variant, table.protocol)] if clean else []
        lines.append("| " + " | ".join([row.label, row.n_text(), *_size_texts(row), *cells, *extra]) + " |")
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "$": r"\$", "±": r"$\pm$", "–": "--", "→": r"$\rightarrow$", "†": r"$^\dagger$", "×": r"$\times$"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def _tex(text: str) -> str:
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], text)


def latex(table: Table, caption: str, label: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs,graphicx}``): best mean per column in bold,
    ``± std`` in every cell, n in its own column and in the caption."""
    clean = table.protocol == "clean"
    ncols = 4 + len(table.columns) + (1 if clean else 0)
    spec = "lrrr" + "r" * len(table.columns) + ("l" if clean else "")
    lines = ["% heartlora report: " + PROTOCOL_TEXT[table.protocol],
             "% " + "; ".join(sorted({f"{c}: {table.how[c]}" for c in table.columns if c in GROUP_COLUMNS.values()}))
             if table.benchmark == "vtab" else "% " + next(iter(table.how.values()), ""),
             r"% needs \usepackage{booktabs,graphicx}",
             r"\begin{table*}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", rf"\label{{{label}}}",
             r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if table.groups:
        spans = [rf"\multicolumn{{{n}}}{{c}}{{{_tex(name)}}}" for name, n in table.groups]
        rest = ncols - 4 - sum(n for _, n in table.groups)
        lines.append(" & ".join(["", "", "", "", *spans, *([""] * rest)]) + r" \\")
        start, rules = 5, []
        for _, n in table.groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        lines.append(" ".join(rules))
    heads = ["Variant", "n", "Params (M)", "Bytes"]
    rotate = table.benchmark == "vtab"
    heads += [rf"\rotatebox{{90}}{{{_tex(c)}}}" if rotate else _tex(c) for c in table.columns]
    if clean:
        heads.append("Tuned on val200")
    lines += [" & ".join(heads) + r" \\", r"\midrule"]
    for row in table.rows:
        cells = [_cell_text(row.cells[c], _is_best(table, row, c), False) if c in row.cells else "--"
                 for c in table.columns]
        extra = [_tex(tuned_text(row.variant, table.protocol))] if clean else []
        lines.append(" & ".join([_tex(row.label), row.n_text().replace("–", "--"), *(_tex(s) for s in _size_texts(row)),
                                 *cells, *extra]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def caption(table: Table, runs: int) -> str:
    ns = sorted({c.n for r in table.rows for c in r.cells.values() if c.n})
    n_text = "–".join(map(str, (ns[0], ns[-1]))) if ns and ns[0] != ns[-1] else (str(ns[0]) if ns else "0")
    text = (f"{table.section} top-1 accuracy (%), {PROTOCOL_TEXT[table.protocol]}. Each cell: mean ± std over "
            f"n = {n_text} seeds (n per row in column n; – : a single seed, no spread). ")
    if table.benchmark == "vtab" and table.section == "VTAB-1K":
        text += ("Natural / Specialized / Structured: mean of the group's task means; Average: mean of the three "
                 "group means (the literature's Average); Mean (tasks): plain mean over the tasks present. ")
    elif table.benchmark == "vtab":
        text += (f"{' / '.join(table.group_names)}: mean of the group's task means; Average: mean of the "
                 f"{len(table.group_names)} group means; Mean (tasks): plain mean over the tasks present. ")
    elif table.section.startswith("average"):
        text += "Each cell: mean of the dataset means at that shot count. "
    else:
        text += "Seeds: run seeds x few-shot list seeds. "
    text += f"Best mean per column in bold. Params and bytes exclude the classifier. {runs} run records."
    if table.protocol == "clean" and any(not r.variant.tuned for r in table.rows):
        text += " Rows marked 'no' in the last column were not tuned on val200: their options were fixed beforehand."
    return text
