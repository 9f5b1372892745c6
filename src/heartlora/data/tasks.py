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

#: VTAB-1K: canonical task name -> number of classes.
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

#: The mini-VTAB (``heartlora data make-mini-vtab``, :mod:`heartlora.data.minivtab`): real images
#: built offline, task -> number of classes. Its tasks are folders of one's own in the VTAB-1K
#: layout (their ``classes.txt`` declares the classes); the names are no VTAB-1K alias.
MINI_VTAB_TASKS: dict[str, int] = {
    "digits": 10, "fmnist_orientation": 4, "fmnist_position": 9, "fmnist_count": 4, "fmnist_scale": 4,
}
MINI_VTAB_GROUPS: dict[str, list[str]] = {
    "natural": ["digits"],
    "structured": ["fmnist_orientation", "fmnist_position", "fmnist_count", "fmnist_scale"],
}

#: Suites of VTAB-layout tasks whose report tables have group means: name -> (title, groups).
#: The "Average (of groups)" of a suite is the mean of its group means.
TASK_SUITES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "vtab": ("VTAB-1K", VTAB_GROUPS),
    "mini-vtab": ("mini-VTAB", MINI_VTAB_GROUPS),
}


def suite_of(task: str) -> str | None:
    """The suite a VTAB-layout task belongs to (any VTAB-1K alias counts), or None (a task of one's own)."""
    if lookup_task(task, "vtab") is not None:
        return "vtab"
    for suite, (_, groups) in TASK_SUITES.items():
        if any(task in members for members in groups.values()):
            return suite
    return None


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
    "oxford_flowers102": ("oxford_flowers", "oxford_flowers_102", "flowers102", "flowers_102", "flowers",
                          "oxfordflowers"),
    "oxford_pets": ("oxford_pet", "oxford_iiit_pet", "oxford_iiit_pets", "pets", "pet", "oxfordpets"),
    "stanford_cars": ("cars", "stanford_cars_196", "cars196", "stanfordcars"),
}

#: Few-shot folder names exactly as the public copies spell them; each is also an alias.
#: ``noah``: NOAH's annotation tree ``data/few-shot/<folder>/annotations/`` (``standford-cars`` is
#: NOAH's own spelling, carried by every copy of its lists). ``coop``: the image folders of CoOp's
#: DATASETS.md, which NOAH's README points to for the images and its scripts pass as
#: ``--data-path ./data/<folder> --data-set <folder>-FS``.
FEWSHOT_FOLDERS: dict[str, dict[str, str]] = {
    "noah": {"fgvc_aircraft": "fgvc-aircraft", "food101": "food101", "oxford_flowers102": "oxford-flowers102",
             "oxford_pets": "oxford-pets", "stanford_cars": "standford-cars"},
    "coop": {"fgvc_aircraft": "fgvc_aircraft", "food101": "food-101", "oxford_flowers102": "oxford_flowers",
             "oxford_pets": "oxford_pets", "stanford_cars": "stanford_cars"},
}

_REGISTRIES = {"vtab": (VTAB_TASKS, _VTAB_ALIASES, "VTAB-1K task"),
               "fewshot": (FEWSHOT_DATASETS, _FEWSHOT_ALIASES, "few-shot dataset")}
_FOLDERS = {"vtab": {}, "fewshot": FEWSHOT_FOLDERS}
#: How names vary besides the aliases themselves (said in messages that list aliases).
SPELLING_NOTE = "case, '-', '.' and spaces do not matter; a '-FS' suffix is dropped"


def normalize_name(name: str) -> str:
    """Lower case, ``-``/space/dot -> ``_``, NOAH's ``-FS`` suffix dropped: how folder names vary."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")
    if key.endswith("_fs"):
        key = key[: -len("_fs")]
    return key


def _all_aliases(kind: str) -> dict[str, tuple[str, ...]]:
    """canonical -> its aliases: the written ones, then the distributed folder names not yet among them."""
    registry, written, _ = _REGISTRIES[kind]
    merged = {}
    for canonical in registry:
        names = list(written[canonical])
        for folders in _FOLDERS[kind].values():
            key = normalize_name(folders[canonical])
            if key != canonical and key not in names:
                names.append(key)
        merged[canonical] = tuple(names)
    return merged


_ALIASES = {kind: _all_aliases(kind) for kind in _REGISTRIES}
_ALIAS_TABLES = {kind: {name: canonical for canonical, names in table.items() for name in (canonical, *names)}
                 for kind, table in _ALIASES.items()}


def task_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRIES)


def lookup_task(name: str, kind: str = "vtab") -> str | None:
    """Canonical name for ``name`` or ``None`` (no error): used when scanning folders."""
    return _ALIAS_TABLES[kind].get(normalize_name(name))


def canonical_task(name: str, kind: str = "vtab") -> str:
    """Resolve any alias to the canonical task name (``cifar100`` -> ``cifar``).

    ``kind`` picks the registry: ``"vtab"`` (default) or ``"fewshot"``; the two differ where the
    field names the same data differently (VTAB ``oxford_iiit_pet``, few-shot ``oxford_pets``).
    Unknown names raise a DataError listing the valid names and the nearest alias.
    """
    if kind not in _REGISTRIES:
        raise DataError(f"unknown task registry '{kind}'; expected one of: {', '.join(_REGISTRIES)}")
    found = lookup_task(name, kind)
    if found is None:
        raise DataError(unknown_name_message(name, kind))
    return found


def aliases(name: str, kind: str = "vtab") -> list[str]:
    """Canonical name first, then its accepted aliases (normalised spelling)."""
    canonical = canonical_task(name, kind)
    return [canonical, *_ALIASES[kind][canonical]]


def nearest_alias(name: str, kind: str, canonical: str | None = None) -> str | None:
    """The accepted name closest to ``name`` (normalised), among all or only ``canonical``'s."""
    names = [alias for alias, owner in _ALIAS_TABLES[kind].items() if canonical in (None, owner)]
    close = difflib.get_close_matches(normalize_name(name), names, n=1)
    return close[0] if close else None


