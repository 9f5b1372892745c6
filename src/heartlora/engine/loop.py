"""The training loop: recipe, evaluation, checkpoints and the run record — for every method.

``train(config)`` runs one (model, method, data, schedule) cell and returns its run record.

The loop is generic: it knows a method only through the registry. A method with a training
schedule of its own (``MethodSpec.schedule``, e.g. Heart-LoRA's) is driven through the hooks of
:class:`heartlora.methods.base.MethodSchedule` — ``on_epoch_start`` / ``on_epoch_end`` (whose
actions may ask for a fresh optimiser or a fresh learning-rate schedule), ``paused`` around
evaluation, ``state_dict`` in every checkpoint, ``record`` into the run record. When the schedule
asks for held-out data (``holdout_fraction``), the loop gives it the validation split on a
``split=tune`` run, or else a seeded slice of the training set that is then left out of training;
the test split never reaches it. Evaluations after epochs with ``(e + 1) % eval_every == 0`` and
after the last epoch come after that epoch's schedule actions, so they measure what is stored.

Reproducibility and resume: see :mod:`heartlora.seeding`. A checkpoint is written after every
epoch; ``resume=True`` rebuilds the model from the config (same construction order and seed),
restores the schedule's state (which may change the shapes of the trainable tensors), then the
trainable tensors, optimiser state and RNG states, and replays the remaining epochs with the same
per-epoch seeds.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..adapters_io import (
    ADAPTER_DIR,
    WEIGHTS_NAME,
    adapter_bytes,
    backbone_record,
    install_adapter_folder,
    trainable_parameters,
)
from ..callbacks import Callback, RunInfo, TrainCallback, as_callbacks
from ..config import ConfigError, RunConfig
from ..data.cache import batched, collate
from ..data.errors import DataError
from ..data.fingerprint import compare_fingerprints, content_fingerprint, describe_changes
from ..methods.base import MethodSchedule, ScheduleActions, ScheduleContext, get_method
from ..methods.factory import get_state
from ..models import sha256_file
from ..precision import autocast
from ..seeding import capture_rng, derive_seed, restore_rng, seed_all
from ..tracking.session import TrackingSession
from .build import build, check_method, config_diff, method_summary, new_classifier, probe_method, resolve_amp, resolve_device
from .distributed import Distributed, GlobalBatchSampler, from_environment
from .lock import RunLock
from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    model_state,
    restore_model_state,
    save_checkpoint,
)
from .record import RECORD_FORMAT, RUN_NAME, device_info, peak_memory, protocols, read_run_record, versions, write_json
from .schedule import CosineSchedule

__all__ = ["evaluate", "train"]

# Settings that may change between a run and its resumption (the data and weights are compared
# by their manifest hash / sha256 instead of their paths).
RESUME_MAY_CHANGE = {"out", "resume", "quiet", "compile", "device", "log", "log_dir", "data.workers", "data.check_images",
                     "data.root", "model.weights", "data.fingerprint", "data.cache", "data.cache_memory_mb", "data.cache_dir"}
FINGERPRINT_NAME = "data_fingerprint.json"  # written once per run: the images it trains and evaluates on


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 64, *, device: torch.device | str | None = None,
             workers: int = 0, amp: bool | None = None, progress: bool = False) -> float:
    """Top-1 accuracy in percent of ``model`` on ``dataset`` (items ``(image, label)``).

    ``amp=None``: the ``--amp auto`` rule (bf16 autocast on CUDA and on CPUs with native bf16
    matmul, fp32 elsewhere; :mod:`heartlora.precision`). The model's train/eval mode is restored.
    """
    if len(dataset) == 0:
        raise ValueError("evaluation dataset is empty")
    correct, total = _correct_and_total(model, dataset, batch_size, device=device, workers=workers, amp=amp,
                                        progress=progress)
    return 100.0 * correct / total


@torch.no_grad()
def _correct_and_total(model: nn.Module, dataset, batch_size: int, *, device=None, workers: int = 0,
                       amp: bool | None = None, progress: bool = False, timing: dict | None = None) -> tuple[int, int]:
    """(correct, total); ``timing``, when given, gets ``data`` += the seconds spent waiting for batches."""
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    use_amp = resolve_amp("auto", device).enabled if amp is None else amp
    loader = DataLoader(batched(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", collate_fn=collate)
    was_training = model.training
    model.eval()
    correct = total = 0
    waited = 0.0
    try:
        with _data_errors():
            fetch = time.perf_counter()
            for images, labels in _progress(loader, "eval", progress):
                waited += time.perf_counter() - fetch
                with autocast(device, use_amp):
                    logits = model(images.to(device, non_blocking=True))
                correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
                total += int(labels.numel())
                fetch = time.perf_counter()
    finally:
        model.train(was_training)
        if timing is not None:
            timing["data"] = timing.get("data", 0.0) + waited
    return correct, total


def _evaluate_sharded(model: nn.Module, dataset, dist: Distributed, batch_size: int, **kwargs) -> float:
    """Accuracy over ``dataset``: each rank counts its shard (every W-th item), counts are summed."""
    if not dist.enabled:
        if len(dataset) == 0:
            raise ValueError("evaluation dataset is empty")
        correct, total = _correct_and_total(model, dataset, batch_size, **kwargs)
        return 100.0 * correct / total
    shard = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    counts = torch.tensor(_correct_and_total(model, shard, batch_size, **kwargs), dtype=torch.float64)
    correct, total = dist.all_reduce_sum(counts).tolist()
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


def _train_loader(dataset, config: RunConfig, epoch: int, device: torch.device,
                  dist: Distributed) -> tuple[DataLoader, list[int]]:
    """This epoch's loader (this rank's slice of each seeded global batch) and the global batch sizes."""
    sampler = GlobalBatchSampler(len(dataset), config.schedule.batch_size, config.schedule.drop_last,
                                 derive_seed(config.seed, "order", epoch), dist.world_size, dist.rank)
    loader = DataLoader(batched(dataset), batch_sampler=sampler, num_workers=config.data.workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(derive_seed(config.seed, "loader", epoch)),
                        collate_fn=collate)
    return loader, [len(batch) for batch in sampler.batches()]


def _first_batches(dataset, count: int, batch_size: int, seed_key: tuple | None) -> list:
    """``count`` batches of ``dataset``: in a seeded shuffled order (``seed_key``) or in order."""
    generator = None
    if seed_key is not None:
        seed_all(derive_seed(*seed_key))  # augmentation, if any, draws from the global RNGs
        generator = torch.Generator().manual_seed(derive_seed(*seed_key, "order"))
    loader = DataLoader(batched(dataset), batch_size=batch_size, shuffle=seed_key is not None, drop_last=False,
                        num_workers=0, generator=generator, collate_fn=collate)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= count:
            break
    return batches


def _held_out(task, config: RunConfig, fraction: float | None) -> tuple[object, object | None, dict | None]:
    """(training data, held-out data, how it was made) for a method schedule that asks for it.

    A ``split=tune`` run evaluates on the validation split, which is then the held-out data; any
    other run evaluates on test, so a seeded ``fraction`` of the training set is held out (and not
    trained on). The test split never serves as held-out data."""
    if fraction is None:
        return task.train, None, None
    if config.data.split == "tune":
        return task.train, task.eval, {"source": task.manifest.get("eval_split"), "images": len(task.eval),
                                       "trained_on": False}
    n = len(task.train)
    count = min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(config.seed, "holdout")))
    held, kept = sorted(order[:count].tolist()), sorted(order[count:].tolist())
    info = {"source": f"seeded hold-out of {task.manifest.get('train_split')}", "fraction": fraction,
            "images": count, "train_images": n - count, "trained_on": False,
            "indices_sha256": _indices_digest(held)}
    return Subset(task.train, kept), Subset(task.train, held), info


def _data_fingerprint(task, config: RunConfig, out: Path | None, resuming: bool) -> dict | None:
    """The images' fingerprint (sizes + modification times, or their sha256); on a resume, a
    DataError naming every image that changed since the run started."""
    mode = config.data.fingerprint
    if mode == "off":
        if resuming:
            warnings.warn(f"option 'data_fingerprint'=off: resuming {out} without checking that its images are "
                          "unchanged", stacklevel=3)
        return None
    saved_path = out / FINGERPRINT_NAME if out is not None else None
    saved = json.loads(saved_path.read_text(encoding="utf-8")) if resuming and saved_path.is_file() else None
    content = (saved["method"] == "sha256") if saved else mode == "content"
    current = content_fingerprint(task, content=content)
    if saved is not None:
        changes = compare_fingerprints(saved, current)
        if changes:
            raise DataError(f"{saved_path}: {describe_changes(changes)} since the run started; expected the same "
                            "images (restore them, or start a new run; if only their modification times changed, "
                            "e.g. by a copy, resume with --data-fingerprint off)")
    return current


def _indices_digest(indices: list[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()


def _unwrapped(err: DataError) -> DataError:
    """A DataError raised in a DataLoader worker arrives as "Caught DataError in DataLoader worker
    process 0. Original Traceback …"; keep only the original one-line message."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    last = text.strip().splitlines()[-1]
    return DataError(last.split(": ", 1)[1] if last.startswith(("DataError:", "heartlora.")) and ": " in last else last)


