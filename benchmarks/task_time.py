"""Wall time of one VTAB-format task, end to end through ``heartlora.engine.train``, with the
decoded-image cache off and on (``--cache off`` / ``--cache auto``).

Writes a synthetic VTAB-1K-layout task to a temporary folder — ``train800val200`` of ``--train``
JPEGs (80 % train800, 20 % val200) and a ``test`` split of ``--test`` JPEGs, ``--source-size``
pixels each (class colour, stripes and noise, as ``heartlora.data.synthetic``; a few distinct
encodings per class are copied, since encoding 10,000 JPEGs would dominate the script) — then
trains the same run twice, uncached first, in this process: a timm ViT with random weights,
Heart-LoRA (taylor scores during the first epoch, then selection), ``--epochs`` epochs with an
evaluation on test every ``--eval-every`` epochs and after the last. The run records split the
time (``curve`` entries of ``heartlora.engine.loop``):

- data: the training loop waiting for batches (decode + resize + augmentation + collation, or
  with the cache: pixels → tensor + collation);
- step: forward, backward and optimiser step (the rest of each training epoch);
- eval: evaluations (of which eval data: waiting for test batches);
- scoring: the method schedule's hooks (Heart-LoRA's selection; its taylor scores come from
  gradients the step computes anyway, so they are in ``step``);
- setup: everything else — backbone, reading the lists, the image check (uncached) or the
  cache build (cached: every image decoded once; its seconds are also shown alone), checkpoints.

Printed: one row per mode, the ratio uncached / cached of the data time per epoch, and whether
the two runs' losses and accuracies are bit-identical (they must be). ``--json FILE`` writes it all.

    python benchmarks/task_time.py                                   # 1,000 train / 10,000 test, 224 px
    python benchmarks/task_time.py --train 1000 --test 2000 --epochs 2 --eval-every 1 --threads 1
    python benchmarks/task_time.py --quick                           # seconds: a tiny task at 32 px
    python benchmarks/task_time.py --train 1000 --test 2000 --epochs 3 --image-size 224 --model-size base --json t.json
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from heartlora.config import RunConfig
from heartlora.data.synthetic import class_image
from heartlora.engine.loop import train

MODEL_SIZES = {"tiny": "vit_tiny_patch16_224", "small": "vit_small_patch16_224", "base": "vit_base_patch16_224"}
CLASSES = 10
ENCODINGS_PER_CLASS = 4
QUICK = {"train": 40, "test": 40, "epochs": 1, "image_size": 32, "source_size": "40x40", "batch": 8}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 400x300, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return width, height


def write_task(root: Path, n_train: int, n_test: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A VTAB-1K-layout task ``root/cifar`` (the name only picks the layout's label range)."""
    rng = np.random.default_rng(seed)
    width, height = size
    encoded = {}
    for label in range(CLASSES):
        for copy in range(ENCODINGS_PER_CLASS):
            image = class_image(label, CLASSES, max(width, height), rng).crop((0, 0, width, height))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            encoded[label, copy] = buffer.getvalue()
    task = root / "cifar"
    n_train800 = round(0.8 * n_train)
    lists: dict[str, list[str]] = {}
    for split, count in (("train800", n_train800), ("val200", n_train - n_train800), ("test", n_test)):
        folder = task / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(count):
            label = i % CLASSES
            (folder / f"{i:06d}.jpg").write_bytes(encoded[label, (i // CLASSES) % ENCODINGS_PER_CLASS])
            lines.append(f"images/{split}/{i:06d}.jpg {label}\n")
        lists[split] = lines
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (task / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    return task


def config_for(args: argparse.Namespace, data: Path, out: Path, cache: str) -> RunConfig:
    patch = args.patch_size or (16 if args.image_size >= 64 else 4)
    return RunConfig.from_dict({
        "model": args.model or MODEL_SIZES[args.model_size], "model_kwargs": {"patch_size": patch},
        "data": str(data), "task": "cifar", "image_size": args.image_size, "augment": args.augment,
        "workers": args.workers, "cache": cache, "cache_memory_mb": args.cache_memory_mb, "method": args.method,
        "epochs": args.epochs, "warmup_epochs": 1 if args.epochs > 1 else 0,
        "eval_every": args.eval_every, "batch_size": args.batch, "eval_batch_size": args.eval_batch,
        "drop_last": False, "device": args.device, "amp": args.amp, "quiet": not args.verbose, "out": str(out),
        "seed": 0,
    })


def breakdown(record: dict, wall: float) -> dict:
    """Seconds per part (see the module docstring) from a run record and the measured wall time."""
    curve = record["curve"]
    data = sum(e["data_seconds"] for e in curve)
    train_s = sum(e["seconds"] for e in curve)
    evaluation = sum(e.get("eval_seconds") or 0.0 for e in curve)
    eval_data = sum(e.get("eval_data_seconds") or 0.0 for e in curve)
    scoring = sum(e["schedule_seconds"] for e in curve)
    cache = record["data"]["cache"]
    build = sum(s.get("seconds") or 0.0 for s in cache["splits"].values() if not s.get("reused"))
    epochs, evals = len(curve), sum(1 for e in curve if e["eval_accuracy"] is not None)
    return {
        "wall_s": wall, "setup_s": wall - train_s - evaluation - scoring, "cache_build_s": build,
        "data_s": data, "step_s": train_s - data, "eval_s": evaluation, "eval_data_s": eval_data,
        "scoring_s": scoring, "epochs": epochs, "evaluations": evals,
        "data_per_epoch_s": data / epochs, "eval_data_per_evaluation_s": eval_data / max(evals, 1),
        "train_images_per_s_data": record["data"]["train_images"] * epochs / data if data > 0 else None,
        "train_images_per_s_step": record["data"]["train_images"] * epochs / (train_s - data) if train_s > data else None,
        "storage": {role: s["storage"] for role, s in cache["splits"].items()},
        "losses": [e["train_loss"] for e in curve], "accuracies": [e["eval_accuracy"] for e in curve],
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def format_table(runs: dict, ratios: dict) -> str:
    head = ("| cache | wall s | setup s (build) | data s/epoch | step s | eval s (data) | scoring s | "
            "data img/s | step img/s | storage |")
    lines = [head, "|---|" + "---:|" * 8 + "---|"]
    for mode, r in runs.items():
        storage = ", ".join(f"{k}: {v}" for k, v in r["storage"].items())
        lines.append(f"| {mode} | {r['wall_s']:.1f} | {r['setup_s']:.1f} ({r['cache_build_s']:.1f}) | "
                     f"{r['data_per_epoch_s']:.2f} | {r['step_s']:.1f} | {r['eval_s']:.1f} ({r['eval_data_s']:.1f}) | "
                     f"{r['scoring_s']:.2f} | {r['train_images_per_s_data'] or 0:.0f} | "
                     f"{r['train_images_per_s_step'] or 0:.1f} | {storage} |")
    def show(value):
        return "n/a" if value is None else f"{value:.2f}x"

    lines.append("")
    lines.append(f"uncached / cached: data time per epoch {show(ratios['data_per_epoch'])}, eval data per "
                 f"evaluation {show(ratios['eval_data_per_evaluation'])}, data + eval data + setup (the cache build "
                 f"or the image check) {show(ratios['data_path_total'])}, wall {show(ratios['wall'])}")
    lines.append(f"losses and accuracies bit-identical: {'yes' if ratios['identical'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train", type=int, default=1000, help="training images (train800val200)")
    parser.add_argument("--test", type=int, default=10_000, help="test images")
    parser.add_argument("--image-size", type=int, default=224, help="the run's image size (Resize((S, S)))")
    parser.add_argument("--source-size", type=_size, default="400x300", help="JPEG size WIDTHxHEIGHT on disk")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (scaled down from 100 for a CPU)")
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate on test every E epochs (and after the last)")
    parser.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="tiny", help="timm ViT, random init")
    parser.add_argument("--model", default=None, help="a timm model name instead of --model-size")
    parser.add_argument("--patch-size", type=int, default=None, help="default: 16, or 4 below 64 px")
    parser.add_argument("--method", default="heart-lora")
    parser.add_argument("--augment", action="store_true",
                        help="the few-shot training augmentation (flip + colour jitter, per epoch either way)")
    parser.add_argument("--batch", type=int, default=64, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=128, help="evaluation batch")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in the training process)")
    parser.add_argument("--cache-memory-mb", type=int, default=2048, help="--cache-memory-mb of the cached run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    parser.add_argument("--quick", action="store_true", help="a tiny task in seconds: other defaults "
                        f"({', '.join(f'{k}={v}' for k, v in QUICK.items())})")
    parser.add_argument("--keep", default=None, metavar="DIR", help="write data and runs here and keep them")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--verbose", action="store_true", help="the runs' per-epoch lines")
    args = parser.parse_args(argv)
    if args.quick:  # tiny defaults; options given explicitly still win
        for key, value in QUICK.items():
            default = parser.get_default(key)
            if getattr(args, key) == (_size(default) if key == "source_size" else default):
                setattr(args, key, _size(value) if key == "source_size" else value)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="backbone .* randomly initialised")
    warnings.filterwarnings("ignore", message="option 'epochs'")

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="heartlora-task-time-"))
    try:
        start = time.perf_counter()
        write_task(base / "data", args.train, args.test, args.source_size)
        print(f"wrote {args.train} + {args.test} JPEGs ({args.source_size[0]}x{args.source_size[1]}) in "
              f"{time.perf_counter() - start:.1f} s to {base / 'data'}", file=sys.stderr)
        runs, records = {}, {}
        for mode in ("off", "auto"):  # uncached first: both read the JPEGs from the page cache
            out = base / f"run-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            records[mode] = train(config_for(args, base / "data", out, mode))
            runs[mode] = breakdown(records[mode], time.perf_counter() - start)
            print(f"cache {mode}: {runs[mode]['wall_s']:.1f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    off, auto = runs["off"], runs["auto"]
    ratios = {
        "data_per_epoch": _ratio(off["data_per_epoch_s"], auto["data_per_epoch_s"]),
        "eval_data_per_evaluation": _ratio(off["eval_data_per_evaluation_s"], auto["eval_data_per_evaluation_s"]),
        "data_path_total": _ratio(off["data_s"] + off["eval_data_s"] + off["setup_s"],
                                  auto["data_s"] + auto["eval_data_s"] + auto["setup_s"]),
        "wall": _ratio(off["wall_s"], auto["wall_s"]),
        "identical": off["losses"] == auto["losses"] and off["accuracies"] == auto["accuracies"],
    }
    device = records["auto"]["device"]
    result = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "model": records["auto"]["model"]["name"], "device": device.get("name"), "device_type": device["type"],
        "torch_threads": torch.get_num_threads(), "amp": records["auto"]["amp"], "platform": platform.platform(),
        "runs": runs, "ratios": ratios,
    }
    print(f"{result['model']} on {device['type']} ({device.get('name')}), {torch.get_num_threads()} torch thread(s), "
          f"{args.train} train / {args.test} test images at {args.image_size} px, {args.epochs} epoch(s), "
          f"eval every {args.eval_every}{', augmented' if args.augment else ''}")
    print(format_table(runs, ratios))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
