"""Cost of a content fingerprint (``heartlora.data.fingerprint``) on a task of many small images.

Writes an image-folder task of N JPEGs (default 20,000, 224x224 with noise: VTAB-like sizes) to a
temporary folder, then times, in the same run, on the same files:

- ``stat``: ``content_fingerprint(task)``, one ``os.stat`` per image (what a resume check costs);
- ``sha256``: ``content_fingerprint(task, content=True)``, every byte read and hashed;
- ``load_task``: loading the task itself, the reference a resume pays anyway.

The files were just written, so reads come from the page cache: ``sha256`` on a cold disk is
slower still (bounded by disk bandwidth), ``stat`` much less so (metadata only).

    python benchmarks/fingerprint_cost.py                 # 20,000 images
    python benchmarks/fingerprint_cost.py --images 2000 --size 64 --json cost.json
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from heartlora.data.fingerprint import content_fingerprint
from heartlora.data.loader import load_task

CLASSES = 10


def write_task(root: Path, images: int, size: int) -> int:
    """``root/{train,test}/class_<c>/<n>.jpg`` (90% train); returns the bytes written."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(16):  # a few distinct encodings, copied: encoding 20k JPEGs would dominate the run
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    total = 0
    for i in range(images):
        split = "test" if i % 10 == 9 else "train"
        folder = root / split / f"class_{(i // 10) % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        data = encoded[i % len(encoded)]
        (folder / f"{i:06d}.jpg").write_bytes(data)
        total += len(data)
    return total


def timed(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings each")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heartlora-fingerprint-") as tmp:
        root = Path(tmp)
        written = write_task(root, args.images, args.size)
        load_s, task = timed(lambda: load_task("folder", str(root), image_size=32), args.repeats)
        stat_s, stat = timed(lambda: content_fingerprint(task), args.repeats)
        sha_s, _ = timed(lambda: content_fingerprint(task, content=True), args.repeats)
    result = {"images": stat["images"], "mean_bytes": written / args.images, "load_task_s": load_s,
              "stat_s": stat_s, "sha256_s": sha_s, "sha256_over_stat": sha_s / stat_s,
              "stat_over_load_task": stat_s / load_s,
              "fingerprint_json_bytes": len(json.dumps(stat))}
    for key, value in result.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
