"""Decoded-image cache: each split is decoded and resized once per run, not once per epoch.

Without it, a VTAB-1K run decodes and resizes its 1,000 training images every epoch and its
test split (up to 70,000 images) at every evaluation. With it, the *deterministic prefix* of a
split's transform — decoding to 8-bit RGB (:func:`heartlora.data.images.load_image`, the rules
of ``heartlora.data.decode``) and then the transform's leading ``Resize((H, W))`` — runs once
per image, and the result is kept as ``uint8[N, H, W, 3]`` pixels. Each access rebuilds the PIL
image from those pixels and applies the *rest* of the same transform (random flip and colour
jitter, ``ToTensor``, normalisation): the same functions on the same pixels, drawing the same
random numbers, so items are bit-identical to the uncached path's. Random augmentation is never
cached: every transform of ``build_transform`` applies it after the resize
(:func:`heartlora.data.transforms.split_resize` cuts the transform there). A transform without a
leading fixed-size ``Resize`` is not cached at all; a transform set on a cached dataset after it
was built (``task.train.transform = ...``) makes its items decode from their files again.

Where (``mode="auto"``): in memory while the splits so far fit in ``memory_mb`` MiB (the
training split first, as every epoch reads it); a memory-mapped file in ``directory`` for a
split over that budget; not cached (decoded on access, as with ``mode="off"``) when it is over
budget and there is no directory.

Files: ``<directory>/<task>.<split>.<H>x<W>.<key[:16]>.u8``, a 4 KiB header (magic, full key,
shape) followed by the pixels. The key is the sha256 of the manifest hash, the split's list
digest, the stat fingerprint of the split's images (size and modification time of each, see
``heartlora.data.fingerprint``), the resize's settings, the decoder's rule version and Pillow's
version; so a changed list, a rewritten image, another image size, interpolation or decoder
gives another key and file, and a file whose header or size does not match its name is rebuilt.
Files are written by :func:`heartlora.fsio.atomic_write` (a private temporary file in the same
folder, then a rename): a reader sees a whole file or none, and two runs building the same
file at once each rename a complete, identical copy. Old files are never deleted by a run; the
folder may be removed at any time between runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms import functional as F

from .decode import RULES_VERSION
from .errors import DataError, DataWarning, Problem, raise_first
from .fingerprint import fingerprint_files
from .images import ImageListDataset, image_problem, load_image
from .transforms import describe_resize, split_resize

CACHE_MODES = ("auto", "off")
CACHE_FORMAT = 1
DEFAULT_MEMORY_MB = 2048
CACHE_SUFFIX = ".u8"
_MAGIC = b"heartlora decoded-image cache\n"
_HEADER_BYTES = 4096
_BATCH = 256  # images decoded per round of the thread pool (bounds memory while writing a file)
_HINT = "run `heartlora data verify` on this data for the full list"


def check_cache_options(mode: object, memory_mb: object) -> None:
    """One-line DataError for a bad ``cache`` / ``cache_memory_mb`` value."""
    if mode not in CACHE_MODES:
        raise DataError(f"option '--cache': got {mode!r}; expected one of: {', '.join(CACHE_MODES)}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 0:
        raise DataError(f"option '--cache-memory-mb': got {memory_mb!r}; expected an integer >= 0 (MiB)")


# ------------------------------------------------------------------------------------ pixels
class Pixels:
    """``uint8[N, H, W, 3]`` held in memory (a torch tensor) or in a cache file (``np.memmap``).

    Indexing gives one image's ``[H, W, 3]`` array. A file-backed instance reopens its file after
    pickling (DataLoader workers started by ``spawn``) instead of sending the pixels along.
    """

    def __init__(self, shape: tuple[int, int, int, int], tensor: torch.Tensor | None = None,
                 file: Path | None = None) -> None:
        self.shape, self.tensor, self.file = tuple(shape), tensor, file
        self._map: np.memmap | None = None

    def _array(self) -> np.ndarray:
        if self.tensor is not None:
            return self.tensor.numpy()
        if self._map is None:
            self._map = np.memmap(self.file, dtype=np.uint8, mode="r", offset=_HEADER_BYTES, shape=self.shape)
        return self._map

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self._array()[index])  # a private copy: PIL may keep a reference to its buffer

    def take(self, indices: list[int]) -> np.ndarray:
        """``uint8[len(indices), H, W, 3]``, a copy."""
        return self._array()[np.asarray(indices, dtype=np.int64)]

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}


def _tensor_steps(rest: T.Compose) -> tuple[bool, T.Normalize | None] | None:
    """``(True, Normalize or None)`` when ``rest`` is exactly ``ToTensor`` [+ ``Normalize``] (no
    augmentation): such a rest can run on arrays and on whole batches; else ``None``."""
    steps = list(getattr(rest, "transforms", ()))
    if not steps or type(steps[0]) is not T.ToTensor:
        return None
    if len(steps) == 1:
        return True, None
    if len(steps) == 2 and type(steps[1]) is T.Normalize:
        return True, steps[1]
    return None


def to_tensor_batch(pixels: np.ndarray, normalize: T.Normalize | None) -> torch.Tensor:
    """``ToTensor`` [+ ``Normalize``] of each ``[H, W, 3]`` uint8 image of ``pixels``, as one
    ``[N, 3, H, W]`` tensor: the same element-wise operations as ``ToTensor`` (uint8 -> default
    float dtype, then division by 255) and ``F.normalize`` (subtract the channel mean, divide by
    the channel std), done once per batch, so every value equals the per-image result."""
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    out = batch.to(torch.get_default_dtype(), memory_format=torch.contiguous_format).div_(255)
    if normalize is not None:
        out = F.normalize(out, normalize.mean, normalize.std, inplace=True)
    return out


class CachedImageDataset(ImageListDataset):
    """An :class:`ImageListDataset` whose images come from cached resized pixels.

    ``transform`` is still the split's whole transform (what the uncached dataset applies);
    items apply its steps after the resize to the cached pixels: on a PIL image made from them
    when there is augmentation, directly on the array otherwise (``ToTensor`` takes both).
    :meth:`items` converts a whole batch in one go when there is no augmentation; a DataLoader
    uses it through :func:`batched` (the engine's loaders do). If ``transform`` is replaced,
    items are decoded from their files again, as by the uncached dataset.
    """

    def __init__(self, base: ImageListDataset, pixels: Pixels, rest: Callable) -> None:
        self.paths, self.targets, self.lines = base.paths, base.targets, base.lines
        self.source, self.transform = base.source, base.transform
        self.pixels = pixels
        self._cached_for, self._rest = base.transform, rest
        self._tensor_only = _tensor_steps(rest)

    def _cached(self) -> bool:
        return self.transform is self._cached_for

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not self._cached():
            return super().__getitem__(index)
        array = self.pixels[index]
        return self._rest(array if self._tensor_only else Image.fromarray(array)), self.targets[index]

    def items(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """``[self[i] for i in indices]``, converted in one piece when there is no augmentation
        (views of one ``[N, 3, H, W]`` tensor, which :func:`collate` returns without copying)."""
        if not self._cached() or self._tensor_only is None or not indices:
            return [self[i] for i in indices]  # in order: augmentation draws its random numbers as uncached
        images = to_tensor_batch(self.pixels.take(indices), self._tensor_only[1])
        return [(images[k], self.targets[i]) for k, i in enumerate(indices)]


class _Batched(torch.utils.data.Dataset):
    """A CachedImageDataset (optionally through the indices of a Subset) whose DataLoader batches
    come from :meth:`CachedImageDataset.items` (``__getitems__``, which the DataLoader calls)."""

    def __init__(self, dataset: CachedImageDataset, indices: list[int] | None = None) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def _index(self, index: int) -> int:
        return index if self.indices is None else self.indices[index]

    def __getitem__(self, index: int):
        return self.dataset[self._index(index)]

    def __getitems__(self, indices: list[int]) -> list:
        return self.dataset.items([self._index(i) for i in indices])


def batched(dataset):
    """What to give a DataLoader (with ``collate_fn=collate``) for ``dataset``: for a
    CachedImageDataset, or a Subset of one, a view whose batches are converted in one piece;
    any other dataset as it is (its own ``__getitem__`` is always honoured)."""
    if type(dataset) is CachedImageDataset:
        return _Batched(dataset)
    if type(dataset) is torch.utils.data.Subset and type(dataset.dataset) is CachedImageDataset:
        return _Batched(dataset.dataset, list(dataset.indices))
    return dataset


def collate(batch: list) -> list:
    """``default_collate``, except that the items of a batch that :class:`CachedImageDataset`
    converted in one piece come back as that piece (the stack default_collate would make of
    them is the same tensor, copied into fresh memory: on some machines as slow as the conversion).

    Safe for any dataset: anything else goes to ``default_collate``."""
    images = _whole_batch(batch)
    if images is None:
        return default_collate(batch)
    return [images, torch.tensor([label for _, label in batch])]


def _whole_batch(batch: list) -> torch.Tensor | None:
    """The tensor whose consecutive rows are exactly the images of ``batch``'s ``(image, int)`` items, or None."""
    if not isinstance(batch, list) or not batch:
        return None
    first = batch[0]
    if not (isinstance(first, tuple) and len(first) == 2 and isinstance(first[0], torch.Tensor)):
        return None
    base = first[0]._base
    if base is None or not base.is_contiguous() or base.shape[0] != len(batch) or base.storage_offset() != 0:
        return None
    step = first[0].numel()
    for k, item in enumerate(batch):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.Tensor)
                and type(item[1]) is int and item[0]._base is base and item[0].storage_offset() == k * step
                and item[0].shape == base.shape[1:] and item[0].is_contiguous()):
            return None
    return base


