"""Tables and plots from run records only: Markdown, CSV, LaTeX and PNG.

VTAB-1K: per-task accuracy (mean ± std over seeds), group means, "Average" (mean of the three
group means, as the literature reports) and the 19-task mean (labelled apart), trainable
parameters (M, classifier excluded) and adapter bytes per method. Few-shot: accuracy per dataset
× shots (mean over list seeds and run seeds), and the accuracy-vs-shots figure.

Protocols: ``paper`` = best test accuracy over the evaluations of a ``split=final`` run;
``clean`` = its final-epoch test accuracy (hyper-parameters fixed beforehand: presets, or chosen
on train800→val200 by ``bench --tune``). ``split=tune`` runs never enter a table.
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..plots import plot_accuracy_vs_bytes, plot_lines
from .aggregate import group_means, mean_std
from .sweep import CELL_NAME, RUN_NAME

PROTOCOLS = ("paper", "clean")


@dataclass
class RunRow:
    kind: str
    task: str
    method: str
    seed: int
    split: str
    shots: int | None
    list_seed: int | None
    paper: float | None
    clean: float | None
    parameters: int | None
    adapter_bytes: int | None
    path: str

    def value(self, protocol: str) -> float | None:
        return self.paper if protocol == "paper" else self.clean


def _accuracy(entry) -> float | None:
    if entry is None:
        return None
    return float(entry["accuracy"]) if isinstance(entry, dict) else float(entry)


def collect(runs_dir: str | Path) -> list[RunRow]:
    """Every finished run record below ``runs_dir`` (a file that is not a complete record is
    an error naming the file, not silently skipped)."""
    rows = []
    for path in sorted(Path(runs_dir).rglob(RUN_NAME)):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a valid run record (line {err.lineno}: {err.msg})") from None
        if record.get("status") != "complete":
            raise ValueError(f"{path}: run record status is {record.get('status')!r}, expected 'complete'")
        cell_path = path.with_name(CELL_NAME)
        cell = json.loads(cell_path.read_text()) if cell_path.is_file() else {}
        config, data = record["config"], record["data"]
        protocols = record["protocols"]
        rows.append(RunRow(
            kind=data["kind"], task=data["task"],
            method=cell.get("label") or config["method"]["name"],
            seed=int(record["seed"]), split=data["split"],
            shots=config["data"].get("shots"), list_seed=config["data"].get("fewshot_seed"),
            paper=_accuracy(protocols.get("paper")), clean=_accuracy(protocols.get("clean")),
            parameters=(record.get("trainable_parameters") or {}).get("without_classifier"),
            adapter_bytes=(record.get("adapter_bytes") or {}).get("without_classifier"),
            path=str(path),
        ))
    return rows


def _fmt(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if not std else f"{mean:.{digits}f} ± {std:.{digits}f}"


# ----- VTAB-1K ---------------------------------------------------------------------------------------
def vtab_summary(rows: list[RunRow], protocol: str = "paper") -> dict:
    """``{method: {tasks: {task: (mean, std, n)}, groups: group_means(...), parameters, adapter_bytes}}``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"option '--protocol'={protocol!r}: expected one of {PROTOCOLS}")
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sizes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in rows:
        if row.kind != "vtab" or row.split != "final" or row.value(protocol) is None:
            continue
        values[row.method][row.task].append(row.value(protocol))
        if row.parameters is not None:
            sizes[row.method].append((row.parameters, row.adapter_bytes))
    summary = {}
    for method, tasks in values.items():
        per_task = {task: (*mean_std(v), len(v)) for task, v in tasks.items()}
        params = [p for p, _ in sizes[method]]
        nbytes = [b for _, b in sizes[method]]
        summary[method] = {
            "tasks": per_task,
            "groups": group_means({t: m for t, (m, _, _) in per_task.items()}),
            "parameters_m": statistics.fmean(params) / 1e6 if params else None,
            "adapter_bytes": statistics.fmean(nbytes) if nbytes else None,
        }
    return summary


def _vtab_columns(summary: dict) -> list[str]:
    from ..data import VTAB_GROUPS

    present = {t for s in summary.values() for t in s["tasks"]}
    ordered = [t for group in VTAB_GROUPS.values() for t in group if t in present]
    return ordered + sorted(present - set(ordered))  # tasks of one's own last


