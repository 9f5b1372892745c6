"""benchmarks/step_time.py keeps running and its paired statistics are right (no timings asserted)."""
import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def step_time():
    yield from load_benchmark("step_time.py", "step_time")


def test_median_ci_uses_binomial_order_statistics(step_time):
    median, lo, hi = step_time.median_ci([float(v) for v in range(20, 0, -1)])
    assert median == 10.5
    assert (lo, hi) == (6.0, 15.0)  # ranks 6 and 15 of 20: the textbook ~95 % interval


def test_paired_ratio_cancels_common_drift(step_time):
    reference = [1.0, 2.0, 4.0, 8.0, 1.5, 3.0, 6.0, 0.5]  # the machine's speed drifts by 16×
    ratio, (lo, hi) = step_time.paired_ratio([1.1 * r for r in reference], reference)
    assert ratio == pytest.approx(1.1) and lo == pytest.approx(1.1) and hi == pytest.approx(1.1)


def test_tiny_run_writes_every_ratio(step_time, tmp_path):
    out = tmp_path / "bench.json"
    step_time.main(["--models", "vit_tiny_32", "--batch", "2", "--repeats", "2", "--warmup", "1",
                    "--threads", "1", "--no-peft", "--no-ablation", "--json", str(out)])
    result = json.loads(out.read_text())["results"][0]
    rows = result["rows"]
    assert rows["floor"]["vs_floor"] == 1.0 and result["rounds"] == 2
    assert {"lora", "heart-lora ne=0", "heart-lora ne=1", "heart-lora scoring", "bilora 1-bit"} <= set(rows)
    assert all(row["vs_floor_ci"][0] <= row["vs_floor"] <= row["vs_floor_ci"][1] for row in rows.values())
    assert "taylor_overhead_ci" in rows["heart-lora scoring"]
    assert 0 < result["taylor_work"]["vs_floor_step"] and result["taylor_work"]["layers"] == 12
    assert result["inference"]["merged_vs_backbone"] > 0


def test_bf16_twins_report_their_ratio_to_fp32(step_time, tmp_path):
    out = tmp_path / "bench.json"
    step_time.main(["--models", "vit_tiny_32", "--batch", "2", "--repeats", "2", "--warmup", "1", "--threads", "1",
                    "--no-peft", "--no-ablation", "--precision", "both", "--configs", "heart-lora ne=1",
                    "--json", str(out)])
    rows = json.loads(out.read_text())["results"][0]["rows"]
    assert set(rows) == {"floor", "floor [bf16]", "heart-lora ne=1", "heart-lora ne=1 [bf16]"}
    assert rows["floor [bf16]"]["vs_floor"] == 1.0 and "vs_fp32" in rows["heart-lora ne=1 [bf16]"]
    assert "vs_fp32" not in rows["heart-lora ne=1"]
