"""Few-shot FGVC in NOAH's list layout.

``<root>/<dataset>/annotations/train_meta.list.num_shot_{K}.seed_{S}`` and
``.../annotations/test_meta.list`` (the lists may also sit directly in ``<root>/<dataset>/``),
lines ``<relative path> <label>``. Where the images sit relative to the dataset folder differs
between copies and datasets (NOAH's loader joins ``<folder>/images/<line path>``, but Cars lines
``cars_train/…`` to the folder itself; the original archives keep ``data/images/`` for
FGVC-Aircraft, ``jpg/`` for Flowers-102, …), so each list is resolved against the documented
sub-roots in turn (see ``IMAGE_ROOTS``). NOAH ships only the lists (``standford-cars/annotations``)
and points to CoOp's folders for the images (``stanford_cars/cars_train``): when a root holds
both, the images are also looked for in the other folders named for the same dataset.

Protocols: ``final`` trains on the K-shot list of seed S and evaluates on test. The field's
protocol has no validation split; ``tune`` is served only when a ``val_meta.list`` exists
(NOAH ships one for its architecture search), and is a clear error otherwise.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from .listfile import read_list
from .splits import Layout, SplitSource
from .tasks import FEWSHOT_DATASETS, other_task_dirs, resolve_task_dir

#: Candidate image roots, relative to the dataset folder, tried in order ("" = the folder itself).
IMAGE_ROOTS: dict[str, tuple[str, ...]] = {
    "fgvc_aircraft": ("data/images", "images", "fgvc-aircraft-2013b/data/images", ""),
    "food101": ("images", "food-101/images", ""),
    "oxford_flowers102": ("jpg", "images", ""),
    "oxford_pets": ("images", "oxford-iiit-pet/images", ""),
    "stanford_cars": ("", "images"),
}
#: The sub-root NOAH's loader (``lib/datasets.py``, ``general_dataset_few_shot``) joins list paths to.
NOAH_IMAGE_ROOTS: dict[str, str] = {
    "fgvc_aircraft": "images", "food101": "images", "oxford_flowers102": "images", "oxford_pets": "images",
    "stanford_cars": "",
}
LIST_DIR = "annotations"
TEST_LIST = "test_meta.list"
VAL_LIST = "val_meta.list"
_TRAIN_LIST = re.compile(r"train_meta\.list\.num_shot_(\d+)\.seed_(\d+)")


def train_list_name(shots: int | str, seed: int | str) -> str:
    return f"train_meta.list.num_shot_{shots}.seed_{seed}"


def list_location(directory: Path, name: str) -> tuple[Path, str]:
    """``annotations/<name>`` if present, else ``<name>`` in the folder itself (else the former,
    for the 'not found' message): both placements occur in circulating copies."""
    for rel in (f"{LIST_DIR}/{name}", name):
        if (directory / rel).is_file():
            return directory / rel, rel
    return directory / LIST_DIR / name, f"{LIST_DIR}/{name}"


def available_lists(directory: Path) -> list[tuple[int, int]]:
    """(shots, seed) of every train list present, sorted."""
    found = set()
    for folder in (directory / LIST_DIR, directory):
        if folder.is_dir():
            for path in folder.iterdir():
                match = _TRAIN_LIST.fullmatch(path.name)
                if match and path.is_file():
                    found.add((int(match.group(1)), int(match.group(2))))
    return sorted(found)


def describe_lists(found: list[tuple[int, int]]) -> str:
    if not found:
        return "none"
    by_shot: dict[int, list[int]] = {}
    for shots, seed in found:
        by_shot.setdefault(shots, []).append(seed)
    return ", ".join(f"shots {k} (seeds {', '.join(map(str, v))})" for k, v in by_shot.items())


def has_lists(folder: Path) -> bool:
    return bool(available_lists(folder)) or list_location(folder, TEST_LIST)[0].is_file()


def _directory(root: Path, task: str | None) -> tuple[str, Path]:
    return resolve_task_dir(root, task, "fewshot", has_lists,
                            f"{LIST_DIR}/{TEST_LIST} and train_meta.list.num_shot_K.seed_S")


def locate_fewshot(root: str | Path, task: str | None, shots: int | None = None,
                   seed: int | None = None) -> Layout:
    """Describe the test list, the optional val list and the train list(s).

    With ``shots`` and ``seed`` both given, exactly that train list is part of the layout (and
    required); otherwise every present list matching the given one is (that is what ``verify``
    checks when asked about a whole dataset folder).
    """
    name, directory = _directory(Path(root), task)
    num_classes = FEWSHOT_DATASETS[name]
    folders = [directory, *other_task_dirs(Path(root), directory, "fewshot")]
    roots = [folder / sub if sub else folder for folder in folders for sub in IMAGE_ROOTS[name]]
    found = available_lists(directory)

    def source(list_name: str, optional: bool = False, hint: str = "") -> SplitSource:
        path, rel = list_location(directory, list_name)
        return SplitSource(list_name, path, rel, partial(read_list, path, num_classes, roots),
                           optional=optional, missing_hint=hint)

    if shots is not None and seed is not None:
        wanted = [(shots, seed)]
    else:
        wanted = [(k, s) for k, s in found if shots in (None, k) and seed in (None, s)]
    train_hint = f"expected NOAH's list for shots={shots} seed={seed}; lists found: {describe_lists(found)}"
    if wanted:
        train = [source(train_list_name(k, s), hint=train_hint) for k, s in wanted]
    else:
        train = [source(train_list_name("K" if shots is None else shots, "S" if seed is None else seed),
                        hint=train_hint)]
    test = source(TEST_LIST, hint=f"expected the few-shot test list {LIST_DIR}/{TEST_LIST} in {directory}")
    val = source(VAL_LIST, optional=True)
    splits = {s.name: s for s in (*train, val, test)}

    roles: dict[str, tuple[str, str] | str]
    if shots is None or seed is None:
        need = " and ".join(opt for opt, value in (("'--shots'", shots), ("'--seed'", seed)) if value is None)
        message = (f"option {need}: few-shot dataset '{name}' needs the number of shots and the list seed; "
                   f"expected a pair with a list in {directory / LIST_DIR}: {describe_lists(found)}")
        roles = {"final": message, "tune": message}
    else:
        roles = {"final": (train[0].name, TEST_LIST)}
        if val.exists():
            roles["tune"] = (train[0].name, VAL_LIST)
        else:
            roles["tune"] = (f"{val.path}: split 'tune' needs a validation list, and the field's few-shot "
                             f"protocol has none; expected {LIST_DIR}/{VAL_LIST} in {directory} "
                             "(lines '<relative path> <label>'), or use split 'final' (train on the shots "
                             "list, evaluate on test)")
    return Layout("fewshot", name, directory, num_classes, splits, roles)
