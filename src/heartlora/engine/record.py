"""The run record (``run.json``), its one owner: what a run was and what it measured.

Reports read only run records, so a record is self-contained: config, versions, device, seed,
data manifest hash, the per-epoch curve, both protocol numbers, the blocks of the method's own
schedule (Heart-LoRA's ``heads``), parameter and byte counts, peak memory, throughput and wall
time. It is written once, atomically, when
the run has finished; an unfinished run has a checkpoint and no ``run.json``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ..fsio import read_json_object
from .checkpoint import atomic_write_bytes

__all__ = ["RECORD_FORMAT", "RUN_NAME", "RecordError", "device_info", "git_commit", "peak_memory", "protocols",
           "read_run_record", "versions", "write_json"]

RUN_NAME = "run.json"
RECORD_FORMAT = 2  # 2: blocks of a method schedule (e.g. "heads") only for methods that have one


class RecordError(ValueError):
    """A run record that cannot be read: not JSON, not an object."""


def write_json(path: str | os.PathLike, value: dict) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def read_run_record(path: str | os.PathLike, required: bool = True) -> dict | None:
    """The run record of a run folder (or the ``run.json`` file itself), as a dict; ``None`` when
    there is none and it is not ``required``. Raises :class:`RecordError` naming the file and line."""
    path = Path(path)
    if path.is_dir() or path.name != RUN_NAME:
        path = path / RUN_NAME
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: not a finished run (no {RUN_NAME})")
        return None
    return read_json_object(path, "a run record (run.json, written by heartlora train)", RecordError)


def git_commit() -> dict | None:
    """Commit of the heartlora source tree, when it is a git checkout (editable installs)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def versions() -> dict:
    import numpy
    import timm

    from ..version import __version__

    return {
        "heartlora": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": numpy.__version__, "python": platform.python_version(), "git": git_commit(),
    }


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info.update(name=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
                    capability=".".join(map(str, torch.cuda.get_device_capability(index))))
    else:
        info.update(name=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    return info


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_allocated"}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        factor = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
        return {"bytes": int(rss * factor), "kind": "cpu_max_rss"}
    except (ImportError, OSError):
        return {"bytes": None, "kind": "unavailable"}


def protocols(evaluations: list[dict], split: str) -> dict:
    """Protocol numbers from the evaluation curve.

    ``paper``: best accuracy over the evaluations (what the VTAB-1K literature reports);
    ``final``: the last evaluation; ``clean``: the same final-epoch number when the run trained
    on the final split (train800val200 → test) — the clean protocol's number, valid when the
    hyper-parameters were chosen on a ``split=tune`` run; ``None`` for tune runs.
    """
    if not evaluations:
        return {"paper": None, "final": None, "clean": None}
    best = max(evaluations, key=lambda e: (e["accuracy"], -e["epoch"]))  # earliest of equal bests
    last = evaluations[-1]
    return {
        "paper": {"accuracy": best["accuracy"], "epoch": best["epoch"]},
        "final": {"accuracy": last["accuracy"], "epoch": last["epoch"]},
        "clean": last["accuracy"] if split == "final" else None,
    }
