"""``heartlora predict`` and ``heartlora serve``: many task adapters on one backbone."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..methods.base import registered
from ..precision import AMP_CHOICES
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, PROG, ConfigError, Formatter, byte_size, fail, nonneg_int, positive_int


def _task_spec(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition("=")
    if not sep or not name.strip() or not directory.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=DIR (a task name and its adapter folder), got {text!r}")
    return name.strip(), directory.strip()


def _serving_task_args(parser) -> None:
    servable = ", ".join(sorted(name for name, spec in registered().items() if spec.servable))
    g = parser.add_argument_group(f"tasks (adapters of {servable} on one backbone)")
    g.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="adapter folder (or run folder), repeatable; the task is named after the run folder")
    g.add_argument("--task", action="append", default=[], type=_task_spec, metavar="NAME=DIR",
                   help="a named task and its adapter folder, repeatable")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="backbone weights, when the file named in the adapters' backbone.json has moved (its sha256 "
                        "must match)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES, metavar="{auto,bf16,off}",
                   help="auto: bf16 autocast on CUDA and on CPUs with AMX, else fp32")
    g.add_argument("--top-k", type=positive_int, default=5, help="classes reported per image (at most a task's count)")


def add_parsers(sub, suppress: bool) -> None:
    predict = sub.add_parser(
        "predict", formatter_class=Formatter, help="top-k predictions of adapters for image files",
        description="Predict images with one or more task adapters sharing one backbone (built from the adapters' "
                    "backbone.json). Each image is predicted for every task, or for the task named on its line of a "
                    "--list file. Writes one row per (image, task): CSV or JSON lines. Unreadable images get a row "
                    "with their error, are reported on stderr, and make the exit code 1; the rest are predicted.")
    predict.add_argument("inputs", nargs="*", metavar="IMAGE",
                         help="image files, or folders (searched recursively for image files)")
    predict.add_argument("--list", action="append", default=[], metavar="FILE",
                         help="list file: one image path per line (relative to the file), optionally followed by a "
                              "task name; repeatable")
    _serving_task_args(predict)
    g = predict.add_argument_group("output")
    g.add_argument("--format", choices=("csv", "jsonl"), default=None,
                   help="default: jsonl when --out ends in .jsonl or .json, else csv")
    g.add_argument("--out", default=None, metavar="FILE", help="output file; leave out to write to stdout")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    g.add_argument("--batch-size", type=positive_int, default=32, help="images per model call")
    g.add_argument("--workers", type=positive_int, default=4, help="image decoding threads")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)

    serve = sub.add_parser(
        "serve", formatter_class=Formatter, help="HTTP inference server for many tasks on one backbone",
        description="Serve task adapters on one backbone over HTTP (FastAPI + uvicorn: pip install heartlora[serve]). "
                    "POST /predict (multipart 'file' + 'task', or the image bytes as the body with ?task=NAME) -> "
                    "top-k JSON; GET /tasks; GET /health. Concurrent requests of any tasks are batched together.")
    _serving_task_args(serve)
    g = serve.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=nonneg_int, default=8000, help="port (0: any free port, printed at start)")
    g.add_argument("--max-batch", type=positive_int, default=32, help="most images in one model call")
    g.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    g.add_argument("--max-upload-bytes", type=byte_size, default=10 * 2 ** 20, metavar="SIZE",
                   help="largest request body (larger: 413), e.g. 10MiB")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level")
    serve.set_defaults(func=cmd_serve)


def _serving_model(args: argparse.Namespace):
    from ..engine.build import resolve_amp, resolve_device
    from ..serve.adapters import name_tasks
    from ..serve.multitask import MultiTask

    tasks = name_tasks(args.adapter, args.task)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device).enabled
    return MultiTask.from_adapters(tasks, device=device, weights=args.weights), amp


def cmd_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..fsio import atomic_write
    from ..serve.inputs import collect_images
    from ..serve.predict import expand_jobs, format_rows, predict

    if not args.inputs and not args.list:
        raise ConfigError("give image files or folders, or --list FILE")
    fmt = args.format or ("jsonl" if args.out and args.out.lower().endswith((".jsonl", ".json")) else "csv")
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"option '--out': {args.out} exists (add --overwrite to replace it)")
    model, amp = _serving_model(args)
    jobs = collect_images(args.inputs, args.list, model.tasks)
    pairs = expand_jobs(jobs, model.tasks)
    show = not args.quiet and sys.stderr.isatty() and len(pairs) > args.batch_size
    failed: dict[str, str] = {}
    predictions = predict(model, pairs, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                          amp=amp, progress=show)

    def noting_failures():
        for p in predictions:
            if p.error is not None and p.path not in failed:
                failed[p.path] = p.error
                fail(p.error)
            yield p

    rows = format_rows(noting_failures(), fmt, args.top_k)
    if args.out:
        atomic_write(args.out, "".join(rows).encode("utf-8"))
    else:
        for row in rows:
            sys.stdout.write(row)
        sys.stdout.flush()
    images = len({path for path, _ in pairs})
    where = f" -> {args.out}" if args.out else ""
    print(f"{PROG} predict: {images - len(failed)} of {images} images predicted for {len(model.tasks)} task(s)"
          f"{where}" + (f"; {len(failed)} unreadable" if failed else ""), file=sys.stderr)
    return EXIT_FAILURE if failed else 0


def cmd_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..serve.server import bind, create_app, make_server, require_serve_extra

    try:
        require_serve_extra()
    except ImportError as err:
        fail(str(err))
        return EXIT_FAILURE
    if args.max_wait_ms < 0:
        raise ConfigError(f"option '--max-wait-ms': expected >= 0, got {args.max_wait_ms}")
    model, amp = _serving_model(args)
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_upload_bytes=args.max_upload_bytes, top_k=args.top_k, amp=amp)
    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        fail(str(err))
        return EXIT_FAILURE
    host, port = sock.getsockname()[:2]
    print(f"{PROG} serve: http://{host}:{port} ({len(model.tasks)} task(s): {', '.join(model.tasks)}; "
          f"device {model.device})", flush=True)
    server = make_server(app, sock, args.log_level)
    try:
        server.run(sockets=[sock])  # uvicorn shuts down gracefully on Ctrl-C, then re-raises it
        # ... but the re-raised Ctrl-C can be absorbed by the event loop when it lands as the serve
        # task ends; only a signal makes a started server exit, so say interrupted either way
        interrupted = server.started and server.should_exit
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sock.close()
    if interrupted:
        print(f"{PROG} serve: stopped (interrupted)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
