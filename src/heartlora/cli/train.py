"""``heartlora train`` and ``heartlora eval``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from ..precision import AMP_CHOICES
from .common import PROG, ConfigError, Formatter, add, data_args, model_args, nonneg_int, positive_int, run_config, train_args


def add_parsers(sub, suppress: bool) -> None:
    train = sub.add_parser("train", formatter_class=Formatter, help="train a method on a task (run.json, adapter/)",
                           description="Train one run: backbone x method x data x schedule. Writes OUT/run.json, "
                                       "OUT/adapter/ and OUT/checkpoint.pt.")
    train_args(train, suppress)
    add(train, suppress, "--nproc", default=None, type=positive_int, metavar="K",
        help="train data-parallel in K processes on this machine (launches torchrun; --batch-size stays the global "
             "batch); on several machines use torchrun itself: torchrun --nnodes N --nproc_per_node K -m heartlora train ...")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", formatter_class=Formatter, help="evaluate a saved adapter on a task",
                        description="Load a saved adapter into its backbone and print its accuracy. Backbone settings "
                                    "default to the adapter's backbone.json, data settings to the run.json beside it.")
    ev.add_argument("--adapter", required=True, metavar="DIR",
                    help="adapter folder (from a run: RUN/adapter; a run folder also works)")
    g = model_args(ev, False, defaults=False)
    add(g, False, "--seed", default=argparse.SUPPRESS, type=nonneg_int,
        help="seed of a randomly initialised backbone (default: the run's, from backbone.json)")
    data_args(ev, False, defaults=False, loader=False)
    g = ev.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch size")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES, metavar="{auto,bf16,off}",
                   help="auto: bf16 autocast on CUDA and on CPUs with AMX, else fp32")
    g.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


def _without_option(argv: Sequence[str], flag: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``heartlora train --nproc K …`` = ``torchrun --standalone --nproc_per_node K -m heartlora train …``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "heartlora", *_without_option(argv, "--nproc")]
    print(f"{PROG}: launching {' '.join(command[1:])}", file=sys.stderr)
    return subprocess.call(command, env=dict(os.environ))


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..engine.loop import train

    nproc = getattr(args, "nproc", None)
    if nproc and nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("option '--nproc': this process is already one of a torchrun job; leave --nproc out")
        run_config(argv)  # usage errors before launching anything
        return _launch_torchrun(nproc, argv)
    config = run_config(argv)
    record = train(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the job
    p = record["protocols"]
    paper, final = p["paper"], p["final"]
    where = f"; record: {Path(config.out) / 'run.json'}" if config.out else ""
    print(f"{record['data']['task']} {record['method']['name']}: paper {paper['accuracy']:.2f} (epoch {paper['epoch'] + 1}), "
          f"final {final['accuracy']:.2f} (epoch {final['epoch'] + 1}), adapter {record['adapter_bytes']['with_classifier']:,} "
          f"bytes{where}")
    return 0


#: eval's data options → the data settings of :func:`heartlora.engine.adapter_eval.evaluate_adapter`
_EVAL_DATA = {"data_kind": "kind", "data": "root", "task": "task", "split": "split", "shots": "shots",
              "fewshot_seed": "fewshot_seed", "num_classes": "num_classes", "image_size": "image_size",
              "normalize": "normalize", "workers": "workers", "check_images": "check_images"}


def backbone_overrides(given: dict):
    """The backbone options typed on the command line as :class:`~heartlora.adapters_io.BackboneOverrides`."""
    from ..adapters_io import BackboneOverrides
    from ..config import parse_model_kwargs

    return BackboneOverrides(
        model=given.get("model"), weights=given.get("weights"), weights_sha256=given.get("weights_sha256"),
        pretrained=True if given.get("pretrained") else None, random_init=True if given.get("random_init") else None,
        kwargs=parse_model_kwargs(given["model_kwargs"], "--model-kwargs") if given.get("model_kwargs") else None,
        seed=given.get("seed"))


def cmd_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..engine.adapter_eval import evaluate_adapter

    given = vars(args)
    data = {field: given[option] for option, field in _EVAL_DATA.items() if option in given}
    result = evaluate_adapter(args.adapter, backbone=backbone_overrides(given), data=data, batch_size=args.batch_size,
                              device=args.device, amp=args.amp, progress=not args.quiet and not args.json
                              and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['task']} ({result['eval_split']}, {result['eval_images']} images): accuracy {result['accuracy']:.2f}%  "
              f"[{result['method']} adapter {result['adapter']}]")
    return 0
