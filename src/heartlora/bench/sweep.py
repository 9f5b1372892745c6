"""Sweeps: a grid of independent cells (task, method, options, seed, split) → one run record each.

A cell's directory is a pure function of the cell, so a rerun finds finished cells (their
``run.json`` exists) and skips them, and an interrupted cell resumes from its checkpoint. A cell
that crashes is reported, logged to ``failures.jsonl`` and retried; a cell still failing after
its retries makes the sweep end with a non-zero status — never silently dropped.

A cell's identity is its full resolved configuration (recipe, backbone, data, method options,
seed; not where or how it runs), written with its hash to ``cell.json``. A rerun whose settings
differ from those a folder's results were made with is refused, naming the folder and the
differing keys — one table never mixes two recipes; a new recipe goes in another ``--out``.

Where cells run is an executor's business (:mod:`heartlora.bench.executors`: in-process, a local
process pool, or Ray); this module only knows cells.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from ..config import ConfigError, RunConfig
from ..engine.checkpoint import CHECKPOINT_NAME
from ..engine.record import RUN_NAME, read_run_record
from ..fsio import atomic_write
from ..tracking.sweep import SweepTracking
from .executors import Executor, LocalExecutor, Outcome

CELL_NAME = "cell.json"
TUNED_NAME = "tuned.json"
# Settings that say where or how a cell runs, not what it computes: outside its identity.
IDENTITY_IGNORES = frozenset({"out", "resume", "quiet", "compile", "device", "log", "log_dir", "data.workers",
                              "data.check_images", "data.fingerprint", "data.cache", "data.cache_memory_mb",
                              "data.cache_dir"})


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

    def __post_init__(self) -> None:
        # every part names one folder below --out: nothing may climb out of it or nest
        options = ",".join(f"{k}={_fmt(v)}" for k, v in self.options)
        for option, value in (("--data-kind", self.kind), ("--tasks", self.task), ("--methods", self.name),
                              ("--grid or --opt", options)):
            if value is not None and not _one_folder(str(value), allow_empty=option == "--grid or --opt"):
                raise ConfigError(f"option '{option}': {value!r} cannot name a cell folder (expected one path "
                                  "component: no '/', '\\', '..' or '.')")

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
    """Short for floats (``0.1``, ``10``), but never ambiguous: where 6 significant digits would
    not give the value back (two values could share a cell folder), the round-tripping repr."""
    if not isinstance(value, float):
        return str(value)
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def _one_folder(text: str, allow_empty: bool = False) -> bool:
    if not text:
        return allow_empty
    return text not in (".", "..") and not any(c in text for c in ("/", "\\", "\0"))


# ----- identity: a cell is its resolved configuration ---------------------------------------------
def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def identity(config: RunConfig | dict) -> dict[str, Any]:
    """The settings that decide a cell's result, as dotted keys (JSON values)."""
    values = config.to_dict() if isinstance(config, RunConfig) else config
    flat = _flatten(json.loads(json.dumps(values)))
    return {k: v for k, v in sorted(flat.items()) if k not in IDENTITY_IGNORES and not any(
        k.startswith(ignored + ".") for ignored in IDENTITY_IGNORES)}


def identity_hash(config: RunConfig | dict) -> str:
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()


def identity_diff(recorded: dict, current: dict) -> list[str]:
    """``key: A there, B now`` for every differing setting (identities from :func:`identity`)."""
    unset = "(unset)"
    return [f"{k}: {recorded.get(k, unset)!r} there, {current.get(k, unset)!r} now"
            for k in sorted(set(recorded) | set(current)) if recorded.get(k, unset) != current.get(k, unset)]


