"""Any image folder in torchvision's ``ImageFolder`` layout: ``<root>/{train,val,test}/<class>/*``.

Classes are the sub-folders of ``train/``, sorted by name as torchvision sorts them, so label
indices match ``torchvision.datasets.ImageFolder(root/'train')``. ``val/`` and ``test/`` are mapped
by class *name* onto the train classes (a split that lacks a class does not shift the indices
of the others, which a separate ImageFolder per split would do). Hidden folders (``.name``,
e.g. ``.ipynb_checkpoints``) are not classes. Files are found recursively with torchvision's
extensions and order. File and folder names must be UTF-8 (they enter manifests and run
records); others are reported with their undecodable bytes shown as ``\\xNN``.
Protocols: ``final`` trains on train/ and evaluates on test/; ``tune`` evaluates on val/.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from .errors import DataError, Problem, is_utf8, printable
from .splits import Entry, Layout, SplitContent, SplitSource

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
ROLES = {"final": ("train", "test"), "tune": ("train", "val")}
_LAYOUT = "<folder>/{train,val,test}/<class>/<image>"


def find_classes(split_dir: Path) -> list[str]:
    """Class folder names (UTF-8 or not: see ``read_folder``), sorted."""
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def bad_name_problem(split_dir: Path, rel: str) -> Problem:
    """``split_dir/rel`` has a name that is not UTF-8: a problem that shows the bytes safely."""
    return Problem("bad_name", printable(split_dir / rel), None,
                   f"{printable(split_dir)}: '{printable(rel)}' has a name that is not valid UTF-8 (undecodable bytes "
                   "shown as \\xNN); expected UTF-8 file and folder names (rename it, e.g. `convmv -f latin1 -t utf8`)")


def read_folder(directory: Path, split: str, classes: list[str]) -> SplitContent:
    """Entries of one split folder, paths relative to ``directory`` (e.g. ``train/cat/1.jpg``)."""
    split_dir = directory / split
    index = {name: i for i, name in enumerate(classes)}
    entries: list[Entry] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    empty: list[str] = []
    for name in find_classes(split_dir):
        if not is_utf8(name):
            problems.append(bad_name_problem(split_dir, name))
            continue
        if name not in index:
            problems.append(Problem("unknown_class", str(split_dir / name), None,
                                    f"{split_dir / name}: class folder '{name}' is not a class of "
                                    f"{directory / 'train'}; expected one of: {', '.join(classes)}"))
            continue
        before = len(entries), len(problems)
        for walk_root, _, files in sorted(os.walk(split_dir / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMG_EXTENSIONS):
                    path = Path(walk_root, file)
                    rel = path.relative_to(directory).as_posix()
                    if is_utf8(rel):
                        entries.append(Entry(rel, index[name]))
                    else:
                        problems.append(bad_name_problem(split_dir, path.relative_to(split_dir).as_posix()))
        if (len(entries), len(problems)) == before:
            empty.append(name)
    stray = sorted(printable(p.name) for p in split_dir.iterdir()
                   if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
    if stray:
        warnings.append(Problem("stray", str(split_dir), None,
                                f"{split_dir}: {len(stray)} image(s) outside any class folder ignored "
                                f"({', '.join(stray[:5])}{', …' if len(stray) > 5 else ''}); expected {_LAYOUT}"))
    if empty and split == "train":
        warnings.append(Problem("empty_class", str(split_dir), None,
                                f"{split_dir}: class folder(s) without images: {', '.join(empty)}; "
                                f"expected images with extensions {', '.join(IMG_EXTENSIONS)}"))
    if not entries and not problems:
        problems.append(Problem("empty", str(split_dir), None,
                                f"{split_dir}: split folder has no images; expected {_LAYOUT} "
                                f"with extensions {', '.join(IMG_EXTENSIONS)}"))
    return SplitContent(entries, directory, problems, warnings)


def locate_folder(root: str | Path, task: str | None = None) -> Layout:
    """The ImageFolder task at ``root`` (or ``root/task``); its class list comes from ``train/``."""
    directory = Path(root) / task if task else Path(root)
    if not directory.is_dir():
        raise DataError(f"{directory}: data folder not found; expected an image folder {_LAYOUT}")
    train_dir = directory / "train"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: split folder not found; expected an image folder {_LAYOUT}")
    found = find_classes(train_dir)
    classes = [name for name in found if is_utf8(name)]  # the others are problems of read_folder
    if not classes:
        if found:
            raise DataError(bad_name_problem(train_dir, found[0]).message)
        raise DataError(f"{train_dir}: no class folders; expected {_LAYOUT}")
    hints = {
        "val": f"split 'tune' evaluates on val/; expected {directory / 'val'}/<class>/<image>, or use split 'final'",
        "test": f"split 'final' evaluates on test/; expected {directory / 'test'}/<class>/<image>, "
                "or use split 'tune' (evaluate on val/)",
    }
    splits = {
        split: SplitSource(split, directory / split, f"{split}/", partial(read_folder, directory, split, classes),
                           optional=split != "train", missing_hint=hints.get(split, ""), is_folder=True)
        for split in SPLITS
    }
    name = directory.resolve().name
    return Layout("folder", name, directory, len(classes), splits, dict(ROLES), classes=list(classes))
