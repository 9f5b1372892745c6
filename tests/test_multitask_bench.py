"""benchmarks/multitask.py keeps running; memory: the backbone is held once whatever T (no timings asserted)."""
import pytest
import torch

from conftest import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("multitask.py", "multitask_bench", "step_time")


def test_one_round_of_every_configuration(bench):
    pytest.importorskip("peft")
    result = bench.bench_tasks("vit_tiny_32", tasks=3, batch=6, rank=2, repeats=1, warmup=0,
                               device=torch.device("cpu"), include_peft=True, ne=1, amp=False)
    rows = {row["config"]: row for row in result["rows"]}
    assert set(rows) == {"multitask", "multitask dense", "multitask heart", "merged x1", "merged x3", "peft"}
    assert all(row["ms"] > 0 and row["images_per_s"] > 0 for row in rows.values())
    assert "vs_merged1" in rows["multitask"] and "vs_peft" in rows["multitask heart"]
    one = rows["merged x1"]["held_bytes"]
    assert rows["merged x3"]["held_bytes"] > 2.9 * one  # three copies of the backbone
    assert rows["multitask"]["held_bytes"] < 1.1 * one and rows["multitask heart"]["held_bytes"] < 1.1 * one