class CellMismatch(ConfigError):
    """A cell folder holds results made with other settings than this sweep's."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None


def recorded_identity(directory: Path) -> dict | None:
    """The identity of the results in a cell folder: from ``cell.json`` (its ``config``), else —
    folders written before cells recorded it — the ``run.json`` or checkpoint's own config.
    None when the folder holds no results yet."""
    run, checkpoint = directory / RUN_NAME, directory / CHECKPOINT_NAME
    if not run.is_file() and not checkpoint.is_file():
        return None
    cell = directory / CELL_NAME
    stored = _read_json(cell) if cell.is_file() else {}
    if isinstance(stored.get("config"), dict):
        return _with_defaults(stored["config"], cell)
    if run.is_file():
        return _with_defaults(_read_json(run)["config"], run)
    from ..engine.checkpoint import load_checkpoint

    return _with_defaults(load_checkpoint(checkpoint)["config"], checkpoint)


def _with_defaults(stored: dict, source: Path) -> dict:
    """The identity of a recorded config, settings added since then taking their defaults (as they
    did when it ran)."""
    return identity(RunConfig.from_dict(stored, str(source)))


def check_identities(jobs: Sequence[tuple["Cell", RunConfig]], out_root: Path) -> None:
    """Refuse (:class:`CellMismatch`) when any cell folder holds results of other settings."""
    mismatched = []
    for cell, config in jobs:
        recorded = recorded_identity(out_root / cell.relative_dir())
        if recorded is not None:
            diff = identity_diff(recorded, identity(config))
            if diff:
                mismatched.append((cell, diff))
    if mismatched:
        cell, diff = mismatched[0]
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        others = f" ({len(mismatched)} of {len(jobs)} cells differ)" if len(mismatched) > 1 else ""
        raise CellMismatch(f"{out_root / cell.relative_dir()}: this cell's results were made with other settings "
                           f"({shown}){others}; rerun with the settings it was made with, or give another --out")


def write_cell_file(cell: "Cell", config: RunConfig, directory: Path) -> None:
    """``cell.json``: the cell's own keys, its resolved config and that config's identity hash."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {**cell.to_dict(), "config": config.to_dict(), "config_hash": identity_hash(config)}
    atomic_write(directory / CELL_NAME, (json.dumps(payload, indent=2) + "\n").encode())


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


def run_cell(cell: Cell, config: RunConfig, execution: dict) -> dict:
    """The default runner: train one cell to its run record (resuming from its checkpoint)."""
    from ..engine.loop import train

    return train(config, execution=execution)


def _log_failure(out_root: Path, cell: Cell, attempt: int, error: str) -> None:
    with open(out_root / "failures.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cell": str(cell.relative_dir()),
                            "attempt": attempt, "error": error}) + "\n")


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm.auto import tqdm

    # disable=None: a bar only on a terminal
    return tqdm(total=total, desc=desc, unit="cell", dynamic_ncols=True, disable=None if enabled is None else not enabled)


