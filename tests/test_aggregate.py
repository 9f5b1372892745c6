"""VTAB-1K group arithmetic, checked against the paper's Table A1 and a hand computation."""
import pytest

from heartlora.bench.aggregate import group_means, mean_of_group_means, mean_std
from heartlora.data import VTAB_GROUPS


def test_table_a1_lora_row_from_group_means():
    # LoRA in Table A1: Natural 81.5, Specialized 85.2, Structured 62.6 -> Average 76.4
    assert round(mean_of_group_means(81.5, 85.2, 62.6), 1) == 76.4


def test_group_means_by_hand():
    per_task = {}
    for group, value in (("natural", 80.0), ("specialized", 86.0), ("structured", 60.0)):
        for i, task in enumerate(VTAB_GROUPS[group]):
            per_task[task] = value + i  # 80..86, 86..89, 60..67
    result = group_means(per_task)
    assert result["natural"] == pytest.approx(83.0)  # mean of 80..86
    assert result["specialized"] == pytest.approx(87.5)  # mean of 86..89
    assert result["structured"] == pytest.approx(63.5)  # mean of 60..67
    assert result["average"] == pytest.approx((83.0 + 87.5 + 63.5) / 3)
    assert result["mean_tasks"] == pytest.approx(sum(per_task.values()) / 19)
    assert result["average"] != pytest.approx(result["mean_tasks"])  # the two are labelled apart
    assert result["complete"] and not result["missing"]


def test_partial_results_are_flagged_and_aliases_accepted():
    result = group_means({"cifar100": 70.0, "eurosat": 90.0})
    assert result["natural"] == 70.0 and result["specialized"] == 90.0
    assert result["structured"] is None and result["average"] is None
    assert not result["complete"] and "dsprites_loc" in result["missing"]


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_tasks_of_ones_own_enter_only_the_plain_mean():
    result = group_means({"cifar": 70.0, "digits": 90.0})
    assert result["natural"] == 70.0 and result["mean_tasks"] == 80.0


def test_t_quantiles_and_interval_by_hand():
    from heartlora.bench.aggregate import summarize, t_quantile_975

    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=1e-4)  # beyond the table: the expansion
    assert t_quantile_975(10_000) == pytest.approx(1.9602, abs=1e-4)
    s = summarize([70.0, 72.0, 74.0])  # mean 72, std 2, half-width t(2)·2/√3
    half = 4.3027 * 2.0 / 3 ** 0.5
    assert (s.mean, s.std, s.n) == (72.0, 2.0, 3)
    assert s.low == pytest.approx(72.0 - half, abs=1e-3) and s.high == pytest.approx(72.0 + half, abs=1e-3)
    assert s.contains(75.0) and not s.contains(80.0)


def test_one_seed_has_no_spread():
    from heartlora.bench.aggregate import summarize

    s = summarize([61.5])
    assert s.mean == 61.5 and s.n == 1 and s.std != s.std and s.low != s.low  # NaN: not measured
    assert s.contains(61.5) is None
