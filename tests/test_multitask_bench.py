"""benchmarks/multitask.py keeps running; memory: the backbone is held once whatever T (no timings asserted)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multitask.py"
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("multitask_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["multitask_bench"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("multitask_bench", None)
    sys.modules.pop("step_time", None)


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
