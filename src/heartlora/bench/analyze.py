"""The paper's analyses; each writes its figure (PDF + PNG) and the numbers behind it (CSV).

- ``responsiveness``: layer × head heatmaps of several runs side by side, labelled with the score
  kind each run used, switched-off heads marked (Figure 1), and the rank correlation of the cheap
  scores with exact ``ablation`` scores.
- ``deactivate``: switching off the ``ne`` least responsive heads against the controls — the
  first ``ne`` heads, seeded random sets, the most responsive heads — as ratios to the ``ne=0``
  run of the same seed, per task, with 95% intervals over seeds (Figure 3).
- ``ne_sweep``: accuracy vs ``ne`` per task, bands over seeds (Figure 4).
- ``attention``: attention maps of chosen heads over the input images, runs side by side (Figure 5).
- ``task_dependence``: task × task agreement of the head scores (Spearman) and switched-off sets
  (Jaccard) of Heart-LoRA runs, against the agreement between seeds of one task.

Training analyses go through :mod:`heartlora.bench.sweep`, so they resume and skip finished runs.
"""
from __future__ import annotations

import csv
import io
import json
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..fsio import atomic_write
from ..plots import plot_agreement, plot_attention, plot_grouped_bars, plot_lines, plot_responsiveness
from .aggregate import summarize
from ..engine.record import RUN_NAME
from ..engine.record import read_run_record as _read_record
from .sweep import make_cell, read_record, run_cells

CHEAP_SCORES = ("taylor", "activation", "weight")
CONTROLS = ("first", "random", "reverse")
# controls that pick the same head indices in every layer, so they need one head count throughout
_UNIFORM_ONLY = ("random", "reverse")


class AnalysisError(ValueError):
    """An analysis could not be completed (the message says which input or run)."""


