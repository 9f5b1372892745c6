"""Many tasks on one backbone: a mixed batch through MultiTask vs merged models and PEFT, and a
load test of ``heartlora serve``.

For each task count T, one process times, in interleaved rounds (A B C, C B A, …, after warm-up):

* ``multitask``: one mixed batch of B images, sample i routed to task i mod T (LoRA adapters,
  equal class counts, all heads on: the case PEFT can run), routed by task segments (default);
* ``multitask dense``: the same model routed densely (every present task's columns, masked);
* ``multitask heart``: the same with Heart-LoRA adapters, different switched-off heads per task
  and different class counts (2 … 397 classes): the case PEFT cannot run;
* ``merged x1``: one merged model (adapter folded into qkv: the backbone's own cost) on the same
  B images — the reference of the 0.8x throughput target;
* ``merged xT``: T merged models, one after another, each on its B/T images;
* ``peft``: PEFT LoRA (``target_modules=["qkv"]``, same rank, per-task classifier as
  ``modules_to_save``) with T adapters and ``model(x, adapter_names=[...])``.

Ratios are paired (the median over rounds of this round's time over the reference's in the same
round, with a distribution-free ~95 % CI). Memory is the bytes of parameters and buffers each
configuration holds (shared tensors counted once); on CUDA also the peak allocated in a forward.

The load test starts ``heartlora serve`` in a subprocess on a free localhost port with T tasks
and runs N concurrent clients (asyncio + httpx) for at most ``--requests`` requests or
``--duration`` seconds: p50 / p99 latency, requests/s and errors.

    python benchmarks/multitask.py --model vit_tiny --batch 16 --tasks 1,2,4,8 --repeats 10
    python benchmarks/multitask.py --model vit_base --batch 64 --device cuda --clients 32 --requests 2000
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import MODELS, _cpu_model, median_ci, paired_ratio, run_interleaved  # noqa: E402

import heartlora  # noqa: E402
from heartlora.engine.build import new_classifier  # noqa: E402
from heartlora.fsio import atomic_write  # noqa: E402
from heartlora.methods.lowrank import lowrank_layers  # noqa: E402
from heartlora.serve.multitask import MultiTask  # noqa: E402

# VTAB-1K class counts, cycled for the heart-lora tasks
CLASS_COUNTS = (100, 102, 47, 102, 37, 10, 397, 2)
EQUAL_CLASSES = 100


def _backbone_factory(key: str):
    timm_name, kwargs, size = MODELS[key]
    torch.manual_seed(0)
    prototype = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs).eval()
    record = {"model": timm_name, "weights": None, "weights_sha256": None, "kwargs": dict(kwargs), "img_size": size,
              "seed": 0, "normalize": "none"}
    return (lambda: copy.deepcopy(prototype)), size, record


def _save_adapter(root: Path, name: str, make_backbone, method: str, options: dict, classes: int, seed: int,
                  switch_off: int, record: dict) -> Path:
    model = make_backbone()
    heartlora.apply(model, method, **options)
    new_classifier(model, classes)
    generator = torch.Generator().manual_seed(seed)
    if switch_off:
        heads = [s.num_heads for s in heartlora.find_attention_sites(model)]
        masks = []
        for h in heads:  # a different set per task and layer
            off = torch.randperm(h, generator=generator)[:switch_off]
            mask = torch.ones(h, dtype=torch.bool)
            mask[off] = False
            masks.append(mask)
        heartlora.apply_head_selection(model, masks)
    with torch.no_grad():
        for layer in lowrank_layers(model):
            layer.lora_B.normal_(0, 0.02, generator=generator)
    directory = root / name
    heartlora.save_adapter(model, directory)
    atomic_write(directory / "backbone.json", json.dumps({**record, "class_names": None}).encode())
    return directory


def _merged(make_backbone, directory: Path, classes: int, device) -> torch.nn.Module:
    model = make_backbone()
    new_classifier(model, classes)
    heartlora.load_adapter(model, directory)
    return heartlora.merge(model).to(device).eval()


def _peft(make_backbone, tasks: int, rank: int, classes: int, device):
    from peft import LoraConfig, get_peft_model

    base = make_backbone()
    base.reset_classifier(classes)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["qkv"], lora_dropout=0.0, modules_to_save=["head"])
    model = get_peft_model(base, config, adapter_name="t0")
    for t in range(1, tasks):
        model.add_adapter(f"t{t}", config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model.to(device).eval()


def _held_bytes(*modules) -> int:
    """Bytes of the parameters and buffers of ``modules``, each storage counted once."""
    seen, total = set(), 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            key = (tensor.device, tensor.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


def _peak(call, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device)


def bench_tasks(key: str, tasks: int, batch: int, rank: int, repeats: int, warmup: int, device, include_peft: bool,
                ne: int, amp: bool) -> dict:
    make_backbone, size, record = _backbone_factory(key)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    names = [f"t{i}" for i in range(tasks)]
    routing = [names[i % tasks] for i in range(batch)]
    groups = [[i for i in range(batch) if i % tasks == t] for t in range(tasks)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lora = {n: _save_adapter(root / "lora", n, make_backbone, "lora", {"rank": rank}, EQUAL_CLASSES, i, 0, record)
                for i, n in enumerate(names)}
        heart = {n: _save_adapter(root / "heart", n, make_backbone, "heart-lora-layer", {"rank": rank, "ne": ne},
                                  CLASS_COUNTS[i % len(CLASS_COUNTS)], 100 + i, ne, record)
                 for i, n in enumerate(names)}
        multitask = MultiTask(make_backbone(), lora).to(device)
        multitask_heart = MultiTask(make_backbone(), heart).to(device)
        merged = [_merged(make_backbone, lora[n], EQUAL_CLASSES, device) for n in names]
    peft = _peft(make_backbone, tasks, rank, EQUAL_CLASSES, device) if include_peft else None
    peft_names = [f"t{i % tasks}" for i in range(batch)]
    group_images = [images[g] for g in groups]

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)

    def run(call):
        def step():
            with torch.inference_mode(), autocast():
                return call()
        return step

    def routed(model, how):
        def call():
            model.routing = how
            return model(images, routing)
        return call

    steps = {
        "multitask": run(routed(multitask, "segments")),
        "multitask dense": run(routed(multitask, "dense")),
        "multitask heart": run(lambda: multitask_heart(images, routing)),
        "merged x1": run(lambda: merged[0](images)),
    }
    if tasks > 1:
        steps[f"merged x{tasks}"] = run(lambda: [m(x) for m, x in zip(merged, group_images)])
    if peft is not None:
        steps["peft"] = run(lambda: peft(images, adapter_names=peft_names))
    reference = "merged x1"
    for step in steps.values():
        for _ in range(warmup):
            step()
    pairs = [(n, reference) for n in steps if n != reference] + ([(n, "peft") for n in steps if n != "peft"]
                                                                 if peft is not None else [])
    times = run_interleaved(steps, repeats, None, 0.0, device, pairs)
    held = {"multitask": _held_bytes(multitask), "multitask dense": _held_bytes(multitask),
            "multitask heart": _held_bytes(multitask_heart),
            "merged x1": _held_bytes(merged[0]), f"merged x{tasks}": _held_bytes(*merged)}  # T copies of the backbone
    if peft is not None:
        held["peft"] = _held_bytes(peft)
    rows = []
    for name, values in times.items():
        median, lo, hi = median_ci(values)
        row = {"config": name, "ms": median * 1000, "ms_ci": [lo * 1000, hi * 1000], "images_per_s": batch / median,
               "held_bytes": held[name], "peak_bytes": _peak(steps[name], device)}
        if name != reference:
            row["vs_merged1"], row["vs_merged1_ci"] = paired_ratio(values, times[reference])
        if peft is not None and name != "peft":
            row["vs_peft"], row["vs_peft_ci"] = paired_ratio(values, times["peft"])
        rows.append(row)
    return {"model": key, "tasks": tasks, "batch": batch, "rank": rank, "ne": ne, "rounds": len(times[reference]),
            "reference": reference, "rows": rows}


def _fmt_ratio(row: dict, key: str) -> str:
    if key not in row:
        return "1.000" if key == "vs_merged1" else "–"
    lo, hi = row[f"{key}_ci"]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def print_table(results: list[dict]) -> None:
    print("\n| T | config | ms / batch | images/s | time / merged x1 [95 % CI] | time / PEFT [95 % CI] | held MB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for result in results:
        for row in result["rows"]:
            vs_merged = "1.000" if row["config"] == result["reference"] else _fmt_ratio(row, "vs_merged1")
            vs_peft = "1.000" if row["config"] == "peft" else _fmt_ratio(row, "vs_peft")
            print(f"| {result['tasks']} | {row['config']} | {row['ms']:.1f} | {row['images_per_s']:.1f} | {vs_merged} | "
                  f"{vs_peft} | {row['held_bytes'] / 2 ** 20:.1f} |")


# ----- load test of `heartlora serve` ---------------------------------------------------------------------
def _png(seed: int, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def _load(url: str, tasks: list[str], clients: int, requests: int, duration: float, size: int) -> dict:
    import httpx

    images = [_png(i, size) for i in range(16)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    stop_at = time.monotonic() + duration

    async def client_loop(client):
        for i in counter:
            if time.monotonic() > stop_at:
                return
            start = time.perf_counter()
            try:
                response = await client.post("/predict", files={"file": ("x.png", images[i % len(images)], "image/png")},
                                             data={"task": tasks[i % len(tasks)]})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
            except httpx.HTTPError as err:
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        wall = time.perf_counter() - start
        health = (await client.get("/health")).json()
    ordered = sorted(latencies)
    pick = (lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000) if ordered else (lambda q: None)
    return {"clients": clients, "ok": len(latencies), "errors": errors, "wall_s": wall,
            "requests_per_s": len(latencies) / wall if wall else None, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "mean_ms": statistics.mean(ordered) * 1000 if ordered else None, "batching": health.get("batching")}


def load_test(key: str, tasks: int, rank: int, clients: int, requests: int, duration: float, max_batch: int,
              max_wait_ms: float, device: str, threads: int | None) -> dict:
    make_backbone, size, record = _backbone_factory(key)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"t{i}" for i in range(tasks)]
        dirs = {n: _save_adapter(root, n, make_backbone, "heart-lora-layer", {"rank": rank, "ne": 1},
                                 CLASS_COUNTS[i % len(CLASS_COUNTS)], i, 1, record) for i, n in enumerate(names)}
        src = Path(__file__).resolve().parents[1] / "src"
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "heartlora.cli", "serve", "--port", "0", "--log-level", "warning",
                   "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--device", device,
                   *[a for n, d in dirs.items() for a in ("--task", f"{n}={d}")]]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            line = process.stdout.readline()
            if not line.startswith("heartlora serve: http://"):
                raise RuntimeError(f"heartlora serve did not start: {line!r}")
            url = line.split()[2]
            asyncio.run(_wait_healthy(url))
            result = asyncio.run(_load(url, names, clients, requests, duration, size))
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
    return {"model": key, "tasks": tasks, "max_batch": max_batch, "max_wait_ms": max_wait_ms, **result}


async def _wait_healthy(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/health")).json().get("status") == "ok":
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url}: not healthy after {timeout} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny", help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--tasks", default="1,2,4,8", help="comma list of task counts T")
    parser.add_argument("--batch", type=int, default=16, help="images in the mixed batch")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--ne", type=int, default=1, help="heads switched off per layer in the heart-lora tasks")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--no-peft", action="store_true", help="skip PEFT (not installed)")
    parser.add_argument("--clients", type=int, default=8, help="load test: concurrent clients (0: no load test)")
    parser.add_argument("--requests", type=int, default=200, help="load test: at most this many requests")
    parser.add_argument("--duration", type=float, default=60.0, help="load test: at most this many seconds")
    parser.add_argument("--serve-tasks", type=int, default=4, help="load test: tasks served")
    parser.add_argument("--max-batch", type=int, default=16, help="load test: server --max-batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="load test: server --max-wait-ms")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__}
    print(json.dumps(info))
    results = []
    for tasks in [int(t) for t in args.tasks.split(",")]:
        result = bench_tasks(args.model, tasks, args.batch, args.rank, args.repeats, args.warmup, device,
                             not args.no_peft, args.ne, args.amp)
        results.append(result)
        print_table([result])
    print(f"\n{args.model}, batch {args.batch}, rank {args.rank}, {results[0]['rounds']} rounds; all tasks:")
    print_table(results)
    load = None
    if args.clients > 0:
        load = load_test(args.model, args.serve_tasks, args.rank, args.clients, args.requests, args.duration,
                         args.max_batch, args.max_wait_ms, args.device, args.threads)
        print("\nload test of heartlora serve: " + json.dumps(load))
    if args.json:
        atomic_write(args.json, json.dumps({"info": info, "results": results, "load_test": load}, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
