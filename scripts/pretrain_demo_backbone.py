#!/usr/bin/env python
"""Pretrain heartlora's small demo ViT backbone from scratch on Fashion-MNIST.

The result ships inside the package (``src/heartlora/assets``) so that demos and
tests can run fully offline with a real, trained backbone instead of random
weights.  Nothing is downloaded: the Fashion-MNIST idx files are read with numpy
from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``)
or from ``--data DIR``.

Architecture: a timm ``VisionTransformer`` built with
``timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32,
patch_size=4, embed_dim=192, depth=6, num_heads=6, num_classes=10,
drop_path_rate=0.1)``.  Why this shape:

* 32x32 input with 4x4 patches gives 64 patch tokens (+ class token), fine enough
  for 28x28 garments padded to 32x32;
* 6 blocks x 6 heads = 36 attention heads with head dim 32 (width 192): enough
  heads per layer, and enough layers, for Heart-LoRA's head responsiveness and
  head selection to make a measurable difference, while staying small enough
  (~2.7 M parameters) to train on one CPU core within the budget and to ship as a
  ~5 MB fp16 file.

Recipe: inputs scaled to [0, 1], no mean/std normalisation (the project's default
``normalisation`` is ``none``), grey replicated to 3 channels; light augmentation
(random crop with zero padding 2, horizontal flip); AdamW, cosine LR with linear
warm-up (per step), label smoothing 0.1, batch 128; torch, numpy and python RNGs
seeded.  The test split is used only to report accuracy after each epoch, never
for model selection: the weights saved are those after the last epoch.

Resumable: after every epoch the whole training state (weights, optimiser, data-order and
augmentation generator, global RNGs, history) is written atomically to
``--work/checkpoint.pt``; running the same command again continues after the last finished
epoch and ends with the same weights as an uninterrupted run (other arguments are refused).
So the training can span several sittings on a small CPU.

Outputs (in ``--out``): ``demo_vit_fmnist.safetensors`` (backbone incl. the
10-class head, fp16 if fp16 keeps test accuracy within 0.1 points of fp32, else
fp32) and ``demo_vit_fmnist.json`` (everything needed to recreate and check it:
``timm.create_model(meta['model_name'], pretrained=False, **meta['model_kwargs'])``
then ``load_state_dict`` of the safetensors weights cast to float32).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heartlora.data.minivtab import read_idx  # the package's one idx reader
from heartlora.tensorfile import safetensors_bytes  # sorted metadata: the same weights give the same sha256

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MODEL_NAME = "vit_tiny_patch16_224"
MODEL_KWARGS = dict(
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=6,
    num_heads=6,
    num_classes=10,
    drop_path_rate=0.1,
)
STEM = "demo_vit_fmnist"
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


# ----------------------------------------------------------------------------- data
def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        p = data_dir / name
        if p.exists():
            return p
    raise FileNotFoundError(f"{stem}[.gz] not found in {data_dir}")


def load_split(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 [N, 1, 32, 32] (28x28 zero-padded by 2), labels as int64 [N]."""
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    assert x.shape[1:] == (28, 28) and len(x) == len(y)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))  # 28x28 -> 32x32, background is 0
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def to_input(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,1,H,W] -> float [B,3,H,W] in [0, 1] (grey replicated)."""
    return (x_u8.float() / 255.0).expand(-1, 3, -1, -1).contiguous()


def augment(x_u8: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per sample."""
    b, c, h, w = x_u8.shape
    xp = F.pad(x_u8, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None, :])  # [B, H]
    cols = (ox[:, None] + torch.arange(w)[None, :])  # [B, W]
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b)[:, None, None]
    out = xp[bi, 0, rows[:, :, None], cols[:, None, :]]  # [B, H, W]
    return out.unsqueeze(1)


