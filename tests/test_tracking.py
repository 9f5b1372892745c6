"""Experiment tracking, read back from what each tracker wrote, offline: TensorBoard event files,
MLflow's local store through its client, W&B offline run files — for one ``train`` and one
two-cell ``bench``; a tracker that fails on every call leaves a run's record and adapter as they
are without tracking; a resumed run continues its tracker runs."""
import base64
import hashlib
import json
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from heartlora.bench.sweep import identity, plan, run_cells
from heartlora.config import ConfigError, RunConfig
from heartlora.engine.loop import RESUME_MAY_CHANGE, train
from heartlora.tracking.base import EPOCH_METRICS, SUMMARY_METRICS, Tracker, TrackingWarning
from heartlora.tracking.registry import LOG_ENV, TRACKERS, parse_log, requested_trackers
from heartlora.tracking.session import TrackingSession
from heartlora.tracking.sweep import TRACKING_NAME

from conftest import tiny_base

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

ALL = "tensorboard,mlflow,wandb"
HEART = {"name": "heart-lora", "options": {"ne": 1, "score_epochs": 1}}  # heads selected after epoch 1 (step 0)
# settings that differ between the compared runs by construction; record fields that are timings, or
# where the run was written (the data cache folder below --out)
RUN_ONLY = {"out", "log", "log_dir"}
VARYING = {"seconds", "data_seconds", "images_per_s", "schedule_seconds", "eval_seconds", "eval_data_seconds",
           "train_seconds", "wall_time_s", "started_at", "finished_at", "peak_memory", "dir"}


# ----- reading what the trackers wrote ------------------------------------------------------------
def tensorboard_events(folder: Path) -> list:
    """Every event of the TFRecord files in ``folder``, each record's checksums verified (with
    TensorBoard's own reader pieces, not the writer's)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    events = []
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            header = data[pos:pos + 8]
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
            (length,) = struct.unpack("<Q", header)
            body = data[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(body)
            event = Event()
            event.ParseFromString(body)
            events.append(event)
            pos += 16 + length
    return events


def tensorboard_values(events: list, kind: str = "simple_value") -> dict[str, dict[int, object]]:
    """{tag: {step: value}} of the summaries holding ``kind`` (simple_value, image, histo)."""
    values: dict[str, dict[int, object]] = {}
    for event in events:
        for value in event.summary.value:
            if value.WhichOneof("value") == kind:
                values.setdefault(value.tag, {})[event.step] = getattr(value, kind)
    return values


def tensorboard_hparams(events: list) -> dict:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for event in events:
        for value in event.summary.value:
            if value.tag == "_hparams_/session_start_info":
                data = HParamsPluginData()
                data.ParseFromString(value.metadata.plugin_data.content)
                return {key: getattr(v, v.WhichOneof("kind")) for key, v in data.session_start_info.hparams.items()}
    raise AssertionError("no HParams session in the events")


def wandb_records(run_folder: Path) -> list:
    """The records of a W&B offline run (its ``run-ID.wandb`` file: a header, then checksummed
    chunks in 32 KiB blocks, each record a ``wandb_internal_pb2.Record``)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += block - pos % block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum
        pending += chunk
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(run_folder: Path) -> dict:
    """What a W&B offline run holds: its run record, config, history by step, summary, artifacts
    (nested values, e.g. an image's ``{"_type": "image-file", "path": ...}``, as dicts)."""
    run, config, history, summary, artifacts = None, {}, {}, {}, []

    def put(target: dict, item) -> None:
        path = [item.key] if item.key else list(item.nested_key)
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = json.loads(item.value_json)

    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            for item in record.run.config.update:
                put(config, item)
        elif kind == "config":
            for item in record.config.update:
                put(config, item)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                put(row, item)
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            for item in record.summary.update:
                put(summary, item)
        elif kind == "artifact":
            artifacts.append(record.artifact)
    return {"run": run, "config": config, "history": history, "summary": summary, "artifacts": artifacts,
            "folder": run_folder}


