"""Wall time of one small ``heartlora bench`` sweep on each executor of this machine.

The same 8 cells (2 synthetic VTAB tasks x linear, heart-lora x 2 seeds, a tiny random ViT) run
as a user runs them — a fresh ``heartlora bench`` process each time, into an empty ``--out`` — on

- ``local``: in-process, one cell after another (the default);
- ``local --parallel N``: a pool of N spawned worker processes;
- ``ray``: a local Ray instance started by the command (``--address local``), one task per cell
  with ``--cpus-per-cell`` CPUs.

Start-up costs are included (Python, torch, spawning workers, starting Ray), as they are for a
user. Executors alternate within each repeat; the table gives the median wall time and its ratio
to ``local`` measured in the same run. Records are checked to agree across executors.

    python benchmarks/sweep_executors.py                       # 8 cells, 2 repeats
    python benchmarks/sweep_executors.py --repeats 3 --parallel 2 --json sweep.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heartlora.data.synthetic import make_vtab

TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
        "--image-size", "32", "--warmup-epochs", "1", "--batch-size", "8", "--eval-every", "1", "--workers", "0",
        "--quiet", "--drop-path", "0", "--device", "cpu", "--no-check-images"]


def sweep_command(data: Path, out: Path, epochs: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "heartlora.cli", "bench", "vtab", *TINY, "--epochs", str(epochs), "--data", str(data),
            "--tasks", "cifar,eurosat", "--methods", "linear,heart-lora", "--seeds", "1,2", "--ne", "1",
            "--opt", "score_epochs=1", "--out", str(out), *extra]


def accuracies(out: Path) -> dict[str, float]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["protocols"]["paper"]["accuracy"]
            for p in sorted(out.rglob("run.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=64, help="per task")
    parser.add_argument("--parallel", type=int, default=2, help="local pool size and Ray CPUs in use")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args()

    executors = {"local": [], f"local --parallel {args.parallel}": ["--parallel", str(args.parallel)],
                 "ray (local instance)": ["--executor", "ray", "--address", "local", "--cpus-per-cell", "1"]}
    times: dict[str, list[float]] = {name: [] for name in executors}
    reference = None
    with tempfile.TemporaryDirectory(prefix="sweep-bench") as tmp:
        tmp = Path(tmp)
        make_vtab(tmp / "data", tasks=("cifar", "eurosat"), n_train=args.train_images, n_val=16, n_test=32,
                  image_size=32, num_classes=4)
        env = {**os.environ, "RAY_TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"}
        for repeat in range(args.repeats):
            for name, extra in executors.items():
                out = tmp / f"out-{repeat}-{len(times[name])}-{name.split()[0]}-{len(extra)}"
                start = time.perf_counter()
                subprocess.run(sweep_command(tmp / "data", out, args.epochs, extra), check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - start)
                found = accuracies(out)
                assert len(found) == 8, f"{name}: {len(found)} records"
                reference = reference or found
                assert found == reference, f"{name}: accuracies differ from the first executor's"
                print(f"repeat {repeat + 1}: {name:<24} {times[name][-1]:6.1f} s", file=sys.stderr)

    base = statistics.median(times["local"])
    print(f"8 cells, {args.epochs} epochs, {args.train_images} train images per task, {os.cpu_count()} CPUs, "
          f"{args.repeats} repeats\n")
    print("| executor | median wall time (s) | all runs (s) | ratio to local |\n|---|---:|---|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {median / base:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"times_s": times, "epochs": args.epochs,
                                               "train_images": args.train_images, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
