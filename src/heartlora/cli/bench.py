"""``heartlora bench``, ``heartlora report`` and ``heartlora analyze``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..bench.executors import EXECUTORS
from ..bench.variants import PROTOCOLS
from ..data.loader import KINDS, SPLITS
from ..methods.heart_lora import SCORE_KINDS
from .common import EXIT_FAILURE, ConfigError, Formatter, csv_list, int_list, nonneg_int, positive_int, run_config, train_args

#: A sweep's own options (not run settings); the rest of bench's options set the shared recipe.
BENCH_KEYS = ("tasks", "methods", "seeds", "grid", "tune", "retries", "shots_list", "fewshot_seeds", "presets",
              "no_presets", "parallel", "executor", "address", "gpus_per_cell", "cpus_per_cell")
ANALYZE_KEYS = BENCH_KEYS + ("runs", "images", "heads", "ne_values", "no_correlate", "score_batches", "protocol",
                             "random_seeds", "controls")


def _ray_amount(text: str) -> float:
    """argparse type: a Ray resource amount, a number in [0, 1] or a whole number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0 or (value > 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or a whole number, got {text}")
    return value


def _executor_args(parser) -> None:
    g = parser.add_argument_group("executor (where cells run)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine (in-process, or --parallel processes); ray: every cell a Ray task on a "
                        "Ray cluster (pip install heartlora[cluster]; --out on a filesystem all nodes share)")
    g.add_argument("--address", default=None, metavar="auto|local|HOST:PORT",
                   help="ray: the cluster to join (auto: the running one; local: start one here; default: RAY_ADDRESS, "
                        "else a cluster started on this machine, else a new local one)")
    g.add_argument("--gpus-per-cell", type=_ray_amount, default=None, metavar="G",
                   help="ray: GPUs per cell, fractions pack several runs on one GPU (default: 1 if the cluster has "
                        "GPUs and --device is not cpu, else 0)")
    g.add_argument("--cpus-per-cell", type=_ray_amount, default=None, metavar="C", help="ray: CPUs per cell (default: 1)")


def _sweep_args(parser, kind: str | None = None) -> None:
    g = parser.add_argument_group("sweep")
    g.add_argument("--tasks", type=csv_list, default=None,
                   help="comma list of tasks (default: all 19 VTAB-1K tasks / the 5 few-shot datasets / every "
                        "sub-folder of --data for folder)")
    g.add_argument("--methods", type=csv_list, default=["heart-lora"], help="comma list of registered methods")
    g.add_argument("--seeds", type=int_list, default=[42], help="comma list of run seeds")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="method option grid, repeatable (e.g. --grid scale=0.01,0.1,1,10 --grid ne=2,3)")
    g.add_argument("--tune", type=csv_list, default=None, metavar="KEYS",
                   help="tune these grid options on train800→val200, retrain the best on train800val200 and test "
                        "(the clean protocol); scale defaults to the grid 0.01,0.1,1,10")
    g.add_argument("--presets", default=None, metavar="YAML",
                   help="per-task method options (default: the shipped Bi-LoRA-lineage scales for vtab)")
    g.add_argument("--no-presets", action="store_true", help="use no per-task presets")
    g.add_argument("--retries", type=nonneg_int, default=1, help="retries of a crashed cell")
    g.add_argument("--parallel", type=positive_int, default=1,
                   help="local executor: cells run in parallel, one process each (on CUDA: one per visible GPU)")
    _executor_args(parser)
    if kind in (None, "fewshot"):
        g.add_argument("--shots-list", type=int_list, default=[1, 2, 4, 8, 16], help="few-shot K values")
        g.add_argument("--fewshot-seeds", type=int_list, default=[0, 1, 2], help="few-shot list seeds")