def wandb_runs(log_dir: Path) -> dict[str, dict]:
    """{display name: run} of every offline run under ``log_dir/wandb`` (later folders of a resumed id win)."""
    runs = {}
    for folder in sorted((log_dir / "wandb").glob("offline-run-*")):
        run = wandb_run(folder)
        runs[run["run"].display_name] = run
    return runs


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def mlflow_client(log_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{log_dir / 'mlflow.db'}")


def mlflow_runs(log_dir: Path, every: bool = False):
    """{run name: run} of the runs in the store under ``log_dir`` (``every``: a list of them all)."""
    client = mlflow_client(log_dir)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return runs if every else {run.info.run_name: run for run in runs}


def mlflow_history(log_dir: Path, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow_client(log_dir).get_metric_history(run_id, key)}


def mlflow_file(log_dir: Path, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(mlflow_client(log_dir).download_artifacts(run_id, path, str(tmp_path)))


def wandb_processes() -> set[int]:
    """Ids of the live W&B service processes of this machine's user (a worker process's outlive it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid() or "(Z)" in (entry / "stat").read_text().split(")")[-1][:4]:
                continue
            if "wandb" in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


# ----- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Trackers that never reach the network and write only below the test's folders."""
    home = tmp_path_factory.mktemp("tracker-home")
    before = wandb_processes()
    with pytest.MonkeyPatch.context() as patch:
        for name in (LOG_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT", "WANDB_ENTITY",
                     "WANDB_API_KEY", "WANDB_BASE_URL"):
            patch.delenv(name, raising=False)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(name, str(home / name.lower()))
        yield home
    import wandb

    wandb.teardown()  # ends the W&B service this process started (worker processes end theirs when they exit)
    deadline = time.monotonic() + 10
    while wandb_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not wandb_processes() - before, "a W&B service process outlived the tests"


def base_config(root, **values) -> RunConfig:
    return tiny_base(root, warmup_epochs=0).replace(method=HEART, data={"task": "cifar"}, **values)


@pytest.fixture(scope="module")
def logs(offline, tmp_path_factory):
    """The log_dir every tracked run of this module shares (one MLflow store: made once)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def plain_run(vtab_root, tmp_path_factory):
    """The same run without tracking."""
    out = tmp_path_factory.mktemp("plain") / "run"
    return train(base_config(vtab_root, out=str(out))), out


@pytest.fixture(scope="module")
def tracked_run(logs, vtab_root, tmp_path_factory):
    """One Heart-LoRA run (2 epochs, evaluated after each) logged to all three trackers."""
    log_dir, out = logs, tmp_path_factory.mktemp("tracked") / "train-run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)  # no tracker may fail here
        record = train(base_config(vtab_root, out=str(out), log=ALL, log_dir=str(log_dir)))
    return record, out, log_dir


@pytest.fixture(scope="module")
def tracked_sweep(logs, vtab_root, tmp_path_factory):
    """A two-cell sweep (linear, heart-lora), logged to all three trackers (in this process: the group's
    journey to worker processes and Ray workers is tested in test_bench_executors)."""
    log_dir, out = logs, tmp_path_factory.mktemp("sweep") / "grid"
    cells = plan("vtab", ["cifar"], ["linear", "heart-lora"], seeds=[1], method_options={"heart-lora": HEART["options"]})
    base = tiny_base(vtab_root, warmup_epochs=0).replace(log=ALL, log_dir=str(log_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        result = run_cells(cells, base, out, log=lambda _: None, progress=False)
    assert result.ok and len(result.done) == 2
    return cells, out, log_dir


# ----- one train ----------------------------------------------------------------------------------
def test_tensorboard_holds_the_curve_the_config_and_the_head_map(tracked_run):
    record, out, log_dir = tracked_run
    events = tensorboard_events(log_dir / "train-run")
    scalars = tensorboard_values(events)
    assert set(EPOCH_METRICS) | set(SUMMARY_METRICS) <= set(scalars)  # every key the session names
    for point in record["curve"]:
        assert scalars["train/loss"][point["epoch"]] == pytest.approx(point["train_loss"], rel=1e-6)
        assert scalars["train/lr"][point["epoch"]] == pytest.approx(point["lr"], rel=1e-6)
        assert scalars["eval/accuracy"][point["epoch"]] == pytest.approx(point["eval_accuracy"], rel=1e-6)
        assert scalars["train/images_per_s"][point["epoch"]] > 0
    assert scalars["protocol/paper"][1] == pytest.approx(record["protocols"]["paper"]["accuracy"], rel=1e-6)
    assert scalars["adapter/bytes"][1] == record["adapter_bytes"]["with_classifier"]
    assert scalars["adapter/trainable_parameters"][1] == record["trainable_parameters"]["with_classifier"]
    assert scalars["heads/switched_off"] == {0: 2.0}  # ne=1 in each of the 2 layers, after epoch 1
    image = tensorboard_values(events, "image")["heads/responsiveness"][0]
    assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"
    histogram = tensorboard_values(events, "histo")["heads/scores"][0]
    assert histogram.num == 8  # 2 layers x 4 heads
    assert histogram.max == pytest.approx(max(max(row) for row in record["heads"]["scores"]), rel=1e-6)
    hparams = tensorboard_hparams(events)
    assert hparams["schedule.lr"] == pytest.approx(1e-3) and hparams["method.name"] == "heart-lora"
    assert hparams["method.options.ne"] == 1
    assert json.loads((out / TRACKING_NAME).read_text())["tensorboard"] == {"log_dir": str(log_dir / "train-run")}


def test_mlflow_holds_metrics_params_and_the_adapter(tracked_run, tmp_path):
    record, out, log_dir = tracked_run
    run = mlflow_runs(log_dir)["train-run"]
    assert run.info.status == "FINISHED"
    loss = mlflow_history(log_dir, run.info.run_id, "train/loss")
    assert loss == pytest.approx({p["epoch"]: p["train_loss"] for p in record["curve"]}, rel=1e-6)
    accuracy = mlflow_history(log_dir, run.info.run_id, "eval/accuracy")
    assert accuracy == pytest.approx({e["epoch"]: e["accuracy"] for e in record["evaluations"]}, rel=1e-6)
    assert set(EPOCH_METRICS) | set(SUMMARY_METRICS) <= set(run.data.metrics)
    assert run.data.metrics["protocol/final"] == pytest.approx(record["protocols"]["final"]["accuracy"], rel=1e-6)
    assert run.data.metrics["adapter/file_bytes"] == record["adapter_file_bytes"]
    assert run.data.metrics["heads/switched_off"] == 2
    assert run.data.params["schedule.lr"] == "0.001" and run.data.params["method.options.score_epochs"] == "1"
    assert run.data.params["model.kwargs.embed_dim"] == "48"
    for name in ("adapter.safetensors", "adapter_config.json", "backbone.json"):
        kept = mlflow_file(log_dir, run.info.run_id, f"adapter/{name}", tmp_path)
        assert kept.read_bytes() == (out / "adapter" / name).read_bytes()
    assert mlflow_file(log_dir, run.info.run_id, "run.json", tmp_path).read_bytes() == (out / "run.json").read_bytes()
    assert mlflow_file(log_dir, run.info.run_id, "heads/responsiveness.png", tmp_path).read_bytes()[:4] == b"\x89PNG"


def test_wandb_offline_run_holds_metrics_config_and_the_adapter(tracked_run):
    record, out, log_dir = tracked_run
    runs = wandb_runs(log_dir)
    run = runs["train-run"]
    assert run["run"].project == "heartlora" and run["run"].run_group == ""
    assert json.loads((out / TRACKING_NAME).read_text())["wandb"]["id"] == run["run"].run_id
    for point in record["curve"]:
        row = run["history"][point["epoch"]]
        assert row["train/loss"] == pytest.approx(point["train_loss"], rel=1e-6)
        assert row["eval/accuracy"] == pytest.approx(point["eval_accuracy"], rel=1e-6)
    selection = run["history"][0]
    assert selection["heads/switched_off"] == 2
    image = selection["heads/responsiveness"]
    assert image["_type"] == "image-file" and image["width"] > 100 and image["height"] > 100
    assert hashlib.sha256((run["folder"] / "files" / image["path"]).read_bytes()).hexdigest() == image["sha256"]
    assert selection["heads/scores"]["_type"] == "histogram"
    assert set(SUMMARY_METRICS) <= set(run["summary"])
    assert run["summary"]["protocol/paper"] == pytest.approx(record["protocols"]["paper"]["accuracy"], rel=1e-6)
    assert run["summary"]["adapter/bytes"] == record["adapter_bytes"]["with_classifier"]
    assert run["config"]["schedule.lr"] == pytest.approx(1e-3) and run["config"]["method.options.ne"] == 1
    kept = {artifact.type: {entry.path: entry.digest for entry in artifact.manifest.contents}
            for artifact in run["artifacts"]}
    assert kept["adapter"] == {name: md5_b64(out / "adapter" / name)
                               for name in ("adapter.safetensors", "adapter_config.json", "backbone.json")}
    assert kept["run-record"] == {"run.json": md5_b64(out / "run.json")}


# ----- a run is the same with and without trackers ------------------------------------------------
def comparable(record: dict) -> dict:
    """A run record without timing fields and without the settings and fields that say where it was written and logged."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VARYING}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    record = strip(record)
    record["config"] = {k: v for k, v in record["config"].items() if k not in RUN_ONLY}
    return record


def assert_same_run(first: Path, second: Path) -> None:
    records = [json.loads((folder / "run.json").read_text()) for folder in (first, second)]
    assert comparable(records[0]) == comparable(records[1])
    tensors = [load_file(folder / "adapter" / "adapter.safetensors") for folder in (first, second)]
    assert tensors[0].keys() == tensors[1].keys()
    for name in tensors[0]:
        assert torch.equal(tensors[0][name], tensors[1][name]), name  # bit for bit
    for name in ("adapter_config.json", "backbone.json"):
        assert (first / "adapter" / name).read_text() == (second / "adapter" / name).read_text()


class FailingTracker(Tracker):
    """A tracker whose every call raises."""

    name = "failing"
    calls: list = []

    @classmethod
    def check(cls, log_dir, out):
        cls.calls.append("check")
        raise RuntimeError("tracker down (check)")

    def __getattribute__(self, name):
        if name in ("start", "state", "log_params", "log_metrics", "log_image", "log_histogram", "log_summary",
                    "log_artifact", "finish"):
            def fail(*args, **kwargs):
                FailingTracker.calls.append(name)
                raise RuntimeError(f"tracker down ({name})")
            return fail
        return super().__getattribute__(name)


class FailingLater(FailingTracker):
    """Passes its check, then raises on every call."""

    name = "failing-later"

    @classmethod
    def check(cls, log_dir, out):
        pass


def test_a_failing_tracker_leaves_the_run_as_without_tracking(vtab_root, plain_run, tmp_path, monkeypatch):
    for cls in (FailingTracker, FailingLater):
        monkeypatch.setitem(TRACKERS, cls.name, cls)
    FailingTracker.calls.clear()
    out = tmp_path / "run"
    with pytest.warns(TrackingWarning) as caught:
        train(base_config(vtab_root, out=str(out), log="failing,failing-later"))
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(messages) == 2 and all("\n" not in m for m in messages)  # one line, once per tracker
    assert "failing failed while setting up" in messages[0] and "failing-later failed while starting" in messages[1]
    assert FailingTracker.calls == ["check", "start", "finish"]  # after its first error, only told to finish
    assert_same_run(plain_run[1], out)


def test_a_tracked_run_trains_exactly_as_an_untracked_one(tracked_run, plain_run):
    assert_same_run(plain_run[1], tracked_run[1])


# ----- a two-cell bench ---------------------------------------------------------------------------
def test_mlflow_sweep_is_a_parent_run_with_a_child_per_cell(tracked_sweep, tmp_path):
    cells, out, log_dir = tracked_sweep
    runs = mlflow_runs(log_dir)
    parent = runs["grid"]
    assert parent.info.status == "FINISHED"
    assert json.loads((out / TRACKING_NAME).read_text())["mlflow"]["run_id"] == parent.info.run_id
    for cell in cells:
        name = cell.relative_dir().as_posix()
        child, record = runs[name], json.loads((out / cell.relative_dir() / "run.json").read_text())
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.data.params["method.name"] == cell.method and child.data.params["seed"] == "1"
        assert mlflow_history(log_dir, child.info.run_id, "train/loss") == pytest.approx(
            {p["epoch"]: p["train_loss"] for p in record["curve"]}, rel=1e-6)
        assert child.data.metrics["protocol/paper"] == pytest.approx(record["protocols"]["paper"]["accuracy"], rel=1e-6)
        kept = mlflow_file(log_dir, child.info.run_id, "adapter/adapter.safetensors", tmp_path / name)
        assert kept.read_bytes() == (out / cell.relative_dir() / "adapter" / "adapter.safetensors").read_bytes()
        assert ("heads/switched_off" in child.data.metrics) == (cell.method == "heart-lora")


def test_tensorboard_sweep_has_a_folder_per_cell(tracked_sweep):
    cells, out, log_dir = tracked_sweep
    for cell in cells:
        record = json.loads((out / cell.relative_dir() / "run.json").read_text())
        scalars = tensorboard_values(tensorboard_events(log_dir / "grid" / cell.relative_dir()))
        assert scalars["eval/accuracy"] == pytest.approx({e["epoch"]: e["accuracy"] for e in record["evaluations"]})
        assert ("heads/switched_off" in scalars) == (cell.method == "heart-lora")
    assert sorted(p.parent.relative_to(log_dir / "grid") for p in (log_dir / "grid").rglob("events.out.*")) == sorted(
        cell.relative_dir() for cell in cells)


def test_wandb_sweep_is_one_group(tracked_sweep):
    cells, out, log_dir = tracked_sweep
    runs = {name: run for name, run in wandb_runs(log_dir).items() if run["run"].run_group}
    assert sorted(runs) == sorted(cell.relative_dir().as_posix() for cell in cells)
    for cell in cells:
        run, record = runs[cell.relative_dir().as_posix()], json.loads((out / cell.relative_dir() / "run.json").read_text())
        assert run["run"].run_group == "grid"
        assert run["summary"]["protocol/final"] == pytest.approx(record["protocols"]["final"]["accuracy"], rel=1e-6)
        assert any(artifact.type == "adapter" for artifact in run["artifacts"])


def test_log_settings_are_not_part_of_a_cells_identity(vtab_root):
    base = tiny_base(vtab_root)
    assert identity(base) == identity(base.replace(log=ALL, log_dir="/elsewhere"))
    assert {"log", "log_dir"} <= RESUME_MAY_CHANGE


# ----- resume ------------------------------------------------------------------------------------
def test_a_resumed_run_continues_its_tracker_runs(logs, vtab_root, tmp_path):
    log_dir, out = logs, tmp_path / "resumed-run"
    config = base_config(vtab_root, out=str(out), log=ALL, log_dir=str(log_dir))

    def stop(epoch, entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[stop])
    first = json.loads((out / TRACKING_NAME).read_text())
    assert mlflow_runs(log_dir)["resumed-run"].info.status == "KILLED"
    record = train(config.replace(resume=True))
    assert json.loads((out / TRACKING_NAME).read_text()) == first  # the same tracker runs
    runs = [run for run in mlflow_runs(log_dir, every=True) if run.info.run_name == "resumed-run"]
    assert len(runs) == 1 and runs[0].info.run_id == first["mlflow"]["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["heartlora.resumed_at_epoch"] == "1"
    history = mlflow_client(log_dir).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1]  # each epoch once
    assert {m.step: m.value for m in history} == pytest.approx({p["epoch"]: p["train_loss"] for p in record["curve"]})
    wandb_folders = [wandb_run(folder) for folder in sorted((log_dir / "wandb").glob("offline-run-*"))]
    resumed = [run for run in wandb_folders if run["run"].run_id == first["wandb"]["id"]]
    assert [sorted(run["history"]) for run in resumed] == [[0], [1]]  # one W&B run, logged by two processes
    events = tensorboard_events(log_dir / "resumed-run")
    purges = [e for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert [e.step for e in purges] == [1]  # TensorBoard drops what the first process logged from epoch 1 on


# ----- the log setting ----------------------------------------------------------------------------
def test_log_setting_names_trackers_from_the_registry(monkeypatch):
    monkeypatch.delenv(LOG_ENV, raising=False)
    assert parse_log(",".join(TRACKERS).upper()) == tuple(TRACKERS)
    for name in TRACKERS:
        assert parse_log(f" {name} , {name}") == (name,)
    for empty in ("", "none", "off", "None"):
        assert parse_log(empty) == ()
    for bad in ("tensorbord", "mlflow,", "mlflow,,wandb"):
        with pytest.raises(ConfigError, match="option 'log'.*expected a comma list of tensorboard, mlflow, wandb"):
            parse_log(bad)
    config = RunConfig.from_dict({"log": "mlflow,wandb", "log_dir": "logs"})
    assert (config.log, config.log_dir) == ("mlflow,wandb", "logs")


def test_the_environment_gives_the_default_and_none_overrides_it(monkeypatch):
    monkeypatch.setenv(LOG_ENV, "mlflow")
    assert [cls.name for cls in requested_trackers(RunConfig())] == ["mlflow"]
    assert requested_trackers(RunConfig(log="none")) == []
    assert [cls.name for cls in requested_trackers(RunConfig(log="wandb"))] == ["wandb"]
    monkeypatch.setenv(LOG_ENV, "mlfow")
    with pytest.raises(ConfigError, match=f"environment variable {LOG_ENV}: got 'mlfow'"):
        requested_trackers(RunConfig())


def test_a_missing_tracker_package_says_how_to_install_it(monkeypatch):
    class Absent(Tracker):
        name, requirement, extra = "absent", "heartlora_no_such_package", "absent"

    monkeypatch.setitem(TRACKERS, "absent", Absent)
    with pytest.raises(ConfigError, match=r"option 'log': absent needs the package heartlora_no_such_package, which is "
                                          r"not installed; pip install heartlora\[absent\]"):
        TrackingSession.from_config(RunConfig(log="absent"))


def test_tensorboard_needs_somewhere_to_write(monkeypatch):
    with pytest.raises(ConfigError, match="tensorboard writes under --log-dir or the run folder"):
        TrackingSession.from_config(RunConfig(log="tensorboard"))


def test_the_log_options_of_the_command_line(vtab_root, tmp_path, capsys):
    from heartlora.cli import main

    tiny = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
            "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet", "--epochs", "1", "--warmup-epochs", "0",
            "--method", "lora", "--data", str(vtab_root), "--task", "cifar", "--device", "cpu"]
    assert main(["train", *tiny, "--log", "tensorbord", "--out", str(tmp_path / "bad")]) == 2
    assert "option 'log'" in capsys.readouterr().err and not (tmp_path / "bad" / "run.json").exists()
    assert main(["train", *tiny, "--log", "tensorboard", "--log-dir", str(tmp_path / "logs"), "--out",
                 str(tmp_path / "run")]) == 0
    folders = {p.parent for p in (tmp_path / "logs").rglob("events.out.tfevents.*")}
    assert len(folders) == 1 and tensorboard_events(folders.pop())  # event files where --log-dir says
