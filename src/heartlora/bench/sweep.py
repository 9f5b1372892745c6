"""Sweeps: a grid of independent cells (task, method, options, seed, split) → one run record each.

A cell's directory is a pure function of the cell, so a rerun finds finished cells (their
``run.json`` exists) and skips them, and an interrupted cell resumes from its checkpoint. A cell
that crashes is reported, logged to ``failures.jsonl`` and retried; a cell still failing after
its retries makes the sweep end with a non-zero status — never silently dropped.

Executors: in-process (default) or a pool of worker processes, one per device (``--workers``).
"""
from __future__ import annotations

import itertools
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from ..config import RunConfig

CELL_NAME = "cell.json"
RUN_NAME = "run.json"
TUNED_NAME = "tuned.json"


@dataclass(frozen=True)
class Cell:
    kind: str
    task: str
    method: str
    options: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs
    seed: int
    split: str = "final"
    shots: int | None = None
    fewshot_seed: int | None = None
    label: str = ""  # how reports name the method (default: the method name)

    @property
    def name(self) -> str:
        return self.label or self.method

    def relative_dir(self) -> Path:
        parts = [self.kind, self.task]
        if self.shots is not None:
            parts.append(f"shots{self.shots}")
        parts.append(self.name)
        if self.options:
            parts.append(",".join(f"{k}={_fmt(v)}" for k, v in self.options))
        seed = f"seed{self.seed}" + (f"-list{self.fewshot_seed}" if self.fewshot_seed is not None else "")
        parts.append(seed if self.split == "final" else f"{seed}-{self.split}")
        return Path(*parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = dict(self.options)
        return d

    def config(self, base: RunConfig, out_root: Path) -> RunConfig:
        return base.replace(
            method={"name": self.method, "options": dict(self.options)},
            data={"kind": self.kind, "task": self.task, "split": self.split, "shots": self.shots,
                  "fewshot_seed": self.fewshot_seed},
            seed=self.seed,
            out=str(out_root / self.relative_dir()),
            resume=True,
        )


def _fmt(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def make_cell(kind, task, method, options: dict, seed, split="final", shots=None, fewshot_seed=None, label="") -> Cell:
    return Cell(kind, task, method, tuple(sorted(options.items())), seed, split, shots, fewshot_seed, label)


# ----- presets and grids --------------------------------------------------------------------------
def load_presets(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """Per-task method options: the shipped Bi-LoRA-lineage scales, or a user YAML file."""
    if path is None:
        text = resources.files("heartlora").joinpath("presets/vtab_scales.yaml").read_text()
        source = "heartlora/presets/vtab_scales.yaml"
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: presets file not found (option '--presets')")
        text, source = Path(path).read_text(), str(path)
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise ValueError(f"{source}: expected 'task: {{option: value, ...}}' lines")
    return values


def parse_grid(items: Sequence[str] | None) -> dict[str, list]:
    """``["scale=0.1,1,10", "ne=2,3"]`` → ``{"scale": [0.1, 1, 10], "ne": [2, 3]}`` (YAML scalars)."""
    grid: dict[str, list] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"option '--grid': expected KEY=V1,V2,..., got {item!r}")
        key, values = item.split("=", 1)
        parsed = [yaml.safe_load(v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ValueError(f"option '--grid': no values for {key!r}")
        grid[key.strip().replace("-", "_")] = parsed
    return grid


def grid_points(grid: dict[str, list]) -> list[dict]:
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def method_accepts(method: str, option: str) -> bool:
    from ..methods.base import get_method

    return option in get_method(method).option_defaults()


def plan(
    kind: str,
    tasks: Iterable[str],
    methods: Iterable[str],
    seeds: Iterable[int],
    grid: dict[str, list] | None = None,
    presets: dict[str, dict] | None = None,
    method_options: dict[str, dict] | None = None,
    shots: Iterable[int | None] = (None,),
    fewshot_seeds: Iterable[int | None] = (None,),
    split: str = "final",
) -> list[Cell]:
    """Every (task × method × grid point × shots × seed) cell. Options combine, later winning:
    per-task preset (only options the method has) → ``method_options[method]`` → grid point."""
    cells = []
    for task, method in itertools.product(tasks, methods):
        for point in grid_points(grid or {}):
            options = {k: v for k, v in (presets or {}).get(task, {}).items() if method_accepts(method, k)}
            options.update((method_options or {}).get(method, {}))
            options.update({k: v for k, v in point.items() if method_accepts(method, k)})
            for k_shots, list_seed, seed in itertools.product(shots, fewshot_seeds, seeds):
                cell = make_cell(kind, task, method, options, seed, split, k_shots, list_seed)
                if cell not in cells:
                    cells.append(cell)
    return cells


# ----- execution -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    done: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"{len(self.done)} ran, {len(self.skipped)} already finished (skipped), {len(self.failed)} failed"]
        lines += [f"  FAILED {cell.relative_dir()}: {error}" for cell, error in self.failed]
        return "\n".join(lines)


def is_finished(cell: Cell, out_root: Path) -> bool:
    return (out_root / cell.relative_dir() / RUN_NAME).is_file()


def _run_cell(cell: Cell, base: RunConfig, out_root: Path, device: str | None) -> dict:
    """Run one cell to its run record (resuming from its checkpoint when there is one)."""
    from ..engine import train

    config = cell.config(base, out_root)
    if device is not None:
        config = config.replace(device=device)
    directory = Path(config.out)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CELL_NAME).write_text(json.dumps(cell.to_dict(), indent=2))
    return train(config)


def _log_failure(out_root: Path, cell: Cell, attempt: int, error: str) -> None:
    with open(out_root / "failures.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cell": str(cell.relative_dir()),
                            "attempt": attempt, "error": error}) + "\n")


def run_cells(
    cells: Sequence[Cell],
    base: RunConfig,
    out_root: str | os.PathLike,
    workers: int = 1,
    retries: int = 1,
    devices: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    runner: Callable[[Cell, RunConfig, Path, str | None], dict] = _run_cell,
) -> SweepResult:
    """Run every unfinished cell; retry crashed cells ``retries`` more times."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    result = SweepResult()
    pending = []
    for cell in cells:
        (result.skipped if is_finished(cell, out_root) else pending).append(cell)
    if result.skipped:
        log(f"{len(result.skipped)} of {len(cells)} cells already finished: skipped")
    attempt = 0
    while pending and attempt <= retries:
        failures = _execute(pending, base, out_root, workers, devices, log, runner, result, attempt)
        for cell, error in failures:
            _log_failure(out_root, cell, attempt, error)
        pending = [cell for cell, _ in failures]
        if pending and attempt < retries:
            log(f"retrying {len(pending)} failed cell(s) (attempt {attempt + 2} of {retries + 1})")
        attempt += 1
        last_failures = failures
    if pending:
        result.failed = list(last_failures)
    return result


def _execute(cells, base, out_root, workers, devices, log, runner, result, attempt) -> list[tuple[Cell, str]]:
    failures = []
    total = len(cells)
    if workers <= 1:
        device = devices[0] if devices else None
        for index, cell in enumerate(cells, 1):
            log(f"[{index}/{total}] {cell.relative_dir()}")
            try:
                runner(cell, base, out_root, device)
                result.done.append(cell)
            except Exception as err:  # a crashed cell must not stop the sweep
                message = f"{type(err).__name__}: {err}"
                log(f"  cell crashed: {message}")
                failures.append((cell, message + "\n" + traceback.format_exc(limit=3)))
        return failures
    import multiprocessing

    devices = list(devices or ["cpu"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(runner, cell, base, out_root, devices[i % len(devices)]): cell
                   for i, cell in enumerate(cells)}
        for index, future in enumerate(as_completed(futures), 1):
            cell = futures[future]
            try:
                future.result()
                result.done.append(cell)
                log(f"[{index}/{total}] done {cell.relative_dir()}")
            except Exception as err:
                message = f"{type(err).__name__}: {err}"
                log(f"[{index}/{total}] crashed {cell.relative_dir()}: {message}")
                failures.append((cell, message))
    return failures


# ----- the clean protocol: tune on train800 → val200, retrain on train800val200 --------------------
def read_record(cell: Cell, out_root: Path) -> dict:
    return json.loads((out_root / cell.relative_dir() / RUN_NAME).read_text())


def val_accuracy(record: dict) -> float:
    """Model choice on the validation split: the final-epoch accuracy (never the best epoch)."""
    final = record["protocols"]["final"]
    return final["accuracy"] if isinstance(final, dict) else float(final)


def tune_then_final(
    base: RunConfig,
    out_root: str | os.PathLike,
    tune_cells: Sequence[Cell],
    workers: int = 1,
    retries: int = 1,
    devices: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    runner=_run_cell,
) -> SweepResult:
    """Run the ``split='tune'`` cells, pick per (task, method, shots, seed) the options with the best
    val accuracy (ties: first in grid order), then run those options with ``split='final'``."""
    out_root = Path(out_root)
    first = run_cells(tune_cells, base, out_root, workers, retries, devices, log, runner)
    groups: dict[tuple, list[Cell]] = {}
    for cell in tune_cells:
        groups.setdefault((cell.kind, cell.task, cell.name, cell.shots, cell.fewshot_seed, cell.seed), []).append(cell)
    finals, choices = [], []
    for key, candidates in groups.items():
        finished = [c for c in candidates if is_finished(c, out_root)]
        if len(finished) < len(candidates):
            continue  # reported as failed by the first phase
        scores = [val_accuracy(read_record(c, out_root)) for c in finished]
        best = finished[max(range(len(finished)), key=lambda i: (scores[i], -i))]
        final = Cell(best.kind, best.task, best.method, best.options, best.seed, "final", best.shots,
                     best.fewshot_seed, best.label)
        finals.append(final)
        choices.append({"cell": str(final.relative_dir()), "chosen": dict(best.options),
                        "candidates": [{"options": dict(c.options), "val_accuracy": s} for c, s in zip(finished, scores)]})
    with open(out_root / TUNED_NAME, "w") as f:
        json.dump(choices, f, indent=2)
    second = run_cells(finals, base, out_root, workers, retries, devices, log, runner)
    return SweepResult(first.done + second.done, first.skipped + second.skipped, first.failed + second.failed)
