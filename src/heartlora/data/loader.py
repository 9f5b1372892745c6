"""``load_task``: one entry point from (kind, root, task, protocol) to train/eval datasets.

Everything is checked before a dataset is returned (list syntax, label range, class count,
required splits, optionally every image), so a training run fails in its first second with a
message naming the file and line, rather than hours later inside a DataLoader worker.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import DEFAULT_MEMORY_MB, apply_cache, check_cache_options, plan_cache
from .errors import DataError, DataWarning, raise_first
from .fewshot import locate_fewshot
from .folder import locate_folder
from .images import ImageListDataset, check_split_images
from .manifest import build_manifest, manifest_hash
from .roots import outside_root_problems
from .splits import Layout, SplitContent
from .transforms import build_transform
from .vtab import locate_vtab

KINDS = ("vtab", "fewshot", "folder")
#: ``split`` values: ``final`` (alias ``paper``: the run whose test curve the paper protocol reads) and ``tune``.
PROTOCOLS = {"final": "final", "paper": "final", "tune": "tune"}
#: Values of the ``split`` option.
SPLITS = tuple(PROTOCOLS)
VERIFY_HINT = "run `heartlora data verify` on this data for the full list"


@dataclass
class TaskData:
    """Datasets of one task, ready for a DataLoader; items are ``(FloatTensor[3, S, S], int)``.

    ``manifest`` lists every split read (file relative to the task folder, samples, sha256)
    and which split is train/eval; ``manifest_hash`` is the hash ``verify`` prints for the same
    data (see ``heartlora.data.manifest``). ``warnings`` repeats the DataWarnings emitted while
    loading, for the run record. ``classes`` holds class names when the layout has them (folders,
    custom VTAB-layout tasks). ``directory`` is the task folder (image names in a content
    fingerprint are relative to it, see ``heartlora.data.fingerprint``). ``cache`` says where each
    split's decoded pixels are kept (the run record's ``data.cache`` block, see
    ``heartlora.data.cache``).
    """

    name: str
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    num_classes: int
    manifest: dict
    manifest_hash: str
    classes: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    directory: Path | None = None
    cache: dict | None = None


def _check_int(option: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"option '{option}': got {value!r}; expected an integer >= {minimum}")


def locate(kind: str, root: str | Path, task: str | None = None, shots: int | None = None,
           seed: int | None = None) -> Layout:
    """Find the task's folder and describe its splits (no list is read yet).

    ``seed`` is the few-shot list seed; it is ignored for the other kinds so that callers may
    pass their run seed through unconditionally. ``shots`` is an error outside few-shot.
    """
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r}; expected one of: {', '.join(KINDS)}")
    if kind != "fewshot" and shots is not None:
        raise DataError(f"option '--shots': applies to data kind 'fewshot' only; got shots={shots} with kind '{kind}'")
    if kind == "vtab":
        return locate_vtab(root, task)
    if kind == "folder":
        return locate_folder(root, task)
    if shots is not None:
        _check_int("--shots", shots, 1)
    if seed is not None:
        _check_int("--seed", seed, 0)
    return locate_fewshot(root, task, shots, seed)


def read_splits(layout: Layout, required: tuple[str, ...], allow_outside_root: bool = False) -> dict[str, SplitContent]:
    """Read every present split of ``layout``; raise on the first problem (an image path outside
    its root is one unless ``allow_outside_root``).

    Splits the protocol does not use are read too, because the manifest hash covers the whole
    task (it must equal what ``verify`` prints); absent unused splits are skipped.
    """
    contents: dict[str, SplitContent] = {}
    for name, source in layout.splits.items():
        if not source.exists():
            if name in required:
                raise DataError(source.missing_problem().message)
            continue
        content = source.read()
        outside = [] if allow_outside_root else outside_root_problems(content, source.path)
        raise_first(content.problems + outside, VERIFY_HINT)
        contents[name] = content
    return contents


def load_task(kind: str, root: str, task: str | None = None, *, split: str = "final",
              shots: int | None = None, seed: int | None = None, image_size: int = 224,
              normalize: str = "none", augment: bool = False, num_classes: int | None = None,
              check_images: bool = False, allow_outside_root: bool = False, cache: str = "off",
              cache_memory_mb: int = DEFAULT_MEMORY_MB, cache_dir: str | Path | None = None,
              cache_threads: int = 1) -> TaskData:
    """Load a task's train and eval datasets for a protocol.

    kind: ``vtab`` | ``fewshot`` | ``folder``. ``task`` is the task/dataset name (any alias) under
    ``root``; leave it out when ``root`` is the task folder itself.
    split: ``final`` (or ``paper``) trains on train800val200 / the K-shot list / train/ and
    evaluates on test; ``tune`` trains on train800 and evaluates on val200 (VTAB), train/ vs val/
    (folder), or the K-shot list vs ``val_meta.list`` (few-shot, only when that list exists).
    shots, seed: the few-shot list ``train_meta.list.num_shot_{shots}.seed_{seed}`` (``seed`` is
    ignored for other kinds). ``augment`` applies the few-shot training augmentation (see
    ``build_transform``) to the train split only. ``num_classes``, when given, must equal the
    task's class count. ``check_images`` decodes every train/eval image up front.
    allow_outside_root: accept list lines whose image path is absolute or leaves the image root
    through ``..`` (refused by default: see ``heartlora.data.roots``).
    cache: ``off`` (default here: every access decodes its image) or ``auto``: each split is
    decoded and resized once, kept in memory within ``cache_memory_mb`` MiB (training split
    first) or memory-mapped from a file in ``cache_dir`` beyond it (``heartlora.data.cache``;
    items are bit-identical either way). Building a split's cache decodes every image of it in
    full with ``cache_threads`` threads, so ``check_images`` then checks only the uncached splits.
    Raises DataError naming the file and line, or the option, at fault.
    """
    if split not in PROTOCOLS:
        raise DataError(f"option '--split': unknown value {split!r}; expected one of: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[split]
    check_cache_options(cache, cache_memory_mb)
    train_transform = build_transform(image_size, normalize, augment)
    eval_transform = build_transform(image_size, normalize, False)
    layout = locate(kind, root, task, shots, seed)
    if num_classes is not None and num_classes != layout.num_classes:
        raise DataError(f"option '--num-classes': got {num_classes}, but {layout.kind} task '{layout.name}' "
                        f"({layout.directory}) has {layout.num_classes} classes; expected --num-classes "
                        f"{layout.num_classes} (or leave the option out)")
    train_name, eval_name = layout.role(protocol)
    contents = read_splits(layout, (train_name, eval_name), allow_outside_root)

    messages: list[str] = []
    for content in contents.values():
        for problem in content.warnings:
            warnings.warn(problem.message, DataWarning, stacklevel=2)
            messages.append(problem.message)

    manifest = build_manifest(layout, contents, (train_name, eval_name))
    digest = manifest_hash(manifest)
    train = ImageListDataset(contents[train_name], layout.splits[train_name].path, train_transform)
    evaluation = ImageListDataset(contents[eval_name], layout.splits[eval_name].path, eval_transform)
    plans = plan_cache([("train", train_name, train), ("eval", eval_name, evaluation)], cache, cache_memory_mb,
                       cache_dir)
    if check_images:  # a split being cached is decoded in full below, which reports the same problems
        unchecked = {plans[role].split: None for role in ("train", "eval") if plans[role].storage == "off"}
        problems = [p for name in unchecked for p in check_split_images(contents[name], layout.splits[name].path)]
        raise_first(problems, VERIFY_HINT)
    cached = apply_cache(plans, task=layout.name, manifest=manifest, manifest_hash=digest,
                         task_directory=layout.directory, mode=cache, memory_mb=cache_memory_mb,
                         directory=cache_dir, threads=cache_threads)
    return TaskData(layout.name, cached.datasets["train"], cached.datasets["eval"], layout.num_classes, manifest,
                    digest, classes=layout.classes, warnings=messages, directory=layout.directory, cache=cached.info)
