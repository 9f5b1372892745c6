"""The training loop: recipe, Heart-LoRA schedule, evaluation, checkpoints and the run record.

``train(config)`` runs one (model, method, data, schedule) cell and returns its run record.

Heart-LoRA schedule (methods whose resolved options have ``select``: heart-lora,
heart-lora-layer): the first ``score_epochs`` epochs (option of the method; ``None`` → the
warm-up length, capped to ``epochs - 1`` so at least one epoch trains with the mask, and at
least 1) train all heads inside ``heartlora.HeadScorer(model, score)``; ``score='ablation'``
instead measures ``heartlora.ablation_scores`` on ``ablation_batches`` training batches at the
end of that phase. Then ``heartlora.select_and_apply(model, scores, optimizer)`` switches off
the least responsive heads (their blocks are removed from the parameters *and* the optimiser
state) and training continues. With ``restart`` the adapter layers (``reset_parameters``) and
the classifier are re-initialised and a new optimiser is built; the lr schedule continues on
the global epoch count. ``score_epochs = 0`` selects before the first epoch.
Evaluations after epochs with ``(e + 1) % eval_every == 0`` and after the last epoch come
*after* a selection made at the same epoch, so they measure the adapter that is stored.

Reproducibility and resume: see :mod:`heartlora.engine.seeding`. A checkpoint is written after
every epoch; ``resume=True`` rebuilds the model from the config (same construction order and
seed), re-applies the saved head selection, loads trainable tensors, optimiser state and
partial scores, and replays the remaining epochs with the same per-epoch seeds.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import (
    HeadScorer,
    ablation_scores,
    adapter_bytes,
    apply_head_selection,
    get_state,
    save_adapter,
    select_and_apply,
    trainable_parameters,
)
from ..config import ConfigError, RunConfig
from ..responsiveness import restore_scoring_state, scoring_paused, scoring_state
from ..methods.base import adapter_layers
from ..models import sha256_file
from .build import build, check_method, config_diff, method_summary, new_classifier, probe_method, resolve_amp, resolve_device
from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    model_state,
    restore_model_state,
    save_checkpoint,
)
from .record import RECORD_FORMAT, RUN_NAME, device_info, peak_memory, protocols, versions, write_json
from .schedule import CosineSchedule
from .seeding import capture_rng, derive_seed, restore_rng, seed_all

__all__ = ["ADAPTER_DIR", "BACKBONE_NAME", "evaluate", "train"]

ADAPTER_DIR = "adapter"
BACKBONE_NAME = "backbone.json"  # beside adapter_config.json: how to rebuild the backbone for `heartlora eval`
# Settings that may change between a run and its resumption (the data and weights are compared
# by their manifest hash / sha256 instead of their paths).
RESUME_MAY_CHANGE = {"out", "resume", "quiet", "compile", "device", "data.workers", "data.check_images", "data.root",
                     "model.weights"}

Callback = Callable[[int, dict], None]


# ------------------------------------------------------------------------------- evaluation
def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 64, *, device: torch.device | str | None = None,
             workers: int = 0, amp: bool | None = None, progress: bool = False) -> float:
    """Top-1 accuracy in percent of ``model`` on ``dataset`` (items ``(image, label)``).

    ``amp=None``: bf16 autocast on CUDA, fp32 elsewhere. The model's train/eval mode is restored.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    use_amp = device.type == "cuda" if amp is None else amp
    if len(dataset) == 0:
        raise ValueError("evaluation dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with scoring_paused(model):
            for images, labels in _progress(loader, "eval", progress):
                with _autocast(device, use_amp):
                    logits = model(images.to(device, non_blocking=True))
                correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
                total += int(labels.numel())
    finally:
        model.train(was_training)
    return 100.0 * correct / total


def _progress(iterable, desc: str, show: bool, total: int | None = None):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)


# ---------------------------------------------------------------------------------- helpers
def _make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"method '{config.method.name}' left no trainable parameters")
    return torch.optim.AdamW(params, lr=config.schedule.lr, weight_decay=config.schedule.weight_decay)


