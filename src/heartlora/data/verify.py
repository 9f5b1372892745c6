"""``verify``: everything that is wrong with a task's data, in one report.

Unlike ``load_task``, which stops at the first fault, ``verify`` reads every split, decodes
every image and collects all problems, so one pass tells a user everything to fix. It raises
only when there is nothing to verify (the task folder itself is missing) or an option is
invalid. Its manifest hash equals the one ``load_task`` records for the same data.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from .errors import Problem, printable
from .images import check_split_images, labels_summary
from .loader import locate
from .manifest import build_manifest, manifest_hash
from .roots import inside_root, outside_root_problems
from .splits import SplitContent
from .vtab_source import expected_split_sizes

SHOWN_PROBLEMS = 20


def verify(kind: str, root: str, task: str | None = None, shots: int | None = None,
           seed: int | None = None, *, check_images: bool = True, allow_outside_root: bool = False) -> dict:
    """Report split sizes, label range vs class count, duplicates, unreadable files and the
    manifest hash. For few-shot data, leaving out ``shots``/``seed`` checks every list present;
    give both to get the hash a run with those options records. Image paths outside their root
    are problems (and are not opened) unless ``allow_outside_root``.

    Returns a JSON-serialisable dict: ``ok``, ``kind``, ``task``, ``directory``,
    ``num_classes``, ``splits`` (per split: file, path, exists, samples, image_root, labels {min, max,
    distinct}, duplicates, unreadable, problems by kind, sha256), ``problems`` and ``warnings``
    (dicts with kind, file, line, message; for a VTAB-1K task, a list whose size differs from the
    benchmark's 800 / 200 / 1,000 / official test size is a ``benchmark_size`` warning),
    ``manifest`` and ``manifest_hash``.
    """
    layout = locate(kind, root, task, shots, seed)
    splits: dict[str, dict] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    contents: dict[str, SplitContent] = {}
    for name, source in layout.splits.items():
        record: dict = {"file": source.rel, "path": str(source.path), "exists": source.exists(),
                        "optional": source.optional}
        splits[name] = record
        if not record["exists"]:
            if not source.optional:
                problems.append(source.missing_problem())
            continue
        content = source.read()
        outside = [] if allow_outside_root else outside_root_problems(content, source.path)
        checked = content if allow_outside_root else inside_root(content)
        unreadable = check_split_images(checked, source.path) if check_images else []
        found = content.problems + outside + unreadable
        record.update(
            samples=len(content.entries),
            image_root=str(content.image_root),
            labels=labels_summary(entry.label for entry in content.entries),
            duplicates=[{"line": line, "repeats_line": first} for line, first in content.duplicates],
            unreadable=len(unreadable),
            problems=dict(Counter(problem.kind for problem in found)),
        )
        problems += found
        warnings += content.warnings
        contents[name] = content
    if kind == "vtab":
        warnings += benchmark_size_warnings(layout.name, splits)
    manifest = build_manifest(layout, contents)
    for name, split in manifest["splits"].items():
        splits[name]["sha256"] = split["sha256"]
    return {
        "ok": not problems,
        "kind": layout.kind,
        "task": layout.name,
        "directory": str(layout.directory),
        "num_classes": layout.num_classes,
        "classes": layout.classes,
        "images_checked": check_images,
        "splits": splits,
        "problems": [asdict(problem) for problem in problems],
        "warnings": [asdict(warning) for warning in warnings],
        "manifest": manifest,
        "manifest_hash": manifest_hash(manifest),
    }


def benchmark_size_warnings(task: str, splits: dict[str, dict]) -> list[Problem]:
    """A warning per list whose size differs from the official VTAB-1K size of ``task`` (800 / 200 /
    1,000 / the task's test size); none for a task of one's own."""
    expected = expected_split_sizes(task)
    if expected is None:
        return []
    found = []
    for name, record in splits.items():
        samples, official = record.get("samples"), expected.get(name)
        if samples is not None and official is not None and samples != official:
            found.append(Problem("benchmark_size", record["path"], None,
                                 f"{record['path']}: {samples:,} samples; VTAB-1K's {task} {name} has {official:,} "
                                 "(this copy differs from the benchmark: its results are not comparable to published ones)"))
    return found


def _labels(labels: dict | None) -> str:
    if not labels or labels["min"] is None:
        return "-"
    return f"{labels['min']}..{labels['max']} ({labels['distinct']} distinct)"


def format_verify_report(report: dict) -> str:
    """Human-readable text of a ``verify`` report (at most SHOWN_PROBLEMS problems listed), safe to
    print: file names that are not UTF-8 (e.g. in the data root's own path) show bytes as ``\\xNN``."""
    lines = [f"{report['kind']} task '{report['task']}' at {report['directory']}: {report['num_classes']} classes"]
    width = max([len(name) for name in report["splits"]] + [5])
    lines.append(f"  {'split':<{width}}  {'samples':>7}  {'labels':<22} {'dup':>4} {'unreadable':>10}  file")
    for name, split in report["splits"].items():
        if not split["exists"]:
            state = "absent (optional)" if split.get("optional") else "MISSING"
            lines.append(f"  {name:<{width}}  {state:>7}  {'':<22} {'':>4} {'':>10}  {split['file']}")
            continue
        unreadable = str(split["unreadable"]) if report.get("images_checked", True) else "unchecked"
        lines.append(f"  {name:<{width}}  {split['samples']:>7}  {_labels(split['labels']):<22} "
                     f"{len(split['duplicates']):>4} {unreadable:>10}  {split['file']}")
    for title, items in (("problems", report["problems"]), ("warnings", report["warnings"])):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {item['message']}" for item in items[:SHOWN_PROBLEMS]]
            if len(items) > SHOWN_PROBLEMS:
                lines.append(f"  … and {len(items) - SHOWN_PROBLEMS} more")
    lines.append(f"manifest hash: {report['manifest_hash']}")
    count = len(report["problems"])
    lines.append("result: OK" if report["ok"] else f"result: FAILED ({count} problem{'s' if count != 1 else ''})")
    return printable("\n".join(lines))