@contextlib.contextmanager
def _data_errors():
    try:
        yield
    except DataError as err:
        raise _unwrapped(err) from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        try:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)
        except ImportError:  # pragma: no cover
            print(message, file=sys.stderr)


class _LearningRate:
    """The recipe's per-epoch learning rate; after a schedule's ``restart_lr`` action it starts
    afresh (warm-up included) over the epochs that remain."""

    def __init__(self, config: RunConfig, restart_epoch: int | None = None):
        self.config, self.restart_epoch = config, restart_epoch
        self.base = CosineSchedule.from_config(config.schedule)

    def restart(self, epoch: int) -> None:
        self.restart_epoch = epoch

    def __call__(self, epoch: int) -> float:
        if self.restart_epoch is None or epoch < self.restart_epoch:
            return self.base.lr_for_epoch(epoch)
        s, start = self.config.schedule, self.restart_epoch
        rest = CosineSchedule(s.epochs - start, min(s.warmup_epochs, s.epochs - start), s.lr, s.warmup_lr, s.min_lr)
        return rest.lr_for_epoch(epoch - start)

    def to_dict(self) -> dict:
        return {**self.base.to_dict(), "restarted_at_epoch": self.restart_epoch}


# -------------------------------------------------------------------------------- training
def _train_epoch(model, loader, sizes, optimizer, device, use_amp, show, desc, lr,
                 dist: Distributed) -> tuple[float, int, float, float]:
    """One epoch; returns (mean loss over steps, images, seconds, seconds spent waiting for batches).
    Under DDP each rank's loss is its slice's sum / global batch · world size, so the averaged
    gradient is the global mean's."""
    model.train()
    total_loss, images_seen, steps = 0.0, 0, 0
    start = time.perf_counter()
    waited = 0.0
    bar = _progress(loader, desc, show, total=len(loader))
    with _data_errors():
        fetch = time.perf_counter()
        for (images, labels), global_size in zip(bar, sizes):
            waited += time.perf_counter() - fetch
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, use_amp):
                logits = model(images)
            if dist.enabled:
                summed = F.cross_entropy(logits.float(), labels, reduction="sum")
                loss = summed * (dist.world_size / global_size)
                value = float(dist.all_reduce_sum(summed.detach()).item()) / global_size
            else:
                loss = F.cross_entropy(logits.float(), labels)
                value = loss.detach().item()
            if not math.isfinite(value):
                raise TrainingDiverged(f"training loss is {value} at {desc}, step {steps + 1} (lr {lr:.3g}): the run "
                                       "diverged; lower option 'lr' or the method's option 'scale' (the last good "
                                       "checkpoint, if any, is kept)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += value
            images_seen += global_size
            steps += 1
            if show:
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{total_loss / steps:.4f}", lr=f"{lr:.2e}", img_s=f"{images_seen / elapsed:.1f}")
            fetch = time.perf_counter()
    seconds = time.perf_counter() - start
    return total_loss / max(steps, 1), images_seen, seconds, waited


def train(config: RunConfig, *, callbacks: Sequence[Callback] = (), execution: dict | None = None) -> dict:
    """Train one run and return its record (also written to ``config.out/run.json``).

    ``callbacks``: :class:`heartlora.callbacks.TrainCallback` objects (hooks at the start, after
    each epoch, at the end, and a ``close`` that always runs) or plain functions ``fn(epoch, entry)``,
    called after each epoch's checkpoint is written (``entry`` is that epoch's curve point); an
    exception raised in one stops the run like a kill would, leaving a resumable checkpoint. When
    ``config.log`` (or the environment variable ``HEARTLORA_LOG``) names experiment trackers, a
    :class:`heartlora.tracking.session.TrackingSession` logs the run to them; a tracker's failure
    is a warning, never the run's. ``execution`` (e.g. ``{"executor": "ray", "node": ...}`` from a
    sweep executor) is merged into the record's ``execution`` block, which says how the run ran.
    """
    config = copy.deepcopy(config).validate()
    check_method(config.method)
    tracking = TrackingSession.from_config(config)  # an unknown or missing tracker: refused before anything runs
    observers = ([tracking] if tracking is not None else []) + as_callbacks(callbacks)
    dist, device_spec = from_environment(config.device)
    config = config.replace(device=device_spec) if device_spec != config.device else config
    out = Path(config.out) if config.out else None
    if out is None or not dist.is_main:  # under torchrun, rank 0 holds the run folder and writes
        try:
            return _observed(config, observers, execution, dist)
        finally:
            dist.close()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"option 'out': {out} exists and is not a directory")
    try:
        with RunLock(out):
            return _observed(config, observers, execution, dist)
    finally:
        dist.close()


