"""`heartlora serve`: the real server on a free localhost port, real HTTP requests."""
import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heartlora.data.transforms import build_transform
from heartlora.serve.multitask import MultiTask
from heartlora.serve.server import bind, create_app, make_server, require_serve_extra

for extra in ("fastapi", "uvicorn", "multipart", "httpx"):  # the serve and test extras
    pytest.importorskip(extra)
import httpx  # noqa: E402

from serve_fixtures import TASKS, alone, make_tasks  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")
LIMIT = 20_000


@contextlib.contextmanager
def running(app):
    """uvicorn serving ``app`` in a thread on a free port; stopped and joined on exit."""
    sock = bind("127.0.0.1", 0)
    server = make_server(app, sock, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    return make_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def model(task_dirs):
    return MultiTask.from_adapters({"flowers": task_dirs["flowers"], "dtd": task_dirs["dtd"]})


def _png(seed: int, size=(32, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _expected(task_dirs, task, data: bytes) -> torch.Tensor:
    x = build_transform(32, "none")(Image.open(io.BytesIO(data)).convert("RGB"))[None]
    with torch.no_grad():
        return torch.softmax(alone(task_dirs[task], TASKS[task][2])(x), -1)[0]


def _assert_top(answer: dict, expected: torch.Tensor, k: int) -> None:
    order = expected.argsort(descending=True).tolist()[:k]
    assert [t["label"] for t in answer["top"]] == order
    for entry in answer["top"]:
        assert abs(entry["probability"] - expected[entry["label"]].item()) < 1e-5
        assert entry["class"] == f"{answer['task']}-class{entry['label']}"


def test_endpoints_good_and_bad_requests(model, task_dirs):
    app = create_app(model, max_batch=4, max_wait_ms=1, max_upload_bytes=LIMIT, top_k=3)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["tasks"] == 2
        tasks = {t["name"]: t for t in client.get("/tasks").json()["tasks"]}
        assert set(tasks) == {"flowers", "dtd"} and tasks["dtd"]["num_classes"] == 7
        assert tasks["dtd"]["heads_switched_off"] == 2 and tasks["dtd"]["class_names"][0] == "dtd-class0"

        image = _png(1)
        answer = client.post("/predict", files={"file": ("x.png", image, "image/png")}, data={"task": "dtd"})
        assert answer.status_code == 200, answer.text
        _assert_top(answer.json(), _expected(task_dirs, "dtd", image), 3)
        raw = client.post("/predict?task=flowers&top_k=2", content=image, headers={"content-type": "image/png"})
        assert raw.status_code == 200, raw.text
        _assert_top(raw.json(), _expected(task_dirs, "flowers", image), 2)

        bad = client.post("/predict", files={"file": ("x.jpg", b"\xff\xd8 garbage", "image/jpeg")}, data={"task": "dtd"})
        assert bad.status_code == 400 and "cannot decode image: not an image PIL can read" in bad.json()["detail"]
        unknown = client.post("/predict", files={"file": ("x.png", image, "image/png")}, data={"task": "cars"})
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "unknown task 'cars'; loaded tasks: flowers, dtd"
        big = client.post("/predict", files={"file": ("big.png", _png(2, (128, 128)), "image/png")},
                          data={"task": "dtd"})
        assert big.status_code == 413 and "exceeds the limit of 20,000 bytes" in big.json()["detail"]
        chunked = client.post("/predict?task=dtd", content=iter([_png(2, (128, 128))]))  # no content-length
        assert chunked.status_code == 413 and "more than 20,000 bytes" in chunked.json()["detail"]
        for response, message in [
            (client.post("/predict", data={"task": "dtd"}), "no image"),
            (client.post("/predict", files={"file": ("x.png", image, "image/png")}), "no task"),
            (client.post("/predict?task=dtd&top_k=0", content=image), "field 'top_k'='0'"),
            (client.post("/predict", files={"other": ("x.png", image, "image/png")}, data={"task": "dtd"}),
             "unexpected file field 'other'"),
        ]:
            assert response.status_code == 400 and message in response.json()["detail"], response.text
        again = client.post("/predict", files={"file": ("x.png", image, "image/png")}, data={"task": "dtd"})
        assert again.status_code == 200 and again.json() == answer.json()  # still serving after bad requests


def test_concurrent_requests_of_two_tasks_share_batches(model, task_dirs):
    count = 12
    # the batch closes when full: all requests arrive well within the wait, so they form one batch
    app = create_app(model, max_batch=count, max_wait_ms=10_000, max_upload_bytes=LIMIT, top_k=2)
    images = [_png(10 + i) for i in range(count)]
    tasks = ["flowers" if i % 3 else "dtd" for i in range(count)]

    async def send_all(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*[
                client.post("/predict", files={"file": ("i.png", image, "image/png")}, data={"task": task})
                for image, task in zip(images, tasks)])

    with running(app) as url:
        responses = asyncio.run(send_all(url))
        stats = httpx.get(f"{url}/health").json()["batching"]
    for response, image, task in zip(responses, images, tasks):
        assert response.status_code == 200, response.text
        assert response.json()["task"] == task
        _assert_top(response.json(), _expected(task_dirs, task, image), 2)
    assert stats["images"] == count and stats["mixed"] >= 1 and stats["largest"] == count


def test_the_serve_command_starts_answers_and_stops(task_dirs, tmp_path):
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "heartlora.cli", "serve", "--task", f"pets={task_dirs['pets']}", "--port", "0",
         "--log-level", "warning", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("heartlora serve: http://127.0.0.1:"), (line, process.stderr.read() if process.poll() else "")
        url = line.split()[2]
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        image = _png(3)
        answer = httpx.post(f"{url}/predict", files={"file": ("x.png", image, "image/png")}, data={"task": "pets"},
                            timeout=30)
        assert answer.status_code == 200
        _assert_top(answer.json(), _expected(task_dirs, "pets", image), 2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130  # interrupted, after a graceful shutdown
        assert "stopped (interrupted)" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_a_missing_extra_names_the_install_command(monkeypatch, capsys, task_dirs):
    from heartlora.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    with pytest.raises(ImportError, match=r"needs uvicorn: pip install heartlora\[serve\]"):
        require_serve_extra()
    assert main(["serve", "--task", f"pets={task_dirs['pets']}"]) == 1
    assert "pip install heartlora[serve]" in capsys.readouterr().err
