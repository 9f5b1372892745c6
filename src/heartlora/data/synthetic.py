"""Small synthetic datasets in each supported layout (test fixtures and demos).

Images are tiny JPEG/PNG files whose colour and stripe direction depend on the class (plus
noise), so a small model can learn them and a test of "accuracy after reload" is meaningful.
Everything is deterministic in ``seed``. Each function returns ``root``, ready for
``load_task(kind, root, task)``.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import DataError
from .fewshot import IMAGE_ROOTS, LIST_DIR, NOAH_IMAGE_ROOTS, TEST_LIST, VAL_LIST, train_list_name
from .tasks import FEWSHOT_DATASETS, FEWSHOT_FOLDERS, VTAB_TASKS, canonical_task


def class_image(label: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A ``size``×``size`` RGB image: class hue, class stripe direction, uniform noise."""
    r, g, b = colorsys.hsv_to_rgb(label / max(num_classes, 1), 0.8, 0.9)
    base = np.array([r, g, b], dtype=np.float32) * 255
    yy, xx = np.mgrid[0:size, 0:size]
    direction = (xx, yy, xx + yy, xx - yy)[label % 4]
    stripes = ((direction // max(size // 8, 1)) % 2).astype(np.float32)[..., None] * 60 - 30
    noise = rng.uniform(-25, 25, size=(size, size, 3))
    pixels = np.clip(base + stripes + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _write(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)


def _write_list(path: Path, lines: Iterable[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in lines), encoding="utf-8")


def make_vtab(root: str | Path, tasks: Sequence[str] = ("cifar",), n_train: int = 16, n_val: int = 8,
              n_test: int = 16, image_size: int = 32, num_classes: int | None = None, seed: int = 0) -> Path:
    """VTAB-1K JPEG layout: ``root/<task>/{train800,val200,train800val200,test}.txt`` plus
    ``images/{train800,val200,test}/*.jpg``; train800val200 lists train800 then val200.

    Labels run round-robin over ``num_classes`` in each split (default: the task's real class count; a
    smaller value keeps tiny tests fast while staying in the task's label range).
    """
    root = Path(root)
    for index, task in enumerate(tasks):
        name = canonical_task(task, "vtab")
        classes = VTAB_TASKS[name] if num_classes is None else num_classes
        if not 1 <= classes <= VTAB_TASKS[name]:
            raise DataError(f"option 'num_classes': got {classes}; expected 1..{VTAB_TASKS[name]} for VTAB-1K task '{name}'")
        rng = np.random.default_rng([seed, index])
        directory = root / name
        lists: dict[str, list[tuple[str, int]]] = {}
        for split, count in (("train800", n_train), ("val200", n_val), ("test", n_test)):
            lines = []
            for i in range(count):
                label = i % classes
                rel = f"images/{split}/{i:06d}.jpg"
                _write(directory / rel, class_image(label, classes, image_size, rng))
                lines.append((rel, label))
            lists[split] = lines
        lists["train800val200"] = lists["train800"] + lists["val200"]
        for split, lines in lists.items():
            _write_list(directory / f"{split}.txt", lines)
    return root


def _fewshot_file(name: str, label: int, number: int, split: str) -> str:
    """File names shaped like the lines of NOAH's lists: Food-101 ``<class>/<id>.jpg``, Cars
    ``cars_train/<id>.jpg`` (test: ``cars_test/``), Flowers ``image_<id>.jpg``, Pets
    ``<breed>_<n>.jpg``, Aircraft ``<7 digits>.jpg``."""
    if name == "food101":
        return f"class_{label:03d}/{number:06d}.jpg"
    if name == "stanford_cars":
        return f"cars_{'test' if split == 'test' else 'train'}/{number:05d}.jpg"
    if name == "oxford_flowers102":
        return f"image_{number:05d}.jpg"
    if name == "oxford_pets":
        return f"breed_{label:02d}_{number}.jpg"
    return f"{number:07d}.jpg"


FEWSHOT_LAYOUTS = ("canonical", "noah")


def make_fewshot(root: str | Path, dataset: str = "oxford_pets", shots: Sequence[int] = (1, 2),
                 seeds: Sequence[int] = (0,), n_test: int = 10, image_size: int = 32, seed: int = 0,
                 *, n_val: int = 0, layout: str = "canonical") -> Path:
    """NOAH few-shot layout: ``root/<dataset>/annotations/train_meta.list.num_shot_K.seed_S``,
    ``test_meta.list`` (and ``val_meta.list`` if ``n_val`` > 0).

    ``layout="canonical"``: the folder has the canonical name and the images sit under the
    dataset's first documented sub-root (``IMAGE_ROOTS``: ``images/``, ``data/images/``, ``jpg/``,
    …). ``layout="noah"``: as NOAH distributes it, the folder named as in NOAH's annotation tree
    (``standford-cars``, ``oxford-flowers102``, …), images where NOAH's loader joins them
    (``images/``; Cars: the folder itself), and the 1-shot Pets lists with every line twice.

    Per list seed, each class gets max(shots) images; the K-shot list takes the first K, so
    lists of one seed are nested, as in the field's splits. The class count is the real one.
    """
    if layout not in FEWSHOT_LAYOUTS:
        raise DataError(f"option 'layout': got {layout!r}; expected one of: {', '.join(FEWSHOT_LAYOUTS)}")
    name = canonical_task(dataset, "fewshot")
    classes = FEWSHOT_DATASETS[name]
    noah = layout == "noah"
    directory = Path(root) / (FEWSHOT_FOLDERS["noah"][name] if noah else name)
    sub = NOAH_IMAGE_ROOTS[name] if noah else IMAGE_ROOTS[name][0]
    image_root = directory / sub if sub else directory
    rng = np.random.default_rng(seed)
    number = 0

    def new_image(label: int, split: str = "train") -> str:
        nonlocal number
        number += 1
        rel = _fewshot_file(name, label, number, split)
        _write(image_root / rel, class_image(label, classes, image_size, rng))
        return rel

    most = max(shots) if shots else 0
    for list_seed in seeds:
        pool = {c: [new_image(c) for _ in range(most)] for c in range(classes)}
        for k in shots:
            repeat = 2 if noah and name == "oxford_pets" and k == 1 else 1
            lines = [(rel, c) for c in range(classes) for rel in pool[c][:k] for _ in range(repeat)]
            _write_list(directory / LIST_DIR / train_list_name(k, list_seed), lines)
    for list_name, count, split in ((TEST_LIST, n_test, "test"), (VAL_LIST, n_val, "val")):
        if count or list_name == TEST_LIST:
            lines = [(new_image(i % classes, split), i % classes) for i in range(count)]
            _write_list(directory / LIST_DIR / list_name, lines)
    return Path(root)


def make_folder(root: str | Path, classes: int = 3, per_split: Sequence[int] = (6, 3, 6),
                image_size: int = 32, seed: int = 0) -> Path:
    """ImageFolder layout: ``root/{train,val,test}/class_<i>/<n>.{jpg,png}``.

    ``per_split`` gives the number of images of train, val and test (round-robin over classes;
    0 leaves that split folder out). JPEG and PNG alternate, to exercise both decoders.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val", "test"), per_split):
        for i in range(count):
            label = i % classes
            suffix = "jpg" if i % 2 == 0 else "png"
            _write(root / split / f"class_{label}" / f"{i:04d}.{suffix}", class_image(label, classes, image_size, rng))
    return root