def run_cells(
    cells: Sequence[Cell],
    base: RunConfig,
    out_root: str | os.PathLike,
    workers: int = 1,
    retries: int = 1,
    devices: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    runner: Callable[[Cell, RunConfig, dict], Any] = run_cell,
    executor: Executor | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run every unfinished cell on ``executor`` (default: :class:`LocalExecutor` with ``workers``
    and ``devices``); retry crashed cells ``retries`` more times. ``runner(cell, config,
    execution)`` runs one cell; it must be picklable for process pools and Ray. Raises
    :class:`CellMismatch` before running anything if a cell folder holds other settings' results.
    ``progress``: a bar over cells with ETA (default: on a terminal). When ``base`` logs to
    experiment trackers (``log``), the cells are one group in each (:mod:`heartlora.tracking.sweep`)."""
    out_root = Path(out_root)
    jobs = [(cell, cell.config(base, out_root)) for cell in cells]
    if out_root.is_dir():
        check_identities(jobs, out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    result = SweepResult()
    pending = []
    for cell, config in jobs:
        (result.skipped if is_finished(cell, out_root) else pending).append((cell, config))
    if result.skipped:
        _say(log, f"{len(result.skipped)} of {len(cells)} cells already finished: skipped")
    if not pending:
        return result
    owned = executor is None
    executor = executor or LocalExecutor(workers, devices)
    tracking = None
    try:
        executor.prepare(out_root)
        tracking = SweepTracking.open(base, out_root)
        if tracking is not None:
            runner = tracking.wrap(runner)
        for cell, config in pending:
            write_cell_file(cell, config, Path(config.out))
        _say(log, f"running {len(pending)} cell(s) on {executor.describe()}")
        failures: list[tuple[Cell, str]] = []
        for attempt in range(retries + 1):
            failures = _run_round(executor, pending, runner, out_root, result, log, progress,
                                  "cells" if attempt == 0 else f"retry {attempt}")
            for cell, error in failures:
                _log_failure(out_root, cell, attempt, error)
            failed = {cell for cell, _ in failures}
            pending = [(cell, config) for cell, config in pending if cell in failed]
            if not pending:
                break
            if attempt < retries:
                _say(log, f"retrying {len(pending)} failed cell(s) (attempt {attempt + 2} of {retries + 1})")
        result.failed = failures if pending else []
    finally:
        if tracking is not None:
            tracking.close(ok=not pending)
        if owned:
            executor.close()
    return result


def _say(log: Callable[[str], None] | None, message: str) -> None:
    if log is None:
        from tqdm.auto import tqdm

        tqdm.write(message)  # keeps a progress bar intact
    else:
        log(message)


def _run_round(executor, jobs, runner, out_root, result, log, progress, desc) -> list[tuple[Cell, str]]:
    failures = []
    total = len(jobs)
    bar = _progress(total, desc, progress)
    try:
        for index, outcome in enumerate(executor.run(jobs, runner), 1):
            outcome = _seen_by_driver(outcome, out_root)
            cell, where = outcome.cell, f" on {outcome.node}" if outcome.node else ""
            if outcome.ok:
                result.done.append(cell)
                _say(log, f"[{index}/{total}] done {cell.relative_dir()}{where}")
            else:
                failures.append((cell, outcome.error))
                _say(log, f"[{index}/{total}] crashed {cell.relative_dir()}{where}: {outcome.error.splitlines()[0]}")
            bar.update(1)
            bar.set_postfix(failed=len(failures))
    finally:
        bar.close()
    return failures


def _seen_by_driver(outcome: Outcome, out_root: Path) -> Outcome:
    """A cell that finished somewhere but whose run record this driver cannot see has not finished."""
    if outcome.ok and not is_finished(outcome.cell, out_root):
        path = out_root / outcome.cell.relative_dir() / RUN_NAME
        return Outcome(outcome.cell, f"MissingRecord: the cell finished{' on ' + outcome.node if outcome.node else ''} "
                                     f"but {path} is not visible here (--out must be on a filesystem shared by every "
                                     "node, at the same path)", outcome.node)
    return outcome


# ----- the clean protocol: tune on train800 → val200, retrain on train800val200 --------------------
def read_record(cell: Cell, out_root: Path) -> dict:
    return read_run_record(out_root / cell.relative_dir())


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
    log: Callable[[str], None] | None = None,
    runner: Callable[[Cell, RunConfig, dict], Any] = run_cell,
    executor: Executor | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run the ``split='tune'`` cells, pick per (task, method, shots, seed) the options with the best
    val accuracy (ties: first in grid order), then run those options with ``split='final'``."""
    out_root = Path(out_root)
    first = run_cells(tune_cells, base, out_root, workers, retries, devices, log, runner, executor, progress)
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
    atomic_write(out_root / TUNED_NAME, (json.dumps(choices, indent=2) + "\n").encode())
    second = run_cells(finals, base, out_root, workers, retries, devices, log, runner, executor, progress)
    return SweepResult(first.done + second.done, first.skipped + second.skipped, first.failed + second.failed)


# ----- a sweep's settings -------------------------------------------------------------------------
#: ``--tune scale`` without a ``--grid scale=…``: the Bi-LoRA lineage's per-task scale grid.
DEFAULT_TUNE_GRID = {"scale": [0.01, 0.1, 1, 10]}


def default_tasks(kind: str, root: str | None) -> list[str]:
    """A sweep's tasks when none are named: all 19 VTAB-1K tasks, the 5 few-shot datasets, or every
    sub-folder of a folder-layout root that holds ``train/``."""
    from ..data.tasks import FEWSHOT_DATASETS, VTAB_TASKS

    if kind == "vtab":
        return list(VTAB_TASKS)
    if kind == "fewshot":
        return list(FEWSHOT_DATASETS)
    if root is None or not Path(root).is_dir():
        raise ConfigError("option '--tasks': give the task folders, or --data ROOT holding them")
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and (p / "train").is_dir())


def with_shared_cache(base: RunConfig, out_root: str | os.PathLike) -> RunConfig:
    """Cells of a sweep (or an analysis' runs) share one decoded-image cache folder, ``OUT/data_cache``,
    unless the user named one; the folder is not part of a cell's identity."""
    if base.data.cache_dir is not None:
        return base
    from ..engine.build import CACHE_DIR_NAME

    return base.replace(data={"cache_dir": str(Path(out_root) / CACHE_DIR_NAME)})


def options_for_methods(methods: Sequence[str], options: dict) -> dict[str, dict] | None:
    """``--opt`` of a sweep applies to every method that has the option (``None`` when there are none)."""
    if not options:
        return None
    return {m: {k: v for k, v in options.items() if method_accepts(m, k)} for m in methods}


def tune_grid(keys: Sequence[str], grid: dict[str, list]) -> dict[str, list]:
    """``grid`` with a default grid for each tuned key that has none (:data:`DEFAULT_TUNE_GRID`)."""
    grid = dict(grid)
    for key in keys:
        if key not in grid:
            if key not in DEFAULT_TUNE_GRID:
                raise ConfigError(f"option '--tune': no grid for {key!r}; give --grid {key}=V1,V2,...")
            grid[key] = list(DEFAULT_TUNE_GRID[key])
    return grid
