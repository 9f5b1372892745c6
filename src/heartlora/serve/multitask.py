"""Many task adapters on one frozen backbone; a mixed batch in one backbone pass.

::

    from heartlora.serve.multitask import MultiTask
    model = MultiTask(backbone, {"cifar": "runs/cifar/adapter", "dtd": "runs/dtd/adapter"})
    out = model(images, ["cifar", "dtd", "cifar", ...])    # one task name per sample
    out.logits      # (B, C_max), -inf beyond each sample's class count
    out.mask        # (B, C_max) True on each sample's own classes
    out.per_sample()  # list of (C_task,) tensors

Each attention block's ``qkv`` becomes a :class:`MultiTaskQKV` holding the effective factors of
every task side by side: ``down`` = A_all (Σ_t n_t·r_t, d) and ``up_t`` = B_allᵀ, with each task's
switched-off head rows exactly zero and its scale folded in. The frozen ``qkv`` runs once over the
whole batch; the low-rank terms are added in place, routed one of two ways (``routing``):

* ``segments`` (default): the batch is sorted by task once, so each task's samples are one
  contiguous block of rows; per layer, one ``z = x_t·A_tᵀ`` and one in-place ``addmm`` with B_t
  per task *present* (slices of the stacked factors: no copy, and exactly the work and the
  numbers of each adapter alone). The loop is over tasks, never samples or tokens.
* ``dense``: ``z = x·A_allᵀ`` over the columns of every task present (gathered per weight, not
  per sample), a per-sample column mask keeps each sample's own task's, then one ``addmm``: fewer,
  larger kernels, at the price of computing every present task's columns for every sample.

Classifiers of different sizes are one concatenated Linear with per-task row slices; each
sample's slice is gathered into a padded tensor.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import find_attention_sites
from .adapters import TaskAdapter, check_same_backbone, load_task_adapter

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class UnknownTaskError(ValueError):
    """A sample names a task that is not loaded."""


@dataclass
class TaskLogits:
    """Per-sample logits of a mixed batch, padded to the widest task present."""

    logits: torch.Tensor  # (B, C_max) float; -inf beyond each sample's own classes
    mask: torch.Tensor  # (B, C_max) bool
    num_classes: torch.Tensor  # (B,)
    tasks: list[str]

    def per_sample(self) -> list[torch.Tensor]:
        return [row[:n] for row, n in zip(self.logits, self.num_classes.tolist())]

    def probabilities(self) -> torch.Tensor:
        """Softmax over each sample's own classes (0 on the padding)."""
        return torch.softmax(self.logits.float(), dim=-1)


ROUTINGS = ("segments", "dense")


class Router:
    """The per-sample task routing of the batch in flight, shared by every MultiTaskQKV layer.

    ``segments``: the batch is sorted by task, so each task's samples are one contiguous block of
    rows; ``(first column, width, first sample, end sample)`` per task present. ``dense``: the
    bottleneck columns of the tasks present and a (B, columns) mask keeping each sample's own."""

    def __init__(self) -> None:
        self.active = False
        self.batch = 0
        self.segments: list[tuple[int, int, int, int]] | None = None
        self.columns: torch.Tensor | None = None  # dense: columns of the tasks present (None: all)
        self.mask: torch.Tensor | None = None  # dense: (B, columns), 1 where a column is the sample's task's

    def clear(self) -> None:
        self.active, self.batch, self.segments, self.columns, self.mask = False, 0, None, None, None


class MultiTaskQKV(nn.Module):
    """The frozen fused ``qkv`` Linear plus the low-rank updates of every task, routed per sample.

    ``down`` (Σ widths, d) and ``up_t`` (Σ widths, 3·H·d_h) hold every task's effective factors
    side by side (``up_t`` is B transposed, so a task's block is a contiguous row slice)."""

    def __init__(self, base: nn.Linear, router: Router):
        super().__init__()
        self.base = base
        self.router = router
        self.register_buffer("down", base.weight.new_zeros(0, base.in_features), persistent=False)
        self.register_buffer("up_t", base.weight.new_zeros(0, base.out_features), persistent=False)

    def extra_repr(self) -> str:
        return f"bottleneck columns={self.down.shape[0]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        router = self.router
        if not router.active:
            raise RuntimeError("MultiTaskQKV runs inside MultiTask(images, tasks), which routes each sample to its task")
        x2d = x.reshape(-1, x.shape[-1])
        weight, bias = self.base.weight, self.base.bias
        # qkv(x) as one addmm, then the low-rank terms added in place (as LowRankQKV does)
        out = torch.mm(x2d, weight.t().to(x2d.dtype)) if bias is None else torch.addmm(
            bias.to(x2d.dtype), x2d, weight.t().to(x2d.dtype))
        # rows of one sample are contiguous: its tokens (ViT), or its windows' tokens (Swin's batch-major windows)
        rows = x2d.shape[0] // router.batch
        if router.segments is not None:
            for column, width, first, end in router.segments:  # one step per task present, never per sample
                if width:
                    block = slice(first * rows, end * rows)
                    z = F.linear(x2d[block], self.down[column:column + width].to(x2d.dtype))
                    out[block].addmm_(z, self.up_t[column:column + width].to(out.dtype))
        else:
            cols = router.columns
            down = self.down if cols is None else self.down.index_select(0, cols)
            if down.shape[0]:
                up_t = self.up_t if cols is None else self.up_t.index_select(0, cols)
                z = F.linear(x2d, down.to(x2d.dtype))
                if router.mask is not None:
                    z = z.view(router.batch, rows, -1).mul_(router.mask.to(z.dtype)[:, None, :]).view(-1, z.shape[-1])
                out.addmm_(z.to(out.dtype), up_t.to(out.dtype))
        return out.view(*x.shape[:-1], out.shape[-1])


