"""Training-step time and memory of heartlora's methods against the floor and PEFT's LoRA.

All configurations share one process, one model geometry, one batch. After warm-up they run
in interleaved rounds (A B C, C B A, A B C …) so drifting machine load hits all of them alike.
Ratios to the floor and to PEFT are paired: the median over rounds of this round's time over the
reference's time in the same round, with a distribution-free ~95 % confidence interval of that
median. ``--target-ci 0.01 --max-repeats 60`` adds rounds until every interval is within ±1 %,
which is how "repeat until the spread is below the effect" is made concrete. Absolute times are
reported as medians with their spread (interquartile range / median).

The floor is what any method that adapts every block must pay: the frozen backbone's forward
plus the backward pass to its input (no weight gradients).

Memory: on CUDA the peak allocated memory of one step; on CPU the bytes of tensors autograd
saves for backward (deduplicated by storage), which is where methods differ.

    python benchmarks/step_time.py --models vit_tiny_32 --batch 32 --repeats 15
    python benchmarks/step_time.py --models vit_base --batch 4 --repeats 15 --max-repeats 60 --target-ci 0.01
    python benchmarks/step_time.py --models vit_tiny,vit_small,vit_base --batch 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
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
from heartlora.methods.base import get_method
from heartlora.methods.lowrank import LowRankQKV
from heartlora.precision import autocast, resolve_amp

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
    amp: bool = False  # bf16 autocast (the " [bf16]" twin of a configuration)


BF16 = " [bf16]"


def precision_twins(configs: list[Config], precisions: list[str]) -> list[Config]:
    """Every configuration in each precision asked for; bf16 twins are named ``name [bf16]``."""
    out = []
    for config in configs:
        for p in precisions:
            out.append(config if p == "fp32" else Config(config.name + BF16, config.build, config.floor, amp=True))
    return out


def twin(name: str, precision_of: str) -> str:
    """``name``'s counterpart in the precision of ``precision_of`` (``floor`` ↔ ``floor [bf16]``)."""
    base = name[:-len(BF16)] if name.endswith(BF16) else name
    return base + BF16 if precision_of.endswith(BF16) else base


def _heartlora(method: str, **options):
    def build(model):
        heartlora.apply(model, method, **options)
        if get_method(method).selects_heads:
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


def select_configurations(configs: list[Config], only: list[str] | None) -> list[Config]:
    """Keep the named configurations (the floor always: every ratio needs it)."""
    if not only:
        return configs
    names = [c.name for c in configs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(map(repr, unknown))}; this model has {', '.join(names)}")
    return [c for c in configs if c.floor or c.name in only]


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
            with autocast(device, config.amp):
                loss = F.cross_entropy(model(x).float(), labels)
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


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Median and a distribution-free ~95 % confidence interval for it (binomial order statistics)."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(ordered), ordered[lo], ordered[hi]


def paired_ratio(values: list[float], reference: list[float]) -> tuple[float, list[float]]:
    """Median of the per-round ratios value/reference and its ~95 % CI. Pairing by round cancels
    the machine's drift, which moves both timings of one round alike."""
    median, lo, hi = median_ci([v / r for v, r in zip(values, reference)])
    return median, [lo, hi]


TAYLOR_PAIR = ("heart-lora scoring", "heart-lora ne=0")  # the same layer scoring vs not


