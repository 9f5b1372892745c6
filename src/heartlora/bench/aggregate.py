"""Report arithmetic: VTAB-1K group means, the mean of group means ("Average"), the 19-task mean,
and the seed statistics of every table cell (mean, sample std, n, 95% Student-t interval).

The literature's "Average" column is the mean of the three group means (Natural, Specialized,
Structured); the plain mean over 19 tasks differs and is reported beside it, labelled.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping


def _groups() -> dict[str, list[str]]:
    from ..data import VTAB_GROUPS

    return VTAB_GROUPS


def group_means(per_task: Mapping[str, float], groups: Mapping[str, list[str]] | None = None) -> dict:
    """``{natural, specialized, structured}`` means over the tasks present, ``average`` (mean of
    group means, only when every group has a task), ``mean_tasks`` (plain mean over every task
    given) and ``complete`` (all 19 tasks present). Tasks of one's own in the VTAB layout (not
    among the 19) enter only ``mean_tasks``.

    ``groups``: another suite's ``{group: [tasks]}`` (e.g. ``MINI_VTAB_GROUPS``); its group names
    replace the three, and ``average`` is the mean of its group means."""
    from ..data.tasks import lookup_task

    groups = _groups() if groups is None else groups
    scores = {lookup_task(t, "vtab") or t: float(v) for t, v in per_task.items()}
    out: dict = {}
    missing = []
    for group, tasks in groups.items():
        present = [scores[t] for t in tasks if t in scores]
        missing += [t for t in tasks if t not in scores]
        out[group] = statistics.fmean(present) if present else None
    means = [out[g] for g in groups]
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


# ----- seed statistics ---------------------------------------------------------------------------------
# Student-t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, 4 decimals); beyond 30 the
# Cornish-Fisher expansion around the normal quantile agrees to 1e-5.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963985


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t critical value for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with its spread: sample std and the 95% t-interval of the mean (both NaN for
    a single seed, where no spread is measured)."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    def contains(self, value: float) -> bool | None:
        """Whether ``value`` lies in the 95% interval; None when there is no interval (n < 2)."""
        if self.n < 2:
            return None
        return self.low <= value <= self.high


def summarize(values) -> Summary:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Summary(mean, math.nan, len(values), math.nan, math.nan)
    std = statistics.stdev(values)
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return Summary(mean, std, len(values), mean - half, mean + half)
