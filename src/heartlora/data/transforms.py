"""Image transforms of the field's PETL recipes.

Evaluation (and VTAB-1K training, which the field runs without augmentation):
``Resize((S, S), bicubic) -> ToTensor -> [Normalize]``. Resizing straight to a square (no
centre crop) follows the benchmark recipe of the Bi-LoRA lineage (NOAH calls it
``direct_resize``), so accuracy is comparable with published VTAB-1K tables.

Normalisation is a named option because the lineage differs: ``none`` (default, the Bi-LoRA
lineage feeds [0, 1] pixels), ``imagenet`` (timm ``IMAGENET_DEFAULT_MEAN/STD``) and
``inception`` (mean = std = 0.5, matching Google's ViT-B/16 ImageNet-21k checkpoints).

Every transform here starts with its only deterministic image operation, the resize; the random
augmentation comes after it. :func:`split_resize` cuts a transform there, which is what lets the
decoded-image cache (``heartlora.data.cache``) store resized pixels and apply the rest per access.
"""
from __future__ import annotations

from timm.data.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from torchvision import transforms as T

from .errors import DataError

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
    "inception": (tuple(IMAGENET_INCEPTION_MEAN), tuple(IMAGENET_INCEPTION_STD)),
}
#: Values of the ``normalize`` option, named once: the CLI's choices and the config's check read this.
NORMALIZE_CHOICES: tuple[str, ...] = tuple(NORMALIZATIONS)

#: Strength of the few-shot colour jitter (brightness, contrast, saturation).
FEWSHOT_JITTER = 0.4


def build_transform(image_size: int, normalize: str = "none", augment: bool = False) -> T.Compose:
    """PIL image -> FloatTensor[3, S, S].

    ``augment=True`` adds the light few-shot training augmentation used in this project:
    ``RandomHorizontalFlip`` then ``ColorJitter(0.4, 0.4, 0.4)``, applied after the resize.
    Why this choice: with 1-16 images per class, a random resized crop can cut away the part
    that tells fine-grained classes apart; a flip and colour jitter perturb appearance while
    keeping the framing of the resize. Note that NOAH's few-shot scripts instead pass timm's
    full ``create_transform`` training pipeline (RandomResizedCrop, RandAugment, random
    erasing); users who need that exact pipeline can build it with timm and set it on
    ``TaskData.train.transform``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise DataError(f"option '--image-size': got {image_size!r}; expected a positive integer (e.g. 224)")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"option '--normalize': unknown value {normalize!r}; expected one of: {', '.join(NORMALIZATIONS)}")
    ops: list = [T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC)]
    if augment:
        ops += [T.RandomHorizontalFlip(), T.ColorJitter(FEWSHOT_JITTER, FEWSHOT_JITTER, FEWSHOT_JITTER)]
    ops.append(T.ToTensor())
    stats = NORMALIZATIONS[normalize]
    if stats is not None:
        ops.append(T.Normalize(*stats))
    return T.Compose(ops)


def split_resize(transform: object) -> tuple[T.Resize, T.Compose] | None:
    """``(Resize, the rest)`` of a ``Compose`` whose first step is a fixed-size ``Resize((H, W))``,
    or ``None`` for any other transform (nothing of it can be cached).

    The ``Resize`` is the transform's own object, so a cache built with it computes exactly what
    the transform computes; the rest (augmentation, ``ToTensor``, normalisation) is the list of
    the transform's remaining steps, applied in the same order.
    """
    steps = getattr(transform, "transforms", None)
    if type(transform) is not T.Compose or not steps:
        return None
    first = steps[0]
    if type(first) is not T.Resize or not isinstance(first.size, (list, tuple)) or len(first.size) != 2:
        return None
    return first, T.Compose(list(steps[1:]))


def describe_resize(resize: T.Resize) -> dict:
    """The settings that decide a ``Resize``'s output (part of a cache key)."""
    interpolation = resize.interpolation
    return {"op": "Resize", "size": [int(v) for v in resize.size],
            "interpolation": getattr(interpolation, "value", interpolation),
            "max_size": resize.max_size, "antialias": resize.antialias}
