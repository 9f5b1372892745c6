"""The mini-VTAB: real images in the VTAB-1K layout, built offline by one command.

``heartlora data make-mini-vtab OUT [--seed S] [--fmnist DIR]`` writes five tasks into ``OUT``,
each a task folder of one's own in the layout :mod:`heartlora.data.vtab` reads
(``<task>/{train800,val200,train800val200,test}.txt``, ``images/<split>/*.png``, ``classes.txt``),
and ``OUT/mini_vtab.json``, written last: the seed, the sources, and per task its group, classes,
split sizes, manifest hash (the one ``heartlora data verify`` prints) and a sha256 over its files.

Groups come from :data:`heartlora.data.tasks.MINI_VTAB_GROUPS` (``heartlora report`` computes
group means from it):

- natural — ``digits`` (10 classes): scikit-learn's handwritten digits (1,797 real 8×8 scans,
  bundled with scikit-learn), upscaled to 32×32 (bicubic); train800 / val200 / the remaining 797
  as test, the digits demo's split.
- structured — on a black 32×32 canvas, Fashion-MNIST **test** garments:
  ``fmnist_orientation`` (4): one garment rotated by 0/90/180/270° (label: the rotation; like
  dsprites_ori, smallnorb_azi); ``fmnist_position`` (9): one garment shrunk to 10×10 in one of
  3×3 places (label: the place; like dsprites_loc); ``fmnist_count`` (4): 1–4 garments in distinct
  places of that grid (label: the count; like clevr_count); ``fmnist_scale`` (4): one garment
  8, 14, 20 or 26 px wide at a random place (label: the size).

Only Fashion-MNIST's 10,000 test images are ever read (``t10k-images-idx3-ubyte[.gz]``): the demo
backbone was trained on its training images. Every garment appears in one image of one task
only, so no two splits (and no two tasks) share a garment. Labels are balanced in every split.
Deterministic: the same seed writes byte-identical files (PNG via Pillow, no time stamps), so the
same manifest hashes; a task's files do not depend on which other tasks are built.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import DataError
from .tasks import MINI_VTAB_GROUPS, MINI_VTAB_TASKS

REGISTRY = "mini_vtab.json"
REGISTRY_FORMAT = 1
IMAGE_SIZE = 32
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_TEST_IMAGES = "t10k-images-idx3-ubyte"  # the only Fashion-MNIST file this module opens
FMNIST_INSTALL = "apt-get install dataset-fashion-mnist"
#: images per split of the Fashion-MNIST tasks (digits: 800 / 200 / the remaining 797)
SPLIT_SIZES = {"train800": 800, "val200": 200, "test": 800}
DIGITS_TEST = 797

_GRID, _CELL, _PITCH = 3, 10, 11  # 3×3 places of 10×10 px at 0, 11, 22: exactly 32 px
_SCALES = (8, 14, 20, 26)
_PLACES = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")
_COUNT_MAX = 4

DESCRIPTIONS = {
    "digits": "scikit-learn handwritten digits, 8x8 scans upscaled to 32x32 (bicubic); label: the digit",
    "fmnist_orientation": "a Fashion-MNIST test garment rotated by 0/90/180/270 degrees; label: the rotation",
    "fmnist_position": "a Fashion-MNIST test garment (10x10 px) in one of 3x3 places; label: the place",
    "fmnist_count": "1-4 Fashion-MNIST test garments (10x10 px) in distinct places of a 3x3 grid; label: the count",
    "fmnist_scale": "a Fashion-MNIST test garment 8, 14, 20 or 26 px wide at a random place; label: the size",
}
CLASSES = {
    "digits": [str(d) for d in range(10)],
    "fmnist_orientation": ["0deg", "90deg", "180deg", "270deg"],
    "fmnist_position": list(_PLACES),
    "fmnist_count": [str(n) for n in range(1, _COUNT_MAX + 1)],
    "fmnist_scale": [f"{s}px" for s in _SCALES],
}
_FMNIST_TASKS = ("fmnist_orientation", "fmnist_position", "fmnist_count", "fmnist_scale")

Log = Callable[[str], None]


# ----- sources ------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzip-compressed) of unsigned bytes as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err}); expected Fashion-MNIST's idx file") from None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataError(f"{path}: {len(raw)} bytes, expected {4 + 4 * ndim + int(np.prod(dims))} for shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def fashion_mnist_test_file(directory: str | os.PathLike | None = None) -> Path:
    """``t10k-images-idx3-ubyte[.gz]`` in ``directory`` (default: Debian's package folder)."""
    folder = Path(directory) if directory is not None else FMNIST_DIR
    for name in (FMNIST_TEST_IMAGES + ".gz", FMNIST_TEST_IMAGES):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder / (FMNIST_TEST_IMAGES + '.gz')}: Fashion-MNIST test images not found; install "
                    f"Debian's package ({FMNIST_INSTALL}, into {FMNIST_DIR}) or pass --fmnist DIR holding "
                    f"{FMNIST_TEST_IMAGES}[.gz]")


