"""Every PIL image mode to 8-bit RGB, faithfully or not at all.

``Image.convert("RGB")`` alone is wrong for several modes that real datasets contain: it clips
16-bit greyscale (``I;16``, 16-bit PNG/TIFF/PGM) and 32-bit samples to 255, so a gradient turns
all white, and it drops alpha, exposing whatever colour sits under transparent pixels. Rules:

- ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion
  (CMYK without a colour profile, as PIL does it).
- Integer greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, ``I``): linear from the nominal
  range of the stored samples to 0..255, ``round((v - lo) * 255 / (hi - lo))``. The range is the
  file's declared sample depth, the same for every image of a dataset, so relative intensities
  survive (per-image min/max stretching would make a dark scan look like a bright one):
  TIFF ``BitsPerSample``/``SampleFormat`` (12-bit unsigned: 0..4095; 16-bit signed:
  -32768..32767), otherwise 16-bit unsigned 0..65535 (``I;16*`` modes, and PGM/PPM with
  ``maxval`` > 255, which PIL already rescales to 16 bits). Depths above 16 bits have no standard
  8-bit mapping and are refused, as are samples outside the declared range.
- Float greyscale (``F``): values in [0, 1] (the float-image convention) times 255; anything
  else (a depth map, HDR, NaN) is refused: no single mapping to 8 bits is right for it.
- Transparency (``LA``, ``PA``, ``RGBA``, ``RGBa``, or a ``transparency`` key, e.g. palette
  PNGs and 16-bit greyscale PNGs with a transparent sample value): composited over white, :data:`ALPHA_BACKGROUND`.
  White because that is how viewers
  and web pages show such images to whoever labelled them, and because dark line art, text and
  logos on a transparent background (common) would vanish on black.
- Anything else (e.g. ``La``, or a mode PIL adds later) is refused.

Refusals raise :class:`UnsupportedImage`, whose message says what was found and what is expected.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

#: Version of the rules above: raise it whenever a rule changes the pixels it gives, so that
#: decoded-image caches (``heartlora.data.cache``, whose keys include it) are rebuilt.
RULES_VERSION = 1
ALPHA_BACKGROUND = (255, 255, 255)
PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")
INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_MAX_INT_BITS = 16
_CONVERT = "(or convert the file to 8-bit or 16-bit integer samples)"
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT, _SIGNED = 258, 339, 2


class UnsupportedImage(ValueError):
    """The image decodes, but has no faithful 8-bit RGB form (message: what and what is expected)."""


def _tag(image: Image.Image, tag: int) -> int | None:
    tags = getattr(image, "tag_v2", None)  # TIFF files only
    value = tags.get(tag) if tags is not None else None
    if isinstance(value, tuple):
        value = value[0] if value else None
    return int(value) if value is not None else None


def integer_range(image: Image.Image) -> tuple[int, int]:
    """Nominal (lo, hi) of an integer greyscale image's samples (see module rules)."""
    bits = _tag(image, _TIFF_BITS_PER_SAMPLE) or 16
    if bits > _MAX_INT_BITS:
        raise UnsupportedImage(f"mode {image.mode} with {bits}-bit samples, which have no standard 8-bit mapping; "
                               f"expected at most {_MAX_INT_BITS}-bit samples {_CONVERT}")
    if _tag(image, _TIFF_SAMPLE_FORMAT) == _SIGNED:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _scaled(image: Image.Image) -> Image.Image:
    """Greyscale ``L`` from an ``I*``/``F`` image by its nominal range (refused outside it)."""
    values = np.asarray(image)
    lo, hi = (0, 1) if image.mode == "F" else integer_range(image)
    found_lo, found_hi = (values.min(), values.max()) if values.size else (lo, hi)
    if not (lo <= found_lo and found_hi <= hi):  # NaN fails too
        declared = "float values in [0, 1]" if image.mode == "F" else f"values in the file's range [{lo}, {hi}]"
        raise UnsupportedImage(f"mode {image.mode} with values in [{found_lo:g}, {found_hi:g}]; expected "
                               f"{declared} {_CONVERT}")
    scaled = np.rint((values.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def _over_background(image: Image.Image, mask: Image.Image | None = None) -> Image.Image:
    """``image`` pasted on :data:`ALPHA_BACKGROUND` through its alpha (or ``mask``)."""
    if mask is None:
        image = image.convert("RGBA")
        mask = image.getchannel("A")
    canvas = Image.new("RGB", image.size, ALPHA_BACKGROUND)
    canvas.paste(image.convert("RGB"), mask=mask)
    return canvas


def _greyscale_to_rgb(image: Image.Image) -> Image.Image:
    grey = _scaled(image)
    key = image.info.get("transparency")  # 16-bit PNG tRNS: the one sample value that is transparent
    if image.mode == "F" or not isinstance(key, int):
        return grey.convert("RGB")
    opaque = Image.fromarray((np.asarray(image) != key).astype(np.uint8) * 255, "L")
    return _over_background(grey, opaque)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB copy of ``image`` by the module's rules; raises UnsupportedImage."""
    mode = image.mode
    if mode in INT_MODES or mode == "F":
        return _greyscale_to_rgb(image)
    if mode in ALPHA_MODES or (mode in PLAIN_MODES and "transparency" in image.info):
        return _over_background(image)
    if mode in PLAIN_MODES:
        return image.convert("RGB")
    raise UnsupportedImage(f"image mode {mode!r} has no faithful conversion; expected one of the modes "
                           f"{', '.join(PLAIN_MODES + ALPHA_MODES + INT_MODES)}, F {_CONVERT}")


def conversion_error(image: Image.Image) -> str | None:
    """Why ``image`` (already loaded) has no faithful RGB form, or ``None``; free for plain modes."""
    if image.mode in PLAIN_MODES or image.mode in ALPHA_MODES:
        return None
    try:
        to_rgb(image)
    except UnsupportedImage as err:
        return str(err)
    return None