def _did_you_mean(name: str, kind: str) -> str:
    close = nearest_alias(name, kind)
    if close is None:
        return ""
    owner = _ALIAS_TABLES[kind][close]
    return f"did you mean '{owner}'?" if close == owner else f"did you mean '{owner}', alias '{close}'?"


def unknown_name_message(name: str, kind: str) -> str:
    registry, _, what = _REGISTRIES[kind]
    hint = _did_you_mean(name, kind)
    return (f"unknown {what} '{name}'{f' ({hint})' if hint else ''}; expected one of: {', '.join(registry)}, "
            f"or an alias of one ({SPELLING_NOTE})")


def _matching_dirs(root: Path, canonical: str, kind: str) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and lookup_task(p.name, kind) == canonical)


def find_task_dir(root: Path, canonical: str, kind: str,
                  has_lists: Callable[[Path], bool] | None = None) -> Path | None:
    """The sub-folder of ``root`` holding ``canonical`` under any alias spelling, or ``None``.

    A folder holding the lists (``has_lists``) wins over one without (a root may hold CoOp's
    image folder ``oxford_pets/`` beside NOAH's list folder ``oxford-pets/``); then an exact
    canonical name over aliases; then the first in sorted order, so the choice is deterministic.
    """
    matches = _matching_dirs(root, canonical, kind)
    if not matches:
        return None
    return min(matches, key=lambda p: (has_lists is not None and not has_lists(p), p.name != canonical, p.name))


def other_task_dirs(root: Path, directory: Path, kind: str) -> list[Path]:
    """The other sub-folders of ``root`` named for the same task as ``directory`` (sorted)."""
    canonical = lookup_task(directory.name, kind)
    if canonical is None or directory.parent != root:
        return []
    return [p for p in _matching_dirs(root, canonical, kind) if p != directory]


def describe_folders(root: Path, kind: str) -> str:
    """Every sub-folder of ``root`` with the task it is read as (for error messages)."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        return f"no folders in {root}"
    shown = []
    for folder in folders:
        canonical = lookup_task(folder, kind)
        shown.append(folder if canonical == folder else f"{folder} (= {canonical})" if canonical
                     else f"{folder} (no alias)")
    return f"folders found in {root}: {', '.join(shown)}"


def _near_folder_note(root: Path, canonical: str, kind: str) -> str:
    """Names the unrecognised folder closest to one of ``canonical``'s aliases, and that alias."""
    for folder in sorted(p.name for p in root.iterdir() if p.is_dir() and lookup_task(p.name, kind) is None):
        alias = nearest_alias(folder, kind, canonical)
        if alias is not None:
            return (f"; folder '{folder}' (read as '{normalize_name(folder)}') is no alias of '{canonical}': "
                    f"it would need the name '{alias}' (or pass {root / folder} itself as the data root)")
    return ""


def resolve_task_dir(root: Path, task: str | None, kind: str, has_lists: Callable[[Path], bool],
                     holding: str) -> tuple[str, Path]:
    """(canonical name, folder) of a task: ``root/<any alias>``, or ``root`` itself when it holds
    the lists (``has_lists``) and its name does not say it is another task. With ``task=None``
    the root must be a task folder named by an alias. ``holding`` describes the expected lists in
    error messages, which list every folder found under ``root`` and the alias it would need."""
    registry, _, what = _REGISTRIES[kind]  # what: "VTAB-1K task" / "few-shot dataset"
    names = ", ".join(registry)
    noun = what.split()[-1]
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; expected a {what.rsplit(' ', 1)[0]} root holding "
                        f"<{noun}>/{holding}")
    if task is None:
        if not has_lists(root):
            raise DataError(f"{root}: not a {what} folder (no {holding}); pass a {noun} name, one of: "
                            f"{names}; {describe_folders(root, kind)}")
        name = lookup_task(root.name, kind)
        if name is None:
            hint = _did_you_mean(root.name, kind)
            raise DataError(f"{root}: cannot tell the {what} from the folder name '{root.name}' (read as "
                            f"'{normalize_name(root.name)}'{f'; {hint}' if hint else ''}); pass the {noun} name, "
                            f"one of: {names}, or rename the folder to one of them or an alias")
        return name, root
    name = lookup_task(task, kind)
    if name is None:
        raise DataError(f"{unknown_name_message(task, kind)}; {describe_folders(root, kind)}")
    directory = find_task_dir(root, name, kind, has_lists)
    if directory is None:
        if not has_lists(root) or lookup_task(root.name, kind) not in (None, name):
            other = ", ".join(aliases(name, kind)[1:]) or "none"
            raise DataError(f"{root}: no folder for {what} '{name}'; expected {root / name}/ or a folder named "
                            f"by an alias ({other}; {SPELLING_NOTE}) holding {holding}; "
                            f"{describe_folders(root, kind)}{_near_folder_note(root, name, kind)}")
        directory = root
    return name, directory
