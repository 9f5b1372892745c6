"""Published numbers beside ours: reference files and the reproduction report.

A reference file (YAML; format described at the top of the shipped
``heartlora/presets/reference_paper.yaml``) lists rows of published VTAB-1K accuracies, each with
its source and the conditions it was measured under (backbone and weights, epochs, image size,
training images, evaluation split, protocol). :func:`compare` pairs every table row (a variant)
with the reference rows of the same method (and options) and gives, per task and per group, our
mean over seeds, the published value, the difference and whether the published value lies inside
our 95% seed interval — but only for rows whose every run record meets the reference row's
conditions; every other pairing is listed with the reasons it was not compared (e.g.
"random-init backbone", "2 of 100 epochs").
"""
from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .tables import GROUP_COLUMNS, Table
from .variants import Record, ReportError, Variant, fmt_value

SHIPPED = {"paper": "presets/reference_paper.yaml"}
_ROW_KEYS = {"name", "source", "method", "options", "model", "tasks", "params_m", "adapter_kb", "note", "conditions",
             *GROUP_COLUMNS}


@dataclass(frozen=True)
class Conditions:
    """What a run must share with a published number before a difference to it means anything.
    ``None``: not a condition. Read from a reference file's ``conditions:`` (every row) and a row's
    own ``conditions:`` / ``model:`` (that row)."""

    model: str | None = None  # shell pattern of the timm backbone name, e.g. vit_base_patch16*
    weights: str | None = None  # "pretrained": a real backbone (a weights file or timm's pretrained tag), not random init
    epochs: int | None = None  # training epochs
    image_size: int | None = None  # input side length in pixels
    train_images: int | None = None  # images trained on (VTAB-1K's train800val200: 1000)
    eval_split: str | None = None  # the split the accuracy is measured on (test)

    KEYS = ("model", "weights", "epochs", "image_size", "train_images", "eval_split")

    @classmethod
    def parse(cls, values, where: str, base: "Conditions | None" = None) -> "Conditions":
        if values is None:
            return base or cls()
        if not isinstance(values, dict):
            raise ReportError(f"{where}: 'conditions' must be a mapping of {', '.join(cls.KEYS)}, got {values!r}")
        unknown = sorted(set(values) - set(cls.KEYS))
        if unknown:
            raise ReportError(f"{where}: unknown condition(s) {', '.join(unknown)}; expected {', '.join(cls.KEYS)}")
        for key in ("epochs", "image_size", "train_images"):
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ReportError(f"{where}: condition '{key}' must be a positive integer, got {value!r}")
        if values.get("weights") not in (None, "pretrained"):
            raise ReportError(f"{where}: condition 'weights' must be 'pretrained', got {values['weights']!r}")
        return dataclasses.replace(base or cls(), **{k: v for k, v in values.items() if v is not None})

    def describe(self, protocol: str) -> str:
        parts = []
        if self.model:
            parts.append(f"backbone {self.model}")
        if self.weights == "pretrained":
            parts.append("pretrained weights")
        if self.epochs:
            parts.append(f"{self.epochs} epochs")
        if self.image_size:
            parts.append(f"{self.image_size} px")
        if self.train_images:
            parts.append(f"{self.train_images:,} training images")
        if self.eval_split:
            parts.append(f"accuracy on {self.eval_split}")
        parts.append(f"{protocol} protocol")
        return ", ".join(parts)

    def mismatches(self, record: Record, protocol: str, reference_protocol: str) -> list[str]:
        """Why ``record`` (read with ``protocol``) does not meet these conditions; empty if it does."""
        why = []
        if protocol != reference_protocol:
            why.append(f"{protocol} protocol, the reference reports the {reference_protocol} protocol")
        if self.model and not fnmatch.fnmatch(record.model, self.model):
            why.append(f"backbone {record.model}, the reference's is {self.model}")
        if self.weights == "pretrained" and record.recipe.get("weights") in (None, "random"):
            why.append("random-init backbone")
        epochs = record.recipe.get("epochs")
        if self.epochs and epochs != self.epochs:
            why.append(f"{epochs} of {self.epochs} epochs")
        size = record.recipe.get("img_size") or record.recipe.get("image_size")
        if self.image_size and size != self.image_size:
            why.append(f"{size} px images, the reference's are {self.image_size} px")
        if self.train_images and record.train_images != self.train_images:
            why.append(f"trained on {record.train_images} images, the reference on {self.train_images:,}")
        if self.eval_split and record.eval_split != self.eval_split:
            why.append(f"accuracy on {record.eval_split}, the reference's on {self.eval_split}")
        return why