def _csv_bytes(rows: list[list]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def _files(written: dict[str, Path], figure, csv_paths: dict[str, Path]) -> dict[str, Path]:
    written["pdf"], written["png"] = figure
    written.update(csv_paths)
    return written


# ----- loading a finished run -------------------------------------------------------------------------
def read_run_record(run_dir: str | Path) -> dict:
    return _read_record(run_dir)


def load_model(run_dir: str | Path, device: str = "cpu"):
    """(model with its adapter, run record) of a finished ``heartlora train`` run, its backbone
    rebuilt as trained (weights, pretrained, kwargs) from the adapter's backbone.json."""
    from ..engine.build import build_from_adapter_folder

    record = read_run_record(run_dir)
    model, _ = build_from_adapter_folder(run_dir)
    return model.to(device).eval(), record


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(model with its adapter, run record, task data) of a finished run."""
    from ..data import load_task

    model, record = load_model(run_dir, device)
    data = record["config"]["data"]
    task = load_task(data["kind"], data["root"], data["task"], split=data["split"], shots=data.get("shots"),
                     seed=data.get("fewshot_seed"), image_size=data["image_size"],
                     normalize=data.get("normalize", "none"))
    return model, record, task


def _batches(dataset, count: int, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for images, labels in loader:
        out.append((images, torch.as_tensor(labels)))
        if len(out) == count:
            break
    return out


def _run_title(record: dict, run_dir: str | Path) -> str:
    return f"{record['data']['task']} · {record['config']['method']['name']} ({Path(run_dir).name})"


# ----- responsiveness -------------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # average ranks for ties
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def score_run(model, batches, kinds: Sequence[str] = CHEAP_SCORES + ("ablation",)) -> dict[str, list[torch.Tensor]]:
    """Score kinds (default: every one) on the same batches (eval mode: no dropout, no drop-path)."""
    from ..methods.responsiveness import HeadScorer, ablation_scores

    results = {}
    for kind in (k for k in CHEAP_SCORES if k in kinds):
        with HeadScorer(model, kind) as scorer:
            if kind != "weight":
                for images, labels in batches:
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(model(images), labels).backward()
            results[kind] = scorer.scores()
    model.zero_grad(set_to_none=True)
    if "ablation" in kinds:
        results["ablation"] = ablation_scores(model, batches)
    return results


def _adapter_panel(adapter_dir: Path, data: dict, batches: int, batch_size: int, score: str, correlate: bool):
    """(label, scores, masks, results by score kind) of an adapter folder without a run record
    (e.g. imported from PEFT): its heads are scored on ``data``'s training split."""
    from ..data import load_task
    from ..engine.build import build_from_adapter_folder
    from ..methods.factory import get_state

    if not data.get("root"):
        raise ValueError(f"{adapter_dir}: an adapter folder without run.json is scored on data; give --data (and --task)")
    model, backbone = build_from_adapter_folder(adapter_dir)
    task = load_task(data.get("kind") or "vtab", data["root"], data.get("task"), split=data.get("split") or "final",
                     image_size=backbone.img_size, normalize=backbone.normalize)
    kinds = CHEAP_SCORES + ("ablation",) if correlate else (score,)
    results = score_run(model, _batches(task.train, batches, batch_size), kinds)
    state = get_state(model)
    masks = state.head_masks or [[True] * len(layer) for layer in results[score]]
    title = f"{task.name} · {state.method} ({adapter_dir.name}, scored now)"
    return title, [t.tolist() for t in results[score]], masks, results


def responsiveness(run_dirs: Sequence[str | Path], out_dir: str | Path, correlate: bool = True,
                   batches: int = 2, batch_size: int = 32, data: dict | None = None,
                   score: str = "taylor") -> dict[str, Path]:
    """Heatmaps of finished heart-lora runs' recorded head scores; an adapter folder without a
    run record (any low-rank adapter, e.g. one imported from PEFT) is scored afresh with ``score``
    on ``data`` (``{"kind", "root", "task", "split"}``)."""
    if score not in CHEAP_SCORES + ("ablation",):
        raise ValueError(f"score {score!r}: expected one of {', '.join(CHEAP_SCORES + ('ablation',))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels, score_rows, corr_rows = {}, [], []
    for run_dir in run_dirs:
        results = None
        if not (Path(run_dir) / RUN_NAME).is_file() and _is_adapter_folder(Path(run_dir)):
            title, scores, masks, results = _adapter_panel(Path(run_dir), data or {}, batches, batch_size, score,
                                                           correlate)
            heads, kind = {"scores": scores, "head_masks": masks}, score
        else:
            record = read_run_record(run_dir)
            heads = record.get("heads")
            if not heads or not heads.get("scores"):
                raise AnalysisError(f"{Path(run_dir) / RUN_NAME}: no head scores (a run of a head-selecting method, "
                                    "heart-lora or heart-lora-layer, is needed)")
            title = _run_title(record, run_dir)
            kind = heads.get("score") or "score"
        if title in panels:
            title = f"{title} [{Path(run_dir).parent.name}]"
        if title in panels:
            raise AnalysisError(f"{run_dir}: given twice")
        panels["\n".join(textwrap.wrap(title, 34))] = (heads["scores"], heads["head_masks"], kind)
        for layer, (scores, mask) in enumerate(zip(heads["scores"], heads["head_masks"])):
            for head, (value, active) in enumerate(zip(scores, mask)):
                score_rows.append([title, str(run_dir), kind, layer, head, value, int(active)])
        if correlate:
            if results is None:
                model, _, task = load_run(run_dir)
                results = score_run(model, _batches(task.train, batches, batch_size))
            masks = heads["head_masks"]

            def active(per_layer):
                return [float(v) for s, m in zip(per_layer, masks) for v, a in zip(s.tolist(), m) if a]

            exact = active(results["ablation"])
            for cheap in CHEAP_SCORES:
                corr_rows.append([title, cheap, spearman(active(results[cheap]), exact), len(exact)])
    figure = plot_responsiveness(panels, out / "responsiveness")
    written: dict[str, Path] = {}
    atomic_write(out / "responsiveness.csv",
                 _csv_bytes([["run", "run_dir", "score_kind", "layer", "head", "score", "active"], *score_rows]))
    csvs = {"csv": out / "responsiveness.csv"}
    if correlate:
        atomic_write(out / "score_correlation.csv",
                     _csv_bytes([["run", "score", "spearman_vs_ablation", "heads"], *corr_rows]))
        csvs["correlation_csv"] = out / "score_correlation.csv"
    return _files(written, figure, csvs)


def _is_adapter_folder(path: Path) -> bool:
    from ..adapters_io import is_adapter_folder

    return is_adapter_folder(path)


# ----- training analyses --------------------------------------------------------------------------
def _accuracy(record: dict, protocol: str) -> float:
    entry = record["protocols"]["paper" if protocol == "paper" else "final"]
    return float(entry["accuracy"] if isinstance(entry, dict) else entry)


def head_counts(base) -> list[int]:
    """Heads per attention layer of the recipe's backbone (built once, without training)."""
    from ..engine.build import build_backbone
    from ..heads import find_attention_sites

    image_size = base.data.image_size
    model = build_backbone(base.model, image_size, base.seed)
    return [s.num_heads for s in find_attention_sites(model)]


def _check_ne_values(ne_values: Sequence[int], heads: list[int], option: str = "--ne-values") -> None:
    bad = [ne for ne in ne_values if not 0 <= ne < min(heads)]
    if bad:
        raise ConfigError(f"option '{option}': {', '.join(map(str, bad))} out of range — ne must be 0 … "
                          f"{min(heads) - 1} (heads per layer: {', '.join(map(str, sorted(set(heads))))})")


def _run(cells, base, out: Path, workers: int, log, what: str) -> None:
    result = run_cells(cells, base, out / "runs", workers=workers, log=log)
    if not result.ok:
        first = result.failed[0][1].splitlines()[0]
        raise AnalysisError(f"analyze {what}: {len(result.failed)} of {len(cells)} runs failed (first: {first}); "
                            f"details in {out / 'runs' / 'failures.jsonl'}")


def deactivate(base, tasks: Sequence[str], out_dir: str | Path, ne_values: Sequence[int] = (1, 3, 6),
               seeds: Sequence[int] | None = None, random_seeds: Sequence[int] = (0, 1, 2),
               controls: Sequence[str] | None = None, protocol: str = "paper", workers: int = 1,
               log=print) -> dict[str, Path]:
    """Figure 3: accuracy with ``ne`` heads switched off per layer, as a ratio to the ``ne=0`` run
    of the same task and seed: the least responsive heads (Heart-LoRA's choice) beside the
    controls ``first`` (heads 0..ne-1), ``random`` (one seeded set per ``random_seeds`` entry, the
    same in every layer) and ``reverse`` (the most responsive heads)."""
    out = Path(out_dir)
    seeds = list(seeds or [base.seed])
    heads = head_counts(base)
    _check_ne_values(ne_values, heads)
    if any(ne == 0 for ne in ne_values):
        raise ConfigError("option '--ne-values': ne=0 is the baseline every ratio divides by; give ne >= 1")
    uniform = len(set(heads)) == 1
    wanted = list(controls) if controls is not None else [c for c in CONTROLS if uniform or c not in _UNIFORM_ONLY]
    unknown = [c for c in wanted if c not in CONTROLS]
    if unknown:
        raise ConfigError(f"option '--controls': unknown {', '.join(unknown)}; expected some of {', '.join(CONTROLS)}")
    if not uniform:
        impossible = [c for c in wanted if c in _UNIFORM_ONLY]
        if impossible:
            raise ConfigError(f"option '--controls': {', '.join(impossible)} switch(es) off the same heads in every "
                              f"layer and need one head count; this backbone has {', '.join(map(str, heads))} — use "
                              "--controls first")
        log(f"heads per layer differ ({sorted(set(heads))}): the responsive choice is per layer (select=layer); "
            "controls random and reverse need one head count and are not run")
    responsive = "global" if uniform else "layer"
    options = {k: v for k, v in base.method.options.items() if k not in ("ne", "select", "select_seed", "fraction")}
    kind = base.data.kind

    def cell(task, seed, **extra):
        return make_cell(kind, task, "heart-lora", {**options, **extra}, seed)

    settings: dict[tuple, list] = defaultdict(list)  # (task, ne, setting) -> [(seed, select_seed, cell)]
    baseline = {(t, s): cell(t, s, ne=0, select=responsive) for t in tasks for s in seeds}
    for task in tasks:
        for ne in ne_values:
            for seed in seeds:
                settings[(task, ne, "responsive")].append((seed, None, cell(task, seed, ne=ne, select=responsive)))
                if "first" in wanted:
                    settings[(task, ne, "first")].append((seed, None, cell(task, seed, ne=ne, select="first")))
                if "reverse" in wanted:
                    settings[(task, ne, "reverse")].append((seed, None, cell(task, seed, ne=ne, select="reverse")))
                if "random" in wanted:
                    for k in random_seeds:
                        settings[(task, ne, "random")].append(
                            (seed, k, cell(task, seed, ne=ne, select="random", select_seed=k)))
    every = list(baseline.values()) + [c for entries in settings.values() for _, _, c in entries]
    _run(list(dict.fromkeys(every)), base, out, workers, log, "deactivate")
    runs = out / "runs"
    rows, summary_rows, no_ratio = [], [], set()
    panels: dict[str, dict[str, dict[str, tuple]]] = {}
    names = {"responsive": f"least responsive (select={responsive})", "first": "first ne heads",
             "random": f"random sets (select_seed {','.join(map(str, random_seeds))})",
             "reverse": "most responsive (reverse)"}
    for (task, ne, setting), entries in settings.items():
        ratios = []
        for seed, select_seed, c in entries:
            base_accuracy = _accuracy(read_record(baseline[(task, seed)], runs), protocol)
            accuracy = _accuracy(read_record(c, runs), protocol)
            ratio = accuracy / base_accuracy if base_accuracy else float("nan")
            ratios.append(ratio)
            rows.append([task, ne, setting, seed, "" if select_seed is None else select_seed, accuracy, base_accuracy,
                         ratio])
        s = summarize([r for r in ratios if r == r]) if any(r == r for r in ratios) else None
        if s is None:
            no_ratio.add(task)
            continue
        summary_rows.append([task, ne, setting, s.mean, s.std, s.n, s.low, s.high])
        panel = f"ne = {ne} of {min(heads)} heads off per layer" if uniform else f"ne = {ne} heads off per layer"
        panels.setdefault(panel, {}).setdefault(task, {})[names[setting]] = (s.mean, s.low, s.high, s.n)
    atomic_write(out / "deactivate.csv", _csv_bytes([["task", "ne", "setting", "seed", "select_seed", "accuracy",
                                                      "accuracy_ne0", "ratio_to_ne0"], *rows]))
    atomic_write(out / "deactivate_summary.csv", _csv_bytes([["task", "ne", "setting", "mean_ratio", "std", "n",
                                                              "ci95_low", "ci95_high"], *summary_rows]))
    if not panels:
        raise AnalysisError(f"analyze deactivate: every ne=0 baseline has accuracy 0, so no ratio exists "
                            f"(see {out / 'deactivate.csv'})")
    if len(seeds) > 1:
        note = f"error bars: 95% t-interval over {len(seeds)} run seeds" + (" (random: × selection seeds)"
                                                                          if "random" in wanted else "")
    else:
        note = "one run seed: no error bars" + (" (random: 95% t-interval over selection seeds)"
                                                if "random" in wanted and len(random_seeds) > 1 else "")
    if no_ratio:
        missing = ", ".join(sorted(no_ratio))
        log(f"no ratio for {missing}: accuracy 0 at ne=0 (numbers in {out / 'deactivate.csv'})")
        note += f"\nnot drawn (accuracy 0 at ne=0, no ratio): {missing}"
    figure = plot_grouped_bars(
        panels, out / "deactivate", f"accuracy / accuracy at ne=0 ({protocol} protocol)",
        title="Which heads are switched off: least responsive vs controls", reference=1.0, note=note)
    return _files({}, figure, {"csv": out / "deactivate.csv", "summary_csv": out / "deactivate_summary.csv"})


def ne_sweep(base, tasks: Sequence[str], out_dir: str | Path, ne_values: Sequence[int], method: str = "heart-lora",
             seeds: Sequence[int] | None = None, protocol: str = "paper", workers: int = 1, log=print) -> dict[str, Path]:
    """Figure 4: accuracy vs ne per task; bands: ± std over run seeds."""
    out = Path(out_dir)
    seeds = list(seeds or [base.seed])
    heads = head_counts(base)
    _check_ne_values(ne_values, heads)
    options = {k: v for k, v in base.method.options.items() if k not in ("ne", "fraction")}
    if len(set(heads)) > 1 and options.get("select") in (None, "global"):
        options["select"] = "layer"
        log(f"heads per layer differ ({sorted(set(heads))}): ne is applied per layer (select=layer)")
    cells = {(t, ne, s): make_cell(base.data.kind, t, method, {**options, "ne": ne}, s)
             for t in tasks for ne in ne_values for s in seeds}
    _run(list(cells.values()), base, out, workers, log, "ne-sweep")
    rows = [[t, ne, s, _accuracy(read_record(c, out / "runs"), protocol)] for (t, ne, s), c in cells.items()]
    series = {}
    for task in tasks:
        stats = [summarize([r[3] for r in rows if r[0] == task and r[1] == ne]) for ne in ne_values]
        spread = [0.0 if s.std != s.std else s.std for s in stats]
        series[task] = (list(ne_values), [s.mean for s in stats], [s.mean - e for s, e in zip(stats, spread)],
                        [s.mean + e for s, e in zip(stats, spread)])
    atomic_write(out / "ne_sweep.csv", _csv_bytes([["task", "ne", "seed", "accuracy"], *rows]))
    band = f"band: ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed: no band"
    figure = plot_lines(series, out / "ne_sweep", "heads switched off per layer (ne)", "test accuracy (%)",
                        title=f"{method}: accuracy vs ne ({protocol} protocol)", band=band, clip=(0.0, 100.0))
    return _files({}, figure, {"csv": out / "ne_sweep.csv"})


# ----- task dependence of head scores ----------------------------------------------------------------
AGREEMENTS = {"spearman": "Spearman rank correlation of head scores (per layer, mean over layers)",
              "jaccard": "Jaccard overlap of the switched-off heads"}


def switched_off(heads: dict) -> set[tuple[int, int]]:
    """The (layer, head) pairs a run's ``heads`` block switched off."""
    return {(layer, head) for layer, row in enumerate(heads.get("head_masks") or [])
            for head, active in enumerate(row) if not active}


def head_agreement(a: dict, b: dict) -> dict[str, float]:
    """Agreement of two runs' ``heads`` blocks: ``spearman`` (rank correlation of the head scores
    in each layer, averaged over the layers where it is defined) and ``jaccard`` (|A∩B| / |A∪B| of
    the switched-off sets; NaN when neither switched any head off)."""
    rhos = [spearman(x, y) for x, y in zip(a["scores"], b["scores"])]
    rhos = [r for r in rhos if r == r]
    off_a, off_b = switched_off(a), switched_off(b)
    union = off_a | off_b
    return {"spearman": float(np.mean(rhos)) if rhos else float("nan"),
            "jaccard": len(off_a & off_b) / len(union) if union else float("nan")}


def _find_head_runs(paths: Sequence[str | Path], method: str | None) -> list[Path]:
    """Run folders: each path itself when it holds a run.json, else every run below it (of
    ``method``, when given)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if (given / RUN_NAME).is_file():
            found.append(given)
            continue
        if not given.is_dir():
            raise FileNotFoundError(f"{given}: no such run folder")
        below = []
        for path in sorted(given.rglob(RUN_NAME)):
            record = read_run_record(path.parent)
            if method is None or (record.get("config") or {}).get("method", {}).get("name") == method:
                below.append(path.parent)
        if not below:
            raise AnalysisError(f"{given}: no run records{f' of {method}' if method else ''} below it")
        found += below
    return list(dict.fromkeys(found))


def _task_order(tasks: set[str]) -> tuple[list[str], list[tuple[str, int]], dict[str, str]]:
    """Tasks in their suite's group order (then any others, sorted), the group spans and each task's group."""
    from ..data.tasks import TASK_SUITES

    ordered, spans, group_of = [], [], {}
    for _, groups in TASK_SUITES.values():
        for group, members in groups.items():
            present = [t for t in members if t in tasks and t not in group_of]
            if present:
                ordered += present
                spans.append((group, len(present)))
                group_of.update({t: group for t in present})
    own = sorted(tasks - set(ordered))
    if own:
        spans.append(("other", len(own)))
        group_of.update({t: "other" for t in own})
    return ordered + own, spans, group_of


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def task_dependence(run_dirs: Sequence[str | Path], out_dir: str | Path, method: str | None = "heart-lora",
                    log=print) -> dict[str, Path]:
    """How task-specific the head scores and selections are: for every pair of tasks, the mean
    :func:`head_agreement` over the pairs of their runs (every seed of one with every seed of the
    other), beside the agreement between the seeds of one task (diagonal: mean over its seed
    pairs). ``run_dirs``: run folders, or folders searched for runs of ``method``. Writes
    ``task_dependence.csv`` (matrix entries), ``task_dependence_pairs.csv`` (every run pair),
    ``task_dependence.txt`` (the printed tables and summary) and the heatmaps (PDF + PNG)."""
    out = Path(out_dir)
    runs = []
    for run_dir in _find_head_runs(run_dirs, method):
        record = read_run_record(run_dir)
        heads = record.get("heads") or {}
        if not heads.get("scores") or not heads.get("head_masks"):
            raise AnalysisError(f"{Path(run_dir) / RUN_NAME}: no head scores (a run of a head-selecting method, "
                                "heart-lora or heart-lora-layer, is needed)")
        runs.append({"dir": Path(run_dir), "task": record["data"]["task"], "seed": int(record["seed"]),
                     "method": record["config"]["method"]["name"], "heads": heads})
    if len(runs) < 2:
        raise AnalysisError("analyze task-dependence: needs at least two runs with head scores "
                            f"(got {len(runs)})")
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (run["task"], run["seed"])
        if key in seen:
            raise AnalysisError(f"{seen[key]} and {run['dir']}: two runs of task '{run['task']}' with seed "
                                f"{run['seed']}; pass one run per task and seed (e.g. one method's runs)")
        seen[key] = run["dir"]
    shape = [len(row) for row in runs[0]["heads"]["scores"]]
    kinds = {run["heads"].get("score") for run in runs}
    for run in runs[1:]:
        if [len(row) for row in run["heads"]["scores"]] != shape:
            raise AnalysisError(f"{run['dir'] / RUN_NAME}: heads per layer {[len(r) for r in run['heads']['scores']]}, "
                                f"but {runs[0]['dir'] / RUN_NAME} has {shape}; compare runs of one backbone")
    if len(kinds) > 1:
        raise AnalysisError(f"analyze task-dependence: the runs used different score kinds ({', '.join(map(str, kinds))}); "
                            "compare runs of one score kind")
    tasks, spans, group_of = _task_order({run["task"] for run in runs})
    index = {t: i for i, t in enumerate(tasks)}
    cells: dict[str, dict[tuple[int, int], list[float]]] = {m: defaultdict(list) for m in AGREEMENTS}
    cross_by_seed: dict[str, dict[bool, list[float]]] = {m: {True: [], False: []} for m in AGREEMENTS}
    pair_rows = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            agreement = head_agreement(a["heads"], b["heads"])
            ia, ib = sorted((index[a["task"]], index[b["task"]]))
            for metric, value in agreement.items():
                cells[metric][(ia, ib)].append(value)
                if ia != ib:
                    cross_by_seed[metric][a["seed"] == b["seed"]].append(value)
            pair_rows.append([a["task"], b["task"], a["seed"], b["seed"], str(a["dir"]), str(b["dir"]),
                              agreement["spearman"], agreement["jaccard"]])
    n = len(tasks)
    matrices = {m: np.full((n, n), np.nan) for m in AGREEMENTS}
    rows = []
    for metric in AGREEMENTS:
        for (ia, ib), values in sorted(cells[metric].items()):
            finite = [v for v in values if v == v]
            mean = _mean(values)
            matrices[metric][ia, ib] = matrices[metric][ib, ia] = mean
            rows.append([metric, tasks[ia], tasks[ib], group_of[tasks[ia]], group_of[tasks[ib]],
                         "seeds of one task" if ia == ib else "across tasks", mean,
                         float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"), len(finite)])

    def entries(metric: str, diagonal: bool, groups: tuple[str, str] | None = None) -> list[float]:
        m = matrices[metric]
        picked = []
        for i in range(n):
            for j in range(i, n):
                if (i == j) != diagonal or not m[i, j] == m[i, j]:
                    continue
                if groups is not None and {group_of[tasks[i]], group_of[tasks[j]]} != set(groups):
                    continue
                picked.append(float(m[i, j]))
        return picked

    summary = {}
    for metric in AGREEMENTS:
        summary[metric] = {"within": _mean(entries(metric, True)), "across": _mean(entries(metric, False)),
                           "across_same_seed": _mean(cross_by_seed[metric][True]),
                           "across_other_seeds": _mean(cross_by_seed[metric][False])}
    group_names = list(dict.fromkeys(group_of[t] for t in tasks))
    group_pairs = [(g, h) for i, g in enumerate(group_names) for h in group_names[i:]]
    methods = sorted({run["method"] for run in runs})
    seeds_per_task = {t: sorted(run["seed"] for run in runs if run["task"] == t) for t in tasks}
    lines = [f"Task dependence of head responsiveness: {len(runs)} runs of {', '.join(methods)} on {n} tasks "
             f"(score: {next(iter(kinds))}; seeds per task: "
             + ", ".join(f"{t} {len(s)}" for t, s in seeds_per_task.items()) + ")",
             "diagonal: mean over the seed pairs of one task; off-diagonal: mean over every pair of one run of each "
             "task", ""]
    width = max(len(t) for t in tasks) + 2
    for metric, title in AGREEMENTS.items():
        lines.append(title)
        lines.append(" " * width + "".join(f"{t:>{width}}" for t in tasks))
        for i, task in enumerate(tasks):
            values = [matrices[metric][i, j] for j in range(n)]
            lines.append(f"{task:<{width}}" + "".join(f"{f'{v:.2f}' if v == v else '–':>{width}}" for v in values))
        lines.append("")

    def both(key: str) -> str:
        return ", ".join(f"{metric} {summary[metric][key]:.2f}" for metric in AGREEMENTS)

    lines.append(f"within-task (between seeds): {both('within')}  |  across tasks: {both('across')} "
                 f"(same seed: {both('across_same_seed')}; different seeds: {both('across_other_seeds')})")
    def members(group: str) -> str:
        return ", ".join(t for t in tasks if group_of[t] == group)

    group_text = []
    for g, h in group_pairs:
        values = {metric: _mean(entries(metric, False, (g, h))) for metric in AGREEMENTS}
        if all(v != v for v in values.values()):
            continue
        label = f"{g} vs {g} (different tasks)" if g == h else f"{g} ({members(g)}) vs {h} ({members(h)})"
        group_text.append(f"{label}: " + ", ".join(f"{m} {v:.2f}" for m, v in values.items()))
        summary.setdefault("groups", {})[f"{g}|{h}"] = values
    if group_text:
        lines.append("across tasks by group: " + "; ".join(group_text))
    if any(len(s) < 2 for s in seeds_per_task.values()):
        lines.append("tasks with one seed have no diagonal entry (–)")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "task_dependence.csv", _csv_bytes(
        [["measure", "task_a", "task_b", "group_a", "group_b", "pairs_of", "mean", "std", "n_pairs"], *rows]))
    atomic_write(out / "task_dependence_pairs.csv", _csv_bytes(
        [["task_a", "task_b", "seed_a", "seed_b", "run_a", "run_b", "spearman", "jaccard"], *pair_rows]))
    atomic_write(out / "task_dependence.txt", (text + "\n").encode())
    atomic_write(out / "task_dependence.json", (json.dumps(
        {"tasks": tasks, "groups": group_of, "summary": summary,
         "matrices": {m: [[None if v != v else v for v in row] for row in matrices[m].tolist()] for m in AGREEMENTS}},
        indent=2) + "\n").encode())
    panels = {"head scores: Spearman ρ\n(per layer, mean over layers)": (matrices["spearman"], (-1.0, 1.0)),
              "switched-off heads: Jaccard": (matrices["jaccard"], (0.0, 1.0))}
    figure = plot_agreement(panels, tasks, out / "task_dependence",
                            note=f"framed diagonal: between seeds of one task; {len(runs)} runs of {', '.join(methods)}",
                            spans=spans)
    return _files({"text": out / "task_dependence.txt", "json": out / "task_dependence.json"}, figure,
                  {"csv": out / "task_dependence.csv", "pairs_csv": out / "task_dependence_pairs.csv"})


# ----- attention maps -----------------------------------------------------------------------------
def attention(run_dirs: Sequence[str | Path], image_paths: Sequence[str | Path], heads: Sequence[tuple[int, int]],
              out_dir: str | Path) -> dict[str, Path]:
    """Figure 5: attention of the chosen (layer, head)s over each image, one column per run and
    head (e.g. Heart-LoRA beside Bi-LoRA); heads whose update the run switched off are marked."""
    from PIL import Image, UnidentifiedImageError

    from ..data import build_transform
    from ..data.decode import UnsupportedImage, to_rgb
    from .attention import attention_grid, check_heads

    out = Path(out_dir)
    runs = []
    for run_dir in run_dirs:
        model, record = load_model(run_dir)
        check_heads(model, list(heads), str(run_dir))
        runs.append((model, record, run_dir))
    raw = []
    for path in image_paths:
        try:
            with Image.open(path) as image:
                image.load()
                raw.append(to_rgb(image))  # the training path's conversion of every PIL mode
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: image not found (option '--images')") from None
        except (UnidentifiedImageError, OSError, UnsupportedImage) as err:
            raise AnalysisError(f"{path}: not a readable image (option '--images'; {err})") from None
    out.mkdir(parents=True, exist_ok=True)
    columns, rows, display, meanings = [], [], None, set()
    for model, record, run_dir in runs:
        size = int(record["config"]["data"]["image_size"])
        normalize = record["config"]["data"].get("normalize", "none")
        batch = torch.stack([build_transform(size, normalize)(img) for img in raw])
        if display is None:
            display = [build_transform(size, "none")(img).permute(1, 2, 0).numpy() for img in raw]
        masks = (record.get("heads") or {}).get("head_masks")
        name = f"{record['config']['method']['name']} ({Path(run_dir).name})"
        for layer, head in heads:
            maps, meaning = attention_grid(model, batch, layer)
            meanings.add(meaning)
            off = bool(masks) and not masks[layer][head]
            columns.append({"title": f"{name}\nlayer {layer} · head {head}", "maps": [m for m in maps[:, head]],
                            "off": off})
            for i, path in enumerate(image_paths):
                grid = maps[i, head]
                rows.append([name, str(run_dir), Path(path).name, layer, head, int(off), grid.shape[0], grid.shape[1],
                             " ".join(f"{v:.6g}" for v in grid.flatten())])
    label = "; ".join(sorted(meanings)) + " (one shared scale)"
    figure = plot_attention(display, [Path(p).name for p in image_paths], columns, out / "attention",
                            "\n".join(textwrap.wrap(label, 48)))
    atomic_write(out / "attention.csv", _csv_bytes([["run", "run_dir", "image", "layer", "head", "switched_off",
                                                     "rows", "cols", "attention (row-major)"], *rows]))
    return _files({}, figure, {"csv": out / "attention.csv"})
