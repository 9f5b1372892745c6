"""Task registries (VTAB-1K, few-shot FGVC), their aliases, and finding a task's folder.

Copies of these benchmarks circulate under many spellings (``cifar`` / ``cifar100``,
``oxford_iiit_pet`` / ``oxford_pet``, ``clevr_dist`` / ``clevr_distance``, NOAH's hyphenated
few-shot folders, …). Every spelling resolves to one canonical name, so run records, manifests
and tables always use the same key, and a folder on disk is found under any of its aliases.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from .errors import DataError

#: VTAB-1K: canonical task name -> number of classes (DESIGN §4).
VTAB_TASKS: dict[str, int] = {
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
    "svhn": 10, "sun397": 397,
    "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}

#: VTAB-1K groups; the benchmark "Average" is the mean of the three group means.
VTAB_GROUPS: dict[str, list[str]] = {
    "natural": ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}

#: Few-shot FGVC (NOAH's lists): canonical dataset name -> number of classes.
FEWSHOT_DATASETS: dict[str, int] = {
    "fgvc_aircraft": 100, "food101": 101, "oxford_flowers102": 102, "oxford_pets": 37, "stanford_cars": 196,
}

# Aliases are written in normalised form (see ``normalize_name``); the canonical name is implied.
_VTAB_ALIASES: dict[str, tuple[str, ...]] = {
    "cifar": ("cifar100", "cifar_100"),
    "caltech101": ("caltech", "caltech_101"),
    "dtd": ("describable_textures", "textures"),
    "oxford_flowers102": ("oxford_flowers", "oxford_flowers_102", "flowers102", "flowers_102", "flowers"),
    "oxford_iiit_pet": ("oxford_iiit_pets", "oxford_pet", "oxford_pets", "pets", "pet"),
    "svhn": ("svhn_cropped",),
    "sun397": ("sun", "sun_397"),
    "patch_camelyon": ("pcam", "camelyon", "patchcamelyon"),
    "eurosat": ("euro_sat",),
    "resisc45": ("resisc", "resisc_45"),
    "diabetic_retinopathy": ("retinopathy", "diabetic_retinopathy_detection"),
    "clevr_count": ("clevr_count_all", "clevr_counting"),
    "clevr_dist": ("clevr_distance", "clevr_closest_object_distance"),
    "dmlab": (),
    "kitti": ("kitti_dist", "kitti_distance", "kitti_closest_vehicle_distance"),
    "dsprites_loc": ("dsprites_location", "dsprites_position", "dsprites_pos", "dsprites_x_position"),
    "dsprites_ori": ("dsprites_orientation", "dsprites_orient"),
    "smallnorb_azi": ("smallnorb_azimuth",),
    "smallnorb_ele": ("smallnorb_elevation", "smallnorb_elev"),
}
_FEWSHOT_ALIASES: dict[str, tuple[str, ...]] = {
    "fgvc_aircraft": ("aircraft", "fgvc_aircraft_2013b", "fgvcaircraft"),
    "food101": ("food_101", "food"),
    "oxford_flowers102": ("oxford_flowers", "oxford_flowers_102", "flowers102", "flowers_102", "flowers"),
    "oxford_pets": ("oxford_pet", "oxford_iiit_pet", "oxford_iiit_pets", "pets", "pet"),
    "stanford_cars": ("cars", "stanford_cars_196", "cars196"),
}

_REGISTRIES = {"vtab": (VTAB_TASKS, _VTAB_ALIASES, "VTAB-1K task"),
               "fewshot": (FEWSHOT_DATASETS, _FEWSHOT_ALIASES, "few-shot dataset")}


def _alias_table(aliases: dict[str, tuple[str, ...]]) -> dict[str, str]:
    table = {}
    for canonical, names in aliases.items():
        for name in (canonical, *names):
            table[name] = canonical
    return table


_ALIAS_TABLES = {kind: _alias_table(aliases) for kind, (_, aliases, _) in _REGISTRIES.items()}


def normalize_name(name: str) -> str:
    """Lower case, ``-``/space/dot -> ``_``, NOAH's ``-FS`` suffix dropped: how folder names vary."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")
    if key.endswith("_fs"):
        key = key[: -len("_fs")]
    return key