# ----------------------------------------------------------------------------------- building
@dataclass
class SplitPlan:
    """What happens to one split: where its pixels go (``storage``) and why not, if not cached."""

    split: str
    dataset: ImageListDataset
    storage: str  # memory | mmap | off
    reason: str | None = None
    shape: tuple[int, int, int, int] | None = None
    cut: tuple | None = None  # (Resize, rest) of the transform

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape)) if self.shape is not None else 0


def plan_cache(splits: list[tuple[str, str, ImageListDataset]], mode: str, memory_mb: int,
               directory: str | os.PathLike | None) -> dict[str, SplitPlan]:
    """role -> SplitPlan for ``splits`` (``(role, split name, dataset)``, training split first).

    A split named twice (same name, e.g. a protocol that trains and evaluates on one split)
    counts against the budget once and shares its pixels."""
    check_cache_options(mode, memory_mb)
    budget, used, by_name = memory_mb * 2 ** 20, 0, {}
    plans: dict[str, SplitPlan] = {}
    for role, name, dataset in splits:
        cut = split_resize(dataset.transform)
        if mode == "off":
            plans[role] = SplitPlan(name, dataset, "off", "option --cache off")
            continue
        if cut is None:
            plans[role] = SplitPlan(name, dataset, "off", "its transform does not start with Resize((H, W))")
            continue
        height, width = cut[0].size
        shape = (len(dataset), int(height), int(width), 3)
        first = by_name.get(name)
        if first is not None and first.shape == shape:  # the same pixels, another role's transform
            plans[role] = SplitPlan(name, dataset, first.storage, first.reason, shape, cut)
            continue
        plan = SplitPlan(name, dataset, "memory", None, shape, cut)
        if used + plan.bytes <= budget:
            used += plan.bytes
        elif directory is not None:
            plan.storage = "mmap"
        else:
            plan.storage, plan.reason = "off", (f"{plan.bytes / 2 ** 20:.0f} MiB is over what is left of "
                                                f"--cache-memory-mb {memory_mb} and no --cache-dir was given")
        plans[role] = by_name[name] = plan
    return plans


