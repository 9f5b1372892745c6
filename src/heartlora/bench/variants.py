"""Run records → table rows: which records pool into one row (a *variant*) and how it is named.

A row pools records that differ only in their seed (the run seed; for few-shot also the list
seed), so its spread is a spread over seeds and nothing else. Records that differ in anything else
are separate rows:

- method options that take more than one value *within one task* (a grid over ``ne``, ``score``,
  ``scale``, ``rank``, ...) name the row: ``heart-lora ne=2 score=weight``. Options that differ only
  *between* tasks (per-task presets such as the scale) keep one row and are listed per task;
- recipe settings (schedule, backbone and its weights' sha256, image size, normalisation,
  augmentation, precision) that differ anywhere among the records name every row:
  ``lora epochs=4``;
- options chosen on val200 by ``bench --tune`` (``tuned.json``) belong to the tuned row: they may
  differ per task and seed without splitting it, and the row says ``[tuned: scale]``.

Refused with a :class:`ReportError` (never averaged): two records for the same row, task and seed;
records of one task read from different data (manifest hashes differ).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import ConfigError
from .sweep import CELL_NAME, RUN_NAME, TUNED_NAME

PROTOCOLS = ("paper", "clean")
# settings of a run that are not part of its recipe: where it ran and how it was driven
_NOT_RECIPE_DATA = {"root", "task", "split", "shots", "fewshot_seed", "workers", "check_images", "kind", "cache",
                    "cache_memory_mb", "cache_dir"}
_NOT_RECIPE_SCHEDULE = {"eval_batch_size"}


class ReportError(ValueError):
    """Run records that cannot be reported as asked (the message names the files)."""


@dataclass
class Record:
    """One finished run, as the reports see it."""

    path: Path
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
    options: dict
    recipe: dict
    manifest: str | None
    label: str = ""
    tuned_keys: frozenset = frozenset()
    model: str = ""
    heads: dict | None = None
    train_images: int | None = None  # images the run trained on
    eval_split: str | None = None  # the split its accuracy was measured on (test, val200, …)

    def value(self, protocol: str) -> float | None:
        return self.paper if protocol == "paper" else self.clean

    @property
    def where(self) -> tuple:
        """The task a record belongs to (few-shot: dataset and shots)."""
        return (self.task, self.shots)

    @property
    def replicate(self) -> tuple:
        """What distinguishes the seeds pooled in one cell."""
        return (self.seed, self.list_seed)


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return ",".join(fmt_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _frozen(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _accuracy(entry) -> float | None:
    if entry is None:
        return None
    return float(entry["accuracy"]) if isinstance(entry, dict) else float(entry)


def _recipe(record: dict) -> dict:
    """The settings that make two runs of one task comparable, flattened to ``name: value``."""
    config = record.get("config") or {}
    model = config.get("model") or {}
    stored = record.get("model") or {}
    weights = stored.get("weights_sha256") or model.get("weights_sha256")
    if weights:
        weights = weights[:12]
    elif model.get("weights"):
        weights = os.path.basename(str(model["weights"]))
    elif model.get("pretrained"):
        weights = "timm-pretrained"  # timm's own weights for the name's tag, from the local cache
    recipe = {
        "model": model.get("name") or stored.get("name"),
        "model_kwargs": model.get("kwargs") or {},
        "weights": weights or "random",
        "img_size": stored.get("img_size") or model.get("img_size"),
        "drop_path": model.get("drop_path"),
        "classifier_init": model.get("classifier_init"),
        "amp": record.get("amp"),
    }
    for key, value in (config.get("data") or {}).items():
        if key not in _NOT_RECIPE_DATA:
            recipe[key] = value
    for key, value in (config.get("schedule") or {}).items():
        if key not in _NOT_RECIPE_SCHEDULE:
            recipe[key] = value
    return recipe


def _tuned_choices(runs_dir: Path) -> dict[Path, frozenset]:
    """``{run.json path: option keys chosen on val200}`` from every ``tuned.json`` below ``runs_dir``."""
    chosen: dict[Path, frozenset] = {}
    for path in sorted(runs_dir.rglob(TUNED_NAME)):
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if not isinstance(entries, list):
            raise ReportError(f"{path}: expected a list of tuning choices")
        for entry in entries:
            if not isinstance(entry, dict) or "cell" not in entry:
                raise ReportError(f"{path}: a tuning choice without 'cell' (expected {{cell, chosen, candidates}})")
            candidates = [c.get("options") or {} for c in entry.get("candidates") or []]
            keys = {k for c in candidates for k in c}
            varied = frozenset(k for k in keys if len({_frozen(c.get(k)) for c in candidates}) > 1)
            chosen[(path.parent / entry["cell"] / RUN_NAME).resolve()] = varied
    return chosen


def read_record(path: Path, tuned: dict[Path, frozenset] | None = None) -> Record:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not a valid run record (line {err.lineno}: {err.msg})") from None
    if not isinstance(record, dict) or record.get("status") != "complete":
        status = record.get("status") if isinstance(record, dict) else None
        raise ReportError(f"{path}: run record status is {status!r}, expected 'complete'")
    try:
        cell_path = path.with_name(CELL_NAME)
        cell = json.loads(cell_path.read_text()) if cell_path.is_file() else {}
        config, data = record["config"], record["data"]
        protocols = record["protocols"]
        method = record.get("method") or {}
        options = method.get("options")
        if options is None:
            options = (config.get("method") or {}).get("options") or {}
        return Record(
            path=path, kind=data["kind"], task=data["task"], method=config["method"]["name"],
            seed=int(record["seed"]), split=data["split"],
            shots=config["data"].get("shots"), list_seed=config["data"].get("fewshot_seed"),
            paper=_accuracy(protocols.get("paper")), clean=_accuracy(protocols.get("clean")),
            parameters=(record.get("trainable_parameters") or {}).get("without_classifier"),
            adapter_bytes=(record.get("adapter_bytes") or {}).get("without_classifier"),
            options=dict(options), recipe=_recipe(record), manifest=data.get("manifest_hash"),
            label=str(cell.get("label") or ""), tuned_keys=(tuned or {}).get(path.resolve(), frozenset()),
            model=str((record.get("model") or {}).get("name") or config["model"].get("name") or ""),
            heads=record.get("heads"), train_images=data.get("train_images"), eval_split=data.get("eval_split"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ReportError(f"{path}: not a complete run record ({type(err).__name__}: {err})") from None


def collect(runs_dir: str | Path) -> list[Record]:
    """Every finished run record below ``runs_dir``; a file that is not a complete record is an
    error naming it, never silently skipped."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder")
    tuned = _tuned_choices(root)
    return [read_record(path, tuned) for path in sorted(root.rglob(RUN_NAME))]


