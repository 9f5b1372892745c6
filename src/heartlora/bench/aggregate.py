"""VTAB-1K arithmetic: group means, the mean of group means ("Average") and the 19-task mean.

The literature's "Average" column is the mean of the three group means (Natural, Specialized,
Structured); the plain mean over 19 tasks differs and is reported beside it, labelled.
"""
from __future__ import annotations

import statistics
from typing import Mapping


def _groups() -> dict[str, list[str]]:
    from ..data import VTAB_GROUPS

    return VTAB_GROUPS


def group_means(per_task: Mapping[str, float]) -> dict:
    """``{natural, specialized, structured}`` means over the tasks present, ``average`` (mean of
    group means, only when every group has a task), ``mean_tasks`` (plain mean over every task
    given) and ``complete`` (all 19 tasks present). Tasks of one's own in the VTAB layout (not
    among the 19) enter only ``mean_tasks``."""
    from ..data.tasks import lookup_task

    scores = {lookup_task(t, "vtab") or t: float(v) for t, v in per_task.items()}
    out: dict = {}
    missing = []
    for group, tasks in _groups().items():
        present = [scores[t] for t in tasks if t in scores]
        missing += [t for t in tasks if t not in scores]
        out[group] = statistics.fmean(present) if present else None
    means = [out[g] for g in _groups()]
    out["average"] = statistics.fmean(means) if all(m is not None for m in means) else None
    out["mean_tasks"] = statistics.fmean(scores.values()) if scores else None
    out["complete"] = not missing
    out["missing"] = missing
    return out


def mean_of_group_means(natural: float, specialized: float, structured: float) -> float:
    return (natural + specialized + structured) / 3.0


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    if not values:
        raise ValueError("no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