def _timed(call: Callable[[], object], device, times: int = 1) -> float:
    """Seconds for ``times`` calls, device work included."""
    start = time.perf_counter()
    for _ in range(times):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_interleaved(steps: dict[str, Callable[[], object]], repeats: int, max_repeats: int | None,
                    target_ci: float, device, pairs: list[tuple[str, str]]) -> dict[str, list[float]]:
    """Rounds of one call per configuration, the order reversed every other round (so no
    configuration always follows the same one). After ``repeats`` rounds, keep going up to
    ``max_repeats`` until every paired ratio in ``pairs`` has a CI half-width ≤ ``target_ci``."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    limit = max(repeats, max_repeats or repeats)
    for round_index in range(limit):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            times[name].append(_timed(steps[name], device))
        if round_index + 1 >= repeats and target_ci > 0:
            widths = [(ci[1] - ci[0]) / 2 for ci in (paired_ratio(times[a], times[b])[1] for a, b in pairs)]
            if max(widths) <= target_ci:
                break
    return times


def _step_pairs(steps) -> list[tuple[str, str]]:
    """The ratios the report is about: every configuration against the floor and PEFT of its own
    precision, a bf16 twin against its fp32 configuration, and taylor scoring against the same
    layer not scoring."""
    pairs = [(name, twin("floor", name)) for name in steps if twin("floor", name) != name]
    pairs += [(name, twin("peft-lora", name)) for name in steps if twin("peft-lora", name) in steps
              and name.startswith(("heart-lora", "bilora", "lora"))]
    pairs += [(name, twin(name, "")) for name in steps if name.endswith(BF16) and twin(name, "") in steps]
    if all(name in steps for name in TAYLOR_PAIR):
        pairs.append(TAYLOR_PAIR)
    return pairs


def bench_model(key: str, batch: int, repeats: int, warmup: int, rank: int, device, include_peft: bool,
                ablation: bool = True, max_repeats: int | None = None, target_ci: float = 0.0,
                only: list[str] | None = None, precisions: tuple[str, ...] = ("fp32",), compile: bool = False) -> dict:
    timm_name, kwargs, size = MODELS[key]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    probe = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs)
    heads = probe.blocks[0].attn.num_heads
    steps = {}
    memory = {}
    for config in precision_twins(select_configurations(configurations(heads, rank, include_peft), only),
                                  list(precisions)):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).to(device).train()
        model = config.build(model).to(device)
        if compile:  # heartlora train --compile: the training forward through torch.compile
            model = torch.compile(model)
        step = make_step(model, config, images, labels, device)
        for _ in range(warmup):
            step()
        memory[config.name] = step(measure_memory=True)
        steps[config.name] = step
    times = run_interleaved(steps, repeats, max_repeats, target_ci, device, _step_pairs(steps))
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), median, max(values)]
        rows[name] = {"median_s": median, "spread": (q[2] - q[0]) / median, "memory_bytes": memory[name]}
    floor = rows.get("floor") or rows["floor" + BF16]
    for name, row in rows.items():
        own_floor, own_peft = twin("floor", name), twin("peft-lora", name)
        row["vs_floor"], row["vs_floor_ci"] = paired_ratio(times[name], times[own_floor])
        row["memory_vs_floor"] = row["memory_bytes"] / max(rows[own_floor]["memory_bytes"], 1)
        if own_peft in rows:
            row["vs_peft"], row["vs_peft_ci"] = paired_ratio(times[name], times[own_peft])
            row["memory_vs_peft"] = row["memory_bytes"] / max(rows[own_peft]["memory_bytes"], 1)
        if name.endswith(BF16) and twin(name, "") in rows:
            row["vs_fp32"], row["vs_fp32_ci"] = paired_ratio(times[name], times[twin(name, "")])
    scoring, not_scoring = TAYLOR_PAIR
    if scoring in rows and not_scoring in rows:
        ratio, ci = paired_ratio(times[scoring], times[not_scoring])
        rows[scoring]["taylor_overhead"] = ratio - 1.0
        rows[scoring]["taylor_overhead_ci"] = [ci[0] - 1.0, ci[1] - 1.0]
    result = {"model": key, "timm": timm_name, "image_size": size, "batch": batch, "rank": rank, "compiled": compile,
              "precisions": list(precisions), "rounds": len(next(iter(times.values()))), "rows": rows}
    result["taylor_work"] = bench_taylor_work(timm_name, kwargs, heads, rank, device)
    result["taylor_work"]["vs_floor_step"] = result["taylor_work"]["seconds_per_step"] / floor["median_s"]
    result["inference"] = bench_inference(timm_name, kwargs, images, heads, rank, repeats, warmup, device,
                                          max_repeats, target_ci)
    if ablation:
        result["ablation"] = bench_ablation(timm_name, kwargs, images, labels, heads, rank, device)
    return result


@torch.no_grad()
def bench_inference(timm_name, kwargs, images, heads, rank, repeats, warmup, device, max_repeats=None,
                    target_ci=0.0) -> dict:
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
    for _ in range(warmup):
        for model in models.values():
            model(images)
    calls = {kind: (lambda model=model: model(images)) for kind, model in models.items()}
    pairs = [("merged", "backbone"), ("unmerged", "backbone")]
    times = run_interleaved(calls, repeats, max_repeats, target_ci, device, pairs)
    result = {"median_s": {kind: statistics.median(v) for kind, v in times.items()}}
    for kind in ("merged", "unmerged"):
        result[f"{kind}_vs_backbone"], result[f"{kind}_vs_backbone_ci"] = paired_ratio(times[kind], times["backbone"])
    return result


def bench_taylor_work(timm_name, kwargs, heads, rank, device, calls: int = 200) -> dict:
    """The work taylor scoring adds to one training step, timed on its own: every layer's
    gradient hook (an elementwise product, a per-head sum and an index_add on B-sized tensors).
    Far below the step-time noise, so it is timed in isolation, many calls in a row."""
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).to(device)
    heartlora.apply(model, "heart-lora", rank=rank, ne=heads // 3)
    layers = [m for m in model.modules() if isinstance(m, LowRankQKV)]
    work = []
    for layer in layers:
        b_eff = layer.effective_B().detach()
        work.append((layer._taylor_hook(b_eff), torch.randn_like(b_eff)))  # the hook backward calls
    def one_step():
        for hook, grad in work:
            hook(grad)

    _timed(one_step, device)  # warm-up
    return {"seconds_per_step": _timed(one_step, device, calls) / calls, "layers": len(layers)}


def bench_ablation(timm_name, kwargs, images, labels, heads, rank, device) -> dict:
    """Wall time of exact ablation scores on one batch (1 + L·H forward passes)."""
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).to(device)
    heartlora.apply(model, "heart-lora", rank=rank, ne=heads // 3)
    seconds = _timed(lambda: heartlora.ablation_scores(model, [(images, labels)]), device)
    layers = len(heartlora.find_attention_sites(model))
    return {"seconds_per_batch": seconds, "forward_passes": 1 + layers * heads}


def _ci(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    lo, hi = row[key + "_ci"]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def print_table(result: dict) -> None:
    rows = result["rows"]
    rounds = result["rounds"]
    print(f"\n{result['model']} ({result['timm']}, {result['image_size']} px, batch {result['batch']}, "
          f"rank {result['rank']}, {rounds} rounds; ratios: median of per-round ratios [~95 % CI])")
    print(f"{'configuration':<27}{'median ms':>10}{'spread':>8}{'/floor':>24}{'/peft':>24}{'bf16/fp32':>24}"
          f"{'mem MB':>9}{'mem/peft':>9}")
    for name, row in rows.items():
        print(f"{name:<27}{row['median_s'] * 1e3:>10.1f}{row['spread']:>8.1%}{_ci(row, 'vs_floor'):>24}"
              f"{_ci(row, 'vs_peft'):>24}{_ci(row, 'vs_fp32'):>24}{row['memory_bytes'] / 2**20:>9.1f}"
              f"{row.get('memory_vs_peft', float('nan')):>9.3f}")
    scoring = rows.get("heart-lora scoring", {})
    if "taylor_overhead" in scoring:
        lo, hi = scoring["taylor_overhead_ci"]
        print(f"taylor scoring overhead: {scoring['taylor_overhead']:+.2%} of step time [{lo:+.2%}, {hi:+.2%}]")
    work = result["taylor_work"]
    print(f"taylor hook work timed alone: {work['seconds_per_step'] * 1e3:.3f} ms per step over {work['layers']} "
          f"layers = {work['vs_floor_step']:.3%} of the floor's step")
    inf = result["inference"]
    print(f"inference: merged/backbone {_ci(inf, 'merged_vs_backbone')}, "
          f"unmerged/backbone {_ci(inf, 'unmerged_vs_backbone')}")
    abl = result.get("ablation")
    if abl:
        print(f"ablation scores: {abl['seconds_per_batch']:.2f} s per batch ({abl['forward_passes']} forward passes)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_tiny_32", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (the minimum with --target-ci)")
    parser.add_argument("--max-repeats", type=int, default=None,
                        help="with --target-ci: keep adding rounds up to this many")
    parser.add_argument("--target-ci", type=float, default=0.0,
                        help="stop once every reported ratio's ~95%% CI half-width is at most this (e.g. 0.01)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--configs", default=None,
                        help="comma list of configuration names to time (the floor always runs), e.g. "
                             "'heart-lora ne=4,bilora 1-bit,peft-lora'")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-peft", action="store_true", help="skip PEFT (not installed)")
    parser.add_argument("--no-ablation", action="store_true", help="skip timing ablation scores (1 + L·H forwards)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "both"), default="auto",
                        help="auto: fp32 and bf16 autocast where bf16 is native (CUDA, CPUs with AMX), else fp32 only")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (as heartlora train --compile)")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    decision = resolve_amp("auto", device)
    precisions = {"fp32": ("fp32",), "bf16": ("bf16",), "both": ("fp32", "bf16"),
                  "auto": ("fp32", "bf16") if decision.enabled else ("fp32",)}[args.precision]
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu": _cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "amp_auto": decision.to_dict(), "precisions": list(precisions),
    }
    print(json.dumps(info))
    results = []
    for key in args.models.split(","):
        result = bench_model(key.strip(), args.batch, args.repeats, args.warmup, args.rank, device, not args.no_peft,
                             ablation=not args.no_ablation, max_repeats=args.max_repeats, target_ci=args.target_ci,
                             only=[c.strip() for c in args.configs.split(",")] if args.configs else None,
                             precisions=precisions, compile=args.compile)
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