def _train_loader(dataset, config: RunConfig, epoch: int, device: torch.device) -> DataLoader:
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "order", epoch))
    return DataLoader(dataset, batch_size=config.schedule.batch_size, shuffle=True,
                      drop_last=config.schedule.drop_last, num_workers=config.data.workers, generator=generator,
                      pin_memory=device.type == "cuda")


def _heads_plan(model: nn.Module, config: RunConfig) -> dict | None:
    """The Heart-LoRA schedule for this model, or None when the method does not select heads."""
    options = get_state(model).options
    if options.get("select") is None:
        return None
    s = config.schedule
    score_epochs = options.get("score_epochs")
    if score_epochs is None:
        score_epochs = max(1, min(s.warmup_epochs, s.epochs - 1))
    elif score_epochs > s.epochs:
        raise ConfigError(f"option 'score_epochs'={score_epochs} of method '{config.method.name}': "
                          f"exceeds the {s.epochs} training epochs")
    if options.get("restart") and score_epochs >= s.epochs:
        raise ConfigError(f"option 'restart' of method '{config.method.name}' needs epochs after the scoring: "
                          f"score_epochs={score_epochs} leaves none of the {s.epochs} epochs to retrain with the mask")
    if score_epochs == 0:
        warnings.warn("score_epochs=0: heads are selected before training, from scores of the initial adapter "
                      "(all zero for a zero-initialised B: ties switch off the lowest head indices)", stacklevel=3)
    return {"score": options.get("score", "taylor"), "score_epochs": int(score_epochs),
            "restart": bool(options.get("restart", False))}


def _eval_due(epoch: int, config: RunConfig) -> bool:
    every = config.schedule.eval_every
    return epoch == config.schedule.epochs - 1 or (every > 0 and (epoch + 1) % every == 0)


def _ablation_batches(task, config: RunConfig) -> list:
    seed_all(derive_seed(config.seed, "ablation"))
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "ablation-order"))
    loader = DataLoader(task.train, batch_size=config.schedule.batch_size, shuffle=True, drop_last=False,
                        num_workers=0, generator=generator)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= config.schedule.ablation_batches:
            break
    return batches


def _restart(model: nn.Module, config: RunConfig, num_classes: int, device: torch.device) -> torch.optim.Optimizer:
    """Re-initialise the method's layers and the classifier; a new optimiser."""
    seed_all(derive_seed(config.seed, "restart"))
    for name, layer in adapter_layers(model).items():
        reset = getattr(layer, "reset_parameters", None)
        if reset is None:
            raise ConfigError(f"option 'restart': {type(layer).__name__} ({name}) cannot be re-initialised")
        reset()
    new_classifier(model, num_classes, config.model.classifier_init)
    model.to(device)
    return _make_optimizer(model, config)


def _install_adapter(model: nn.Module, out: Path, backbone: dict) -> Path:
    """Write ``out/adapter`` as a whole: into a temporary folder first, then renamed into place."""
    final = out / ADAPTER_DIR
    tmp = out / f".{ADAPTER_DIR}.tmp"
    old = out / f".{ADAPTER_DIR}.old"
    for path in (tmp, old):
        if path.exists():
            shutil.rmtree(path)
    save_adapter(model, tmp)
    write_json(tmp / BACKBONE_NAME, backbone)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        try:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)
        except ImportError:  # pragma: no cover
            print(message, file=sys.stderr)


# -------------------------------------------------------------------------------- training
def _train_epoch(model, loader, optimizer, device, use_amp, show, desc, lr) -> tuple[float, int, float]:
    model.train()
    total_loss, images_seen, steps = 0.0, 0, 0
    start = time.perf_counter()
    bar = _progress(loader, desc, show, total=len(loader))
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, use_amp):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at {desc}, step {steps}; lower option 'lr'")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += value
        images_seen += int(labels.shape[0])
        steps += 1
        if show:
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{total_loss / steps:.4f}", lr=f"{lr:.2e}", img_s=f"{images_seen / elapsed:.1f}")
    seconds = time.perf_counter() - start
    return total_loss / max(steps, 1), images_seen, seconds


