"""Trainable parameters and adapter bytes of every registered method on ViT-B/16 geometry, next to
the counts the literature reports (VTAB-1K tables of VPT, NOAH, FacT, Bi-LoRA).

The backbone is timm's ``vit_base_patch16_224`` with random weights (``pretrained=False``,
``num_classes=100``): counts depend only on the geometry. Nothing is trained. Parameters and bytes
exclude the classifier (76,900 parameters for 100 classes), as the tables do. "fp32-eq" is
adapter bytes / 4: the size in full-precision parameters, how quantised adapters (Bi-LoRA,
Bi-AdaptFormer) compare with fp32 ones.

    python benchmarks/count_params.py            # the table
    python benchmarks/count_params.py --json counts.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import timm
import torch

import heartlora
from heartlora.methods import noah, registered

# NOAH's released VTAB cifar100 retrain configuration (ZhangYuanhan-AI/NOAH,
# experiments/NOAH/subnet/VTAB/ViT-B_prompt_cifar100.yaml): per-layer VPT / LoRA / Adapter sizes.
NOAH_CIFAR100 = {
    "prompt": [10, 5, 10, 1, 5, 1, 10, 1, 10, 5, 1, 10],
    "lora": [10, 1, 5, 5, 1, 10, 1, 1, 1, 10, 1, 1],
    "adapter": [5, 10, 10, 10, 5, 1, 1, 1, 10, 10, 10, 1],
}

# (row label, method, options, literature count in M parameters or None, note)
ROWS = [
    ("full", "full", {}, 85.8, "every backbone parameter"),
    ("linear", "linear", {}, 0.0, "classifier only"),
    ("bitfit", "bitfit", {}, 0.10, "all biases incl. LayerNorm"),
    ("vpt-shallow", "vpt-shallow", {}, 0.06, "P=10 here; literature: task-tuned P, averaged"),
    ("vpt-deep", "vpt-deep", {}, 0.53, "P=10 here; literature: average over tasks of P in 1..200"),
    ("vpt-deep P=50", "vpt-deep", {"prompts": 50}, 0.53, "L·P·d = 0.46 M"),
    ("adapter", "adapter", {}, 0.16, "dim 8, with biases"),
    ("adaptformer", "adaptformer", {}, 0.16, "dim 8, with biases"),
    ("bi-adaptformer", "bi-adaptformer", {}, None, "dim 32, 1 bit, no bias: size counted in bits"),
    ("lora", "lora", {}, 0.29, "r=8 on q,v"),
    ("bilora", "bilora", {}, None, "r=32, 1 bit: size counted in bits"),
    ("heart-lora", "heart-lora", {}, None, "r=8 q,v, ne=3 of 12 heads off (after selection)"),
    ("heart-lora-layer", "heart-lora-layer", {}, None, "r=8 q,v, ne=3 per layer (after selection)"),
    ("heart-lora 1b r32", "heart-lora", {"bits": 1, "rank": 32}, None, "paper-lineage setting, after selection"),
    ("noah supernet", "noah", {}, None, "grids {0,1,5,10}: the supernet holds the largest sizes"),
    ("noah cifar100", "noah", {"subnet": NOAH_CIFAR100}, 0.43,
     "NOAH's released cifar100 sub-network (NOAH's own count +0.084 M, see below); 0.43 M = VTAB average"),
]


def measure(base: torch.nn.Module, method: str, options: dict) -> tuple[int, int]:
    model = copy.deepcopy(base)
    heartlora.apply(model, method, **options)
    state = heartlora.get_state(model)
    if state.options.get("select") is not None:  # Heart-LoRA: count after the heads are switched off
        scores = [torch.arange(g["num_heads"], dtype=torch.float32) for g in state.geometry]
        heartlora.select_and_apply(model, scores)
    return (heartlora.trainable_parameters(model, include_classifier=False),
            heartlora.adapter_bytes(model, include_classifier=False))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    missing = sorted(set(registered()) - {m for _, m, _, _, _ in ROWS})
    rows = [(m, m, {}, None, "defaults") for m in missing] + ROWS  # never leave a method out
    out = []
    print(f"{'method':<20}{'trainable (M)':>14}{'literature (M)':>16}{'adapter bytes':>15}{'(MB)':>9}"
          f"{'fp32-eq (M)':>13}  note")
    for label, method, options, literature, note in rows:
        params, nbytes = measure(base, method, options)
        lit = "-" if literature is None else f"{literature:.2f}"
        print(f"{label:<20}{params / 1e6:>14.4f}{lit:>16}{nbytes:>15,}{nbytes / 1e6:>9.3f}{nbytes / 4e6:>13.4f}  {note}")
        out.append({"row": label, "method": method, "options": options, "trainable": params,
                    "adapter_bytes": nbytes, "literature_M": literature, "note": note})
    net_model = heartlora.apply(copy.deepcopy(base), "noah")
    largest = noah.subnet_parameters(net_model, noah.noah_blocks(net_model).fixed)
    print(f"\nNOAH default search space: largest sub-network {largest / 1e6:.3f} M; NOAH searches under a "
          "budget (its evolution.py default --param-limits is 0.64 M).")
    extra = NOAH_CIFAR100["prompt"][0] * 768 + 100 * 768
    print(f"NOAH's code also counts a model-level first-layer prompt (p_0·d) and its position embedding "
          f"(100·d, the supernet's max prompt length) that block 0's prompts immediately replace: "
          f"+{extra / 1e6:.4f} M, i.e. "
          f"{(next(r['trainable'] for r in out if r['row'] == 'noah cifar100') + extra) / 1e6:.4f} M "
          "for cifar100 in NOAH's count.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
