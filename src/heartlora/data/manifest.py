"""Data manifests and their hash: which exact samples a run saw.

Each split is summarised by the sha256 of its canonical lines, ``"<relative path> <label>\\n"``
in list order after de-duplication (exactly the samples a dataset yields). Only paths relative
to the task folder enter, so the same data on two machines hashes the same.

``manifest_hash`` covers the *data* only: the class count and, per split name, the sample count
and split digest. Task name, file locations and which split plays train/eval are recorded in
the manifest but left out of the hash, so that ``heartlora data verify`` prints the same hash as
every run on that data records, whatever protocol the run used and wherever the list sits
(``annotations/`` or the dataset folder).
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

from .splits import Entry, Layout, SplitContent

MANIFEST_FORMAT = 1


def split_digest(entries: Iterable[Entry]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.path} {entry.label}\n".encode("utf-8"))
    return digest.hexdigest()


def split_record(rel: str, content: SplitContent) -> dict:
    return {"file": rel, "samples": len(content.entries), "sha256": split_digest(content.entries),
            "duplicates_removed": len(content.duplicates)}


def build_manifest(layout: Layout, contents: dict[str, SplitContent],
                   roles: tuple[str, str] | None = None) -> dict:
    """Manifest of every split read (in the layout's order); ``roles`` names train/eval if known."""
    manifest: dict = {
        "format": MANIFEST_FORMAT,
        "kind": layout.kind,
        "task": layout.name,
        "num_classes": layout.num_classes,
        "splits": {name: split_record(layout.splits[name].rel, content) for name, content in contents.items()},
    }
    if roles is not None:
        manifest["train_split"], manifest["eval_split"] = roles
    return manifest


def manifest_hash(manifest: dict) -> str:
    """sha256 hex over the data part of ``manifest`` (see module docstring)."""
    payload = {
        "format": manifest.get("format", MANIFEST_FORMAT),
        "num_classes": manifest["num_classes"],
        "splits": {name: {"samples": split["samples"], "sha256": split["sha256"]}
                   for name, split in manifest["splits"].items()},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