def _observed(config: RunConfig, callbacks: list[TrainCallback], execution: dict | None, dist: Distributed) -> dict:
    """The run, then every callback's ``close`` with the error that ended it (None when it finished)."""
    error = None
    try:
        return _train(config, callbacks, execution, dist)
    except BaseException as err:
        error = err
        raise
    finally:
        for callback in callbacks:
            callback.close(error)


def _train(config: RunConfig, callbacks: list[TrainCallback], execution: dict | None, dist: Distributed) -> dict:
    s = config.schedule
    if 0 < s.warmup_epochs and s.epochs <= s.warmup_epochs + 1:
        top = max(CosineSchedule.from_config(s).lrs())
        warnings.warn(f"option 'epochs'={s.epochs} with 'warmup_epochs'={s.warmup_epochs}: every epoch is still in "
                      f"the warm-up (the reference scheduler starts one epoch late: lr {s.warmup_lr:g} in epochs 1 "
                      f"and 2), so the lr never exceeds {top:.3g} of the peak {s.lr:g}; lower --warmup-epochs",
                      stacklevel=3)
    device = resolve_device(config.device)
    amp = resolve_amp(config.amp, device)
    use_amp = amp.enabled
    out = Path(config.out) if config.out else None
    writes = out is not None and dist.is_main  # only rank 0 writes checkpoints, adapters and run.json
    checkpoint = None
    if out is not None:
        ckpt_path, run_path = out / CHECKPOINT_NAME, out / RUN_NAME
        if config.resume and ckpt_path.exists():
            checkpoint = load_checkpoint(ckpt_path)
            # settings added since the checkpoint was written take their defaults, as they did then
            saved = RunConfig.from_dict(checkpoint["config"], str(ckpt_path)).to_dict()
            diff = config_diff(saved, config.to_dict(), RESUME_MAY_CHANGE)
            if diff:
                raise ConfigError(f"{ckpt_path}: the run being resumed had other settings: " + "; ".join(diff))
            done = checkpoint["progress"]["epoch"] >= config.schedule.epochs - 1
            if done and run_path.exists():
                return read_run_record(run_path)
        elif not config.resume and (ckpt_path.exists() or run_path.exists()):
            raise ConfigError(f"option 'out': {out} already holds a run ({RUN_NAME if run_path.exists() else CHECKPOINT_NAME}); "
                              "continue it with --resume or choose another --out")
        if checkpoint is None and (out / ADAPTER_DIR).exists():
            raise ConfigError(f"option 'out': {out / ADAPTER_DIR} exists but no run is being continued; a run writes "
                              "its adapter there — move that folder away or choose another --out")
    probe_method(config)

    segment_start = time.perf_counter()
    started_at = _now()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    built = build(config, device)
    model, task = built.model, built.task
    schedule_cls = get_method(config.method.name).schedule
    held_out_share = schedule_cls.holdout_fraction(get_state(model).options) if schedule_cls else None
    train_data, held_out, held_out_info = _held_out(task, config, held_out_share)
    if s.drop_last and len(train_data) < s.batch_size:
        raise ConfigError(f"option 'batch_size': {s.batch_size} with drop_last, but the train split of '{task.name}' "
                          f"has only {len(train_data)} images, so no batch is left; lower --batch-size or pass --no-drop-last")
    last = len(train_data) % s.batch_size
    if dist.enabled and (s.batch_size < dist.world_size or (last and not s.drop_last and last < dist.world_size)):
        raise ConfigError(f"option 'batch_size': {s.batch_size} over {dist.world_size} processes leaves a process "
                          f"without images (the last batch has {last}); use a batch of at least one image per "
                          "process, or --drop-last")
    weights_sha256 = sha256_file(config.model.weights) if config.model.weights else None
    learning_rate = _LearningRate(config)
    optimizer = _make_optimizer(model, config)
    eval_batch = s.eval_batch_size or s.batch_size

    def reset_classifier() -> None:
        new_classifier(model, built.num_classes, config.model.classifier_init)
        model.to(device)

    schedule: MethodSchedule | None = None
    if schedule_cls is not None:
        try:
            schedule = schedule_cls(model, ScheduleContext(
                epochs=s.epochs, warmup_epochs=s.warmup_epochs, seed=config.seed,
                train_batches=lambda n: _first_batches(train_data, n, s.batch_size, (config.seed, "method-batches")),
                validation_batches=None if held_out is None else (lambda n: _first_batches(held_out, n, eval_batch, None)),
                validation_accuracy=None if held_out is None else (lambda: _evaluate_sharded(
                    model, held_out, dist, eval_batch, device=device, workers=config.data.workers, amp=use_amp)),
                validation_info=held_out_info, reset_classifier=reset_classifier,
                all_reduce_mean=dist.all_reduce_mean if dist.enabled else None), optimizer)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    progress = {"epoch": -1, "curve": [], "evaluations": [], "train_images": 0, "train_seconds": 0.0,
                "wall_seconds": 0.0, "peak_memory": 0, "resumed_at": [], "started_at": started_at,
                "lr_restarted_at": None}
    fingerprint = _data_fingerprint(task, config, out, resuming=checkpoint is not None)
    if writes and checkpoint is None and fingerprint is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / FINGERPRINT_NAME, fingerprint)
    if checkpoint is not None:
        source = str(out / CHECKPOINT_NAME)
        if checkpoint["manifest_hash"] != task.manifest_hash:
            raise ValueError(f"{source}: the data differ from those of the run being resumed (manifest hash "
                             f"{task.manifest_hash}, checkpoint {checkpoint['manifest_hash']})")
        if checkpoint["weights_sha256"] != weights_sha256:
            raise ValueError(f"{source}: the backbone weights differ from those of the run being resumed "
                             f"(sha256 {weights_sha256}, checkpoint {checkpoint['weights_sha256']})")
        if schedule is not None:
            schedule.load_state_dict(checkpoint["method_schedule"] or {})  # may reshape trainable tensors
        restore_model_state(model, checkpoint["model"], source)
        optimizer = _make_optimizer(model, config)
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng(checkpoint["rng"])
        started = (checkpoint.get("amp") or {}).get("dtype", amp.dtype)
        if started != amp.dtype:
            warnings.warn(f"{source}: the run started in {started} and continues in {amp.dtype} ({amp.reason}); "
                          f"its record will not equal an uninterrupted run's (force one with --amp)", stacklevel=2)
        progress = checkpoint["progress"]
        progress["resumed_at"] = progress["resumed_at"] + [progress["epoch"] + 1]
        learning_rate.restart_epoch = progress.get("lr_restarted_at")
        _log(config.quiet, f"resuming {out} after epoch {progress['epoch'] + 1}/{s.epochs}")
    if schedule is not None:
        schedule.attach_optimizer(optimizer)
    prior_wall = progress["wall_seconds"]
    show_bar = not config.quiet and sys.stderr.isatty()
    info = RunInfo(config=config, out=out, start_epoch=progress["epoch"] + 1, resumed=checkpoint is not None,
                   is_main=dist.is_main, method_record=schedule.record if schedule is not None else dict)
    for callback in callbacks:
        callback.on_train_start(info)

    def act(actions: ScheduleActions, epoch: int) -> list[str]:
        """Carry out what a schedule hook asked for; returns its log lines."""
        nonlocal optimizer
        if actions.rebuild_optimizer:
            optimizer = _make_optimizer(model, config)
            schedule.attach_optimizer(optimizer)
        if actions.restart_lr:
            learning_rate.restart(epoch + 1)
            progress["lr_restarted_at"] = epoch + 1
        return list(actions.messages)

    def save(epoch: int) -> None:
        progress["wall_seconds"] = prior_wall + (time.perf_counter() - segment_start)
        progress["peak_memory"] = max(progress["peak_memory"], peak_memory(device)["bytes"] or 0)
        if not writes:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / CHECKPOINT_NAME, {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "manifest_hash": task.manifest_hash,
            "weights_sha256": weights_sha256,
            "amp": amp.to_dict(),
            "model": model_state(model),
            "method_schedule": schedule.state_dict() if schedule is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": {**learning_rate.to_dict(), "last_epoch": epoch},
            # global RNGs, and the next epoch's shuffling seed (each epoch draws its own order)
            "rng": {**capture_rng(), "loader_order_seed": derive_seed(config.seed, "order", epoch + 1)},
            "progress": progress,
        })

    paused = schedule.paused if schedule is not None else contextlib.nullcontext
    wrapped: dict = {}

    def forward_module() -> nn.Module:
        """The module a training step calls: DDP over the trainable parameters under torchrun (built
        again whenever they change, e.g. when heads are switched off), compiled with --compile; it
        shares the parameters, and checkpoints and evaluation use ``model`` itself."""
        key = tuple(id(p) for p in model.parameters() if p.requires_grad)
        if wrapped.get("key") != key:
            module = dist.wrap(model, device, get_method(config.method.name).step_may_skip_parameters)
            wrapped.update(key=key, module=torch.compile(module) if config.compile else module)
        return wrapped["module"]

    try:
        for epoch in range(progress["epoch"] + 1, s.epochs):
            hooks_start = time.perf_counter()
            notes = act(schedule.on_epoch_start(epoch), epoch - 1) if schedule is not None else []
            hooks = time.perf_counter() - hooks_start
            lr = learning_rate(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed_all(derive_seed(config.seed, "epoch", epoch))
            loader, sizes = _train_loader(train_data, config, epoch, device, dist)
            desc = f"epoch {epoch + 1}/{s.epochs}"
            loss, images, seconds, waited = _train_epoch(forward_module(), loader, sizes, optimizer, device, use_amp,
                                                         show_bar, desc, lr, dist)
            # seconds: the training epoch (data_seconds of it waiting for batches); schedule_seconds:
            # the method schedule's hooks (a method's own statistics and decisions); eval_*: the evaluation after it
            entry = {"epoch": epoch, "lr": lr, "train_loss": loss,
                     "phase": schedule.phase(epoch) if schedule is not None else "train",
                     "images": images, "seconds": round(seconds, 4), "data_seconds": round(waited, 4),
                     "images_per_s": round(images / seconds, 2) if seconds > 0 else None, "eval_accuracy": None}
            if schedule is not None:
                hooks_start = time.perf_counter()
                notes += act(schedule.on_epoch_end(epoch), epoch)
                hooks += time.perf_counter() - hooks_start
            entry["schedule_seconds"] = round(hooks, 4)
            if notes:
                entry["events"] = notes
            if epoch == s.epochs - 1 or (s.eval_every > 0 and (epoch + 1) % s.eval_every == 0):
                timing: dict = {}
                eval_start = time.perf_counter()
                with paused():
                    accuracy = _evaluate_sharded(model, task.eval, dist, eval_batch, device=device,
                                                 workers=config.data.workers, amp=use_amp, progress=show_bar,
                                                 timing=timing)
                entry["eval_accuracy"] = accuracy
                entry["eval_seconds"] = round(time.perf_counter() - eval_start, 4)
                entry["eval_data_seconds"] = round(timing.get("data", 0.0), 4)
                progress["evaluations"].append({"epoch": epoch, "accuracy": accuracy})
            progress["curve"].append(entry)
            progress["train_images"] += images
            progress["train_seconds"] += seconds
            progress["epoch"] = epoch
            acc_text = f"  acc {entry['eval_accuracy']:.2f}" if entry["eval_accuracy"] is not None else ""
            quiet = config.quiet or not dist.is_main
            _log(quiet, f"{desc}  loss {loss:.4f}  lr {lr:.3e}  {entry['images_per_s'] or 0:.1f} img/s{acc_text}")
            for note in notes:
                _log(quiet, note)
            save(epoch)
            for callback in callbacks:
                callback.on_epoch_end(epoch, entry, info)
    finally:
        if schedule is not None:
            schedule.close()

    save(progress["epoch"])  # refresh wall time / peak memory
    record = {
        "format_version": RECORD_FORMAT,
        "status": "complete",
        "config": {**config.to_dict(), "resume": False},  # the run itself, reusable as --config
        "versions": versions(),
        "device": device_info(device),
        "amp": amp.to_dict(),
        "seed": config.seed,
        "model": {"name": config.model.name, "weights": config.model.weights, "weights_sha256": weights_sha256,
                  "kwargs": config.model.kwargs, "img_size": config.data.image_size,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "classifier_init": config.model.classifier_init},
        "method": method_summary(model),
        "data": {"kind": config.data.kind, "root": config.data.root, "task": task.name, "split": config.data.split,
                 "train_split": task.manifest.get("train_split"), "eval_split": task.manifest.get("eval_split"),
                 "num_classes": task.num_classes, "train_images": len(train_data), "eval_images": len(task.eval),
                 "held_out": held_out_info, "cache": task.cache,
                 "fingerprint": None if fingerprint is None else {k: fingerprint[k] for k in ("method", "images", "sha256")},
                 "manifest_hash": task.manifest_hash, "manifest": task.manifest, "warnings": list(task.warnings)},
        "schedule": learning_rate.to_dict(),
        "curve": progress["curve"],
        "evaluations": progress["evaluations"],
        "protocols": protocols(progress["evaluations"], config.data.split),
        **(schedule.record() if schedule is not None else {}),
        "trainable_parameters": {"with_classifier": trainable_parameters(model),
                                 "without_classifier": trainable_parameters(model, include_classifier=False)},
        "adapter_bytes": {"with_classifier": adapter_bytes(model),
                          "without_classifier": adapter_bytes(model, include_classifier=False)},
        "peak_memory": {"bytes": progress["peak_memory"], "kind": peak_memory(device)["kind"]},
        "images_per_s": round(progress["train_images"] / progress["train_seconds"], 2) if progress["train_seconds"] else None,
        "train_seconds": round(progress["train_seconds"], 3),
        "wall_time_s": round(progress["wall_seconds"], 3),
        "resumed_at_epochs": progress["resumed_at"],
        "execution": {"executor": "torchrun" if dist.enabled else "direct", **dist.record(), **(execution or {})},
        "started_at": progress["started_at"],
        "finished_at": _now(),
        "files": None,
    }
    if writes:
        backbone = backbone_record(model=config.model.name, weights=config.model.weights, weights_sha256=weights_sha256,
                                   kwargs=config.model.kwargs, img_size=config.data.image_size, seed=config.seed,
                                   drop_path=config.model.drop_path, normalize=config.data.normalize,
                                   class_names=task.classes, pretrained=config.model.pretrained,
                                   random_init=config.model.random_init)
        install_adapter_folder(model, out / ADAPTER_DIR, backbone)
        record["files"] = {"adapter": ADAPTER_DIR, "checkpoint": CHECKPOINT_NAME, "run": RUN_NAME}
        record["adapter_file_bytes"] = (out / ADAPTER_DIR / WEIGHTS_NAME).stat().st_size
        write_json(out / RUN_NAME, record)
    for callback in callbacks:
        callback.on_train_end(record, info)
    return record
