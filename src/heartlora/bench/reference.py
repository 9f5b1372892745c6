"""Published numbers beside ours: reference files and the reproduction report.

A reference file (YAML; format described at the top of the shipped
``heartlora/presets/reference_paper.yaml``) lists rows of published VTAB-1K accuracies, each with
its source. :func:`compare` pairs every table row (a variant) with the reference rows of the same
method (and options / backbone, where the reference row names them) and gives, per task and per
group, our mean over seeds, the published value, the difference and whether the published value
lies inside our 95% seed interval.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .tables import GROUP_COLUMNS, Table
from .variants import ReportError, Variant, fmt_value

SHIPPED = {"paper": "presets/reference_paper.yaml"}
_ROW_KEYS = {"name", "source", "method", "options", "model", "tasks", "params_m", "adapter_kb", "note",
             *GROUP_COLUMNS}


@dataclass
class ReferenceRow:
    name: str
    sources: list[str]
    method: str | None
    options: dict
    model: str | None
    values: dict[str, tuple[float, bool]]  # our column name -> (value, derived from the row's task numbers)
    params_m: float | None = None
    adapter_kb: float | None = None
    note: str = ""

    def matches(self, variant: Variant) -> bool:
        if self.method is None or self.method != variant.method:
            return False
        options = {**variant.options, **variant.axes}
        if any(fmt_value(options.get(k)) != fmt_value(v) for k, v in self.options.items()):
            return False
        return self.model is None or all(fnmatch.fnmatch(r.model, self.model) for r in variant.records)


@dataclass
class Reference:
    path: str
    protocol: str
    sources: dict[str, str]
    rows: list[ReferenceRow] = field(default_factory=list)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ReportError(f"{where}: expected an accuracy in 0..100, got {value!r}")
    return float(value)


def load_reference(spec: str) -> Reference:
    """``spec``: a shipped reference name (``paper``) or the path of a file in the same format."""
    from ..data import VTAB_GROUPS
    from ..data.tasks import lookup_task

    if spec in SHIPPED:
        text, where = resources.files("heartlora").joinpath(SHIPPED[spec]).read_text(), f"heartlora/{SHIPPED[spec]}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: reference file not found (option '--reference': "
                                    f"{' or '.join(SHIPPED)} or a YAML file)")
        text, where = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ReportError(f"{where}:{line} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ReportError(f"{where}: expected a mapping with 'rows:' (a list of reference rows)")
    if data.get("benchmark", "vtab") != "vtab":
        raise ReportError(f"{where}: benchmark {data.get('benchmark')!r} is not supported (only 'vtab')")
    sources = {str(k): str(v) for k, v in (data.get("sources") or {}).items()}
    reference = Reference(where, str(data.get("protocol", "paper")), sources)
    for i, row in enumerate(data["rows"], 1):
        at = f"{where}: row {i}"
        if not isinstance(row, dict) or not row.get("name"):
            raise ReportError(f"{at}: expected a mapping with a 'name'")
        at = f"{where}: row {i} ({row['name']})"
        unknown = set(row) - _ROW_KEYS
        if unknown:
            raise ReportError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_ROW_KEYS))}")
        keys = row.get("source")
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        if not keys or any(k not in sources for k in keys):
            raise ReportError(f"{at}: 'source' must name entries of 'sources' ({', '.join(sources) or 'none given'}), "
                              f"got {row.get('source')!r}")
        tasks = {}
        for name, value in (row.get("tasks") or {}).items():
            task = lookup_task(str(name), "vtab")
            if task is None:
                raise ReportError(f"{at}: unknown VTAB-1K task {name!r}")
            tasks[task] = _number(value, f"{at}, task {name}")
        values: dict[str, tuple[float, bool]] = {t: (v, False) for t, v in tasks.items()}
        groups = {}
        for group in ("natural", "specialized", "structured"):
            if row.get(group) is not None:
                groups[group] = (_number(row[group], f"{at}, {group}"), False)
            elif all(t in tasks for t in VTAB_GROUPS[group]):
                groups[group] = (statistics.fmean(tasks[t] for t in VTAB_GROUPS[group]), True)
        if row.get("average") is not None:
            groups["average"] = (_number(row["average"], f"{at}, average"), False)
        elif all(g in groups for g in ("natural", "specialized", "structured")):
            groups["average"] = (statistics.fmean(groups[g][0] for g in ("natural", "specialized", "structured")),
                                 any(groups[g][1] for g in ("natural", "specialized", "structured")))
        if row.get("mean_tasks") is not None:
            groups["mean_tasks"] = (_number(row["mean_tasks"], f"{at}, mean_tasks"), False)
        elif len(tasks) == sum(len(v) for v in VTAB_GROUPS.values()):
            groups["mean_tasks"] = (statistics.fmean(tasks.values()), True)
        values.update({GROUP_COLUMNS[g]: v for g, v in groups.items()})
        if not values:
            raise ReportError(f"{at}: no numbers (give 'tasks' and/or group means)")
        options = row.get("options") or {}
        if not isinstance(options, dict):
            raise ReportError(f"{at}: 'options' must be a mapping, got {options!r}")
        reference.rows.append(ReferenceRow(
            name=str(row["name"]), sources=keys, method=row.get("method"), options=dict(options),
            model=row.get("model"), values=values, params_m=row.get("params_m"), adapter_kb=row.get("adapter_kb"),
            note=" ".join(str(row.get("note") or "").split())))
    return reference


# ----- comparison ------------------------------------------------------------------------------
@dataclass
class Comparison:
    variant: str
    reference: str
    column: str
    ours_mean: float
    ours_std: float
    n: int
    low: float
    high: float
    published: float
    derived: bool
    sources: list[str]

    @property
    def difference(self) -> float:
        return self.ours_mean - self.published

    @property
    def within(self) -> bool | None:
        if self.n < 2:
            return None
        return self.low <= self.published <= self.high


def _comparable(row_cells: dict) -> set[str]:
    """Columns of a row that mean what the literature's do: its tasks, and a group mean (or the
    Average, or the 19-task mean) only when the row ran every task it covers."""
    from ..data import VTAB_GROUPS

    complete = {g for g, tasks in VTAB_GROUPS.items() if all(t in row_cells for t in tasks)}
    columns = {c for c in row_cells if c not in GROUP_COLUMNS.values()}
    columns |= {GROUP_COLUMNS[g] for g in complete}
    if complete == set(VTAB_GROUPS):
        columns |= {GROUP_COLUMNS["average"], GROUP_COLUMNS["mean_tasks"]}
    return columns


def compare(table: Table, reference: Reference) -> list[Comparison]:
    """Every (row, matching reference row, shared column): group means only where our row is
    complete for the group (a partial group mean is not the published one)."""
    out = []
    for row in table.rows:
        comparable = _comparable(row.cells)
        for ref in reference.rows:
            if not ref.matches(row.variant):
                continue
            for column in table.columns:
                if column in ref.values and column in comparable:
                    c, (value, derived) = row.cells[column], ref.values[column]
                    out.append(Comparison(row.label, ref.name, column, c.mean, c.std, c.n, c.low, c.high, value,
                                          derived, ref.sources))
    return out


def _within_text(value: bool | None) -> str:
    return "n/a (1 seed)" if value is None else ("yes" if value else "no")


COMPARISON_HEADER = ["protocol", "variant", "reference", "column", "ours_mean", "ours_std", "n", "ci95_low",
                     "ci95_high", "published", "published_derived", "difference", "within_ci95", "sources"]


def comparison_csv(comparisons: list[Comparison], protocol: str) -> bytes:
    def num(v: float) -> str:
        return "nan" if math.isnan(v) else repr(float(v))

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COMPARISON_HEADER)
    for c in comparisons:
        writer.writerow([protocol, c.variant, c.reference, c.column, num(c.ours_mean), num(c.ours_std), c.n,
                         num(c.low), num(c.high), num(c.published), "yes" if c.derived else "no", num(c.difference),
                         _within_text(c.within), ";".join(c.sources)])
    return out.getvalue().encode()


def comparison_markdown(table: Table, reference: Reference, comparisons: list[Comparison], protocol: str) -> str:
    lines = [f"# Reproduction report ({protocol} protocol)", "",
             f"Our rows beside the published numbers of `{reference.path}` (literature protocol: "
             f"{reference.protocol}). Ours: mean ± std over n seeds with the 95% t-interval of the mean; "
             "difference = ours − published; 'within' says whether the published value lies inside our "
             "interval (needs n ≥ 2). 'derived' marks published group means computed here from the row's "
             "per-task numbers (mean of the group's tasks; Average = mean of the three group means).", ""]
    if protocol != reference.protocol:
        lines += [f"Note: the reference reports the {reference.protocol} protocol; this report compares our "
                  f"{protocol} numbers with it, for orientation only.", ""]
    pairs: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        pairs.setdefault((c.variant, c.reference), []).append(c)
    for (variant, ref_name), rows in pairs.items():
        ref = next(r for r in reference.rows if r.name == ref_name)
        lines += [f"## {variant} vs {ref_name}", "",
                  "Source: " + " / ".join(reference.sources[k] for k in ref.sources), ""]
        if ref.note:
            lines += [f"Note: {ref.note}", ""]
        lines += ["| column | ours | n | 95% interval | published | difference | within |",
                  "|---|---|---|---|---|---|---|"]
        for c in rows:
            std = "–" if math.isnan(c.ours_std) else f"{c.ours_std:.2f}"
            interval = "–" if math.isnan(c.low) else f"[{c.low:.2f}, {c.high:.2f}]"
            published = f"{c.published:.2f}" + (" (derived)" if c.derived else "")
            lines.append(f"| {c.column} | {c.ours_mean:.2f} ± {std} | {c.n} | {interval} | {published} | "
                         f"{c.difference:+.2f} | {_within_text(c.within)} |")
        lines.append("")
    matched_variants = {v for v, _ in pairs}
    unmatched = [r.label for r in table.rows if r.label not in matched_variants]
    if unmatched:
        lines += ["Rows with no published counterpart sharing a column (method, options and backbone must match): "
                  + "; ".join(unmatched), ""]
    lines += ["## Published rows (context)", "",
              "| reference | method | Natural | Specialized | Structured | Average (of groups) | source |",
              "|---|---|---|---|---|---|---|"]
    for ref in reference.rows:
        cells = []
        for g in ("natural", "specialized", "structured", "average"):
            value = ref.values.get(GROUP_COLUMNS[g])
            cells.append("–" if value is None else f"{value[0]:.2f}" + ("*" if value[1] else ""))
        lines.append(f"| {ref.name} | {ref.method or '–'} | " + " | ".join(cells) + f" | {', '.join(ref.sources)} |")
    lines += ["", "\\* derived here from the row's per-task numbers.", "", "Sources:", ""]
    lines += [f"- `{key}`: {text}" for key, text in reference.sources.items()]
    return "\n".join(lines) + "\n"
