"""Where a sweep's cells run: one small interface, two engines.

A job is ``(cell, config)``: an opaque cell (the sweep's key) and its fully resolved
:class:`RunConfig`. An executor runs ``runner(cell, config, execution)`` for every job and
yields an :class:`Outcome` as each one finishes; ``execution`` says how the cell ran and goes
into its run record. Executors know nothing of grids, retries or skipping — the sweep does.

- :class:`LocalExecutor`: in-process, or a pool of spawned worker processes spread over the
  machine's devices (``--parallel N``).
- :class:`RayExecutor`: every cell a Ray task with ``num_cpus`` / ``num_gpus`` from the flags
  (fractional GPUs pack several small runs on one GPU), on a local instance or any Ray cluster
  (started with Ray's own tools: ``ray start``, ``ray symmetric-run``, KubeRay). Run folders
  must lie on a filesystem every node sees at the same path; :meth:`RayExecutor.prepare` checks.

Ray is an optional extra, imported only by :class:`RayExecutor`.
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import traceback
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..config import ConfigError, RunConfig
from ..fsio import OutputError, atomic_write

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "Outcome", "RayExecutor", "make_executor"]

Job = tuple[Any, RunConfig]
Runner = Callable[[Any, RunConfig, dict], Any]
RAY_INSTALL = "pip install heartlora[cluster]"


@dataclass(frozen=True)
class Outcome:
    """One finished job: ``error`` is None when the runner returned, else what went wrong
    (first line: ``Type: message``; further lines: where)."""
    cell: Any
    error: str | None = None
    node: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(err: BaseException, where: str | None = None) -> str:
    message = f"{type(err).__name__}: {err}"
    return message if where is None else f"{message}\n{where}"


class Executor:
    """Runs jobs; subclasses implement :meth:`run`. Use as a context manager."""

    name = "executor"

    def prepare(self, out_root: Path) -> None:
        """Check, once before any cell, that cells can run and write under ``out_root``."""

    def run(self, jobs: Sequence[Job], runner: Runner) -> Iterator[Outcome]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----- local: in-process or a process pool --------------------------------------------------------
class LocalExecutor(Executor):
    """``workers <= 1``: one cell after another in this process (on ``devices[0]``);
    otherwise a pool of ``workers`` spawned processes, cell i on ``devices[i % len(devices)]``."""

    name = "local"

    def __init__(self, workers: int = 1, devices: Sequence[str] | None = None):
        self.workers = max(1, int(workers))
        self.devices = list(devices or [])

    def describe(self) -> str:
        return "in-process" if self.workers <= 1 else f"{self.workers} local processes"

    def _job(self, index: int, config: RunConfig) -> RunConfig:
        if not self.devices:
            return config
        return config.replace(device=self.devices[index % len(self.devices)])

    def run(self, jobs: Sequence[Job], runner: Runner) -> Iterator[Outcome]:
        execution = {"executor": "local", "parallel": self.workers}
        node = platform.node()
        if self.workers <= 1:
            for cell, config in jobs:
                try:
                    runner(cell, self._job(0, config), execution)
                except Exception as err:  # a crashed cell must not stop the sweep
                    yield Outcome(cell, describe_error(err, traceback.format_exc(limit=3)), node)
                else:
                    yield Outcome(cell, None, node)
            return
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_share_cpus,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(runner, cell, self._job(i, config), execution): cell
                       for i, (cell, config) in enumerate(jobs)}
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as err:
                    yield Outcome(futures[future], describe_error(err), node)
                else:
                    yield Outcome(futures[future], None, node)


def _share_cpus(threads: int) -> None:
    """Pool workers split the machine's cores (as Ray's per-task OMP_NUM_THREADS does)."""
    import torch

    torch.set_num_threads(threads)


# ----- Ray ----------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"option '--executor ray': Ray is not installed; {RAY_INSTALL}") from None
    return ray


def _ray_cell(runner: Runner, cell: Any, config: RunConfig, execution: dict) -> str:
    """The body of one Ray task (runs on a worker node): returns the node's name."""
    import ray

    import torch

    # Ray sets OMP_NUM_THREADS only when it starts a worker process; a reused one keeps its own
    torch.set_num_threads(max(1, int(execution["resources"]["num_cpus"])))
    context = ray.get_runtime_context()
    execution = {**execution, "ray_node_id": context.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    runner(cell, config, execution)
    return platform.node()


def _ray_probe(path: str, token: str) -> tuple[str, bool]:
    """Runs on one node: can it read the file the driver just wrote under --out?"""
    try:
        return platform.node(), Path(path).read_text() == token
    except OSError:
        return platform.node(), False


def _ray_error(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # RayTaskError wraps the runner's own exception
    if isinstance(cause, BaseException):
        where = getattr(err, "traceback_str", None)
        return describe_error(cause, where[-2000:] if where else None)
    return describe_error(err)


class RayExecutor(Executor):
    """Every cell a Ray task with ``num_cpus=cpus_per_cell`` and ``num_gpus=gpus_per_cell``.

    ``address``: ``None`` (Ray's own discovery: ``RAY_ADDRESS``, a cluster started on this
    machine, else a new local instance), ``"auto"`` (an existing cluster, or an error),
    ``"local"`` (always a new local instance) or ``HOST:PORT`` / ``ray://HOST:PORT``. If this
    process is already connected to Ray (``ray.init`` was called), that connection is used and
    left open. ``gpus_per_cell=None``: 1 when the cluster has GPUs and the runs may use them
    (``device`` not ``cpu``), else 0.
    """

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_cell: float | None = None, cpus_per_cell: float = 1,
                 num_cpus: int | None = None):
        self.ray = _import_ray()
        self.address = address
        self.gpus_per_cell = gpus_per_cell
        self.cpus_per_cell = cpus_per_cell
        self.num_cpus = num_cpus  # only for a local instance this executor starts (tests)
        self._owns_ray = False
        self._pending: list = []

    def connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False}
        if self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(f"option '--address': cannot connect to Ray at {self.address or 'the default address'} "
                              f"({err})") from None
        self._owns_ray = True

    def resources(self, device: str) -> dict[str, float]:
        gpus = self.gpus_per_cell
        if gpus is None:
            has_gpus = self.ray.cluster_resources().get("GPU", 0) > 0
            gpus = 1 if has_gpus and device != "cpu" else 0
        return {"num_cpus": self.cpus_per_cell, "num_gpus": gpus}

    def describe(self) -> str:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        total = self.ray.cluster_resources()
        gpus = "auto" if self.gpus_per_cell is None else f"{self.gpus_per_cell:g}"
        return (f"ray ({len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs; "
                f"{self.cpus_per_cell:g} CPU + {gpus} GPU per cell)")

    def prepare(self, out_root: Path) -> None:
        """Connect, then check that every alive node reads a file the driver writes under ``out_root``
        (the run records workers write must land where this driver reads them)."""
        self.connect()
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        probe = out_root / f".heartlora-ray-probe-{token}"
        atomic_write(probe, token.encode())
        try:
            remote = ray.remote(num_cpus=0, max_retries=0)(_ray_probe)
            refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                    .remote(str(probe.resolve()), token) for node in ray.nodes() if node.get("Alive")]
            blind = [node for node, seen in ray.get(refs) if not seen]
        finally:
            probe.unlink(missing_ok=True)
        if blind:
            raise OutputError(f"{out_root}: not visible from Ray node(s) {', '.join(sorted(set(blind)))}; the Ray "
                              "executor needs --out on a filesystem every node mounts at the same path")

    def run(self, jobs: Sequence[Job], runner: Runner) -> Iterator[Outcome]:
        ray = self.ray
        self.connect()
        # one retry policy (--retries, logged in failures.jsonl): Ray itself does not retry
        task = ray.remote(max_retries=0)(_ray_cell)
        planned = []
        for cell, config in jobs:
            resources = self.resources(config.device)
            planned.append((cell, config if resources["num_gpus"] else self._off_gpus(config), resources))
        if planned:
            self._warn_if_no_node_fits(planned[0][2])
        refs = {task.options(**resources).remote(runner, cell, config, {"executor": "ray", "resources": resources}): cell
                for cell, config, resources in planned}
        self._pending = list(refs)
        try:
            while self._pending:
                ready, self._pending = ray.wait(self._pending, num_returns=1)
                for ref in ready:
                    try:
                        node = ray.get(ref)
                    except Exception as err:
                        yield Outcome(refs[ref], _ray_error(err))
                    else:
                        yield Outcome(refs[ref], None, node)
        finally:
            self._cancel()

    def _warn_if_no_node_fits(self, resources: dict[str, float]) -> None:
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if not any(n.get("CPU", 0) >= resources["num_cpus"] and n.get("GPU", 0) >= resources["num_gpus"] for n in nodes):
            warnings.warn(f"no Ray node has {resources['num_cpus']:g} CPUs and {resources['num_gpus']:g} GPUs (options "
                          "'--cpus-per-cell', '--gpus-per-cell'): the cells wait until such a node joins the cluster",
                          stacklevel=2)

    @staticmethod
    def _off_gpus(config: RunConfig) -> RunConfig:
        """A task without GPUs still sees every GPU of its node (Ray limits CUDA_VISIBLE_DEVICES
        only for tasks that have some): keep it on the CPU."""
        if config.device == "auto":
            return config.replace(device="cpu")
        if config.device.startswith("cuda"):
            raise ConfigError(f"option '--gpus-per-cell': cells get no GPU, but --device is {config.device}; "
                              "give --gpus-per-cell G > 0 or --device cpu")
        return config

    def _cancel(self) -> None:
        """A stopped driver (Ctrl-C, kill) stops its cells; their checkpoints let a rerun resume."""
        for ref in self._pending:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or gone with its node
                pass
        self._pending = []

    def close(self) -> None:
        self._cancel()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False


