"""Training-step time and memory of heartlora's methods against the floor and PEFT's LoRA.

All configurations share one process, one model geometry, one batch. After warm-up they run
interleaved (A B C A B C …) so drifting machine load hits all of them alike; the report gives
medians, the spread (interquartile range / median) and ratios to the floor and to PEFT.

The floor is what any method that adapts every block must pay: the frozen backbone's forward
plus the backward pass to its input (no weight gradients).

Memory: on CUDA the peak allocated memory of one step; on CPU the bytes of tensors autograd
saves for backward (deduplicated by storage), which is where methods differ.

    python benchmarks/step_time.py --models vit_tiny_32 --batch 32 --repeats 15
    python benchmarks/step_time.py --models vit_tiny,vit_small,vit_base --batch 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import timm
import torch
import torch.nn.functional as F

import heartlora

MODELS = {
    # name: (timm name, kwargs, image size)
    "vit_tiny_32": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4), 32),
    "vit_tiny": ("vit_tiny_patch16_224", {}, 224),
    "vit_small": ("vit_small_patch16_224", {}, 224),
    "vit_base": ("vit_base_patch16_224", {}, 224),
}


@dataclass
class Config:
    name: str
    build: Callable[[torch.nn.Module], torch.nn.Module]
    floor: bool = False


def _heartlora(method: str, **options):
    def build(model):
        heartlora.apply(model, method, **options)
        if heartlora.get_state(model).options.get("select"):
            # a fixed selection: the cost after the scoring epochs
            sites = heartlora.find_attention_sites(model)
            heartlora.select_and_apply(model, [torch.arange(float(s.num_heads)) for s in sites])
        return model

    return build


def _scoring(method: str, **options):
    """heart-lora during its scoring epochs: all heads, taylor scores accumulated."""
    def build(model):
        heartlora.apply(model, method, **options)
        model._scorer = heartlora.HeadScorer(model, "taylor")
        return model

    return build


def _peft_lora(rank: int):
    def build(model):
        from peft import LoraConfig, inject_adapter_in_model

        for p in model.parameters():
            p.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.1, target_modules=["qkv"])
        model = inject_adapter_in_model(config, model)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
        return model

    return build


def _floor(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _linear(model):
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)
    return model


def configurations(heads: int, rank: int, include_peft: bool) -> list[Config]:
    configs = [
        Config("floor", _floor, floor=True),
        Config("linear", _linear),
        Config("lora", _heartlora("lora", rank=rank)),
        Config("heart-lora ne=0", _heartlora("heart-lora", rank=rank, ne=0)),
        Config(f"heart-lora ne={heads // 3}", _heartlora("heart-lora", rank=rank, ne=heads // 3)),
        Config("heart-lora scoring", _scoring("heart-lora", rank=rank, ne=heads // 3)),
        Config("bilora 1-bit", _heartlora("bilora", rank=rank, bits=1)),
    ]
    if include_peft:
        configs.append(Config("peft-lora", _peft_lora(rank)))
    return configs


class SavedBytes:
    """Bytes autograd keeps for backward during one forward (deduplicated by storage)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def make_step(model, config: Config, images, labels, device):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step(measure_memory: bool = False) -> int:
        x = images.detach().requires_grad_(True) if config.floor else images
        saved = SavedBytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack) if measure_memory else _nullctx():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x), labels)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return saved.total

    return step


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def bench_model(key: str, batch: int, repeats: int, warmup: int, rank: int, device, include_peft: bool,
                ablation: bool = True) -> dict:
    timm_name, kwargs, size = MODELS[key]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    probe = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs)
    heads = probe.blocks[0].attn.num_heads
    steps = {}
    memory = {}
    for config in configurations(heads, rank, include_peft):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).to(device).train()
        model = config.build(model).to(device)
        step = make_step(model, config, images, labels, device)
        for _ in range(warmup):
            step()
        memory[config.name] = step(measure_memory=True)
        steps[config.name] = step
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # interleaved
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), median, max(values)]
        rows[name] = {"median_s": median, "spread": (q[2] - q[0]) / median, "memory_bytes": memory[name]}
    floor, peft = rows["floor"], rows.get("peft-lora")
    for name, row in rows.items():
        row["vs_floor"] = row["median_s"] / floor["median_s"]
        row["memory_vs_floor"] = row["memory_bytes"] / max(floor["memory_bytes"], 1)
        if peft:
            row["vs_peft"] = row["median_s"] / peft["median_s"]
            row["memory_vs_peft"] = row["memory_bytes"] / max(peft["memory_bytes"], 1)
    rows["heart-lora scoring"]["taylor_overhead"] = (
        rows["heart-lora scoring"]["median_s"] / rows["heart-lora ne=0"]["median_s"] - 1.0
    )
    result = {"model": key, "timm": timm_name, "image_size": size, "batch": batch, "rank": rank, "rows": rows}
    result["inference"] = bench_inference(timm_name, kwargs, images, heads, rank, repeats, warmup, device)
    if ablation:
        result["ablation"] = bench_ablation(timm_name, kwargs, images, labels, heads, rank, device)
    return result