# ----- variants -------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One table row: records that differ only in their seeds."""

    label: str
    method: str
    kind: str
    records: list[Record]
    axes: dict = field(default_factory=dict)  # option / recipe values that name the row
    per_task_options: dict = field(default_factory=dict)  # {option: {task: value}} differing by task
    tuned_keys: frozenset = frozenset()
    options: dict = field(default_factory=dict)  # options shared by every record of the row

    @property
    def tuned(self) -> bool:
        return bool(self.tuned_keys)

    def matches(self, selector: str) -> bool:
        """``heart-lora ne=2`` style selector: a name (method or label) and/or KEY=VALUE tokens."""
        for token in selector.split():
            if "=" in token:
                key, value = token.split("=", 1)
                have = self.axes.get(key, self.options.get(key, self.records[0].recipe.get(key)))
                if have is None or fmt_value(have) != value:
                    return False
            elif token not in (self.method, self.label.split()[0]):
                return False
        return True


def _varying(records: Iterable[Record], key_of) -> set[str]:
    seen: dict[str, set[str]] = defaultdict(set)
    for record in records:
        for key, value in key_of(record).items():
            seen[key].add(_frozen(value))
    return {k for k, values in seen.items() if len(values) > 1}


def group_variants(records: Sequence[Record], protocol: str = "paper") -> list[Variant]:
    """Split the ``split='final'`` records with a value under ``protocol`` into rows (see module doc)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"option '--protocol'={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    final = [r for r in records if r.split == "final" and r.value(protocol) is not None]
    variants: list[Variant] = []
    for kind in sorted({r.kind for r in final}):
        of_kind = [r for r in final if r.kind == kind]
        _check_same_data(of_kind)
        recipe_axes = sorted(_varying(of_kind, lambda r: r.recipe))
        bases: dict[tuple, list[Record]] = defaultdict(list)
        for r in of_kind:
            bases[(r.label or r.method, r.method, bool(r.tuned_keys),
                   tuple(_frozen(r.recipe.get(k)) for k in recipe_axes))].append(r)
        for (name, method, _tuned, _), members in bases.items():
            variants += _split_by_options(kind, name, method, members, recipe_axes)
    for variant in variants:
        _check_one_record_per_seed(variant)
    return variants


def _split_by_options(kind: str, name: str, method: str, members: list[Record], recipe_axes: list[str]) -> list[Variant]:
    tuned_keys = frozenset().union(*(r.tuned_keys for r in members))
    by_task: dict[tuple, list[Record]] = defaultdict(list)
    for r in members:
        by_task[r.where].append(r)
    option_axes: set[str] = set()
    for rows in by_task.values():
        option_axes |= _varying(rows, lambda r: {k: v for k, v in r.options.items() if k not in r.tuned_keys})
    option_axes -= tuned_keys
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in members:
        groups[tuple(_frozen(r.options.get(k)) for k in sorted(option_axes))].append(r)
    out = []
    for rows in groups.values():
        axes = {k: rows[0].options.get(k) for k in sorted(option_axes)}
        axes.update({k: rows[0].recipe.get(k) for k in recipe_axes})
        # an option a row leaves unset (None: e.g. ne when budget_ratio chooses it) is not named; rows
        # still differ by the values they do set, so labels stay unique
        label = " ".join([name, *(f"{k}={fmt_value(v)}" for k, v in axes.items() if v is not None)])
        if tuned_keys:
            label += f" [tuned: {','.join(sorted(tuned_keys))}]"
        per_task: dict[str, dict] = {}
        shared: dict = {}
        for key in sorted({k for r in rows for k in r.options} - option_axes - tuned_keys):
            values = {}
            for r in rows:
                values.setdefault(r.task if r.shots is None else f"{r.task}/{r.shots}-shot", r.options.get(key))
            if len({_frozen(v) for v in values.values()}) > 1:
                per_task[key] = values
            else:
                shared[key] = next(iter(values.values()))
        out.append(Variant(label, method, kind, rows, axes, per_task, tuned_keys, shared))
    return out


def _check_same_data(records: Sequence[Record]) -> None:
    seen: dict[tuple, Record] = {}
    for r in records:
        key = (r.task, r.shots, r.list_seed)
        first = seen.setdefault(key, r)
        if r.manifest and first.manifest and r.manifest != first.manifest:
            raise ReportError(
                f"{first.path} and {r.path}: task '{r.task}' was read from different data (manifest "
                f"{first.manifest[:12]}… vs {r.manifest[:12]}…); results on different data are never pooled — "
                "report each data version from its own folder")


def _check_one_record_per_seed(variant: Variant) -> None:
    seen: dict[tuple, Record] = {}
    for r in variant.records:
        key = (r.where, r.replicate)
        if key in seen:
            raise ReportError(
                f"{seen[key].path} and {r.path}: two records of row '{variant.label}' for task '{r.task}' and "
                f"seed {r.seed}; a seed is counted once — move one of them out of the report folder")
        seen[key] = r


def apply_labels(variants: Sequence[Variant], labels: Sequence[str]) -> None:
    """``--label 'SELECTOR=NAME'`` (repeatable): rename the one row the selector matches."""
    for item in labels or ():
        selector, sep, name = item.rpartition("=")
        if not sep or not selector.strip() or not name.strip():
            raise ConfigError(f"option '--label': expected 'SELECTOR=NAME' (e.g. 'heart-lora ne=2=Heart-LoRA'), got {item!r}")
        hits = [v for v in variants if v.matches(selector.strip())]
        if len(hits) != 1:
            rows = "; ".join(v.label for v in variants) or "none"
            what = "matches no row" if not hits else f"matches {len(hits)} rows"
            raise ConfigError(f"option '--label' {item!r}: '{selector.strip()}' {what} (rows: {rows})")
        hits[0].label = name.strip()
    names = [v.label for v in variants]
    for name in set(names):
        if names.count(name) > 1:
            raise ConfigError(f"option '--label': two rows named {name!r}; give each its own name")