def cache_key(plan: SplitPlan, manifest_hash: str, split_sha256: str, task_directory: str | os.PathLike | None) -> str:
    """The key of a split's pixels (see the module docstring for what it covers)."""
    resize, _ = plan.cut
    files = fingerprint_files(plan.dataset.paths, task_directory)
    payload = {"format": CACHE_FORMAT, "manifest_hash": manifest_hash, "split": plan.split,
               "split_sha256": split_sha256, "images": files["sha256"],
               "resize": describe_resize(resize), "shape": list(plan.shape), "decode_rules": RULES_VERSION,
               "pillow": PIL.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _decode(path: str, resize: Callable) -> tuple[np.ndarray | None, Exception | None]:
    """The cached prefix of the transform for one image: exactly what the uncached dataset does first."""
    try:
        image = load_image(path)
    except Exception as err:  # reported as the uncached dataset reports it
        return None, err
    return np.asarray(resize(image)), None


def _decoded(plan: SplitPlan, threads: int):
    """``(index, pixels or None, problem or None)`` for every image of the split, in order."""
    dataset, (resize, _) = plan.dataset, plan.cut
    expected = plan.shape[1:]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL decodes and resizes without the GIL
        for start in range(0, len(dataset), _BATCH):
            paths = dataset.paths[start:start + _BATCH]
            for offset, (array, err) in enumerate(pool.map(lambda p: _decode(p, resize), paths)):
                index = start + offset
                if err is not None:
                    yield index, None, image_problem(dataset.paths[index], dataset.source, dataset.lines[index], err)
                    continue
                if array.shape != expected or array.dtype != np.uint8:
                    raise DataError(f"{dataset.paths[index]}: resized to {array.shape} {array.dtype}, expected "
                                    f"{expected} uint8; the image cache needs an RGB Resize((H, W))")
                yield index, array, None


def _build_memory(plan: SplitPlan, threads: int) -> Pixels:
    tensor = torch.empty(plan.shape, dtype=torch.uint8)
    view = tensor.numpy()
    problems: list[Problem] = []
    for index, array, problem in _decoded(plan, threads):
        if problem is not None:
            problems.append(problem)
        else:
            view[index] = array
    raise_first(problems, _HINT)
    return Pixels(plan.shape, tensor=tensor)


class _Abandoned(Exception):
    """Raised inside a cache file's writer so that ``atomic_write`` discards the temporary file."""


def _header(key: str, shape: tuple) -> bytes:
    meta = json.dumps({"format": CACHE_FORMAT, "key": key, "shape": list(shape), "dtype": "uint8"}).encode()
    return (_MAGIC + meta + b"\n").ljust(_HEADER_BYTES, b" ")


def _valid_file(path: Path, key: str, shape: tuple) -> bool:
    """Whether ``path`` is a complete cache file for ``key`` and ``shape``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
        size = path.stat().st_size
    except OSError:
        return False
    return head == _header(key, shape) and size == _HEADER_BYTES + int(np.prod(shape))


def cache_file(directory: str | os.PathLike, task: str, plan: SplitPlan, key: str) -> Path:
    """The file of a split's pixels: ``<task>.<split>.<H>x<W>.<key[:16]>.u8`` (names made file-safe)."""
    _, height, width, _ = plan.shape
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{task}.{plan.split}")
    return Path(directory) / f"{safe}.{height}x{width}.{key[:16]}{CACHE_SUFFIX}"


def _made_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` (and parents); returns the folders that did not exist, deepest first."""
    missing = []
    for folder in (directory, *directory.parents):
        if folder.exists():
            break
        missing.append(folder)
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _build_file(plan: SplitPlan, path: Path, key: str, threads: int) -> Pixels:
    from ..fsio import atomic_write  # the one writer of the package

    problems: list[Problem] = []
    zeros = bytes(int(np.prod(plan.shape[1:])))

    def write(handle) -> None:
        handle.write(_header(key, plan.shape))
        for _, array, problem in _decoded(plan, threads):
            if problem is not None:
                problems.append(problem)
                handle.write(zeros)
            else:
                handle.write(np.ascontiguousarray(array).data)
        if problems:
            raise _Abandoned

    try:
        atomic_write(path, write)
    except _Abandoned:
        raise_first(problems, _HINT)
    return Pixels(plan.shape, file=path)


@dataclass
class CacheResult:
    datasets: dict  # role -> dataset (cached or the original)
    info: dict      # the run record's ``cache`` block


def apply_cache(plans: dict[str, SplitPlan], *, task: str, manifest: dict, manifest_hash: str,
                task_directory: str | os.PathLike | None, mode: str, memory_mb: int,
                directory: str | os.PathLike | None, threads: int = 1) -> CacheResult:
    """Build (or reuse) every planned split's pixels; raises DataError on an unreadable image
    (the message the uncached dataset would give, listing line and file) and leaves no file."""
    datasets, splits, built = {}, {}, {}
    made: list[Path] = []  # what this call created: removed again if it fails (bad image, interrupt)
    try:
        for role, plan in plans.items():
            entry: dict = {"split": plan.split, "storage": plan.storage, "images": len(plan.dataset)}
            if plan.storage == "off":
                datasets[role], splits[role] = plan.dataset, {**entry, "reason": plan.reason}
                continue
            key = cache_key(plan, manifest_hash, manifest["splits"][plan.split]["sha256"], task_directory)
            entry.update(key=key, bytes=plan.bytes, file=None, reused=False)
            start = time.perf_counter()
            if key in built:
                pixels, entry["reused"] = built[key], True
            elif plan.storage == "memory":
                pixels = _build_memory(plan, threads)
            else:
                path = cache_file(directory, task, plan, key)
                entry["file"] = str(path)
                if _valid_file(path, key, plan.shape):
                    pixels, entry["reused"] = Pixels(plan.shape, file=path), True
                else:
                    try:
                        made += _made_dirs(path.parent)
                        pixels = _build_file(plan, path, key, threads)
                    except OSError as err:  # e.g. a full disk: the run goes on without this split's cache
                        warnings.warn(f"option '--cache-dir': {err}; split '{plan.split}' is not cached",
                                      DataWarning, stacklevel=3)
                        datasets[role], splits[role] = plan.dataset, {
                            "split": plan.split, "storage": "off", "images": len(plan.dataset),
                            "reason": f"cache file not written: {err}"}
                        continue
                    made.insert(0, path)
            built[key] = pixels
            entry["seconds"] = round(time.perf_counter() - start, 3)
            datasets[role], splits[role] = CachedImageDataset(plan.dataset, pixels, plan.cut[1]), entry
    except BaseException:
        for item in made:  # files first, then the folders made for them, deepest first
            try:
                item.rmdir() if item.is_dir() else item.unlink()
            except OSError:
                pass
        raise
    info = {"mode": mode, "memory_mb": memory_mb, "dir": None if directory is None else str(directory),
            "splits": splits}
    return CacheResult(datasets, info)