@torch.no_grad()
def bench_inference(timm_name, kwargs, images, heads, rank, repeats, warmup, device) -> dict:
    """Eval forward: plain backbone vs merged Heart-LoRA (and unmerged, for reference)."""
    def build(kind):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).to(device).eval()
        if kind != "backbone":
            _heartlora("heart-lora", rank=rank, ne=heads // 3)(model)
            if kind == "merged":
                heartlora.merge(model)
        return model.eval()

    models = {kind: build(kind) for kind in ("backbone", "merged", "unmerged")}
    times = {kind: [] for kind in models}
    for _ in range(warmup):
        for model in models.values():
            model(images)
    for _ in range(repeats):
        for kind, model in models.items():
            start = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[kind].append(time.perf_counter() - start)
    medians = {kind: statistics.median(v) for kind, v in times.items()}
    return {
        "median_s": medians,
        "merged_vs_backbone": medians["merged"] / medians["backbone"],
        "unmerged_vs_backbone": medians["unmerged"] / medians["backbone"],
    }


def bench_ablation(timm_name, kwargs, images, labels, heads, rank, device) -> dict:
    """Wall time of exact ablation scores on one batch (1 + L·H forward passes)."""
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).to(device)
    heartlora.apply(model, "heart-lora", rank=rank, ne=heads // 3)
    start = time.perf_counter()
    heartlora.ablation_scores(model, [(images, labels)])
    seconds = time.perf_counter() - start
    layers = len(heartlora.find_attention_sites(model))
    return {"seconds_per_batch": seconds, "forward_passes": 1 + layers * heads}


def print_table(result: dict) -> None:
    print(f"\n{result['model']} ({result['timm']}, {result['image_size']} px, batch {result['batch']}, rank {result['rank']})")
    print(f"{'configuration':<22}{'median ms':>10}{'spread':>8}{'/floor':>8}{'/peft':>8}{'mem MB':>9}{'mem/peft':>9}")
    for name, row in result["rows"].items():
        print(f"{name:<22}{row['median_s'] * 1e3:>10.1f}{row['spread']:>8.1%}{row['vs_floor']:>8.3f}"
              f"{row.get('vs_peft', float('nan')):>8.3f}{row['memory_bytes'] / 2**20:>9.1f}"
              f"{row.get('memory_vs_peft', float('nan')):>9.3f}")
    print(f"taylor scoring overhead: {result['rows']['heart-lora scoring']['taylor_overhead']:+.1%} of step time")
    inf = result["inference"]
    print(f"inference: merged/backbone {inf['merged_vs_backbone']:.3f}, unmerged/backbone {inf['unmerged_vs_backbone']:.3f}")
    abl = result.get("ablation")
    if abl:
        print(f"ablation scores: {abl['seconds_per_batch']:.2f} s per batch ({abl['forward_passes']} forward passes)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_tiny_32", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-peft", action="store_true", help="skip PEFT (not installed)")
    parser.add_argument("--no-ablation", action="store_true", help="skip timing ablation scores (1 + L·H forwards)")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu": _cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
    }
    print(json.dumps(info))
    results = []
    for key in args.models.split(","):
        result = bench_model(key.strip(), args.batch, args.repeats, args.warmup, args.rank, device, not args.no_peft,
                             ablation=not args.no_ablation)
        print_table(result)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=2)
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