@dataclass
class _Slot:
    adapter: TaskAdapter
    column: int  # first bottleneck column
    class_offset: int  # first row in the concatenated classifier


class MultiTask(nn.Module):
    """One frozen timm backbone serving many task adapters of the low-rank family (lora, bilora,
    heart-lora, heart-lora-layer) and linear probes; ``model(images, tasks)`` routes each sample
    through its own task's active heads and classifier in one backbone pass.

    ``backbone`` is taken over (its ``qkv`` Linears are wrapped, its classifier removed) and must
    have no method applied. ``reference`` is the backbone.json of the backbone (e.g. from
    :meth:`from_adapters`); without it the first adapter's backbone.json becomes the reference.
    Tasks can be added and removed at any time; calls are serialised by a lock, so one model can
    be shared by threads. ``routing`` is ``segments`` or ``dense`` (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, tasks: Mapping[str, str | os.PathLike] | None = None, *,
                 reference: dict | None = None, reference_source: str = "the backbone", routing: str = "segments"):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"option 'routing'={routing!r}: expected one of {', '.join(ROUTINGS)}")
        self.routing = routing
        if getattr(backbone, "heartlora_state", None) is not None:
            raise ValueError("MultiTask expects a plain backbone; this one already has a heartlora method applied")
        if not hasattr(backbone, "forward_head") or not hasattr(backbone, "reset_classifier"):
            raise ValueError(f"{type(backbone).__name__} is not a timm classifier model (forward_head, reset_classifier)")
        sites = find_attention_sites(backbone)
        backbone.reset_classifier(0)
        for param in backbone.parameters():
            param.requires_grad_(False)
        self.router = Router()
        self.layers: list[MultiTaskQKV] = []
        for site in sites:
            parent_name, _, child = site.qkv_name.rpartition(".")
            parent = backbone.get_submodule(parent_name)
            layer = MultiTaskQKV(getattr(parent, child), self.router)
            setattr(parent, child, layer)
            self.layers.append(layer)
        self.backbone = backbone.eval()
        self.num_features = int(getattr(backbone, "num_features", 0))
        probe = next(backbone.parameters())
        self.register_buffer("classifier_weight", probe.new_zeros(0, self.num_features), persistent=False)
        self.register_buffer("classifier_bias", probe.new_zeros(0), persistent=False)
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.RLock()
        self._refresh_index()
        self.reference, self.reference_source = reference, reference_source
        super().train(False)
        for name, directory in (tasks or {}).items():
            self.add_task(name, directory)

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_adapters(cls, tasks: Mapping[str, str | os.PathLike], device: str | torch.device = "cpu",
                      weights: str | os.PathLike | None = None) -> "MultiTask":
        """Build the backbone from the first adapter's backbone.json (weights checked against its
        sha256; ``weights`` replaces the recorded path) and load every task onto it."""
        from ..adapters_io import BackboneOverrides
        from ..engine.build import build_from_adapter_folder

        if not tasks:
            raise ValueError("MultiTask.from_adapters: give at least one task")
        first = next(iter(tasks.values()))
        overrides = BackboneOverrides(weights=str(weights)) if weights else None
        backbone, resolved = build_from_adapter_folder(first, overrides, load=False)
        model = cls(backbone.to(device), reference=resolved.record, reference_source=resolved.source)
        for name, directory in tasks.items():
            model.add_task(name, directory)
        return model

    def train(self, mode: bool = True) -> "MultiTask":
        if mode:
            raise ValueError("MultiTask is for inference; train each task's adapter with heartlora train")
        return super().train(False)

    @property
    def image_size(self) -> int:
        """Input side length: the backbone record's image size, else the backbone's own."""
        if self.reference and self.reference.get("img_size"):
            return int(self.reference["img_size"])
        size = getattr(getattr(self.backbone, "patch_embed", None), "img_size", None)
        if size is None:
            raise ValueError("MultiTask: unknown input size (no backbone.json and no patch_embed.img_size)")
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        return self.classifier_weight.device

    # ----- tasks ------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def task(self, name: str) -> TaskAdapter:
        slot = self._slots.get(name)
        if slot is None:
            raise UnknownTaskError(self._unknown(name))
        return slot.adapter

    def _unknown(self, name: object) -> str:
        loaded = ", ".join(self._slots) or "none"
        return f"unknown task {name!r}; loaded tasks: {loaded}"

    def add_task(self, name: str, directory: str | os.PathLike) -> TaskAdapter:
        """Load the adapter in ``directory`` as task ``name`` (the model keeps serving meanwhile)."""
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise ValueError(f"task name {name!r}: expected letters, digits, '_', '.', '-' (at most 128, "
                             "starting with a letter or digit)")
        if name in self._slots:
            raise ValueError(f"task '{name}' is already loaded (remove it first)")
        adapter = load_task_adapter(self.backbone, name, directory)  # outside the lock: reads files
        with self._lock:
            self._check_compatible(adapter)
            if name in self._slots:
                raise ValueError(f"task '{name}' is already loaded (remove it first)")
            device = self.device
            column = self.layers[0].down.shape[0] if self.layers else 0
            if adapter.down:
                for layer, down, up in zip(self.layers, adapter.down, adapter.up):
                    layer.down = torch.cat([layer.down, down.to(device)], 0)
                    layer.up_t = torch.cat([layer.up_t, up.t().to(device)], 0).contiguous()
            offset = self.classifier_weight.shape[0]
            self.classifier_weight = torch.cat([self.classifier_weight, adapter.classifier_weight.to(device)], 0)
            self.classifier_bias = torch.cat([self.classifier_bias, adapter.classifier_bias.to(device)], 0)
            adapter = adapter.released()  # its tensors live on in the stacks only
            self._slots[name] = _Slot(adapter, column, offset)
            self._refresh_index()
        return adapter

    def _check_compatible(self, adapter: TaskAdapter) -> None:
        if adapter.classifier_weight.shape[1] != self.num_features:
            raise ValueError(f"{adapter.directory}: the classifier reads {adapter.classifier_weight.shape[1]} "
                             f"features, the backbone gives {self.num_features}")
        if self.reference is None and adapter.backbone is not None:
            self.reference = adapter.backbone
            self.reference_source = f"task '{adapter.name}' ({adapter.directory})"
            for slot in self._slots.values():  # tasks loaded before any backbone.json was known
                check_same_backbone(self.reference, self.reference_source, slot.adapter.directory)
        check_same_backbone(self.reference, self.reference_source, adapter.directory)

    def remove_task(self, name: str) -> TaskAdapter:
        """Unload task ``name``; the backbone and the other tasks stay as they are."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                raise UnknownTaskError(self._unknown(name))
            adapter = slot.adapter
            width, classes = adapter.width, adapter.num_classes
            if width:
                keep = self._without(self.layers[0].down.shape[0], slot.column, width)
                for layer in self.layers:
                    layer.down = layer.down.index_select(0, keep)
                    layer.up_t = layer.up_t.index_select(0, keep)
            keep = self._without(self.classifier_weight.shape[0], slot.class_offset, classes)
            self.classifier_weight = self.classifier_weight.index_select(0, keep)
            self.classifier_bias = self.classifier_bias.index_select(0, keep)
            del self._slots[name]
            for other in self._slots.values():
                if other.column > slot.column:
                    other.column -= width
                if other.class_offset > slot.class_offset:
                    other.class_offset -= classes
            self._refresh_index()
        return adapter

    def _without(self, total: int, start: int, count: int) -> torch.Tensor:
        index = torch.arange(total, device=self.device)
        return index[(index < start) | (index >= start + count)]

    def _refresh_index(self) -> None:
        """Per-task lookup tensors, in task order (index = position in ``tasks``)."""
        slots = self._slot_list = list(self._slots.values())
        device = self.device
        self._task_columns = [torch.arange(s.column, s.column + s.adapter.width, device=device) for s in slots]
        self._column_task = torch.cat([torch.full((s.adapter.width,), i, device=device, dtype=torch.long)
                                       for i, s in enumerate(slots)]) if slots else torch.zeros(0, dtype=torch.long)
        self._class_offset = torch.tensor([s.class_offset for s in slots], dtype=torch.long)
        self._class_count = torch.tensor([s.adapter.num_classes for s in slots], dtype=torch.long)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if hasattr(self, "_slots"):
            with self._lock:
                self._refresh_index()  # keep the lookup tensors on the buffers' device
        return result

    # ----- forward ----------------------------------------------------------------------------
    def task_indices(self, tasks: Sequence[str] | str) -> torch.Tensor:
        """(B,) positions in ``tasks`` of each sample's task name (on the CPU)."""
        names = list(self._slots)
        index = {n: i for i, n in enumerate(names)}
        try:
            return torch.tensor([index[t] for t in tasks], dtype=torch.long)
        except KeyError as err:
            raise UnknownTaskError(self._unknown(err.args[0])) from None

    def forward(self, images: torch.Tensor, tasks: Sequence[str]) -> TaskLogits:
        """Logits of ``images`` (B, 3, H, W), sample i classified by task ``tasks[i]``."""
        if isinstance(tasks, str):
            tasks = [tasks] * images.shape[0]
        tasks = list(tasks)
        if len(tasks) != images.shape[0]:
            raise ValueError(f"MultiTask: {images.shape[0]} images but {len(tasks)} task names; give one per image")
        with self._lock:
            ids = self.task_indices(tasks)
            order = None
            if self.routing == "segments":
                order = torch.argsort(ids, stable=True)
                if bool((order == torch.arange(len(ids))).all()):
                    order = None  # already grouped by task: no copy of the images
            routed = ids if order is None else ids[order]
            inputs = images if order is None else images.index_select(0, order.to(images.device))
            self._route(routed)
            try:
                features = self.backbone.forward_head(self.backbone.forward_features(inputs), pre_logits=True)
            finally:
                self.router.clear()
            logits = F.linear(features, self.classifier_weight.to(features.dtype), self.classifier_bias.to(features.dtype))
            counts, offsets = self._class_count[ids], self._class_offset[ids]
        if order is not None:  # back to the caller's order
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order))
            logits = logits.index_select(0, inverse.to(logits.device))
        width = int(counts.max()) if len(tasks) else 0
        positions = torch.arange(width)
        mask = positions[None, :] < counts[:, None]
        columns = torch.where(mask, offsets[:, None] + positions[None, :], torch.zeros((), dtype=torch.long))
        device = logits.device
        mask, columns = mask.to(device), columns.to(device)
        padded = logits.gather(1, columns).masked_fill(~mask, float("-inf"))
        return TaskLogits(padded, mask, counts.to(device), tasks)

    def _route(self, ids: torch.Tensor) -> None:
        """Set the router for a batch whose i-th sample belongs to task ``ids[i]`` (CPU tensor;
        grouped by task when routing by segments)."""
        router = self.router
        router.active, router.batch = True, len(ids)
        if self.routing == "segments":
            tasks, sizes = torch.unique_consecutive(ids, return_counts=True)
            router.segments, first = [], 0
            for task, size in zip(tasks.tolist(), sizes.tolist()):
                slot = self._slot_list[task]
                router.segments.append((slot.column, slot.adapter.width, first, first + size))
                first += size
            return
        present = torch.unique(ids)
        if len(present) == len(self._slots):
            column_task = self._column_task
        else:
            router.columns = torch.cat([self._task_columns[i] for i in present.tolist()])
            column_task = self._column_task.index_select(0, router.columns)
        if len(present) > 1:
            router.mask = (column_task[None, :] == ids.to(column_task.device)[:, None]).float()

    # ----- results ----------------------------------------------------------------------------
    def top_k(self, out: TaskLogits, k: int) -> list[list[dict]]:
        """Per sample, the ``k`` most probable of its task's classes (at most its class count):
        ``{"label", "class", "probability"}`` dicts, most probable first."""
        probs = out.probabilities()
        # ranked by logit: the -inf padding sorts below every class, even one whose probability underflows to 0
        labels = out.logits.topk(min(k, probs.shape[1]), dim=-1).indices
        values = probs.gather(1, labels).cpu()
        labels = labels.cpu()
        result = []
        for task, count, row_values, row_labels in zip(out.tasks, out.num_classes.tolist(), values.tolist(),
                                                       labels.tolist()):
            names = self.task(task).class_names
            top = min(k, count)
            result.append([{"label": int(label), "class": names[label], "probability": float(value)}
                           for label, value in zip(row_labels[:top], row_values[:top])])
        return result

    def describe(self) -> list[dict]:
        with self._lock:
            return [slot.adapter.describe() for slot in self._slots.values()]