def fashion_mnist_test(directory: str | os.PathLike | None = None) -> tuple[np.ndarray, Path]:
    """Fashion-MNIST's 10,000 test images, uint8 [N, 28, 28], and the file they came from."""
    path = fashion_mnist_test_file(directory)
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{path}: images of shape {list(images.shape[1:])}, expected 28x28 Fashion-MNIST images")
    return images, path


def digits_images(size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (0..16 grey levels → 0..255), native 8×8 or upscaled
    to ``size``×``size`` (bicubic), and their labels."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("task 'digits': needs scikit-learn (bundled digits data); pip install heartlora[demo]") from None
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    if size is not None:
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
    return images, digits.target.astype(np.int64)


# ----- writing one task folder ----------------------------------------------------------------------
Sample = tuple[str, np.ndarray, int]  # (file stem, uint8 greyscale image, label)


def write_task_folder(directory: Path, splits: Mapping[str, Iterable[Sample]], classes: Sequence[str]) -> Path:
    """A VTAB-1K-layout task folder from greyscale arrays: ``images/<split>/<stem>.png``, the lists
    ``train800``, ``val200``, ``test`` and ``train800val200`` (= train800 then val200), and
    ``classes.txt``. PNGs carry no time stamp, so the same arrays give the same bytes."""
    from PIL import Image

    lists: dict[str, list[str]] = {}
    for split, samples in splits.items():
        folder = directory / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for stem, image, label in samples:
            name = f"images/{split}/{stem}.png"
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(directory / name)
            lines.append(f"{name} {int(label)}")
        lists[split] = lines
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (directory / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (directory / "classes.txt").write_text("\n".join(classes) + "\n")
    return directory


def digits_splits(seed: int = 0, size: int | None = None, sizes: Mapping[str, int] | None = None) -> dict[str, list[Sample]]:
    """The digits task's splits: a seeded permutation, train800 / val200 / the rest as test (file
    stems are the digits' own indices)."""
    images, targets = digits_images(size)
    order = np.random.default_rng(seed).permutation(len(images))
    sizes = sizes or {}
    n_train, n_val, n_test = sizes.get("train800", 800), sizes.get("val200", 200), sizes.get("test", len(images))
    parts = {"train800": order[:n_train], "val200": order[n_train:n_train + n_val], "test": order[1000:][:n_test]}
    return {split: [(f"{i:04d}", images[i], int(targets[i])) for i in indices] for split, indices in parts.items()}


# ----- the Fashion-MNIST tasks -----------------------------------------------------------------------
def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def _objects_needed(task: str, n: int) -> int:
    """Garments one split of ``n`` images uses (balanced labels make this exact)."""
    if task == "fmnist_count":
        return sum(i % _COUNT_MAX + 1 for i in range(n))
    return n


def _shrink(garment: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(garment).resize((size, size), Image.BOX))


def _paste(canvas: np.ndarray, obj: np.ndarray, y: int, x: int) -> None:
    h, w = obj.shape
    canvas[y:y + h, x:x + w] = np.maximum(canvas[y:y + h, x:x + w], obj)


def _place_origin(place: int) -> tuple[int, int]:
    return (place // _GRID) * _PITCH, (place % _GRID) * _PITCH


def _fmnist_image(task: str, label: int, garments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    if task == "fmnist_orientation":
        return np.ascontiguousarray(np.rot90(np.pad(garments[0], 2), k=label))
    if task == "fmnist_position":
        _paste(canvas, _shrink(garments[0], _CELL), *_place_origin(label))
    elif task == "fmnist_count":
        for garment, place in zip(garments, rng.choice(_GRID * _GRID, size=label + 1, replace=False)):
            _paste(canvas, _shrink(garment, _CELL), *_place_origin(int(place)))
    elif task == "fmnist_scale":
        size = _SCALES[label]
        y, x = rng.integers(0, IMAGE_SIZE - size + 1, size=2)
        _paste(canvas, _shrink(garments[0], size), int(y), int(x))
    return canvas


def _pool_slices(sizes: Mapping[str, int]) -> dict[str, dict[str, tuple[int, int]]]:
    """Where each (task, split) takes its garments in the shuffled pool: fixed task order, so a
    task's images do not depend on which other tasks are built."""
    start, slices = 0, {}
    for task in _FMNIST_TASKS:
        slices[task] = {}
        for split in SPLIT_SIZES:
            need = _objects_needed(task, sizes[split])
            slices[task][split] = (start, start + need)
            start += need
    return slices


def fmnist_splits(task: str, garments: np.ndarray, seed: int, sizes: Mapping[str, int]) -> dict[str, list[Sample]]:
    slices = _pool_slices(sizes)
    if slices[_FMNIST_TASKS[-1]]["test"][1] > len(garments):
        raise DataError(f"mini-VTAB split sizes {dict(sizes)} need {slices[_FMNIST_TASKS[-1]]['test'][1]} "
                        f"Fashion-MNIST test images; there are {len(garments)}")
    pool = np.random.default_rng([seed, 0]).permutation(len(garments))
    rng = np.random.default_rng([seed, 1 + _FMNIST_TASKS.index(task)])
    k = MINI_VTAB_TASKS[task]
    splits: dict[str, list[Sample]] = {}
    for split, n in sizes.items():
        start, _ = slices[task][split]
        samples = []
        for i, label in enumerate(_balanced(n, k, rng)):
            used = 1 + int(label) if task == "fmnist_count" else 1
            image = _fmnist_image(task, int(label), garments[pool[start:start + used]], rng)
            samples.append((f"{i:04d}", image, int(label)))
            start += used
        splits[split] = samples
    return splits


# ----- the whole suite -------------------------------------------------------------------------------
def files_sha256(directory: Path) -> str:
    """sha256 over every file below ``directory``: relative path and content, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory).as_posix()}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def read_registry(root: str | os.PathLike) -> dict | None:
    """``root/mini_vtab.json`` (None when there is none)."""
    path = Path(root) / REGISTRY
    if not path.is_file():
        return None
    try:
        registry = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); rebuild into another folder") from None
    if not isinstance(registry, dict) or not isinstance(registry.get("tasks"), dict):
        raise DataError(f"{path}: not a mini-VTAB registry (expected a 'tasks' mapping)")
    return registry


def _check_tasks(tasks: Sequence[str] | None) -> list[str]:
    chosen = list(MINI_VTAB_TASKS) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in chosen if t not in MINI_VTAB_TASKS]
    if unknown or not chosen:
        raise DataError(f"mini-VTAB tasks {', '.join(unknown) or '(none)'}: expected some of {', '.join(MINI_VTAB_TASKS)}")
    return chosen


def _group(task: str) -> str:
    return next(g for g, members in MINI_VTAB_GROUPS.items() if task in members)


def build_mini_vtab(out: str | os.PathLike, seed: int = 0, fmnist: str | os.PathLike | None = None,
                    tasks: Sequence[str] | None = None, *, split_sizes: Mapping[str, int] | None = None,
                    log: Log | None = None) -> dict:
    """Write the mini-VTAB into ``out`` (see module doc) and return its registry.

    ``fmnist``: a folder holding ``t10k-images-idx3-ubyte[.gz]`` (default: Debian's
    ``/usr/share/datasets/fashion-mnist``). ``tasks``: a subset (default: all five).
    ``split_sizes`` (tests): images per split instead of 800 / 200 / 800 (digits: / 797).
    Idempotent: a folder already holding the same build is returned as it is; one holding
    another build (seed, sizes or tasks) is refused. Every task is checked with ``verify``
    before it is moved into place; ``mini_vtab.json`` is written last.
    """
    from ..fsio import atomic_write
    from .verify import verify

    say = log or (lambda _: None)
    out = Path(out)
    chosen = _check_tasks(tasks)
    sizes = {**SPLIT_SIZES, **(split_sizes or {})}
    wanted = {"format": REGISTRY_FORMAT, "seed": int(seed), "split_sizes": sizes if split_sizes else None}
    existing = read_registry(out)
    if existing is not None:
        same = all(existing.get(k) == v for k, v in wanted.items()) and list(existing["tasks"]) == chosen
        if same:
            say(f"{out}: the mini-VTAB (seed {seed}) is built already")
            return existing
        raise DataError(f"{out / REGISTRY}: holds another mini-VTAB build (seed {existing.get('seed')}, tasks "
                        f"{', '.join(existing['tasks'])}); build seed {seed} into another folder")
    clashes = [t for t in chosen if (out / t).exists()]
    if clashes:
        raise DataError(f"{out / clashes[0]}: exists, but {out} holds no {REGISTRY} (not a finished mini-VTAB "
                        "build); remove it or choose another folder")
    garments = source = None
    if any(t in _FMNIST_TASKS for t in chosen):
        garments, source = fashion_mnist_test(fmnist)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    registry: dict = {**wanted, "suite": "mini-vtab", "image_size": IMAGE_SIZE, "sources": {}, "tasks": {}}
    if source is not None:
        registry["sources"]["fashion_mnist"] = {
            "file": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "images": len(garments),
            "note": "test split only (the demo backbone was trained on the training split)"}
    if "digits" in chosen:
        import sklearn

        registry["sources"]["digits"] = f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})"
    try:
        for task in chosen:
            say(f"writing {task} ({_group(task)}, {MINI_VTAB_TASKS[task]} classes)")
            if task == "digits":
                splits = digits_splits(seed, IMAGE_SIZE, split_sizes)
            else:
                splits = fmnist_splits(task, garments, seed, sizes)
            write_task_folder(staging / task, splits, CLASSES[task])
            report = verify("vtab", str(staging), task)
            if not report["ok"]:
                raise DataError(f"{staging / task}: the built task fails verify: {report['problems'][0]['message']}")
            registry["tasks"][task] = {
                "group": _group(task), "num_classes": MINI_VTAB_TASKS[task], "classes": CLASSES[task],
                "description": DESCRIPTIONS[task],
                "samples": {s: r["samples"] for s, r in report["splits"].items()},
                "manifest_hash": report["manifest_hash"], "files_sha256": files_sha256(staging / task)}
        out.mkdir(parents=True, exist_ok=True)
        for task in chosen:
            (staging / task).rename(out / task)
        atomic_write(out / REGISTRY, (json.dumps(registry, indent=2) + "\n").encode())
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return registry


def format_registry(registry: dict, root: str | os.PathLike) -> str:
    """A short table of a build: task, group, classes, split sizes, manifest hash."""
    lines = [f"mini-VTAB (seed {registry['seed']}) in {root}:",
             f"  {'task':<20}{'group':<12}{'classes':>8}{'train800':>10}{'val200':>8}{'test':>6}  manifest hash"]
    for task, entry in registry["tasks"].items():
        s = entry["samples"]
        lines.append(f"  {task:<20}{entry['group']:<12}{entry['num_classes']:>8}{s['train800']:>10}{s['val200']:>8}"
                     f"{s['test']:>6}  {entry['manifest_hash'][:16]}…")
    lines.append(f"check one: heartlora data verify {root} --task {next(iter(registry['tasks']))}")
    return "\n".join(lines)