def add_parsers(sub, suppress: bool) -> None:
    bench = sub.add_parser("bench", formatter_class=Formatter, help="run a benchmark grid (resumable)",
                           description="Tasks x methods x seeds (x option grid) through the engine, one run "
                                       "record per cell under --out. Finished cells are skipped on rerun; crashed "
                                       "cells are reported and retried. All train options set the shared recipe.")
    bench.add_argument("kind", choices=KINDS, help="benchmark layout")
    train_args(bench, suppress)
    _sweep_args(bench)
    bench.set_defaults(func=cmd_bench)

    report = sub.add_parser("report", formatter_class=Formatter, help="tables and figures from run records",
                            description="CSV, Markdown and LaTeX tables and PDF/PNG figures from the run records under "
                                        "RUNS. One row per variant: records that differ only in their seed; every "
                                        "other difference (an option with several values within a task, a different "
                                        "recipe) is its own row, named by what differs.")
    report.add_argument("runs", metavar="RUNS", help="folder holding run records (searched recursively)")
    report.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                        help="paper: best test accuracy over evaluations; clean: final-epoch test accuracy")
    report.add_argument("--out", default=None, metavar="DIR", help="default: RUNS/report")
    report.add_argument("--reference", default=None, metavar="NAME|YAML",
                        help="also write a reproduction report against published numbers: 'paper' (the shipped "
                             "Heart-LoRA / Bi-LoRA / NOAH / V-PETL rows, every number with its source) or a YAML "
                             "file in the same format")
    report.add_argument("--label", action="append", default=[], metavar="SELECTOR=NAME",
                        help="rename a row, repeatable: SELECTOR is the row's name and/or KEY=VALUE options "
                             "(e.g. --label 'heart-lora score=weight=Heart-LoRA (weight)')")
    report.set_defaults(func=cmd_report)

    analyze = sub.add_parser("analyze", formatter_class=Formatter, help="the paper's analyses (PDF/PNG + CSV)",
                             description="Responsiveness maps, selected vs control deactivation, ne sweeps, "
                                         "attention maps.")
    asub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    resp = asub.add_parser("responsiveness", formatter_class=Formatter, help="layer x head heatmaps of runs",
                           description="Heatmaps of head scores of finished heart-lora runs side by side, labelled "
                                       "with each run's score kind (switched-off heads crossed), and the rank "
                                       "correlation of the cheap scores with exact ablation scores. An adapter "
                                       "folder without a run record (e.g. imported from PEFT) is scored on --data.")
    resp.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders, or adapter folders (scored on --data)")
    resp.add_argument("--out", required=True, metavar="DIR")
    resp.add_argument("--no-correlate", action="store_true", help="skip the score/ablation rank correlation")
    resp.add_argument("--score-batches", type=positive_int, default=2, help="training batches for the correlation")
    g = resp.add_argument_group("adapter folders without a run record (e.g. `heartlora import`): scored on these data")
    g.add_argument("--score", default="taylor", choices=SCORE_KINDS, help="score shown for such adapters")
    g.add_argument("--data", default=None, metavar="ROOT", help="data root")
    g.add_argument("--data-kind", default="vtab", choices=KINDS, help="data layout")
    g.add_argument("--task", default=None, help="task under ROOT")
    g.add_argument("--split", default="final", choices=SPLITS, help="split whose training images score")
    resp.set_defaults(func=cmd_analyze)
    for name, text in (("deactivate", "the ne least responsive heads off vs controls (first, random, most "
                                      "responsive), as ratios to ne=0"),
                       ("ne-sweep", "accuracy vs ne per task")):
        p = asub.add_parser(name, formatter_class=Formatter, help=text,
                            description=f"{text}. Runs go through the engine (resumable) under OUT/runs; train "
                                        "options set the recipe.")
        train_args(p, suppress)
        p.add_argument("--tasks", type=csv_list, required=True, help="comma list of tasks under --data")
        p.add_argument("--ne-values", type=int_list, default=[1, 3, 6], help="ne values")
        p.add_argument("--seeds", type=int_list, default=None, help="run seeds (default: --seed)")
        p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="which accuracy to compare")
        p.add_argument("--parallel", type=positive_int, default=1, help="runs in parallel")
        if name == "deactivate":
            p.add_argument("--random-seeds", type=int_list, default=[0, 1, 2],
                           help="select_seed values of the random control (one random head set each)")
            p.add_argument("--controls", type=csv_list, default=None,
                           help="controls beside the responsive choice (default: first,random,reverse; first only "
                                "when head counts differ per layer, e.g. Swin)")
        p.set_defaults(func=cmd_analyze)
    dep = asub.add_parser(
        "task-dependence", formatter_class=Formatter, help="task x task agreement of head scores and selections",
        description="For every pair of tasks, the agreement of Heart-LoRA runs' head scores (Spearman rank "
                    "correlation per layer, averaged over layers) and of their switched-off heads (Jaccard), "
                    "beside the agreement between seeds of the same task (diagonal: mean over its seed pairs; "
                    "off-diagonal: mean over every pair of one run of each task). Prints the tables and a summary; "
                    "writes task_dependence.csv / _pairs.csv / .txt / .json and a task x task heatmap (PDF + PNG).")
    dep.add_argument("runs", nargs="+", metavar="RUN",
                     help="finished run folders, or folders searched for runs of --method (e.g. a bench --out)")
    dep.add_argument("--out", required=True, metavar="DIR")
    dep.add_argument("--method", default="heart-lora",
                     help="the method whose runs are taken from searched folders (run folders given are taken as they are)")
    dep.set_defaults(func=cmd_analyze)
    att = asub.add_parser("attention", formatter_class=Formatter, help="attention maps of chosen heads",
                          description="Attention of chosen heads over the given images, one column per run and head "
                                      "(e.g. a heart-lora run and a bilora run), one shared colour scale. ViT: the "
                                      "class token's attention to each patch; Swin: the attention each token "
                                      "receives inside its window, put back on the image grid.")
    att.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="finished run folders")
    att.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help="image files")
    att.add_argument("--heads", type=csv_list, required=True, metavar="L:H,...", help="layer:head pairs (from 0)")
    att.add_argument("--out", required=True, metavar="DIR")
    att.set_defaults(func=cmd_analyze)


def cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..bench.executors import local_devices, make_executor
    from ..bench.sweep import (
        default_tasks,
        load_presets,
        options_for_methods,
        parse_grid,
        plan,
        run_cells,
        tune_grid,
        tune_then_final,
        with_shared_cache,
    )

    base = run_config(argv, BENCH_KEYS, require_run_to_resume=False)
    if not base.out:
        raise ConfigError("option '--out': required (the sweep folder)")
    out_root = Path(base.out)
    base = with_shared_cache(base.replace(out=None, data={"kind": args.kind}), out_root)
    base.validate()
    tasks = args.tasks or default_tasks(args.kind, base.data.root)
    grid = parse_grid(args.grid)
    presets = {} if args.no_presets else (load_presets(args.presets) if args.presets or args.kind == "vtab" else {})
    shots = args.shots_list if args.kind == "fewshot" else [None]
    list_seeds = args.fewshot_seeds if args.kind == "fewshot" else [None]
    options = options_for_methods(args.methods, dict(base.method.options))
    if args.tune:
        grid = tune_grid(args.tune, grid)
    split = "tune" if args.tune else "final"
    cells = plan(args.kind, tasks, args.methods, args.seeds, grid, presets, options, shots, list_seeds, split)
    devices = local_devices(base.device) if args.executor == "local" else None
    with make_executor(args.executor, workers=args.parallel, devices=devices, address=args.address,
                       gpus_per_cell=args.gpus_per_cell, cpus_per_cell=args.cpus_per_cell) as executor:
        if args.tune:
            result = tune_then_final(base, out_root, cells, retries=args.retries, executor=executor)
        else:
            result = run_cells(cells, base, out_root, retries=args.retries, executor=executor)
    print(result.summary())
    print(f"tables: heartlora report {out_root}")
    return 0 if result.ok else EXIT_FAILURE


def cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..bench.report import write_report

    written = write_report(args.runs, args.out, args.protocol, reference=args.reference, labels=args.label)
    print(Path(written["markdown"]).read_text())
    for path in written.values():
        print(f"wrote {path}")
    return 0


def _parse_heads(items: Sequence[str]) -> list[tuple[int, int]]:
    heads = []
    for item in items:
        try:
            layer, head = item.split(":")
            heads.append((int(layer), int(head)))
        except ValueError:
            raise ConfigError(f"option '--heads': expected LAYER:HEAD pairs of integers (e.g. 11:0,11:5), got {item!r}") from None
    return heads


def cmd_analyze(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..bench import analyze

    if args.analysis == "responsiveness":
        data = {"kind": args.data_kind, "root": args.data, "task": args.task, "split": args.split}
        written = analyze.responsiveness(args.runs, args.out, correlate=not args.no_correlate,
                                         batches=args.score_batches, data=data, score=args.score)
    elif args.analysis == "attention":
        written = analyze.attention(args.runs, args.images, _parse_heads(args.heads), args.out)
    elif args.analysis == "task-dependence":
        written = analyze.task_dependence(args.runs, args.out, method=args.method)
        print(Path(written["text"]).read_text())
    else:
        from ..bench.sweep import with_shared_cache

        base = run_config(argv, ANALYZE_KEYS, require_run_to_resume=False)
        if not base.out:
            raise ConfigError("option '--out': required")
        out = Path(base.out)
        base = with_shared_cache(base.replace(out=None), out)
        base.validate()
        if args.analysis == "deactivate":
            written = analyze.deactivate(base, args.tasks, out, ne_values=args.ne_values, seeds=args.seeds,
                                         random_seeds=args.random_seeds, controls=args.controls,
                                         protocol=args.protocol, workers=args.parallel)
        else:
            written = analyze.ne_sweep(base, args.tasks, out, ne_values=args.ne_values, seeds=args.seeds,
                                       protocol=args.protocol, workers=args.parallel)
    for path in written.values():
        print(f"wrote {path}")
    return 0
