"""Images to predict: which files (paths, folders, list files) and how each becomes a model input.

A list file names one image per line, relative to the list file's folder, optionally followed by
a task name: ``images/cat.jpg`` or ``images/cat.jpg pets``; blank lines and lines starting with
``#`` are skipped. An image without a task is predicted for every task given.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ..data.decode import UnsupportedImage, to_rgb
from ..data.folder import IMG_EXTENSIONS
from ..data.transforms import build_transform

# A decoded RGB image of this many pixels takes ~150 MB; a larger one is refused before decoding
# (PIL reads the size from the header), so a tiny "decompression bomb" cannot exhaust memory.
MAX_PIXELS = 50_000_000


class ImageError(ValueError):
    """An image that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class ImageJob:
    path: str
    task: str | None  # None: every task
    source: str  # where the path was named (argument, folder, list file and line)


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
    return found


def read_image_list(path: str | os.PathLike, tasks: Sequence[str]) -> list[ImageJob]:
    """The jobs of a list file; an unknown task name fails naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: list file not found (option '--list')")
    jobs = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1] in tasks:
            image, task = parts
        else:
            image, task = line, None
            if len(parts) == 2 and not (path.parent / line).exists() and (path.parent / parts[0]).is_file():
                raise ValueError(f"{path}:{number}: unknown task '{parts[1]}'; expected '<image> [task]' with a "
                                 f"task among: {', '.join(tasks)}")
        jobs.append(ImageJob(str(path.parent / image), task, f"{path}:{number}"))
    return jobs


def collect_images(inputs: Sequence[str | os.PathLike], lists: Sequence[str | os.PathLike] = (),
                   tasks: Sequence[str] = ()) -> list[ImageJob]:
    """Jobs in the order given: files as named, folders recursively (sorted; image extensions
    only), then list files. A missing path is kept: it is reported as unreadable with the rest."""
    jobs: list[ImageJob] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = _folder_images(path)
            if not images:
                raise ValueError(f"{path}: no images in this folder (extensions {', '.join(IMG_EXTENSIONS)})")
            jobs += [ImageJob(str(p), None, str(path)) for p in images]
        else:
            jobs.append(ImageJob(str(path), None, "argument"))
    for listed in lists:
        jobs += read_image_list(listed, tasks)
    return jobs


def open_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A decoded RGB image from a path or bytes; :class:`ImageError` says why one cannot be."""
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as err:
        raise ImageError(f"cannot open ({err.strerror or err})") from None
    with handle:
        try:
            image = Image.open(handle)
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, …
            raise ImageError(f"not an image PIL can read ({type(err).__name__}: {err})") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
        try:
            image.load()
        except Exception as err:
            raise ImageError(f"cannot decode the {image.format or 'image'} data ({type(err).__name__}: {err})") from None
        try:
            return to_rgb(image)  # the training path's conversion: 16-bit, float, alpha, CMYK handled alike
        except UnsupportedImage as err:
            raise ImageError(str(err)) from None


class Preprocess:
    """Per task: ``Resize((S, S), bicubic) -> ToTensor -> [Normalize]``, the recipe each task's
    adapter was trained and evaluated with (its backbone.json's image size and normalisation)."""

    def __init__(self, image_size: int, normalize_of: Callable[[str], str]):
        self.image_size = image_size
        self._normalize_of = normalize_of
        self._transforms: dict[str, Callable] = {}

    def __call__(self, image: Image.Image, task: str) -> torch.Tensor:
        normalize = self._normalize_of(task)
        transform = self._transforms.get(normalize)
        if transform is None:
            transform = self._transforms[normalize] = build_transform(self.image_size, normalize)
        return transform(image)
