"""The one parser for split list files (VTAB-1K ``*.txt`` and few-shot ``*meta.list*``).

Both benchmarks use the same line format, ``<relative image path> <integer label>``, so they
share this reader: same checks, same messages, same de-duplication. The label is the last
whitespace-separated token, so image paths containing spaces still parse.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .errors import Problem, location
from .roots import escapes_root
from .splits import Entry, SplitContent

_INT = re.compile(r"[+-]?\d+")
LINE_FORMAT = "'<relative image path> <integer label>'"
_SHOWN_DUPLICATES = 8


def read_list(file: Path, num_classes: int, image_roots: Sequence[Path]) -> SplitContent:
    """Parse ``file``; collect (never raise) malformed lines, out-of-range labels, conflicting
    labels and duplicates; pick the image root the entries resolve against.

    Exact duplicate lines are dropped (first occurrence kept) and reported as one warning per
    file; the same image listed with two labels is an error, because no choice is safe.
    """
    problems: list[Problem] = []
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        problems.append(Problem("unreadable_list", str(file), None,
                                f"{file}: cannot read split file ({err}); expected a UTF-8 text file of lines {LINE_FORMAT}"))
        return SplitContent([], Path(image_roots[0]), problems)

    entries: list[Entry] = []
    first_seen: dict[str, tuple[int, int]] = {}
    duplicates: list[tuple[int, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _INT.fullmatch(parts[1]):
            problems.append(Problem("malformed", str(file), number,
                                    f"{location(file, number)}: malformed line {line!r}; expected {LINE_FORMAT}"))
            continue
        path, label = parts[0].strip().replace("\\", "/"), int(parts[1])
        if not 0 <= label < num_classes:
            problems.append(Problem("label_range", str(file), number,
                                    f"{location(file, number)}: label {label} out of range; expected an integer "
                                    f"in [0, {num_classes - 1}] ({num_classes} classes)"))
            continue
        seen = first_seen.get(path)
        if seen is not None:
            if seen[1] == label:
                duplicates.append((number, seen[0]))
            else:
                problems.append(Problem("conflict", str(file), number,
                                        f"{location(file, number)}: '{path}' listed again with label {label} "
                                        f"(line {seen[0]} gives label {seen[1]}); expected one label per image"))
            continue
        first_seen[path] = (number, label)
        entries.append(Entry(path, label, number))

    if not entries and not problems:
        problems.append(Problem("empty", str(file), None,
                                f"{file}: split file has no samples; expected lines {LINE_FORMAT}"))
    warnings = [duplicate_warning(file, duplicates)] if duplicates else []
    return SplitContent(entries, choose_image_root(entries, image_roots), problems, warnings, duplicates)


def duplicate_warning(file: Path, duplicates: list[tuple[int, int]]) -> Problem:
    pairs = ", ".join(f"line {line} repeats line {first}" for line, first in duplicates[:_SHOWN_DUPLICATES])
    more = f", … ({len(duplicates) - _SHOWN_DUPLICATES} more)" if len(duplicates) > _SHOWN_DUPLICATES else ""
    count = len(duplicates)
    return Problem("duplicate", str(file), duplicates[0][0],
                   f"{file}: {count} duplicate line{'s' if count > 1 else ''} ignored ({pairs}{more}); "
                   "expected each image once")


def choose_image_root(entries: list[Entry], roots: Sequence[Path]) -> Path:
    """The first candidate root under which the first listed image (that stays inside its root)
    exists.

    Few-shot copies differ in where images sit relative to the dataset folder (``images/``,
    ``data/images/``, ``jpg/``, the folder itself); probing one file decides it once per list
    without touching every image. If nothing matches, the first (documented) root is used and
    the missing files surface as unreadable images in ``verify`` or at load time.
    """
    roots = [Path(r) for r in roots]
    probe = next((entry.path for entry in entries if not escapes_root(entry.path)), None)
    if len(roots) > 1 and probe is not None:
        for root in roots:
            if (root / probe).is_file():
                return root
    return roots[0]