@dataclass
class ReferenceRow:
    name: str
    sources: list[str]
    method: str | None
    options: dict
    model: str | None
    values: dict[str, tuple[float, bool]]  # our column name -> (value, derived from the row's task numbers)
    conditions: Conditions = field(default_factory=Conditions)
    params_m: float | None = None
    adapter_kb: float | None = None
    note: str = ""

    def matches(self, variant: Variant) -> bool:
        """The same method and options: the row is this reference row's counterpart (whether the
        conditions allow a comparison is :meth:`Conditions.mismatches`)."""
        if self.method is None or self.method != variant.method:
            return False
        options = {**variant.options, **variant.axes}
        return all(fmt_value(options.get(k)) == fmt_value(v) for k, v in self.options.items())


@dataclass
class Reference:
    path: str
    protocol: str
    sources: dict[str, str]
    rows: list[ReferenceRow] = field(default_factory=list)
    conditions: Conditions = field(default_factory=Conditions)


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
    reference = Reference(where, str(data.get("protocol", "paper")), sources,
                          conditions=Conditions.parse(data.get("conditions"), f"{where}: conditions"))
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
        conditions = Conditions.parse(row.get("conditions"), at, reference.conditions)
        if row.get("model") is not None:
            conditions = dataclasses.replace(conditions, model=str(row["model"]))
        reference.rows.append(ReferenceRow(
            name=str(row["name"]), sources=keys, method=row.get("method"), options=dict(options),
            model=row.get("model"), values=values, conditions=conditions, params_m=row.get("params_m"),
            adapter_kb=row.get("adapter_kb"), note=" ".join(str(row.get("note") or "").split())))
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


@dataclass
class Skipped:
    """A row and its published counterpart that were not compared, and why."""

    variant: str
    reference: str
    reasons: list[str]


def compare(table: Table, reference: Reference, protocol: str | None = None) -> tuple[list[Comparison], list[Skipped]]:
    """(every (row, counterpart reference row, shared column) whose conditions match, every
    counterpart pairing refused with its reasons). A row is compared only when each of its run
    records meets the reference row's conditions (backbone and weights, epochs, image size,
    training images, evaluation split) and ``protocol`` is the reference's; group means only
    where our row is complete for the group (a partial group mean is not the published one)."""
    protocol = protocol or table.protocol
    out, skipped = [], []
    for row in table.rows:
        comparable = _comparable(row.cells)
        for ref in reference.rows:
            if not ref.matches(row.variant):
                continue
            reasons: list[str] = []
            for record in row.variant.records:
                for reason in ref.conditions.mismatches(record, protocol, reference.protocol):
                    if reason not in reasons:
                        reasons.append(reason)
            if reasons:
                skipped.append(Skipped(row.label, ref.name, reasons))
                continue
            for column in table.columns:
                if column in ref.values and column in comparable:
                    c, (value, derived) = row.cells[column], ref.values[column]
                    out.append(Comparison(row.label, ref.name, column, c.mean, c.std, c.n, c.low, c.high, value,
                                          derived, ref.sources))
    return out, skipped


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


def comparison_markdown(table: Table, reference: Reference, comparisons: list[Comparison], protocol: str,
                        skipped: list[Skipped] | None = None) -> str:
    lines = [f"# Reproduction report ({protocol} protocol)", "",
             f"Conditions of the comparison (every run of a row must meet its reference row's): "
             f"{reference.conditions.describe(reference.protocol)}; rows may narrow the backbone. A difference is "
             "shown only under matching conditions; the other pairings are listed with the reasons.", "",
             f"Our rows beside the published numbers of `{reference.path}` (literature protocol: "
             f"{reference.protocol}). Ours: mean ± std over n seeds with the 95% t-interval of the mean; "
             "difference = ours − published; 'within' says whether the published value lies inside our "
             "interval (needs n ≥ 2). 'derived' marks published group means computed here from the row's "
             "per-task numbers (mean of the group's tasks; Average = mean of the three group means).", ""]
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
    if skipped:
        lines += ["## Not compared: conditions differ", "", "| row | reference row | why not |", "|---|---|---|"]
        lines += [f"| {s.variant} | {s.reference} | {'; '.join(s.reasons)} |" for s in skipped]
        lines.append("")
    matched_variants = {v for v, _ in pairs} | {s.variant for s in skipped or []}
    unmatched = [r.label for r in table.rows if r.label not in matched_variants]
    if unmatched:
        lines += ["Rows with no published counterpart (method and options must match): "
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
