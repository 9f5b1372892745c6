"""Keeping list entries inside their image root.

A list line names an image relative to the split's image root. A line whose path is absolute
(``/x.jpg``, ``C:/x.jpg``, ``//server/x.jpg``) or climbs out with ``..`` after normalising
(``images/../../x.jpg``) would make training and ``verify`` read files outside the data the user
pointed at, so such lines are problems unless ``allow_outside_root`` is given.

The check is on the path *as written*, not on where symlinks lead: datasets are often assembled
from symlinks into a shared store, and a symlink placed inside the root is the user's own choice
of what belongs to it.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import replace
from pathlib import Path

from .errors import Problem, location
from .splits import Entry, SplitContent

ALLOW_OPTION = "--allow-outside-root"
_DRIVE = re.compile(r"[A-Za-z]:")


def escapes_root(path: str) -> bool:
    """Whether a written (``/``-separated) path is absolute or leaves its root after normalising."""
    if path.startswith("/") or _DRIVE.match(path):
        return True
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def outside_root_problems(content: SplitContent, source: Path) -> list[Problem]:
    """One Problem per entry of ``content`` that escapes its image root (file and line named)."""
    return [
        Problem("outside_root", str(source), entry.line,
                f"{location(source, entry.line)}: image path '{entry.path}' is outside the image root "
                f"{content.image_root} (absolute, or '..' leads out); expected a path relative to that root, "
                f"or pass {ALLOW_OPTION} (allow_outside_root=True) to read it anyway")
        for entry in content.entries if escapes_root(entry.path)
    ]


def inside_root(content: SplitContent) -> SplitContent:
    """``content`` without the entries that escape its root (what ``verify`` may open)."""
    kept: list[Entry] = [entry for entry in content.entries if not escapes_root(entry.path)]
    return content if len(kept) == len(content.entries) else replace(content, entries=kept)