EXECUTORS = ("local", "ray")


def make_executor(name: str, *, workers: int = 1, devices: Sequence[str] | None = None, address: str | None = None,
                  gpus_per_cell: float | None = None, cpus_per_cell: float | None = None) -> Executor:
    """The executor a ``bench`` command line asks for; options of the other executor are refused."""
    if name == "local":
        for option, value in (("--address", address), ("--gpus-per-cell", gpus_per_cell),
                              ("--cpus-per-cell", cpus_per_cell)):
            if value is not None:
                raise ConfigError(f"option '{option}': only with --executor ray")
        return LocalExecutor(workers, devices)
    if name == "ray":
        if workers > 1:
            raise ConfigError("option '--parallel': only with --executor local; Ray runs as many cells at once as the "
                              "cluster's resources allow (--cpus-per-cell, --gpus-per-cell)")
        return RayExecutor(address, gpus_per_cell, 1 if cpus_per_cell is None else cpus_per_cell)
    raise ConfigError(f"option '--executor': expected one of {', '.join(EXECUTORS)}, got {name!r}")


def local_devices(device: str) -> list[str]:
    """The devices a local sweep spreads its cells over: every visible GPU for ``auto``/``cuda``
    when there are any, else the one device named (``cpu`` for ``auto``)."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device if device != "auto" else "cpu"]
