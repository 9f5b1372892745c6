"""``heartlora demo``: the offline demos on the shipped backbone."""
from __future__ import annotations

import argparse
from typing import Sequence

from .common import ConfigError, Formatter, csv_list, int_list, nonneg_int, positive_int
from .data import check_mini_vtab_tasks


def add_parsers(sub, suppress: bool) -> None:
    demo = sub.add_parser("demo", formatter_class=Formatter, help="the offline demo (shipped backbone, digits)",
                          description="--suite digits (default): transfer the shipped Fashion-MNIST ViT to "
                                      "scikit-learn's digits with linear probe, LoRA, Heart-LoRA and Heart-LoRA†; "
                                      "prints a table and writes run records, adapters and two PNGs. --suite "
                                      "mini-vtab: build the mini-VTAB (heartlora data make-mini-vtab) under OUT/data, "
                                      "run the same methods on its tasks with 3 seeds as a resumable bench sweep, "
                                      "then heartlora report, analyze responsiveness and analyze task-dependence "
                                      "(about 20 minutes on 2 CPU cores).")
    demo.add_argument("--suite", choices=("digits", "mini-vtab"), default="digits", help="which demo")
    demo.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default: digits 10, "
                                                                         "mini-vtab 5)")
    demo.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/demo, "
                                                                "runs/demo-mini-vtab)")
    demo.add_argument("--methods", type=csv_list, default=None, help="comma list (default: linear,lora,heart-lora,"
                                                                     "heart-lora-layer)")
    demo.add_argument("--seed", type=nonneg_int, default=None, help="run seed of the digits demo (default 42)")
    demo.add_argument("--quiet", action="store_true", help="no per-epoch lines (digits)")
    g = demo.add_argument_group("--suite mini-vtab")
    g.add_argument("--seeds", type=int_list, default=None, help="run seeds (default: 42,43,44)")
    g.add_argument("--tasks", type=csv_list, default=None,
                   help="mini-VTAB tasks (default: digits,fmnist_orientation,fmnist_position,fmnist_count; "
                        "fmnist_scale is built too)")
    g.add_argument("--parallel", type=positive_int, default=None, help="runs at a time, one process and one "
                                                                       "thread each (default: 2)")
    g.add_argument("--data-seed", type=nonneg_int, default=0, help="seed of the mini-VTAB build")
    g.add_argument("--fmnist", default=None, metavar="DIR",
                   help="folder holding Fashion-MNIST's t10k-images-idx3-ubyte[.gz] (default: Debian's "
                        "/usr/share/datasets/fashion-mnist)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..demo import DEMO_METHODS, run_demo
    from ..methods.base import get_method

    methods = args.methods or DEMO_METHODS
    for method in methods:
        try:
            get_method(method)
        except ValueError as err:
            raise ConfigError(f"option '--methods': {err}") from None
    if args.suite == "digits":
        for option, value in (("--seeds", args.seeds), ("--tasks", args.tasks), ("--parallel", args.parallel),
                              ("--fmnist", args.fmnist)):
            if value is not None:
                raise ConfigError(f"option '{option}': only for --suite mini-vtab (the digits demo takes --seed)")
        run_demo(args.out or "runs/demo", epochs=args.epochs or 10, methods=methods,
                 seed=42 if args.seed is None else args.seed, quiet=args.quiet)
        return 0
    from ..demo_suite import SUITE_EPOCHS, SUITE_PARALLEL, SUITE_SEEDS, SUITE_TASKS, run_suite

    if args.seed is not None:
        raise ConfigError("option '--seed': the mini-vtab suite takes --seeds (a comma list)")
    check_mini_vtab_tasks(args.tasks)
    run_suite(args.out or "runs/demo-mini-vtab", epochs=args.epochs or SUITE_EPOCHS, methods=methods,
              seeds=args.seeds or list(SUITE_SEEDS), tasks=args.tasks or list(SUITE_TASKS),
              parallel=args.parallel or SUITE_PARALLEL, data_seed=args.data_seed, fmnist=args.fmnist)
    return 0
