"""Content fingerprints: did the image files of a task change (e.g. between a kill and ``--resume``)?

The manifest hash covers list lines (paths and labels) only, so images replaced in place go
unnoticed by it. A fingerprint records, for every train and eval image, its size and
modification time (``os.stat``, following symlinks: the content a run reads), keyed by the
path relative to the task folder so that data moved as a whole (``rsync -a``, ``cp -a``) still
matches. This is cheap (one ``stat`` per image, no reads) and catches rewritten files, since
any write updates the modification time; a copy that does not preserve times (plain ``cp -r``)
reads as modified. ``content=True`` also hashes every file's bytes (sha256), which survives such
copies but reads the whole dataset.

    saved = content_fingerprint(task)            # store with the checkpoint
    changes = compare_fingerprints(saved, content_fingerprint(task_now))
    if changes: raise DataError(f"...: {describe_changes(changes)}")
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Protocol

#: Values of the ``data_fingerprint`` option: how a resumed run checks its images are unchanged.
FINGERPRINT_MODES = ("stat", "content", "off")


class _Split(Protocol):
    paths: list[str]


class TaskLike(Protocol):
    """What a fingerprint reads of a :class:`heartlora.data.loader.TaskData` (named structurally, so
    this module needs nothing from the loader, which imports it through the cache)."""
    train: _Split
    eval: _Split
    directory: object  # a Path (or None)


FINGERPRINT_FORMAT = 1
SHOWN_CHANGES = 5
_CHUNK = 1 << 20


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record(path: str, content: bool) -> list | None:
    """[size, mtime_ns] (+ sha256 with ``content``) of ``path``, or ``None`` if it does not exist."""
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns, *([_file_sha256(path)] if content else [])]
    except (FileNotFoundError, NotADirectoryError):
        return None


def _name(path: str, directory: str | os.PathLike | None, prefix: str | None) -> str:
    """``path`` relative to ``directory``, ``/``-separated (slicing first: relpath per file is slow)."""
    if prefix is None:
        return path
    rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, directory)
    return rel.replace(os.sep, "/")


def image_paths(task: TaskLike) -> list[str]:
    """Every train and eval image path of ``task`` (each once, train first)."""
    return list(dict.fromkeys([*task.train.paths, *task.eval.paths]))


def fingerprint_files(paths: Iterable[str], directory: str | os.PathLike | None = None,
                      content: bool = False) -> dict:
    """Fingerprint of ``paths``; names are relative to ``directory`` when given."""
    prefix = os.path.join(str(directory), "") if directory is not None else None
    files: dict[str, list | None] = {}
    for path in paths:
        files[_name(path, directory, prefix)] = _record(path, content)
    digest = hashlib.sha256()
    for name in sorted(files):
        record = files[name]
        digest.update(f"{name}\0{'-' if record is None else chr(0).join(map(str, record))}\n"
                      .encode("utf-8", "surrogateescape"))
    return {"format": FINGERPRINT_FORMAT, "method": "sha256" if content else "stat", "images": len(files),
            "sha256": digest.hexdigest(), "files": files}


def content_fingerprint(task: TaskLike, content: bool = False) -> dict:
    """Fingerprint of the images ``task`` trains and evaluates on (a JSON-serialisable dict).

    ``{"format", "method": "stat" | "sha256", "images", "sha256", "files": {name: [size,
    mtime_ns(, sha256)] or None if absent}}``; ``sha256`` summarises ``files``, so equal
    fingerprints compare in O(1).
    """
    return fingerprint_files(image_paths(task), task.directory, content)


def _why(before: list | None, after: list | None) -> str | None:
    """What changed between two file records, or ``None``; content hashes, when both have one,
    overrule modification times (equal bytes after a copy that reset the times are no change)."""
    if after is None:
        return None if before is None else "not found now"
    if before is None:
        return "was missing, exists now"
    if before[0] != after[0]:
        return f"size {before[0]} -> {after[0]} bytes"
    if len(before) > 2 and len(after) > 2:
        return "contents differ" if before[2] != after[2] else None
    return None if before[1] == after[1] else "modified (same size, modification time changed)"


def compare_fingerprints(saved: dict, current: dict) -> list[str]:
    """``'<name> (<what changed>)'`` for every image that differs, sorted by name; ``[]`` if none.

    Images used by only one of the two are reported too ("no longer used" / "newly used"); with
    the same manifest hash that cannot happen, so it means the lists changed as well.
    """
    if saved.get("sha256") == current.get("sha256") and saved.get("method") == current.get("method"):
        return []
    before, after = saved.get("files", {}), current.get("files", {})
    changes = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            changes.append(f"{name} (no longer used)")
        elif name not in before:
            changes.append(f"{name} (newly used)")
        else:
            why = _why(before[name], after[name])
            if why is not None:
                changes.append(f"{name} ({why})")
    return changes


def describe_changes(changes: list[str], shown: int = SHOWN_CHANGES) -> str:
    """One line: how many images changed and the first ``shown`` of them."""
    count = len(changes)
    more = f", … and {count - shown} more" if count > shown else ""
    return f"{count} image{'s' if count != 1 else ''} changed: {', '.join(changes[:shown])}{more}"
