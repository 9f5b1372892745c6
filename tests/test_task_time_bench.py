"""benchmarks/task_time.py keeps running, and its cached and uncached runs agree (no timings asserted)."""
import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def task_time():
    yield from load_benchmark("task_time.py", "task_time")


def test_quick_run_writes_the_breakdown_of_both_modes(task_time, tmp_path, capsys):
    out = tmp_path / "task_time.json"
    result = task_time.main(["--quick", "--train", "16", "--test", "8", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    off, auto = result["runs"]["off"], result["runs"]["auto"]
    assert off["storage"] == {"train": "off", "eval": "off"} and auto["storage"] == {"train": "memory", "eval": "memory"}
    assert result["ratios"]["identical"] and off["losses"] == auto["losses"]
    for run in (off, auto):
        assert run["epochs"] == 1 and run["evaluations"] == 1
        assert min(run[k] for k in ("data_s", "step_s", "eval_s", "eval_data_s", "scoring_s")) >= 0
    table = capsys.readouterr().out
    assert "| off |" in table and "| auto |" in table and "bit-identical: yes" in table
