"""Cost of exact ablation scores: prefix-shared (blocks l…L per variant, variants stacked) against
full forward passes (1 + L·H per batch), paired per round, and their agreement.

    python benchmarks/ablation_cost.py --depth 12 --heads 12 --width 192 --image-size 32 --patch 4 --batch 16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import _cpu_model, paired_ratio, run_interleaved  # noqa: E402

from heartlora.methods.factory import apply  # noqa: E402
from heartlora.methods.lowrank import lowrank_layers  # noqa: E402
from heartlora.methods.responsiveness import ablation_scores  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=args.image_size,
                              patch_size=args.patch, embed_dim=args.width, depth=args.depth, num_heads=args.heads)
    apply(model, "heart-lora", ne=0)
    for layer in lowrank_layers(model):  # a trained-looking adapter: every head's delta matters
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator),
                torch.randint(0, 10, (args.batch,), generator=generator)) for _ in range(args.batches)]
    calls = {"full passes": lambda: ablation_scores(model, batches, share_prefix=False),
             "shared prefix": lambda: ablation_scores(model, batches)}
    exact, shared = calls["full passes"](), calls["shared prefix"]()
    difference = max(float((a - b).abs().max()) for a, b in zip(exact, shared))
    times = run_interleaved(calls, args.repeats, None, 0.0, torch.device("cpu"),
                            [("shared prefix", "full passes")])
    ratio, ci = paired_ratio(times["shared prefix"], times["full passes"])
    L, H = args.depth, args.heads
    result = {"cpu": _cpu_model(), "threads": args.threads, "depth": L, "heads": H, "width": args.width,
              "tokens": (args.image_size // args.patch) ** 2 + 1, "batch": args.batch, "rounds": args.repeats,
              "seconds": {k: sorted(v)[len(v) // 2] for k, v in times.items()},
              "shared_over_full": ratio, "ci95": ci, "max_abs_difference": difference,
              "block_passes_ratio": (L + H * L * (L + 1) / 2) / (L * (1 + L * H))}
    print(f"{L} blocks x {H} heads, width {args.width}, {result['tokens']} tokens, batch {args.batch}, "
          f"{args.repeats} paired rounds, {args.threads} thread(s), {result['cpu']}")
    print(f"full passes {result['seconds']['full passes']:.2f} s, shared prefix {result['seconds']['shared prefix']:.2f} s "
          f"per call; shared / full = {ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (block-pass count ratio "
          f"{result['block_passes_ratio']:.3f}); scores differ by at most {difference:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
