"""The shapes every layout (VTAB-1K, few-shot, image folder) is reduced to.

A layout module only *locates* its splits and knows how to read them; loading, verifying and
hashing then work on these shapes alone, so those steps exist once, not once per layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import DataError, Problem


@dataclass(frozen=True)
class Entry:
    """One sample: image path relative to the split's image root (as written in the list, ``/``
    separated), its label, and the list line it came from (``None`` for folder layouts)."""

    path: str
    label: int
    line: int | None = None


@dataclass
class SplitContent:
    """A split as read from disk: de-duplicated entries in list order, and what was wrong."""

    entries: list[Entry]
    image_root: Path
    problems: list[Problem] = field(default_factory=list)  # errors: loading refuses the split
    warnings: list[Problem] = field(default_factory=list)  # survivable: duplicates, stray files
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line it repeats)

    def image_path(self, entry: Entry) -> Path:
        return self.image_root / entry.path


@dataclass
class SplitSource:
    """Where a split lives and how to read it.

    ``path`` is the list file (or split folder); ``rel`` is the same path relative to the task
    folder, the only form that enters a manifest (so two machines agree). ``optional`` splits
    may be absent without that being a problem; ``missing_hint`` tells the user what to do
    when a split that a protocol needs is absent.
    """

    name: str
    path: Path
    rel: str
    reader: Callable[[], SplitContent]
    optional: bool = False
    missing_hint: str = ""
    is_folder: bool = False

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> SplitContent:
        return self.reader()

    def missing_problem(self) -> Problem:
        what = "split folder" if self.is_folder else "split file"
        message = f"{self.path}: {what} not found"
        if self.missing_hint:
            message += f"; {self.missing_hint}"
        return Problem("missing", str(self.path), None, message)


@dataclass
class Layout:
    """A located task: its canonical name, folder, class count and splits.

    ``roles`` maps a protocol (``final`` / ``tune``) to the (train, eval) split names; a
    protocol the layout cannot serve maps to the DataError message explaining why.
    """

    kind: str
    name: str
    directory: Path
    num_classes: int
    splits: dict[str, SplitSource]
    roles: dict[str, tuple[str, str] | str]
    classes: list[str] | None = None

    def role(self, protocol: str) -> tuple[str, str]:
        role = self.roles[protocol]
        if isinstance(role, str):
            raise DataError(role)
        return role