def train(config: RunConfig, *, callbacks: Sequence[Callback] = (), execution: dict | None = None) -> dict:
    """Train one run and return its record (also written to ``config.out/run.json``).

    ``execution`` (e.g. ``{"executor": "ray", "node": ...}`` from a sweep executor) is merged into
    the record's ``execution`` block, which says how the run ran (executor, world size, nodes).

    ``callbacks`` are called as ``fn(epoch, entry)`` after each epoch's checkpoint is written
    (``entry`` is that epoch's curve point); an exception raised there stops the run like a
    kill would, leaving a resumable checkpoint.
    """
    config = copy.deepcopy(config).validate()
    check_method(config.method)
    device = resolve_device(config.device)
    use_amp = resolve_amp(config.amp, device)
    out = Path(config.out) if config.out else None
    checkpoint = None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"option 'out': {out} exists and is not a directory")
        ckpt_path, run_path = out / CHECKPOINT_NAME, out / RUN_NAME
        if config.resume and ckpt_path.exists():
            checkpoint = load_checkpoint(ckpt_path)
            diff = config_diff(checkpoint["config"], config.to_dict(), RESUME_MAY_CHANGE)
            if diff:
                raise ConfigError(f"{ckpt_path}: the run being resumed had other settings: " + "; ".join(diff))
            done = checkpoint["progress"]["epoch"] >= config.schedule.epochs - 1
            if done and run_path.exists():
                return json.loads(run_path.read_text(encoding="utf-8"))
        elif not config.resume and (ckpt_path.exists() or run_path.exists()):
            raise ConfigError(f"option 'out': {out} already holds a run ({RUN_NAME if run_path.exists() else CHECKPOINT_NAME}); "
                              "continue it with --resume or choose another --out")
    probe_method(config)

    segment_start = time.perf_counter()
    started_at = _now()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    built = build(config, device)
    model, task = built.model, built.task
    # the compiled module shares the parameters; checkpoints and evaluation use ``model`` itself
    forward = torch.compile(model) if config.compile else model
    s = config.schedule
    if s.drop_last and len(task.train) < s.batch_size:
        raise ConfigError(f"option 'batch_size': {s.batch_size} with drop_last, but the train split of '{task.name}' "
                          f"has only {len(task.train)} images, so no batch is left; lower --batch-size or pass --no-drop-last")
    weights_sha256 = sha256_file(config.model.weights) if config.model.weights else None
    schedule = CosineSchedule.from_config(s)
    plan = _heads_plan(model, config)
    optimizer = _make_optimizer(model, config)
    progress = {"epoch": -1, "curve": [], "evaluations": [], "selected": False, "restarted": False,
                "train_images": 0, "train_seconds": 0.0, "wall_seconds": 0.0, "peak_memory": 0,
                "resumed_at": [], "started_at": started_at}
    pending_scores = None
    if checkpoint is not None:
        source = str(out / CHECKPOINT_NAME)
        if checkpoint["manifest_hash"] != task.manifest_hash:
            raise ValueError(f"{source}: the data differ from those of the run being resumed (manifest hash "
                             f"{task.manifest_hash}, checkpoint {checkpoint['manifest_hash']})")
        if checkpoint["weights_sha256"] != weights_sha256:
            raise ValueError(f"{source}: the backbone weights differ from those of the run being resumed "
                             f"(sha256 {weights_sha256}, checkpoint {checkpoint['weights_sha256']})")
        heads = checkpoint["adapter_state"]
        if heads.get("head_masks"):
            apply_head_selection(model, [torch.tensor(m) for m in heads["head_masks"]], scores=heads.get("scores"))
            get_state(model).selection = heads.get("selection") or {}
        restore_model_state(model, checkpoint["model"], source)
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng(checkpoint["rng"])
        progress = checkpoint["progress"]
        progress["resumed_at"] = progress["resumed_at"] + [progress["epoch"] + 1]
        pending_scores = checkpoint.get("scoring")
        _log(config.quiet, f"resuming {out} after epoch {progress['epoch'] + 1}/{s.epochs}")
    prior_wall = progress["wall_seconds"]
    show_bar = not config.quiet and sys.stderr.isatty()

    scorer: HeadScorer | None = None

    def select(epoch: int) -> str:
        """Fix the head mask after ``epoch`` (-1: before training); returns the log line."""
        nonlocal scorer, optimizer
        if plan["score"] == "ablation":
            scores = ablation_scores(model, _ablation_batches(task, config))
        elif scorer is not None:
            scores = scorer.scores()
            scorer.close()
            scorer = None
        else:  # score_epochs == 0
            with HeadScorer(model, plan["score"]) as fresh:
                scores = fresh.scores()
        select_and_apply(model, scores, optimizer)
        progress["selected"] = True
        progress["selected_after_epoch"] = epoch
        off = get_state(model).selection.get("switched_off")
        if plan["restart"]:
            optimizer = _restart(model, config, built.num_classes, device)
            progress["restarted"] = True
        when = "before training" if epoch < 0 else f"after epoch {epoch + 1}"
        return (f"head selection ({plan['score']}, {get_state(model).options.get('select')}) {when}: "
                f"switched off {off}" + ("; adapters re-initialised" if plan["restart"] else ""))

    def save(epoch: int) -> None:
        progress["wall_seconds"] = prior_wall + (time.perf_counter() - segment_start)
        progress["peak_memory"] = max(progress["peak_memory"], peak_memory(device)["bytes"] or 0)
        if out is None:
            return
        state = get_state(model)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / CHECKPOINT_NAME, {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "manifest_hash": task.manifest_hash,
            "weights_sha256": weights_sha256,
            "model": model_state(model),
            "adapter_state": {"head_masks": state.head_masks, "scores": state.scores, "selection": state.selection},
            "optimizer": optimizer.state_dict(),
            "scheduler": {**schedule.to_dict(), "last_epoch": epoch},
            "scoring": scoring_state(model) if scorer is not None else None,
            # global RNGs, and the next epoch's shuffling seed (each epoch draws its own order)
            "rng": {**capture_rng(), "loader_order_seed": derive_seed(config.seed, "order", epoch + 1)},
            "progress": progress,
        })

    try:
        if plan and not progress["selected"] and plan["score_epochs"] == 0:
            _log(config.quiet, select(-1))
        for epoch in range(progress["epoch"] + 1, s.epochs):
            lr = schedule.lr_for_epoch(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            scoring = bool(plan) and not progress["selected"] and epoch < plan["score_epochs"]
            if scoring and plan["score"] != "ablation" and scorer is None:
                scorer = HeadScorer(model, plan["score"])
                if pending_scores:
                    restore_scoring_state(model, pending_scores)
            pending_scores = None
            seed_all(derive_seed(config.seed, "epoch", epoch))
            loader = _train_loader(task.train, config, epoch, device)
            desc = f"epoch {epoch + 1}/{s.epochs}"
            loss, images, seconds = _train_epoch(forward, loader, optimizer, device, use_amp, show_bar, desc, lr)
            entry = {"epoch": epoch, "lr": lr, "train_loss": loss, "phase": "score" if scoring else "train",
                     "images": images, "seconds": round(seconds, 4),
                     "images_per_s": round(images / seconds, 2) if seconds > 0 else None, "eval_accuracy": None}
            selection_note = None
            if scoring and epoch == plan["score_epochs"] - 1:
                selection_note = select(epoch)
                entry["selection"] = True
            if _eval_due(epoch, config):
                accuracy = evaluate(model, task.eval, s.eval_batch_size or s.batch_size, device=device,
                                    workers=config.data.workers, amp=use_amp, progress=show_bar)
                entry["eval_accuracy"] = accuracy
                progress["evaluations"].append({"epoch": epoch, "accuracy": accuracy})
            progress["curve"].append(entry)
            progress["train_images"] += images
            progress["train_seconds"] += seconds
            progress["epoch"] = epoch
            acc_text = f"  acc {entry['eval_accuracy']:.2f}" if entry["eval_accuracy"] is not None else ""
            _log(config.quiet, f"{desc}  loss {loss:.4f}  lr {lr:.3e}  {entry['images_per_s'] or 0:.1f} img/s{acc_text}")
            if selection_note:
                _log(config.quiet, selection_note)
            save(epoch)
            for callback in callbacks:
                callback(epoch, entry)
    finally:
        if scorer is not None:
            scorer.close()

    save(progress["epoch"])  # refresh wall time / peak memory
    state = get_state(model)
    record = {
        "format_version": RECORD_FORMAT,
        "status": "complete",
        "config": {**config.to_dict(), "resume": False},  # the run itself, reusable as --config
        "versions": versions(),
        "device": device_info(device),
        "amp": "bf16" if use_amp else "none (fp32)",
        "seed": config.seed,
        "model": {"name": config.model.name, "weights": config.model.weights, "weights_sha256": weights_sha256,
                  "kwargs": config.model.kwargs, "img_size": config.data.image_size,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "classifier_init": config.model.classifier_init},
        "method": method_summary(model),
        "data": {"kind": config.data.kind, "root": config.data.root, "task": task.name, "split": config.data.split,
                 "train_split": task.manifest.get("train_split"), "eval_split": task.manifest.get("eval_split"),
                 "num_classes": task.num_classes, "train_images": len(task.train), "eval_images": len(task.eval),
                 "manifest_hash": task.manifest_hash, "manifest": task.manifest, "warnings": list(task.warnings)},
        "schedule": schedule.to_dict(),
        "curve": progress["curve"],
        "evaluations": progress["evaluations"],
        "protocols": protocols(progress["evaluations"], config.data.split),
        "heads": None if plan is None else {
            **plan,
            "select": state.options.get("select"), "ne": state.options.get("ne"),
            "fraction": state.options.get("fraction"),
            "selected_after_epoch": progress.get("selected_after_epoch"),
            "switched_off": state.selection.get("switched_off"),
            "head_masks": state.head_masks, "scores": state.scores,
        },
        "trainable_parameters": {"with_classifier": trainable_parameters(model),
                                 "without_classifier": trainable_parameters(model, include_classifier=False)},
        "adapter_bytes": {"with_classifier": adapter_bytes(model),
                          "without_classifier": adapter_bytes(model, include_classifier=False)},
        "peak_memory": {"bytes": progress["peak_memory"], "kind": peak_memory(device)["kind"]},
        "images_per_s": round(progress["train_images"] / progress["train_seconds"], 2) if progress["train_seconds"] else None,
        "train_seconds": round(progress["train_seconds"], 3),
        "wall_time_s": round(progress["wall_seconds"], 3),
        "resumed_at_epochs": progress["resumed_at"],
        "execution": {"executor": "direct", "world_size": 1, "nodes": [platform.node()], **(execution or {})},
        "started_at": progress["started_at"],
        "finished_at": _now(),
        "files": None,
    }
    if out is not None:
        backbone = {"model": config.model.name, "weights": config.model.weights, "weights_sha256": weights_sha256,
                    "kwargs": config.model.kwargs, "img_size": config.data.image_size, "seed": config.seed,
                    "drop_path": config.model.drop_path, "normalize": config.data.normalize,
                    "pretrained": config.model.pretrained, "random_init": config.model.random_init}
        _install_adapter(model, out, backbone)
        record["files"] = {"adapter": ADAPTER_DIR, "checkpoint": CHECKPOINT_NAME, "run": RUN_NAME}
        record["adapter_file_bytes"] = (out / ADAPTER_DIR / "adapter.safetensors").stat().st_size
        write_json(out / RUN_NAME, record)
    return record