# ----------------------------------------------------------------------------- model
def build_model(**overrides) -> torch.nn.Module:
    import timm

    return timm.create_model(MODEL_NAME, pretrained=False, **{**MODEL_KWARGS, **overrides})


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             dtype: torch.dtype = torch.float32, bs: int = 128, amp: bool = False) -> float:
    """Top-1 accuracy in percent, fp32 compute unless ``amp`` (bf16 autocast).

    ``dtype`` simulates stored weights: they are rounded to ``dtype`` and back to fp32,
    exactly what a loader that casts the stored file to fp32 sees.
    """
    model.eval()
    if dtype != torch.float32:
        backup = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict({k: v.to(dtype).float() if v.is_floating_point() else v
                               for k, v in backup.items()})
    correct = 0
    for i in range(0, len(x), bs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(to_input(x[i:i + bs]))
        correct += (logits.argmax(1) == y[i:i + bs]).sum().item()
    if dtype != torch.float32:
        model.load_state_dict(backup)
    return 100.0 * correct / len(x)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None,
                    help=f"directory with Fashion-MNIST idx files (default: {DEBIAN_DIR})")
    ap.add_argument("--epochs", type=int, default=25)  # the shipped v2 recipe
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("src/heartlora/assets"))
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--amp", choices=["bf16", "none"], default="bf16",
                    help="bf16 autocast for training and per-epoch eval (fp32 master weights; "
                         "~2x faster on CPUs with avx512_bf16); final accuracies are fp32")
    ap.add_argument("--work", type=Path, default=Path("runs/pretrain_demo_backbone"),
                    help="folder of the per-epoch checkpoint; rerunning the same command resumes from it")
    ap.add_argument("--sitting-epochs", type=int, default=None, metavar="N",
                    help="stop after N more epochs (checkpoint kept); run the same command again to continue")
    ap.add_argument("--train-subset", type=int, default=None, metavar="N",
                    help="train on the first N training images only (smoke tests of the script)")
    ap.add_argument("--calibrate", type=int, default=0, metavar="STEPS",
                    help="only time STEPS training steps and exit (writes nothing)")
    args = ap.parse_args(argv)
    t_proc = time.perf_counter()

    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data_dir = args.data if args.data is not None else DEBIAN_DIR
    xtr, ytr = load_split(data_dir, "train")
    xte, yte = load_split(data_dir, "test")
    if args.train_subset:
        xtr, ytr = xtr[:args.train_subset], ytr[:args.train_subset]
    print(f"data: {data_dir}  train {tuple(xtr.shape)}  test {tuple(xte.shape)}", flush=True)

    model = build_model()
    # Explicit (non-fused) attention: identical maths and weights, but on CPU the fused
    # SDPA kernel's backward is very slow for 65 tokens x head dim 32 (~45% of a step).
    for blk in model.blocks:
        blk.attn.fused_attn = False
    amp = args.amp == "bf16"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {MODEL_NAME} {MODEL_KWARGS}  params {n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(xtr) // args.batch_size  # drop last partial batch
    total = steps_per_epoch * max(args.epochs, 1)
    warm = max(1, int(args.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    crit = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    def train_step(idx: torch.Tensor, step: int) -> float:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        xb = to_input(augment(xtr[idx], gen))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = crit(model(xb).float(), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    if args.calibrate:
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        t0 = time.perf_counter()
        for s in range(args.calibrate):
            if s == 5:
                t0 = time.perf_counter()  # skip warm-up steps
            train_step(perm[s * args.batch_size:(s + 1) * args.batch_size], s)
        dt = (time.perf_counter() - t0) / (args.calibrate - 5)
        te = time.perf_counter()
        evaluate(model, xte[:2000], yte[:2000], amp=amp)
        ev = (time.perf_counter() - te) * 5
        print(f"calibrate: {dt:.3f} s/step, {dt * steps_per_epoch:.0f} s/epoch train "
              f"+ {ev:.0f} s eval ({args.threads} threads)", flush=True)
        return 0

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("threads", "work", "out", "calibrate", "sitting_epochs")}
    ckpt_path = args.work / "checkpoint.pt"
    first_epoch, step, history, prior_wall = 0, 0, [], 0.0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["settings"] != settings:
            diff = {k: (ckpt["settings"].get(k), v) for k, v in settings.items() if ckpt["settings"].get(k) != v}
            raise SystemExit(f"{ckpt_path}: written with other settings {diff} (checkpoint, now); "
                             "use the same arguments or another --work folder")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        np.random.set_state(ckpt["numpy_rng"])
        random.setstate(ckpt["python_rng"])
        first_epoch, step, history, prior_wall = ckpt["epoch"] + 1, ckpt["step"], ckpt["history"], ckpt["train_wall"]
        print(f"resuming from {ckpt_path} after epoch {first_epoch}/{args.epochs}", flush=True)

    def save_checkpoint(epoch: int, wall: float) -> None:
        args.work.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save({"settings": settings, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
                    "epoch": epoch, "step": step, "history": history, "train_wall": wall}, tmp)
        os.replace(tmp, ckpt_path)

    start = time.perf_counter() - prior_wall
    acc = history[-1]["test_acc"] if history else float("nan")
    last_epoch = args.epochs if args.sitting_epochs is None else min(args.epochs, first_epoch + args.sitting_epochs)
    for epoch in range(first_epoch, last_epoch):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot_loss = 0.0
        for i in range(steps_per_epoch):
            tot_loss += train_step(perm[i * args.batch_size:(i + 1) * args.batch_size], step)
            step += 1
        last = epoch == args.epochs - 1
        acc = evaluate(model, xte, yte, amp=amp and not last)  # final epoch: exact fp32
        print(f"epoch {epoch + 1}/{args.epochs}  train_loss {tot_loss / steps_per_epoch:.4f}  "
              f"test_acc{'(bf16)' if amp and not last else ''} {acc:.2f}  elapsed {time.perf_counter() - start:.0f}s", flush=True)
        history.append({"epoch": epoch + 1, "train_loss": round(tot_loss / steps_per_epoch, 4), "test_acc": round(acc, 2),
                        "test_acc_precision": "bf16" if amp and not last else "fp32"})
        save_checkpoint(epoch, time.perf_counter() - start)
    train_wall = time.perf_counter() - start
    if last_epoch < args.epochs:
        print(f"stopped after epoch {last_epoch}/{args.epochs} (--sitting-epochs); checkpoint {ckpt_path}; "
              "run the same command again to continue", flush=True)
        return 0

    acc32 = acc  # fp32 evaluation after the last epoch
    acc16 = evaluate(model, xte, yte, dtype=torch.float16)
    store_dtype = torch.float16 if abs(acc32 - acc16) <= 0.1 else torch.float32
    acc_stored = acc16 if store_dtype == torch.float16 else acc32
    print(f"test_acc fp32 {acc32:.2f}  fp16 {acc16:.2f}  -> storing {store_dtype}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    st_path = args.out / f"{STEM}.safetensors"
    state = {k: v.detach().to(store_dtype).contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in model.state_dict().items()}
    st_path.write_bytes(safetensors_bytes(state, metadata={"format": "pt", "model_name": MODEL_NAME}))
    os.chmod(st_path, 0o644)
    digest = sha256_of(st_path)

    import timm

    meta = {
        "model_name": MODEL_NAME,
        "model_kwargs": MODEL_KWARGS,
        "recreate": f"timm.create_model({MODEL_NAME!r}, pretrained=False, **model_kwargs)",
        "num_classes": MODEL_KWARGS["num_classes"],
        "class_names": CLASSES,
        "image_size": [3, MODEL_KWARGS["img_size"], MODEL_KWARGS["img_size"]],
        "input": "grey 28x28 zero-padded to 32x32, replicated to 3 channels, scaled to [0, 1]",
        "normalisation": "none",
        "weights_file": st_path.name,
        "weights_dtype": str(store_dtype).replace("torch.", ""),
        "sha256": digest,
        "num_params": n_params,
        "dataset": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), 60k train / 10k test",
        "dataset_source": ("Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)"
                           if args.data is None else f"idx files from {args.data}"),
        "training_command": " ".join(shlex.quote(a) for a in [
            "python", "scripts/pretrain_demo_backbone.py",
            *(sys.argv[1:] if argv is None else argv)]),
        "recipe": {
            "optimizer": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
            "schedule": "linear warm-up then cosine to 0, per step",
            "warmup_epochs": args.warmup_epochs, "batch_size": args.batch_size,
            "label_smoothing": args.label_smoothing,
            "augmentation": "random crop 32 with zero padding 2, horizontal flip p=0.5",
            "model_selection": "none (weights after the last epoch)",
            "mixed_precision": "bf16 autocast, fp32 master weights" if amp else "none (fp32)",
        },
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "history": history,  # test accuracy after each epoch: reported only, never used to pick weights
        "train_wall_time_s": round(train_wall, 1),  # training + per-epoch evaluation
        "wall_time_s": round(time.perf_counter() - t_proc, 1),  # whole run up to this file
        "test_accuracy_fp32": round(acc32, 2),
        "test_accuracy_stored": round(acc_stored, 2),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "timm": timm.__version__, "numpy": np.__version__},
    }
    json_path = args.out / f"{STEM}.json"
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {st_path} ({st_path.stat().st_size:,} bytes, sha256 {digest})", flush=True)
    print(f"wrote {json_path}", flush=True)
    print(f"total wall {time.perf_counter() - t_proc:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
