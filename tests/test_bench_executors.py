"""Sweep executors: a sweep on a local Ray instance gives the same run records as the local
executor, a rerun skips every cell, and a cell whose worker is killed mid-run resumes from its
checkpoint to the record of an uninterrupted run."""
import json
import os
import platform
import shutil
import sys
import tempfile

import pytest
import torch
from safetensors.torch import load_file

from heartlora.bench.executors import LocalExecutor, RayExecutor
from heartlora.bench.sweep import plan, run_cell, run_cells

from test_bench import TASKS, tiny_base, vtab_root  # noqa: F401  (vtab_root: the shared data fixture)

QUIET = {"log": lambda _: None, "progress": False}


def sweep_cells():
    return plan("vtab", TASKS, ["linear", "heart-lora"], seeds=[1], method_options={"heart-lora": {"ne": 1, "score_epochs": 1}})


@pytest.fixture(scope="module")
def local_sweep(vtab_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    result = run_cells(sweep_cells(), tiny_base(vtab_root), out, executor=LocalExecutor(), **QUIET)
    assert result.ok and len(result.done) == 4
    return out


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # the runners below live in this test module, which Ray workers cannot import: send them by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    shutil.rmtree(temp, ignore_errors=True)


def assert_same_records(cell, first_root, second_root):
    a, b = (json.loads((root / cell.relative_dir() / "run.json").read_text()) for root in (first_root, second_root))
    assert a["protocols"] == b["protocols"] and a["evaluations"] == b["evaluations"]
    assert [e["train_loss"] for e in a["curve"]] == pytest.approx([e["train_loss"] for e in b["curve"]], rel=1e-6)
    assert a.get("heads") == b.get("heads")
    tensors = [load_file(root / cell.relative_dir() / "adapter" / "adapter.safetensors") for root in (first_root, second_root)]
    assert tensors[0].keys() == tensors[1].keys()
    for name in tensors[0]:
        torch.testing.assert_close(tensors[0][name], tensors[1][name], rtol=1e-6, atol=1e-7)
    return a, b


def test_ray_sweep_matches_local_and_rerun_skips(ray_session, vtab_root, local_sweep, tmp_path):
    pytest.importorskip("tensorboardX")
    cells, root, logs = sweep_cells(), tmp_path / "runs", tmp_path / "logs"
    executor = RayExecutor(cpus_per_cell=1)
    # logged to TensorBoard: each cell's events land in its folder below the sweep's, named by the
    # sweep's tracker group, which travels with the cell to the Ray worker
    logged = tiny_base(vtab_root).replace(log="tensorboard", log_dir=str(logs))
    result = run_cells(cells, logged, root, executor=executor, **QUIET)
    assert result.ok and len(result.done) == 4
    for cell in cells:
        local, ray = assert_same_records(cell, local_sweep, root)
        assert local["execution"]["executor"] == "local"
        assert ray["execution"]["executor"] == "ray" and ray["execution"]["world_size"] == 1
        assert ray["execution"]["nodes"] == [platform.node()]
        assert ray["execution"]["resources"] == {"num_cpus": 1, "num_gpus": 0}  # no GPU here: 0 by default
        assert ray["execution"]["ray_node_id"]
        assert list((logs / "runs" / cell.relative_dir()).glob("events.out.tfevents.*"))
    again = run_cells(cells, tiny_base(vtab_root), root, executor=executor, **QUIET)  # logging is not a cell's identity
    assert again.ok and again.done == [] and len(again.skipped) == 4
    assert ray_session.is_initialized()  # a connection the caller opened stays open


def die_after_first_epoch_once(cell, config, execution):
    """The first attempt's worker process dies right after epoch 1's checkpoint, as a killed
    or preempted node would; later attempts run normally."""
    from heartlora.engine.loop import train

    marker = os.path.join(config.out, "killed-once")
    if os.path.exists(marker):
        return train(config, execution=execution)

    def kill(epoch, entry):
        open(marker, "w").close()
        os._exit(1)

    return train(config, callbacks=[kill], execution=execution)


def test_ray_cell_killed_mid_run_resumes(ray_session, vtab_root, local_sweep, tmp_path):
    cells = [c for c in sweep_cells() if c.method == "heart-lora" and c.task == "cifar"]
    base = tiny_base(vtab_root)
    executor = RayExecutor(cpus_per_cell=1)
    stopped = run_cells(cells, base, tmp_path, retries=0, runner=die_after_first_epoch_once, executor=executor, **QUIET)
    assert not stopped.ok and "worker" in stopped.failed[0][1].lower()  # Ray reports the dead worker
    directory = tmp_path / cells[0].relative_dir()
    assert (directory / "checkpoint.pt").is_file() and not (directory / "run.json").is_file()
    # a rerun (a new driver, as after a killed one) resumes the cell from its checkpoint
    resumed = run_cells(cells, base, tmp_path, runner=die_after_first_epoch_once, executor=executor, **QUIET)
    assert resumed.ok and resumed.done == cells
    _, record = assert_same_records(cells[0], local_sweep, tmp_path)
    assert record["resumed_at_epochs"] == [1]
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and failures[0]["cell"] == str(cells[0].relative_dir())


def test_a_record_the_driver_cannot_see_is_a_failure(vtab_root, tmp_path):
    cells = sweep_cells()[:1]
    result = run_cells(cells, tiny_base(vtab_root), tmp_path, retries=0, runner=lambda *args: None, **QUIET)
    assert not result.ok and "is not visible here" in result.failed[0][1] and "shared by every node" in result.failed[0][1]


def test_local_pool_runs_cells_in_worker_processes(vtab_root, local_sweep, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    # logged to MLflow, to the store its own environment variable names: the sweep's parent run
    # travels to the worker processes, and each cell's run is its child
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the quick file store, fine for a test
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cells, out = sweep_cells()[:2], tmp_path / "grid"
    result = run_cells(cells, tiny_base(vtab_root).replace(log="mlflow"), out,
                       executor=LocalExecutor(workers=2, devices=["cpu"]), runner=run_cell, **QUIET)
    assert result.ok and len(result.done) == 2
    for cell in cells:
        _, record = assert_same_records(cell, local_sweep, out)
        assert record["execution"]["executor"] == "local" and record["execution"]["parallel"] == 2
    client = mlflow.tracking.MlflowClient()
    runs = {run.info.run_name: run for run in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    parent = runs.pop("grid").info.run_id
    assert sorted(runs) == sorted(cell.relative_dir().as_posix() for cell in cells)
    assert all(run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED" for run in runs.values())


def test_ray_cells_without_gpus_stay_off_them(ray_session, vtab_root, tmp_path):
    from heartlora.config import ConfigError

    cells = sweep_cells()[:1]
    cuda = tiny_base(vtab_root).replace(device="cuda")
    with pytest.raises(ConfigError, match="option '--gpus-per-cell': cells get no GPU, but --device is cuda"):
        run_cells(cells, cuda, tmp_path, executor=RayExecutor(gpus_per_cell=0), **QUIET)
    assert not (tmp_path / cells[0].relative_dir() / "checkpoint.pt").exists()  # nothing ran
    with pytest.warns(UserWarning, match="no Ray node has 1 CPUs and 2 GPUs"):
        RayExecutor(gpus_per_cell=2)._warn_if_no_node_fits({"num_cpus": 1, "num_gpus": 2})
