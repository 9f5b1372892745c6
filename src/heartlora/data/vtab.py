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

from .errors import DataError, location
from .listfile import read_list
from .splits import Layout, SplitSource
from .tasks import VTAB_TASKS, lookup_task, resolve_task_dir

SPLITS = ("train800", "val200", "train800val200", "test")
ROLES = {"final": ("train800val200", "test"), "tune": ("train800", "val200")}
_FILES = ", ".join(f"{s}.txt" for s in SPLITS)


def has_lists(folder: Path) -> bool:
    return any((folder / f"{split}.txt").is_file() for split in SPLITS)


def locate_vtab(root: str | Path, task: str | None) -> Layout:
    """Find the task folder (``root/<alias>`` or ``root`` itself) and describe its four lists.

    With ``task=None`` the root must be a task folder whose name is a known alias. A folder of
    one's own in the same layout is a task too when it holds a ``classes.txt``.
    """
    root = Path(root)
    custom = _custom_task(root, task)
    if custom is not None:
        return custom
    name, directory = resolve_task_dir(root, task, "vtab", has_lists, "{" + _FILES + "}")
    return _layout(name, directory, VTAB_TASKS[name])


CLASSES_FILE = "classes.txt"


def _custom_task(root: Path, task: str | None) -> Layout | None:
    """A task of one's own in the VTAB-1K layout: a folder with the four lists and a
    ``classes.txt`` (one class name per line; label ``i`` is the ``i``-th non-blank line)
    that declares the class count and names."""
    directory = root / task if task is not None else root
    if lookup_task(task if task is not None else directory.name, "vtab") is not None:
        return None  # a VTAB-1K task: its class count comes from the benchmark
    classes_file = directory / CLASSES_FILE
    if not (directory.is_dir() and has_lists(directory) and classes_file.is_file()):
        return None
    try:
        text = classes_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{classes_file}: cannot read ({err}); expected a UTF-8 text file, "
                        "one class name per line") from err
    classes: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        name = raw.strip()
        if not name:
            continue
        if name in first_line:
            raise DataError(f"{location(classes_file, number)}: class '{name}' repeats line {first_line[name]}; "
                            "expected distinct class names, one per line")
        first_line[name] = number
        classes.append(name)
    if not classes:
        raise DataError(f"{classes_file}: empty; expected one class name per line")
    return _layout(directory.name, directory, len(classes), classes)


def _layout(name: str, directory: Path, num_classes: int, classes: list[str] | None = None) -> Layout:
    hint = (f"expected the VTAB-1K lists {_FILES} in {directory}, "
            "lines 'images/<split>/<file>.jpg <label>'")
    splits = {
        split: SplitSource(split, directory / f"{split}.txt", f"{split}.txt",
                           partial(read_list, directory / f"{split}.txt", num_classes, [directory]),
                           missing_hint=hint)
        for split in SPLITS
    }
    return Layout("vtab", name, directory, num_classes, splits, dict(ROLES), classes=classes)
