"""Heart-LoRA's own training schedule: score heads, switch off the least responsive, go on.

Epochs ``0 … score_epochs-1`` train every head while their responsiveness accumulates from the
ordinary backward pass (``taylor``, ``activation``; ``weight`` is read from the weights, and
``ablation`` is measured on batches at the end of the phase). At the end of the last scoring epoch
the heads to switch off are fixed — by ``ne``, ``fraction``, a byte budget, or ``ne=auto`` (the
largest count whose held-out accuracy, with those heads gated off and no retraining, stays within
``tolerance`` points of all heads on) — and their blocks leave the parameters and the optimiser
state. With ``restart`` the adapters and the classifier start again from a fresh initialisation
(and, with ``restart_schedule``, so does the learning-rate schedule).

Any training loop drives it through the hooks of :class:`heartlora.methods.base.MethodSchedule`
(see :func:`heartlora.methods.factory.schedule_for`); ``heartlora train`` is one such loop.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ..heads import stages
from ..seeding import derive_seed, seed_all
from .base import MethodSchedule, ScheduleActions, ScheduleContext, adapter_layers, classifier_parameter_names
from .factory import get_state
from .lowrank import LowRankQKV, lowrank_layers, round_half_up
from .responsiveness import (
    HeadScorer,
    ablation_scores,
    apply_head_selection,
    restore_scoring_state,
    scoring_paused,
    scoring_state,
    select_heads,
)

__all__ = ["HeartLoRASchedule", "budget_counts"]


def _stored_bytes(layers: list[LowRankQKV], counts: list[int]) -> int:
    return sum(layer.stored_nbytes(layer.site.num_heads - count) for layer, count in zip(layers, counts))


def budget_counts(layers: list[LowRankQKV], budget: int, groups: list[int]) -> list[int]:
    """Heads off per layer for the largest adapter whose stored bytes (classifier excluded) are
    <= ``budget``: heads are switched off one count at a time in the group (stage) whose share of
    heads off is the smallest (ties: the earlier group), every layer of a group alike."""
    heads = [layer.site.num_heads for layer in layers]
    counts = [0] * len(layers)
    order = list(dict.fromkeys(groups))
    while _stored_bytes(layers, counts) > budget:
        open_groups = [g for g in order if all(counts[i] < heads[i] - 1 for i, x in enumerate(groups) if x == g)]
        if not open_groups:
            smallest = _stored_bytes(layers, counts)
            raise ValueError(f"option 'budget_bytes': a budget of {budget:,} bytes is below the smallest adapter "
                             f"this backbone allows ({smallest:,} bytes, one head kept per layer)")
        share = {g: counts[groups.index(g)] / heads[groups.index(g)] for g in open_groups}
        group = min(open_groups, key=lambda g: (share[g], order.index(g)))
        for i, x in enumerate(groups):
            if x == group:
                counts[i] += 1
    return counts


class HeartLoRASchedule(MethodSchedule):
    """Scoring epochs → head selection → (optional restart) → training with the mask."""

    @classmethod
    def holdout_fraction(cls, options: dict) -> float | None:
        needs = options.get("ne") == "auto" or options.get("ablation_data") == "holdout"
        return float(options["holdout"]) if needs else None

    def __init__(self, model: nn.Module, context: ScheduleContext, optimizer: Any = None):
        super().__init__(model, context, optimizer)
        state = get_state(model)
        self.method, self.options = state.method, dict(state.options)
        self.layers = lowrank_layers(model)
        if not self.layers:
            raise ValueError(f"method '{self.method}': the model has no low-rank layers to select heads in")
        self.stages = stages([layer.site for layer in self.layers])
        o, epochs = self.options, context.epochs
        score_epochs = o.get("score_epochs")
        if score_epochs is None:
            score_epochs = max(1, min(context.warmup_epochs, epochs - 1))
        elif score_epochs > epochs:
            raise ValueError(f"option 'score_epochs'={score_epochs} of method '{self.method}': exceeds the "
                             f"{epochs} training epochs")
        if o.get("restart") and score_epochs >= epochs:
            raise ValueError(f"option 'restart' of method '{self.method}': needs epochs after the scoring: "
                             f"score_epochs={score_epochs} leaves none of the {epochs} epochs to retrain with the mask")
        if score_epochs == 0:
            warnings.warn("score_epochs=0: heads are selected before training, from scores of the initial adapter "
                          "(all zero for a zero-initialised B: ties switch off the lowest head indices)", stacklevel=3)
        self.score_epochs = int(score_epochs)
        if o.get("ne") == "auto" and context.validation_accuracy is None:
            raise ValueError(f"option 'ne'='auto' of method '{self.method}': needs held-out data "
                             "(the schedule's validation_accuracy); heartlora train provides it")
        if o.get("score") == "ablation":
            source = context.validation_batches if o.get("ablation_data") == "holdout" else context.train_batches
            if source is None:
                raise ValueError(f"option 'score'='ablation' of method '{self.method}': needs batches to measure on "
                                 f"(the schedule's {'validation' if o.get('ablation_data') == 'holdout' else 'train'}"
                                 "_batches); heartlora train provides them")
        self.budget = self._budget()
        self.scorer: HeadScorer | None = None
        self.pending_scores: dict | None = None
        self.selected, self.selected_after_epoch, self.restarted = False, None, False
        self.auto: dict | None = None

    # ----- how many heads -------------------------------------------------------------------------
    def _budget(self) -> dict | None:
        o = self.options
        if o.get("budget_bytes") is None and o.get("budget_ratio") is None:
            return None
        full = _stored_bytes(self.layers, [0] * len(self.layers))  # the same-rank LoRA
        if o.get("budget_bytes") is not None:
            budget, source = int(o["budget_bytes"]), f"budget_bytes={int(o['budget_bytes'])}"
        else:
            budget = int(float(o["budget_ratio"]) * full)
            source = f"budget_ratio={o['budget_ratio']} of the same-rank LoRA's {full:,} bytes"
        groups = self.stages if len({layer.site.num_heads for layer in self.layers}) > 1 else [0] * len(self.layers)
        try:
            counts = budget_counts(self.layers, budget, groups)
        except ValueError as err:
            raise ValueError(f"{err} ({source})") from None
        return {"budget_bytes": budget, "source": source, "lora_bytes": full, "heads_off": counts,
                "stored_bytes": _stored_bytes(self.layers, counts)}

    def _fixed_counts(self) -> tuple[int | list[int] | None, float | None]:
        o = self.options
        if self.budget is not None:
            return self.budget["heads_off"], None
        return o.get("ne"), o.get("fraction")

    def _auto_counts(self, k: int) -> list[int]:
        heads = [layer.site.num_heads for layer in self.layers]
        smallest = min(heads)
        return [min(h - 1, round_half_up(k * h / smallest)) for h in heads]

    def _masks(self, scores: list[torch.Tensor], ne, fraction) -> list[torch.Tensor]:
        o = self.options
        return select_heads(scores, ne=ne, select=o["select"], fraction=fraction, normalize=o.get("normalize", False),
                            seed=o.get("select_seed", 0), stages=self.stages)

    @torch.no_grad()
    def _choose_auto(self, scores: list[torch.Tensor]) -> tuple[list[int], list[str]]:
        """ne=auto: gate off the least responsive heads one more count at a time (no retraining) and
        keep the largest count whose held-out accuracy stays within ``tolerance`` of all heads on."""
        tolerance = float(self.options["tolerance"])
        smallest = min(layer.site.num_heads for layer in self.layers)
        curve = []
        for k in range(smallest):
            counts = self._auto_counts(k)
            masks = self._masks(scores, counts, None)
            saved = [layer.head_gate.clone() for layer in self.layers]
            try:
                for layer, mask in zip(self.layers, masks):
                    layer.head_gate.copy_((mask.to(layer.head_gate.device)).to(layer.head_gate.dtype))
                with scoring_paused(self.model):
                    accuracy = float(self.context.validation_accuracy())
            finally:
                for layer, gate in zip(self.layers, saved):
                    layer.head_gate.copy_(gate)
            curve.append({"ne": k, "heads_off": counts, "accuracy": accuracy})
        reference = curve[0]["accuracy"]
        chosen = max(point["ne"] for point in curve if point["accuracy"] >= reference - tolerance)
        self.auto = {"tolerance": tolerance, "curve": curve, "chosen_ne": chosen,
                     "chosen_heads_off": curve[chosen]["heads_off"], "validation": self.context.validation_info}
        accuracies = ", ".join(f"{point['accuracy']:.2f}" for point in curve)
        line = (f"ne=auto: held-out accuracy with 0..{smallest - 1} heads off per layer {accuracies}; "
                f"kept ne={chosen} (tolerance {tolerance:g} points)")
        return curve[chosen]["heads_off"], [line]

    # ----- hooks ----------------------------------------------------------------------------------
    def _scoring(self, epoch: int) -> bool:
        return not self.selected and epoch < self.score_epochs

    def on_epoch_start(self, epoch: int) -> ScheduleActions:
        if not self.selected and self.score_epochs == 0:
            return self._select(-1)
        kind = self.options["score"]
        if self._scoring(epoch) and kind != "ablation" and self.scorer is None:
            self.scorer = HeadScorer(self.model, kind, reduce=self.context.all_reduce_mean)
            if self.pending_scores:
                restore_scoring_state(self.model, self.pending_scores)
        self.pending_scores = None
        return ScheduleActions()

    def on_epoch_end(self, epoch: int) -> ScheduleActions:
        if not self.selected and epoch == self.score_epochs - 1:
            return self._select(epoch)
        return ScheduleActions()

    def _scores(self) -> list[torch.Tensor]:
        o = self.options
        if o["score"] == "ablation":
            source = self.context.validation_batches if o.get("ablation_data") == "holdout" else self.context.train_batches
            return ablation_scores(self.model, source(int(o["ablation_batches"])))
        if self.scorer is not None:
            scores = self.scorer.scores()
            self.close()
            return scores
        with HeadScorer(self.model, o["score"]) as fresh:  # score_epochs == 0: the initial adapter
            return fresh.scores()

    def _select(self, epoch: int) -> ScheduleActions:
        o = self.options
        scores = self._scores()
        messages = []
        if o.get("ne") == "auto":
            (ne, messages), fraction = self._choose_auto(scores), None
        else:
            ne, fraction = self._fixed_counts()
        masks = self._masks(scores, ne, fraction)
        apply_head_selection(self.model, masks, optimizer=self.optimizer, scores=scores)
        state = get_state(self.model)
        off = [torch.nonzero(~m).flatten().tolist() for m in masks]
        state.selection = {"score": o["score"], "select": o["select"], "ne": o.get("ne"), "fraction": o.get("fraction"),
                           "heads_off": [len(x) for x in off], "switched_off": off}
        self.selected, self.selected_after_epoch = True, epoch
        actions = ScheduleActions(messages=messages)
        if o.get("restart"):
            self._restart()
            actions.rebuild_optimizer = True
            actions.restart_lr = bool(o.get("restart_schedule"))
        when = "before training" if epoch < 0 else f"after epoch {epoch + 1}"
        actions.messages.append(f"head selection ({o['score']}, {o['select']}) {when}: switched off {off}"
                                + ("; adapters re-initialised" if o.get("restart") else ""))
        return actions

    @torch.no_grad()
    def _restart(self) -> None:
        seed_all(derive_seed(self.context.seed, "restart"))
        for layer in adapter_layers(self.model).values():
            layer.reset_parameters()
        if self.context.reset_classifier is not None:
            self.context.reset_classifier()
        else:
            names = set(classifier_parameter_names(self.model))
            for name, module in self.model.named_modules():
                if any(f"{name}.{p}" in names for p, _ in module.named_parameters(recurse=False)):
                    module.reset_parameters()
        self.restarted = True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with scoring_paused(self.model):
            yield

    def phase(self, epoch: int) -> str:
        return "score" if epoch < self.score_epochs else "train"

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None

    # ----- checkpoints and the run record --------------------------------------------------------
    def state_dict(self) -> dict:
        state = get_state(self.model)
        return {"selected": self.selected, "selected_after_epoch": self.selected_after_epoch,
                "restarted": self.restarted, "head_masks": state.head_masks, "scores": state.scores,
                "selection": state.selection, "auto": self.auto,
                "partial_scores": scoring_state(self.model) if self.scorer is not None else None}

    def load_state_dict(self, saved: dict) -> None:
        if saved.get("head_masks"):
            apply_head_selection(self.model, [torch.tensor(m) for m in saved["head_masks"]], scores=saved.get("scores"))
            get_state(self.model).selection = saved.get("selection") or {}
        self.selected, self.selected_after_epoch = bool(saved.get("selected")), saved.get("selected_after_epoch")
        self.restarted, self.auto = bool(saved.get("restarted")), saved.get("auto")
        self.pending_scores = saved.get("partial_scores")

    def record(self) -> dict:
        o, state = self.options, get_state(self.model)
        return {"heads": {
            "score": o["score"], "score_epochs": self.score_epochs, "restart": bool(o.get("restart")),
            "restart_schedule": bool(o.get("restart_schedule")), "select": o["select"], "ne": o.get("ne"),
            "fraction": o.get("fraction"), "stages": self.stages if len(set(self.stages)) > 1 else None,
            "budget": self.budget, "auto": self.auto, "selected_after_epoch": self.selected_after_epoch,
            "heads_off": (state.selection or {}).get("heads_off"),
            "switched_off": (state.selection or {}).get("switched_off"),
            "head_masks": state.head_masks, "scores": state.scores,
        }}
