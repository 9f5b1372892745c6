"""VTAB-1K in the common JPEG layout.

``<root>/<task>/{train800,val200,train800val200,test}.txt``, each line
``images/<split>/<file>.jpg <label>`` relative to ``<root>/<task>/``. The task folder may carry
any alias of the task's name (``cifar100``, ``oxford_pet``, ``clevr_distance``, …).
Protocols: ``final`` trains on train800val200 and evaluates on test; ``tune`` trains on
train800 and evaluates on val200 (hyper-parameter selection without touching test).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from .errors import DataError
from .listfile import read_list
from .splits import Layout, SplitSource
from .tasks import VTAB_TASKS, aliases, canonical_task, find_task_dir, lookup_task, task_dirs

SPLITS = ("train800", "val200", "train800val200", "test")
ROLES = {"final": ("train800val200", "test"), "tune": ("train800", "val200")}
_FILES = ", ".join(f"{s}.txt" for s in SPLITS)


def has_lists(folder: Path) -> bool:
    return any((folder / f"{split}.txt").is_file() for split in SPLITS)


def _found_here(root: Path) -> str:
    found = task_dirs(root, "vtab")
    return f"; task folders found in {root}: {', '.join(found)}" if found else ""


def locate_vtab(root: str | Path, task: str | None) -> Layout:
    """Find the task folder (``root/<alias>`` or ``root`` itself) and describe its four lists.

    With ``task=None`` the root must be a task folder whose name is a known alias. A folder of
    one's own in the same layout is a task too when it holds a ``classes.txt``.
    """
    root = Path(root)
    custom = _custom_task(root, task)
    if custom is not None:
        return custom
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; expected a VTAB-1K root holding <task>/{{{_FILES}}}")
    if task is None:
        if not has_lists(root):
            raise DataError(f"{root}: not a VTAB-1K task folder (none of {_FILES}); pass a task name, "
                            f"one of: {', '.join(VTAB_TASKS)}{_found_here(root)}")
        name = lookup_task(root.name, "vtab")
        if name is None:
            raise DataError(f"{root}: cannot tell the VTAB-1K task from the folder name '{root.name}'; "
                            f"pass the task name, one of: {', '.join(VTAB_TASKS)}")
        directory = root
    else:
        name = canonical_task(task, "vtab")
        directory = find_task_dir(root, name, "vtab")
        if directory is None:
            # the root may be the task folder itself, unless its name says it is another task
            if not has_lists(root) or lookup_task(root.name, "vtab") not in (None, name):
                raise DataError(f"{root}: no folder for VTAB-1K task '{name}'; expected {root / name}/ "
                                f"(or an alias: {', '.join(aliases(name)[1:]) or 'none'}) holding {_FILES}"
                                f"{_found_here(root)}")
            directory = root
    return _layout(name, directory, VTAB_TASKS[name])


CLASSES_FILE = "classes.txt"


def _custom_task(root: Path, task: str | None) -> Layout | None:
    """A task of one's own in the VTAB-1K layout: a folder with the four lists and a
    ``classes.txt`` (one class name per line) that declares the class count."""
    directory = root / task if task is not None else root
    if lookup_task(task if task is not None else directory.name, "vtab") is not None:
        return None  # a VTAB-1K task: its class count comes from the benchmark
    classes_file = directory / CLASSES_FILE
    if not (directory.is_dir() and has_lists(directory) and classes_file.is_file()):
        return None
    classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if not classes:
        raise DataError(f"{classes_file}: empty; expected one class name per line")
    return _layout(directory.name, directory, len(classes))


def _layout(name: str, directory: Path, num_classes: int) -> Layout:
    hint = (f"expected the VTAB-1K lists {_FILES} in {directory}, "
            "lines 'images/<split>/<file>.jpg <label>'")
    splits = {
        split: SplitSource(split, directory / f"{split}.txt", f"{split}.txt",
                           partial(read_list, directory / f"{split}.txt", num_classes, [directory]),
                           missing_hint=hint)
        for split in SPLITS
    }
    return Layout("vtab", name, directory, num_classes, splits, dict(ROLES))