def vtab_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    tasks = _vtab_columns(summary)
    header = ["method", "params (M)", "adapter bytes", *tasks, "Natural", "Specialized", "Structured",
              "Average (of groups)", "Mean (tasks)"]
    body = []
    for method, s in summary.items():
        g = s["groups"]
        cells = [_fmt(*s["tasks"][t][:2]) if t in s["tasks"] else "–" for t in tasks]
        body.append([
            method, _fmt(s["parameters_m"], digits=3), f"{s['adapter_bytes']:.0f}" if s["adapter_bytes"] else "–",
            *cells, _fmt(g["natural"]), _fmt(g["specialized"]), _fmt(g["structured"]), _fmt(g["average"]),
            _fmt(g["mean_tasks"]),
        ])
    return header, body


# ----- few-shot --------------------------------------------------------------------------------------
def fewshot_summary(rows: list[RunRow], protocol: str = "paper") -> dict:
    """``{dataset: {method: {shots: (mean, std, n)}}}`` over list seeds × run seeds."""
    values: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row.kind != "fewshot" or row.split != "final" or row.value(protocol) is None:
            continue
        values[row.task][row.method][row.shots].append(row.value(protocol))
    return {
        dataset: {method: {k: (*mean_std(v), len(v)) for k, v in sorted(shots.items())} for method, shots in methods.items()}
        for dataset, methods in values.items()
    }


# ----- writers ---------------------------------------------------------------------------------------
def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _latex(header: list[str], body: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("_", r"\_").replace("±", r"$\pm$").replace("–", "--").replace("%", r"\%")

    spec = "l" + "r" * (len(header) - 1)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv(path: Path, header: list[str], body: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None, protocol: str = "paper") -> dict[str, Path]:
    """Write every table and plot the records allow; returns ``{name: path}``."""
    rows = collect(runs_dir)
    if not rows:
        raise ValueError(f"{runs_dir}: no run records ({RUN_NAME}) found")
    out = Path(out_dir or Path(runs_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    md = [f"# heartlora report ({protocol} protocol)", "",
          f"{len(rows)} run records from `{runs_dir}`. Accuracy in %, mean ± std over seeds. "
          "'Average (of groups)' is the mean of the Natural, Specialized and Structured means (the "
          "literature's Average); 'Mean (tasks)' is the plain mean over the tasks present. Params and "
          "bytes exclude the classifier.", ""]
    vtab = vtab_summary(rows, protocol)
    if vtab:
        header, body = vtab_rows(vtab)
        md += ["## VTAB-1K layout", "", _markdown(header, body), ""]
        incomplete = sorted(m for m, s in vtab.items() if not s["groups"]["complete"])
        if incomplete:
            md += [f"Partial VTAB-1K for {', '.join(incomplete)}: group means cover the tasks present only.", ""]
        _csv(out / "vtab.csv", header, body)
        (out / "vtab.tex").write_text(_latex(header, body))
        written.update(vtab_csv=out / "vtab.csv", vtab_tex=out / "vtab.tex")
        points = []
        for method, s in vtab.items():
            accuracy = s["groups"]["average"] if s["groups"]["average"] is not None else s["groups"]["mean_tasks"]
            if s["adapter_bytes"]:
                points.append({"method": method, "accuracy": accuracy, "adapter_bytes": s["adapter_bytes"]})
        if points:
            written["accuracy_vs_bytes"] = plot_accuracy_vs_bytes(
                points, out / "accuracy_vs_bytes.png", title=f"VTAB-1K ({protocol} protocol)")
    fewshot = fewshot_summary(rows, protocol)
    for dataset, methods in fewshot.items():
        shots = sorted({k for m in methods.values() for k in m})
        header = ["method", *[f"{k}-shot" for k in shots]]
        body = [[method, *[_fmt(*m[k][:2]) if k in m else "–" for k in shots]] for method, m in methods.items()]
        md += [f"## Few-shot: {dataset}", "", _markdown(header, body), ""]
        _csv(out / f"fewshot_{dataset}.csv", header, body)
        (out / f"fewshot_{dataset}.tex").write_text(_latex(header, body))
        series = {method: (list(m), [v[0] for v in m.values()]) for method, m in methods.items()}
        written[f"fewshot_{dataset}"] = plot_lines(series, out / f"fewshot_{dataset}.png", "shots per class",
                                                   "test accuracy (%)", title=f"Few-shot {dataset}", logx=True)
    (out / "report.md").write_text("\n".join(md))
    written["markdown"] = out / "report.md"
    return written