def task_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRIES)


def lookup_task(name: str, kind: str = "vtab") -> str | None:
    """Canonical name for ``name`` or ``None`` (no error): used when scanning folders."""
    return _ALIAS_TABLES[kind].get(normalize_name(name))


def canonical_task(name: str, kind: str = "vtab") -> str:
    """Resolve any alias to the canonical task name (``cifar100`` -> ``cifar``).

    ``kind`` picks the registry: ``"vtab"`` (default) or ``"fewshot"``; the two differ where the
    field names the same data differently (VTAB ``oxford_iiit_pet``, few-shot ``oxford_pets``).
    Unknown names raise a DataError listing the valid names.
    """
    if kind not in _REGISTRIES:
        raise DataError(f"unknown task registry '{kind}'; expected one of: {', '.join(_REGISTRIES)}")
    registry, _, what = _REGISTRIES[kind]
    found = lookup_task(name, kind)
    if found is not None:
        return found
    close = difflib.get_close_matches(normalize_name(name), list(_ALIAS_TABLES[kind]), n=1)
    suggestion = f" (did you mean '{_ALIAS_TABLES[kind][close[0]]}'?)" if close else ""
    raise DataError(f"unknown {what} '{name}'{suggestion}; expected one of: {', '.join(registry)}")


def aliases(name: str, kind: str = "vtab") -> list[str]:
    """Canonical name first, then its accepted aliases (normalised spelling)."""
    canonical = canonical_task(name, kind)
    return [canonical, *_REGISTRIES[kind][1][canonical]]


def find_task_dir(root: Path, canonical: str, kind: str) -> Path | None:
    """The sub-folder of ``root`` holding ``canonical`` under any alias spelling, or ``None``.

    An exact canonical name wins over aliases; among aliases the first in sorted order wins, so
    the choice is deterministic when a root holds two copies.
    """
    if not root.is_dir():
        return None
    matches = sorted(p for p in root.iterdir() if p.is_dir() and lookup_task(p.name, kind) == canonical)
    for path in matches:
        if path.name == canonical:
            return path
    return matches[0] if matches else None


def task_dirs(root: Path, kind: str) -> list[str]:
    """Names of the sub-folders of ``root`` that are known tasks (for error messages)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and lookup_task(p.name, kind) is not None)


def resolve_task_dir(root: Path, task: str | None, kind: str, has_lists: Callable[[Path], bool],
                     holding: str) -> tuple[str, Path]:
    """(canonical name, folder) of a task: ``root/<any alias>``, or ``root`` itself when it holds
    the lists (``has_lists``) and its name does not say it is another task. With ``task=None``
    the root must be a task folder named by an alias. ``holding`` describes the expected lists in
    error messages."""
    registry, _, what = _REGISTRIES[kind]  # what: "VTAB-1K task" / "few-shot dataset"
    names = ", ".join(registry)
    noun = what.split()[-1]
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; expected a {what.rsplit(' ', 1)[0]} root holding "
                        f"<{noun}>/{holding}")
    found = task_dirs(root, kind)
    found_here = f"; {noun} folders found in {root}: {', '.join(found)}" if found else ""
    if task is None:
        if not has_lists(root):
            raise DataError(f"{root}: not a {what} folder (no {holding}); pass a {noun} name, one of: "
                            f"{names}{found_here}")
        name = lookup_task(root.name, kind)
        if name is None:
            raise DataError(f"{root}: cannot tell the {what} from the folder name '{root.name}'; "
                            f"pass the {noun} name, one of: {names}")
        return name, root
    name = canonical_task(task, kind)
    directory = find_task_dir(root, name, kind)
    if directory is None:
        if not has_lists(root) or lookup_task(root.name, kind) not in (None, name):
            raise DataError(f"{root}: no folder for {what} '{name}'; expected {root / name}/ (or an alias: "
                            f"{', '.join(aliases(name, kind)[1:]) or 'none'}) holding {holding}{found_here}")
        directory = root
    return name, directory
