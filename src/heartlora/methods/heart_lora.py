"""Heart-LoRA (Zhong & Zhou, arXiv 2404.08894): LoRA on the task-responsive heads only.

The layer is LoRA's (:class:`heartlora.methods.lowrank.LowRankQKV`, which keeps B per head); what
Heart-LoRA adds is its options (how many heads, which score, which selection rule) and its
training schedule (:mod:`heartlora.methods.heart_schedule`): score heads while training all of
them, switch off the least responsive, continue (or restart) with the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..heads import AttentionSite
from .base import MethodSpec, documented, option, register
from .heart_schedule import HeartLoRASchedule
from .lowrank import LoRAConfig, apply_lowrank, round_half_up

__all__ = ["HEART_PAPER", "HeartLoRAConfig", "SCORE_KINDS", "SELECT_KINDS"]

HEART_PAPER = ("Zhong & Zhou, Rethinking Low-Rank Adaptation in Vision: Exploring Head-Level Responsiveness "
               "across Diverse Tasks, arXiv 2404.08894")

SCORE_KINDS = ("taylor", "weight", "activation", "ablation")
# global / stage / layer (alias: fraction) select by responsiveness; first, random and reverse are the controls
# for the claim that responsiveness matters (the paper's Figure 3): heads 0..ne-1, a seeded random set, the most
# responsive heads
SELECT_KINDS = ("global", "stage", "layer", "fraction", "first", "random", "reverse")




@documented
@dataclass
class HeartLoRAConfig(LoRAConfig):
    """Options of Heart-LoRA: LoRA's, plus how heads are scored and how many are switched off.

    How many heads are switched off per layer is one of ``ne``, ``fraction``, ``budget_bytes`` or
    ``budget_ratio``; none of them: round(H/4), or fraction 0.25 when head counts differ per layer
    (Swin)."""

    ne: Optional[Union[int, str]] = option(None, "heads switched off per layer, or 'auto': the largest count whose "
                                                 "held-out accuracy stays within 'tolerance' points of all heads on")
    fraction: Optional[float] = option(None, "share of each layer's heads switched off (round(fraction·H) per layer)")
    budget_bytes: Optional[int] = option(None, "switch off the fewest heads that make the stored adapter (classifier "
                                               "excluded) fit this many bytes")
    budget_ratio: Optional[float] = option(None, "as budget_bytes, as a ratio of the same-rank LoRA's bytes")
    tolerance: float = option(1.0, "ne=auto: accuracy points below all-heads-on that are still accepted")
    holdout: float = option(0.1, "ne=auto / ablation_data=holdout on the final split: held-out share of the "
                                 "training set")
    score: str = option("taylor", "responsiveness score: taylor | weight | activation | ablation")
    select: Optional[str] = option(None, "which heads go: global | stage | layer | first | random | reverse "
                                         "(default: global; first / random / reverse are controls)")
    score_epochs: Optional[int] = option(None, "epochs trained with every head while scores accumulate "
                                               "(default: the schedule's warm-up length)")
    ablation_batches: int = option(4, "batches measured by score=ablation")
    ablation_data: str = option("train", "batches score=ablation measures: train (seeded training batches) | "
                                         "holdout (held-out batches)")
    restart: bool = option(False, "re-initialise and retrain from scratch once the mask is fixed")
    restart_schedule: bool = option(False, "with restart: the learning-rate schedule starts afresh too")
    normalize: bool = option(False, "scale each layer's scores to sum 1 before accumulating them")
    select_seed: int = option(0, "seed of select=random")

    def count_options(self) -> list[str]:
        return [name for name in ("ne", "fraction", "budget_bytes", "budget_ratio") if getattr(self, name) is not None]

    @property
    def auto(self) -> bool:
        return self.ne == "auto"

    def validate(self, method: str) -> None:
        super().validate(method)

        def bad(option: str, expected: str) -> ValueError:
            return ValueError(f"option '{option}'={getattr(self, option)!r} of method '{method}': expected {expected}")

        if self.score not in SCORE_KINDS:
            raise bad("score", f"one of {', '.join(SCORE_KINDS)}")
        if self.select is not None and self.select not in SELECT_KINDS:
            raise bad("select", f"one of {', '.join(SELECT_KINDS)}")
        if self.select == "fraction":
            self.select = "layer"  # older name: a fraction of each layer's own heads
        given = self.count_options()
        if len(given) > 1:
            raise ValueError(f"method '{method}': give one of the options ne, fraction, budget_bytes, budget_ratio "
                             f"(got {', '.join(given)})")
        if isinstance(self.ne, str):
            if self.ne.strip().lower() != "auto":
                raise bad("ne", "a head count >= 0 or 'auto'")
            self.ne = "auto"
        elif self.ne is not None and self.ne < 0:
            raise bad("ne", "a head count >= 0 or 'auto'")
        if self.fraction is not None and not 0.0 <= self.fraction < 1.0:
            raise bad("fraction", "0 <= fraction < 1")
        if self.budget_bytes is not None and self.budget_bytes < 0:
            raise bad("budget_bytes", "a number of bytes >= 0")
        if self.budget_ratio is not None and not 0.0 < self.budget_ratio <= 1.0:
            raise bad("budget_ratio", "0 < ratio <= 1 (a share of the same-rank LoRA's bytes)")
        if not 0.0 <= self.tolerance <= 100.0:
            raise bad("tolerance", "accuracy points between 0 and 100")
        if not 0.0 < self.holdout < 1.0:
            raise bad("holdout", "a share of the training set between 0 and 1")
        if self.score_epochs is not None and self.score_epochs < 0:
            raise bad("score_epochs", "an epoch count >= 0")
        if self.ablation_batches < 1:
            raise bad("ablation_batches", "a batch count >= 1")
        if self.ablation_data not in ("train", "holdout"):
            raise bad("ablation_data", "train or holdout")
        if self.restart_schedule and not self.restart:
            raise ValueError(f"method '{method}': option 'restart_schedule' needs option 'restart=true'")

    def resolve(self, sites: list[AttentionSite], method: str) -> None:
        """Fill the defaults that depend on the backbone's head counts."""
        heads = [s.num_heads for s in sites]
        uniform = len(set(heads)) == 1
        if self.select is None:
            self.select = "global" if uniform else "stage"  # Swin: global within each stage
        if not uniform and (self.select in ("global", "random", "reverse")
                            or (self.select == "first" and not isinstance(self.ne, int))):
            raise ValueError(
                f"method '{method}': select='{self.select}' needs the same number of heads in every layer; this "
                f"backbone has {sorted(set(heads))} — use select='stage' (global within each stage) or select='layer'"
            )
        if not self.count_options():
            if uniform:
                self.ne = round_half_up(heads[0] / 4)
            else:
                self.fraction = 0.25  # heads differ per stage: a share of each layer's heads
        if isinstance(self.ne, int) and self.ne >= min(heads):
            raise ValueError(
                f"option 'ne'={self.ne} of method '{method}': must be smaller than the number of heads "
                f"in every layer (smallest: {min(heads)})"
            )


def _full_precision(options: dict) -> bool:
    return options["bits"] >= 32


register(MethodSpec(
    "heart-lora", HeartLoRAConfig, apply_lowrank,
    "LoRA on task-responsive heads only; global selection (same heads off in every layer; per stage on Swin)",
    HEART_PAPER, mergeable=True, identity_at_init=_full_precision, schedule=HeartLoRASchedule, selects_heads=True,
    peft_exportable=True, servable=True,
))
register(MethodSpec(
    "heart-lora-layer", HeartLoRAConfig, apply_lowrank,
    "Heart-LoRA† : each layer switches off its own least responsive heads", HEART_PAPER,
    mergeable=True, defaults={"select": "layer"}, identity_at_init=_full_precision, schedule=HeartLoRASchedule,
    selects_heads=True, peft_exportable=True, servable=True,
))
