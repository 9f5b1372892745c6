"""Lazy image datasets and image checks.

Datasets hold only paths and labels; images are decoded in ``__getitem__`` so that a 20k-image
test split costs megabytes, not gigabytes, and DataLoader workers share the decoding.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image

from .decode import UnsupportedImage, conversion_error, to_rgb
from .errors import DataError, Problem, location
from .splits import SplitContent

_CHECK_SIZE = (64, 64)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open with PIL and convert to 8-bit RGB by the rules of ``heartlora.data.decode`` (16-bit and
    float greyscale scaled by their range, transparency over white); raises UnsupportedImage."""
    with open(path, "rb") as handle:
        image = Image.open(handle)
        image.load()
        return to_rgb(image)


def image_error(path: str | os.PathLike) -> Exception | None:
    """Why ``path`` cannot be decoded to RGB (the exception), or ``None`` if it can.

    JPEGs are decoded in draft mode (reduced DCT scale): every byte is still read, so truncated
    or corrupt files fail, but checking a large split is several times faster. Modes that need
    more than PIL's conversion (16-bit, float) are converted in full, so their range is checked.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", _CHECK_SIZE)
            image.load()
            reason = conversion_error(image)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, …)
        return err
    return UnsupportedImage(reason) if reason is not None else None


def image_problem(image: str | os.PathLike, source: str | os.PathLike, line: int | None, err: Exception) -> Problem:
    """The Problem for an image that failed with ``err``: unreadable, or readable with no RGB form."""
    where = f"listed in {location(source, line)}" if line is not None else f"in {source}"
    if isinstance(err, UnsupportedImage):
        return Problem("unsupported_image", str(image), line,
                       f"{image} ({where}): cannot convert image to 8-bit RGB faithfully: {err}")
    reason = "file not found" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
    return Problem("unreadable", str(image), line,
                   f"{image} ({where}): cannot read image ({reason}); expected an image file that PIL can open")


def check_split_images(content: SplitContent, source: Path, workers: int | None = None) -> list[Problem]:
    """One Problem per unreadable or unconvertible image of a split, in list order (threads: PIL
    decodes without the GIL)."""
    paths = [str(content.image_path(entry)) for entry in content.entries]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(image_error, paths, chunksize=64))
    return [image_problem(path, source, entry.line, err)
            for path, entry, err in zip(paths, content.entries, errors) if err is not None]


class ImageListDataset(torch.utils.data.Dataset):
    """``(transform(image), label)`` pairs from a split; decoding happens on access.

    ``source`` (the list file or split folder) and the entries' line numbers are kept so that an
    unreadable image at training time is reported with the list line that named it.
    """

    def __init__(self, content: SplitContent, source: str | os.PathLike,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None) -> None:
        self.paths = [str(content.image_path(entry)) for entry in content.entries]
        self.targets = [entry.label for entry in content.entries]
        self.lines = [entry.line for entry in content.entries]
        self.source = str(source)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` pairs, as torchvision's ImageFolder exposes them."""
        return list(zip(self.paths, self.targets))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            image = load_image(path)
        except Exception as err:
            raise DataError(image_problem(path, self.source, self.lines[index], err).message) from err
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def labels_summary(labels: Iterable[int]) -> dict:
    labels = list(labels)
    if not labels:
        return {"min": None, "max": None, "distinct": 0}
    return {"min": min(labels), "max": max(labels), "distinct": len(set(labels))}
