"""Batch prediction over image files: top-k classes per (image, task), as CSV or JSON lines.

An unreadable image gets a row with its error (and the others are still predicted), so the
output always has one row per (image, task) asked for, in input order.
"""
from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from ..precision import autocast
from .inputs import ImageError, ImageJob, Preprocess, open_image
from .multitask import MultiTask

FORMATS = ("csv", "jsonl")


@dataclass
class Prediction:
    path: str
    task: str
    top: list[dict] | None  # {"label", "class", "probability"}, most probable first
    error: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"path": self.path, "task": self.task}
        if self.error is None:
            out["top"] = self.top
        else:
            out["error"] = self.error
        return out


def expand_jobs(jobs: Sequence[ImageJob], tasks: Sequence[str]) -> list[tuple[str, str]]:
    """(path, task) pairs: a job without a task is asked of every task, in task order."""
    return [(job.path, task) for job in jobs for task in ([job.task] if job.task else tasks)]


def preprocess_for(model: MultiTask) -> Preprocess:
    return Preprocess(model.image_size, lambda task: model.task(task).normalize)


def _load(path: str, tasks: Sequence[str], preprocess: Preprocess) -> dict[str, torch.Tensor] | str:
    """Each task's input tensor of one image (decoded once), or why the image cannot be read."""
    try:
        image = open_image(path)
        return {task: preprocess(image, task) for task in tasks}
    except ImageError as err:
        return str(err)


def predict(model: MultiTask, pairs: Sequence[tuple[str, str]], *, top_k: int = 5, batch_size: int = 32,
            workers: int = 4, amp: bool = False, progress: bool = False) -> Iterator[Prediction]:
    """Predictions for ``(path, task)`` pairs in order. Images decode on ``workers`` threads (PIL
    releases the GIL), one batch ahead of the model, which runs mixed-task batches."""
    preprocess = preprocess_for(model)
    device = model.device
    chunks = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="predict", unit="img", dynamic_ncols=True)

    def submit(chunk) -> dict:
        wanted: dict[str, list[str]] = {}
        for path, task in chunk:
            wanted.setdefault(path, []).append(task)
        return {path: pool.submit(_load, path, tasks, preprocess) for path, tasks in wanted.items()}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead = submit(chunks[0]) if chunks else {}
        for index, chunk in enumerate(chunks):
            current, ahead = ahead, (submit(chunks[index + 1]) if index + 1 < len(chunks) else {})
            loaded = {path: future.result() for path, future in current.items()}
            good = [i for i, (path, _) in enumerate(chunk) if isinstance(loaded[path], dict)]
            tops: dict[int, list[dict]] = {}
            if good:
                images = torch.stack([loaded[chunk[i][0]][chunk[i][1]] for i in good]).to(device)
                with torch.inference_mode(), autocast(device, amp):
                    out = model(images, [chunk[i][1] for i in good])
                tops = dict(zip(good, model.top_k(out, top_k)))
            for i, (path, task) in enumerate(chunk):
                if i in tops:
                    yield Prediction(path, task, tops[i])
                else:
                    yield Prediction(path, task, None, f"{path}: cannot read image ({loaded[path]})")
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()


def csv_header(top_k: int) -> list[str]:
    ranked = [f"{key}_{rank}" for rank in range(1, top_k + 1) for key in ("label", "class", "probability")]
    return ["path", "task", *ranked, "error"]


def format_rows(predictions: Iterable[Prediction], fmt: str, top_k: int) -> Iterator[str]:
    """Text lines of the output (CSV with a header, or one JSON object per line)."""
    if fmt not in FORMATS:
        raise ValueError(f"option '--format': expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "jsonl":
        for p in predictions:
            yield json.dumps(p.to_dict(), ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(csv_header(top_k))
    yield flush()
    for p in predictions:
        ranked: list = []
        for entry in (p.top or []):
            ranked += [entry["label"], entry["class"], f"{entry['probability']:.6f}"]
        ranked += [""] * (3 * top_k - len(ranked))
        writer.writerow([p.path, p.task, *ranked, p.error or ""])
        yield flush()
