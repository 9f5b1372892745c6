"""Micro-batching: requests of any tasks, arriving concurrently, run together as one mixed batch.

One worker thread owns the model. It waits for a first request, then gathers more until the
batch holds ``max_batch`` images or ``max_wait_s`` has passed since the first arrived, and runs
them in one call of the multi-task model. Callers get a ``concurrent.futures.Future`` (an async
handler awaits it with ``asyncio.wrap_future``), so the event loop never runs the model.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .multitask import MultiTask, UnknownTaskError
from ..precision import autocast

_STOP = object()


@dataclass
class _Request:
    image: torch.Tensor
    task: str
    top_k: int
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0  # most images in one batch
    mixed: int = 0  # batches holding more than one task
    failed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def check_batching(max_batch: int, max_wait_s: float) -> None:
    if max_batch < 1:
        raise ValueError(f"option 'max_batch'={max_batch}: expected a positive integer")
    if max_wait_s < 0:
        raise ValueError(f"option 'max_wait'={max_wait_s}: expected >= 0 seconds")


class MicroBatcher:
    def __init__(self, model: MultiTask, *, max_batch: int = 32, max_wait_s: float = 0.005, amp: bool = False):
        check_batching(max_batch, max_wait_s)
        self.model, self.max_batch, self.max_wait_s, self.amp = model, max_batch, max_wait_s, amp
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="heartlora-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: torch.Tensor, task: str, top_k: int) -> Future:
        """Queue one preprocessed image for ``task``; the future holds its top-k list."""
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        request = _Request(image, task, top_k)
        self._queue.put(request)
        return request.future

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, then stop the worker."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        runnable = []
        for request in live:  # a task removed while its request waited
            if request.task in self.model:
                runnable.append(request)
            else:
                request.future.set_exception(UnknownTaskError(f"unknown task {request.task!r}"))
        if not runnable:
            return
        try:
            images = torch.stack([r.image for r in runnable]).to(self.model.device)
            tasks = [r.task for r in runnable]
            with torch.inference_mode(), autocast(self.model.device, self.amp):
                out = self.model(images, tasks)
            tops = self.model.top_k(out, max(r.top_k for r in runnable))
        except Exception as err:  # answered per request; the worker keeps serving
            self.stats.failed += len(runnable)
            for request in runnable:
                request.future.set_exception(err)
            return
        stats = self.stats
        stats.batches += 1
        stats.images += len(runnable)
        stats.largest = max(stats.largest, len(runnable))
        stats.mixed += len(set(tasks)) > 1
        for request, top in zip(runnable, tops):
            request.future.set_result(top[:request.top_k])
