"""The HTTP inference server over a multi-task model (FastAPI + uvicorn: ``pip install heartlora[serve]``).

Endpoints:

* ``POST /predict`` — an image and a task name → ``{"task", "top": [{"label", "class",
  "probability"}, …]}``. Either a multipart form with fields ``file`` (the image) and ``task``
  (optional ``top_k``), or the raw image bytes as the body with ``?task=NAME[&top_k=K]``.
  Unknown task → 404; no image, an undecodable image or a bad field → 400 naming the problem;
  a body over ``max_upload_bytes`` → 413.
* ``GET /tasks`` — the loaded tasks (method, class count and names, rank, heads switched off, …).
* ``GET /health`` — ``{"status": "ok", …}`` with batching statistics.

Requests are decoded on the server's thread pool and batched together across tasks by one
:class:`~heartlora.serve.batcher.MicroBatcher` (``max_batch``, ``max_wait_ms``).
"""
# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request, imported
# lazily inside create_app) as objects
import asyncio
import contextlib
import socket
from typing import Any

from .batcher import MicroBatcher, check_batching
from .inputs import ImageError, open_image
from .multitask import MultiTask, UnknownTaskError
from .predict import preprocess_for

EXTRA_HINT = "pip install heartlora[serve]"
MAX_TOP_K = 1000


def require_serve_extra() -> None:
    """FastAPI, uvicorn and python-multipart, or an ImportError naming the extra to install."""
    missing = []
    for module in ("fastapi", "uvicorn", "multipart"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module if module != "multipart" else "python-multipart")
    if missing:
        raise ImportError(f"heartlora serve needs {', '.join(missing)}: {EXTRA_HINT}")


def create_app(model: MultiTask, *, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_upload_bytes: int = 10 * 2 ** 20, top_k: int = 5, amp: bool = False):
    """The FastAPI application; its batcher starts and stops with the app (lifespan)."""
    require_serve_extra()
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.requests import Request as StarletteRequest

    if max_upload_bytes < 1:
        raise ValueError(f"option 'max_upload_bytes'={max_upload_bytes}: expected a positive integer")
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"option 'top_k'={top_k}: expected 1..{MAX_TOP_K}")
    check_batching(max_batch, max_wait_ms / 1000)
    preprocess = preprocess_for(model)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = MicroBatcher(model, max_batch=max_batch, max_wait_s=max_wait_ms / 1000, amp=amp)
        try:
            yield
        finally:
            state.pop("batcher").close()

    app = FastAPI(title="heartlora", summary="many task adapters on one frozen ViT", lifespan=lifespan)

    def too_large(size: str) -> HTTPException:
        return HTTPException(413, f"upload of {size} bytes exceeds the limit of {max_upload_bytes:,} bytes "
                                  "(--max-upload-bytes)")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise too_large(f"{int(declared):,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise too_large(f"more than {max_upload_bytes:,}")
        return bytes(body)

    async def image_and_fields(request: Request) -> tuple[bytes, str, dict]:
        body = await read_body(request)
        fields = dict(request.query_params)
        if request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            async def replay() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            form = await StarletteRequest(request.scope, replay).form(max_files=2, max_fields=10)
            image = None
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in ("file", "image"):
                        raise HTTPException(400, f"unexpected file field {key!r}; send the image as field 'file'")
                    image = await value.read()
                else:
                    fields[key] = value
            if image is None:
                raise HTTPException(400, "no image: expected a multipart file field 'file'")
            return image, "upload", fields
        if not body:
            raise HTTPException(400, "no image: send a multipart form with field 'file', or the image bytes as "
                                     "the body with ?task=NAME")
        return body, "body", fields

    def top_k_of(fields: dict) -> int:
        text = fields.get("top_k")
        if text is None:
            return top_k
        if not str(text).isdigit() or not 1 <= int(text) <= MAX_TOP_K:
            raise HTTPException(400, f"field 'top_k'={text!r}: expected an integer 1..{MAX_TOP_K}")
        return int(text)

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        image, what, fields = await image_and_fields(request)
        task = fields.get("task")
        if not task:
            raise HTTPException(400, f"no task: give field 'task' (one of: {', '.join(model.tasks)})")
        if task not in model:
            raise HTTPException(404, f"unknown task {task!r}; loaded tasks: {', '.join(model.tasks) or 'none'}")
        k = top_k_of(fields)

        def decode():
            return preprocess(open_image(image), task)

        try:
            tensor = await run_in_threadpool(decode)
        except ImageError as err:
            raise HTTPException(400, f"{what} ({len(image):,} bytes): cannot decode image: {err}") from None
        try:
            top = await asyncio.wrap_future(state["batcher"].submit(tensor, task, k))
        except UnknownTaskError:  # removed while the request waited
            raise HTTPException(404, f"unknown task {task!r}; loaded tasks: {', '.join(model.tasks) or 'none'}") from None
        return {"task": task, "top": top}

    @app.get("/tasks")
    async def tasks() -> dict:
        return {"tasks": [{**info, "class_names": model.task(info["name"]).class_names} for info in model.describe()],
                "image_size": model.image_size}

    @app.get("/health")
    async def health() -> dict:
        batcher = state.get("batcher")
        return {"status": "ok" if batcher is not None else "starting", "tasks": len(model.tasks),
                "device": str(model.device), "pending": batcher.pending() if batcher else 0,
                "batching": batcher.stats.to_dict() if batcher else None}

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the caller knows the port before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err}); options '--host', '--port'") from None
    sock.listen(2048)
    return sock


def make_server(app, sock: socket.socket, log_level: str = "info"):
    """A uvicorn server for ``app`` on ``sock``; ``server.run(sockets=[sock])`` serves until
    ``server.should_exit`` is set (or SIGINT / SIGTERM in the main thread)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    return uvicorn.Server(config)
