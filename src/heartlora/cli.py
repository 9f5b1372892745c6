"""The ``heartlora`` command line: ``train``, ``eval``, ``data verify``, ``methods``, ``bench``,
``report``, ``analyze``, ``demo``, ``predict``, ``serve``.

Settings come from (lowest to highest precedence) the ``paper`` recipe defaults, ``--preset``,
``--config FILE.yaml`` (keys = the long option names, or nested model/method/data/schedule
sections as in ``run.json``), then the flags given on the command line.

Exit codes: 0 success; 1 bad data, weights, adapter or files (the message names the file and
line); 2 usage errors (unknown flag, method or option, invalid value); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .precision import AMP_CHOICES
from .config import (
    METHOD_SHORTCUTS,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    ScheduleConfig,
    apply_mapping,
    load_yaml,
    parse_key_values,
    parse_model_kwargs,
)

PROG = "heartlora"
EXIT_USAGE = 2
EXIT_FAILURE = 1


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _key_value(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _head_count(text: str) -> int | str:
    """argparse type: a head count >= 0, or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    return _nonneg_int(text)


def _add(group, suppress: bool, *flags: str, default: Any = None, **kwargs: Any) -> None:
    """add_argument whose default is shown in --help, or SUPPRESSed to detect explicit flags."""
    group.add_argument(*flags, default=argparse.SUPPRESS if suppress else default, **kwargs)


# ------------------------------------------------------------------------------ arguments
def _model_args(parser, suppress: bool, defaults: bool = True):
    m = ModelConfig()
    g = parser.add_argument_group("backbone")
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    _add(g, suppress, "--model", default=d(m.name), metavar="NAME", help="timm model name (never downloaded)")
    _add(g, suppress, "--weights", default=d(m.weights), metavar="FILE",
         help="local backbone weights: .npz (Google ViT, e.g. ViT-B_16.npz), .pth, .bin or .safetensors")
    _add(g, suppress, "--weights-sha256", default=d(m.weights_sha256), metavar="HEX", help="expected sha256 of --weights")
    _add(g, suppress, "--pretrained", default=d(m.pretrained), action="store_true",
         help="timm's own pretrained weights for the name's tag (e.g. vit_base_patch16_224.augreg_in21k), read from "
              "the local Hugging Face cache only (offline; never downloaded)")
    _add(g, suppress, "--random-init", default=d(m.random_init), action="store_true",
         help="random weights although the name has a pretrained tag (otherwise an error)")
    _add(g, suppress, "--model-kwargs", default=d([]), metavar="KEY=VALUE", nargs="+", action="extend", type=_key_value,
         help="extra timm.create_model arguments, e.g. patch_size=8 depth=2 num_heads=4")
    return g


def _data_args(parser, suppress: bool, defaults: bool = True, loader: bool = True) -> None:
    c = DataConfig()
    g = parser.add_argument_group("data")
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    _add(g, suppress, "--data-kind", default=d(c.kind), choices=("vtab", "fewshot", "folder"), help="data layout")
    _add(g, suppress, "--data", default=d(c.root), metavar="ROOT", help="data root folder")
    _add(g, suppress, "--task", default=d(c.task),
         help="task / dataset name under ROOT (any alias; leave out when ROOT is the task)")
    _add(g, suppress, "--split", default=d(c.split), choices=("final", "paper", "tune"),
         help="final: train800val200 -> test; tune: train800 -> val200")
    _add(g, suppress, "--shots", default=d(c.shots), type=_positive_int, help="few-shot K (fewshot kind)")
    _add(g, suppress, "--fewshot-seed", default=d(c.fewshot_seed), type=_nonneg_int, help="few-shot list seed S (fewshot kind)")
    _add(g, suppress, "--num-classes", default=d(c.num_classes), type=_positive_int, help="expected class count (checked)")
    _add(g, suppress, "--image-size", default=d(c.image_size), type=_positive_int, help="Resize((S,S), bicubic)")
    _add(g, suppress, "--normalize", default=d(c.normalize), choices=("none", "imagenet", "inception"),
         help="input normalisation")
    if loader:
        _add(g, suppress, "--augment", default=d(c.augment), action=argparse.BooleanOptionalAction,
             help="few-shot training augmentation (flip + colour jitter)")
    _add(g, suppress, "--check-images", default=d(c.check_images if loader else False), action=argparse.BooleanOptionalAction,
         help="decode every image before starting")
    _add(g, suppress, "--workers", default=d(c.workers), type=_nonneg_int, help="DataLoader worker processes")
    if loader:
        _add(g, suppress, "--allow-outside-root", default=d(c.allow_outside_root), action=argparse.BooleanOptionalAction,
             help="let list lines name images outside the task folder (absolute or ../ paths)")
        _add(g, suppress, "--data-fingerprint", default=d(c.fingerprint), choices=("stat", "content", "off"),
             help="how a resumed run checks its images are unchanged: stat = sizes and modification times (cheap), "
                  "content = sha256 of every image, off = no check (recorded)")
        _add(g, suppress, "--cache", default=d(c.cache), choices=("auto", "off"),
             help="decoded-image cache: auto = decode and resize each split once (in memory within --cache-memory-mb, "
                  "beyond it a memory-mapped file in --cache-dir; batches are bit-identical), off = decode every access")
        _add(g, suppress, "--cache-memory-mb", default=d(c.cache_memory_mb), type=_nonneg_int, metavar="MIB",
             help="memory for cached splits (training split first); 0 = every cached split in a file")
        _add(g, suppress, "--cache-dir", default=d(c.cache_dir), metavar="DIR",
             help="folder of the cache files of splits over --cache-memory-mb (default: OUT/data_cache; for bench: "
                  "the sweep's OUT/data_cache, shared by its cells); files are keyed by the images and the resize, "
                  "and the folder may be deleted between runs")


def _train_parser(parser: argparse.ArgumentParser, suppress: bool) -> None:
    g = _model_args(parser, suppress)
    m = ModelConfig()
    _add(g, suppress, "--drop-path", default=m.drop_path, type=float, help="stochastic depth rate")
    _add(g, suppress, "--classifier-init", default=m.classifier_init, choices=("torch", "trunc_normal"),
         help="new classifier init: torch = nn.Linear default (Bi-LoRA lineage), trunc_normal = std .02, zero bias (NOAH)")

    g = parser.add_argument_group("method")
    _add(g, suppress, "--method", default="heart-lora", help="registered method (see `heartlora methods`)")
    _add(g, suppress, "--opt", default=[], metavar="KEY=VALUE", action="append", type=_key_value,
         help="method option, repeatable (e.g. --opt score=ablation --opt restart=true)")
    _add(g, suppress, "--rank", default=None, type=_positive_int, help="shortcut for --opt rank=R (method default if unset)")
    _add(g, suppress, "--scale", default=None, type=float, help="shortcut for --opt scale=S")
    _add(g, suppress, "--ne", default=None, type=_head_count, help="shortcut for --opt ne=N (heads switched off per layer; "
         "'auto': the most heads whose held-out accuracy stays within --opt tolerance)")
    _add(g, suppress, "--bits", default=None, type=int, help="shortcut for --opt bits=B (32 = full precision)")

    _data_args(parser, suppress)

    s = ScheduleConfig()
    g = parser.add_argument_group("schedule (DESIGN §4 recipe)")
    _add(g, suppress, "--epochs", default=s.epochs, type=_positive_int, help="training epochs")
    _add(g, suppress, "--warmup-epochs", default=s.warmup_epochs, type=_nonneg_int,
         help="linear warm-up epochs (also the default Heart-LoRA scoring length)")
    _add(g, suppress, "--lr", default=s.lr, type=float, help="AdamW peak learning rate")
    _add(g, suppress, "--warmup-lr", default=s.warmup_lr, type=float, help="lr at the start of warm-up")
    _add(g, suppress, "--min-lr", default=s.min_lr, type=float, help="cosine floor")
    _add(g, suppress, "--weight-decay", default=s.weight_decay, type=float, help="AdamW weight decay")
    _add(g, suppress, "--batch-size", default=s.batch_size, type=_positive_int, help="training batch size")
    _add(g, suppress, "--drop-last", default=s.drop_last, action=argparse.BooleanOptionalAction,
         help="drop the last incomplete training batch")
    _add(g, suppress, "--eval-every", default=s.eval_every, type=_nonneg_int,
         help="evaluate after epochs e with (e+1) %% N == 0, and after the last (0: last only)")
    _add(g, suppress, "--eval-batch-size", default=s.eval_batch_size, type=_positive_int, help="default: --batch-size")
    _add(g, suppress, "--ablation-batches", default=None, type=_positive_int,
         help="shortcut for --opt ablation_batches=N (batches measured by --opt score=ablation; method default 4)")

    r = RunConfig()
    g = parser.add_argument_group("run")
    _add(g, suppress, "--seed", default=r.seed, type=_nonneg_int, help="run seed (init, order, dropout)")
    _add(g, suppress, "--device", default=r.device, help="auto, cpu, cuda, cuda:N")
    _add(g, suppress, "--amp", default=r.amp, choices=AMP_CHOICES, metavar="{auto,bf16,off}",
         help="auto: bf16 autocast on CUDA and on CPUs with native bf16 matmul (AMX), else fp32; bf16 / off force it")
    _add(g, suppress, "--out", default=r.out, metavar="DIR", help="run directory: run.json, adapter/, checkpoint.pt")
    _add(g, suppress, "--resume", default=r.resume, action="store_true", help="continue the run in --out from its checkpoint")
    _add(g, suppress, "--quiet", default=r.quiet, action="store_true", help="no progress bar or per-epoch lines")
    _add(g, suppress, "--compile", default=r.compile, action="store_true",
         help="torch.compile the training forward (worth it on GPUs; compiling takes minutes on a CPU)")
    _add(g, suppress, "--config", default=None, metavar="YAML", help="settings file (keys = long option names); flags override")
    _add(g, suppress, "--preset", default="paper", choices=("paper",), help="recipe preset applied before --config")


def _eval_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="DIR",
                        help="adapter folder (from a run: RUN/adapter; a run folder also works)")
    g = _model_args(parser, False, defaults=False)
    _add(g, False, "--seed", default=argparse.SUPPRESS, type=_nonneg_int,
         help="seed of a randomly initialised backbone (default: the run's, from backbone.json)")
    _data_args(parser, False, defaults=False, loader=False)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="evaluation batch size")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES, metavar="{auto,bf16,off}",
                   help="auto: bf16 autocast on CUDA and on CPUs with AMX, else fp32")
    g.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Head-level LoRA (Heart-LoRA) and PETL baselines for timm Vision Transformers.",
        epilog="Run `heartlora COMMAND --help` for the options of a command.",
    )
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", formatter_class=_Formatter, help="train a method on a task (run.json, adapter/)",
                           description="Train one run: backbone x method x data x schedule. Writes OUT/run.json, "
                                       "OUT/adapter/ and OUT/checkpoint.pt.")
    _train_parser(train, suppress)
    _add(train, suppress, "--nproc", default=None, type=_positive_int, metavar="K",
         help="train data-parallel in K processes on this machine (launches torchrun; --batch-size stays the global "
              "batch); on several machines use torchrun itself: torchrun --nnodes N --nproc_per_node K -m heartlora train ...")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", formatter_class=_Formatter, help="evaluate a saved adapter on a task",
                        description="Load a saved adapter into its backbone and print its accuracy. Backbone settings "
                                    "default to the adapter's backbone.json, data settings to the run.json beside it.")
    _eval_parser(ev)
    ev.set_defaults(func=_cmd_eval)

    data = sub.add_parser("data", formatter_class=_Formatter, help="data tools", description="Data tools.")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    verify = data_sub.add_parser("verify", formatter_class=_Formatter, help="check a task's data and print its manifest hash",
                                 description="Split sizes, label range vs class count, unreadable images, duplicates, "
                                             "and the manifest hash that runs record. Exit code 1 if there are problems.")
    verify.add_argument("root", metavar="ROOT", help="data root (or the task folder itself)")
    verify.add_argument("--kind", default="vtab", choices=("vtab", "fewshot", "folder"), help="data layout")
    verify.add_argument("--task", default=None, help="task / dataset name under ROOT")
    verify.add_argument("--shots", default=None, type=_positive_int, help="few-shot K (with --fewshot-seed)")
    verify.add_argument("--fewshot-seed", default=None, type=_nonneg_int, help="few-shot list seed S")
    verify.add_argument("--check-images", default=True, action=argparse.BooleanOptionalAction, help="decode every image")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--allow-outside-root", action="store_true",
                        help="accept list lines whose image path is absolute or leaves the data folder via '..'")
    verify.set_defaults(func=_cmd_verify)
    mini = data_sub.add_parser(
        "make-mini-vtab", formatter_class=_Formatter, help="build the mini-VTAB (real images, offline) into OUT",
        description="Write the mini-VTAB into OUT in the VTAB-1K layout: natural: digits (scikit-learn's "
                    "handwritten digits); structured: fmnist_orientation, fmnist_position, fmnist_count, "
                    "fmnist_scale (Fashion-MNIST TEST images only, rotated / placed / counted / scaled on a 32x32 "
                    "canvas). 32x32 PNGs, 800 train800 / 200 val200 / 800 test images per task (digits: 797 test), "
                    "and OUT/mini_vtab.json (groups, classes, manifest hashes). The same --seed writes "
                    "byte-identical files; rerunning on a finished build does nothing.")
    mini.add_argument("out", metavar="OUT", help="data root to write (the task folders go directly below it)")
    mini.add_argument("--seed", type=_nonneg_int, default=0, help="data seed (splits, labels, placements)")
    mini.add_argument("--fmnist", default=None, metavar="DIR",
                      help="folder holding Fashion-MNIST's t10k-images-idx3-ubyte[.gz] (default: Debian's "
                           "/usr/share/datasets/fashion-mnist, from `apt-get install dataset-fashion-mnist`)")
    mini.add_argument("--tasks", type=_csv_list, default=None, help="comma list of tasks (default: all five)")
    mini.set_defaults(func=_cmd_make_mini_vtab)

    _bench_parsers(sub, suppress)
    _serving_parsers(sub)
    _interop_parsers(sub)

    methods = sub.add_parser("methods", formatter_class=_Formatter, help="list registered methods and their options",
                             description="Registered methods, their options with defaults, and whether they merge.")
    methods.add_argument("--json", action="store_true", help="print JSON")
    methods.set_defaults(func=_cmd_methods)
    return parser


BENCH_KEYS = ("tasks", "methods", "seeds", "grid", "tune", "retries", "shots_list", "fewshot_seeds", "presets",
              "no_presets", "parallel", "executor", "address", "gpus_per_cell", "cpus_per_cell")
ANALYZE_KEYS = BENCH_KEYS + ("runs", "images", "heads", "ne_values", "no_correlate", "score_batches", "protocol",
                             "random_seeds", "controls")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _sweep_args(parser, suppress: bool, kind: str | None = None) -> None:
    g = parser.add_argument_group("sweep")
    g.add_argument("--tasks", type=_csv_list, default=None,
                   help="comma list of tasks (default: all 19 VTAB-1K tasks / the 5 few-shot datasets / every "
                        "sub-folder of --data for folder)")
    g.add_argument("--methods", type=_csv_list, default=["heart-lora"], help="comma list of registered methods")
    g.add_argument("--seeds", type=_int_list, default=[42], help="comma list of run seeds")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="method option grid, repeatable (e.g. --grid scale=0.01,0.1,1,10 --grid ne=2,3)")
    g.add_argument("--tune", type=_csv_list, default=None, metavar="KEYS",
                   help="tune these grid options on train800→val200, retrain the best on train800val200 and test "
                        "(the clean protocol); scale defaults to the grid 0.01,0.1,1,10")
    g.add_argument("--presets", default=None, metavar="YAML",
                   help="per-task method options (default: the shipped Bi-LoRA-lineage scales for vtab)")
    g.add_argument("--no-presets", action="store_true", help="use no per-task presets")
    g.add_argument("--retries", type=_nonneg_int, default=1, help="retries of a crashed cell")
    g.add_argument("--parallel", type=_positive_int, default=1,
                   help="local executor: cells run in parallel, one process each (on CUDA: one per visible GPU)")
    _executor_args(parser)
    if kind in (None, "fewshot"):
        g.add_argument("--shots-list", type=_int_list, default=[1, 2, 4, 8, 16], help="few-shot K values")
        g.add_argument("--fewshot-seeds", type=_int_list, default=[0, 1, 2], help="few-shot list seeds")


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
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine (in-process, or --parallel processes); ray: every cell a Ray task on a "
                        "Ray cluster (pip install heartlora[cluster]; --out on a filesystem all nodes share)")
    g.add_argument("--address", default=None, metavar="auto|local|HOST:PORT",
                   help="ray: the cluster to join (auto: the running one; local: start one here; default: RAY_ADDRESS, "
                        "else a cluster started on this machine, else a new local one)")
    g.add_argument("--gpus-per-cell", type=_ray_amount, default=None, metavar="G",
                   help="ray: GPUs per cell, fractions pack several runs on one GPU (default: 1 if the cluster has "
                        "GPUs and --device is not cpu, else 0)")
    g.add_argument("--cpus-per-cell", type=_ray_amount, default=None, metavar="C", help="ray: CPUs per cell (default: 1)")


def _bench_parsers(sub, suppress: bool) -> None:
    bench = sub.add_parser("bench", formatter_class=_Formatter, help="run a benchmark grid (resumable)",
                           description="Tasks x methods x seeds (x option grid) through the engine, one run "
                                       "record per cell under --out. Finished cells are skipped on rerun; crashed "
                                       "cells are reported and retried. All train options set the shared recipe.")
    bench.add_argument("kind", choices=("vtab", "fewshot", "folder"), help="benchmark layout")
    _train_parser(bench, suppress)
    _sweep_args(bench, suppress)
    bench.set_defaults(func=_cmd_bench)

    report = sub.add_parser("report", formatter_class=_Formatter, help="tables and figures from run records",
                            description="CSV, Markdown and LaTeX tables and PDF/PNG figures from the run records under "
                                        "RUNS. One row per variant: records that differ only in their seed; every "
                                        "other difference (an option with several values within a task, a different "
                                        "recipe) is its own row, named by what differs.")
    report.add_argument("runs", metavar="RUNS", help="folder holding run records (searched recursively)")
    report.add_argument("--protocol", choices=("paper", "clean"), default="paper",
                        help="paper: best test accuracy over evaluations; clean: final-epoch test accuracy")
    report.add_argument("--out", default=None, metavar="DIR", help="default: RUNS/report")
    report.add_argument("--reference", default=None, metavar="NAME|YAML",
                        help="also write a reproduction report against published numbers: 'paper' (the shipped "
                             "Heart-LoRA / Bi-LoRA / NOAH / V-PETL rows, every number with its source) or a YAML "
                             "file in the same format")
    report.add_argument("--label", action="append", default=[], metavar="SELECTOR=NAME",
                        help="rename a row, repeatable: SELECTOR is the row's name and/or KEY=VALUE options "
                             "(e.g. --label 'heart-lora score=weight=Heart-LoRA (weight)')")
    report.set_defaults(func=_cmd_report)

    analyze = sub.add_parser("analyze", formatter_class=_Formatter, help="the paper's analyses (PDF/PNG + CSV)",
                             description="Responsiveness maps, selected vs control deactivation, ne sweeps, "
                                         "attention maps.")
    asub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    resp = asub.add_parser("responsiveness", formatter_class=_Formatter, help="layer x head heatmaps of runs",
                           description="Heatmaps of head scores of finished heart-lora runs side by side, labelled "
                                       "with each run's score kind (switched-off heads crossed), and the rank "
                                       "correlation of the cheap scores with exact ablation scores. An adapter "
                                       "folder without a run record (e.g. imported from PEFT) is scored on --data.")
    resp.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders, or adapter folders (scored on --data)")
    resp.add_argument("--out", required=True, metavar="DIR")
    resp.add_argument("--no-correlate", action="store_true", help="skip the score/ablation rank correlation")
    resp.add_argument("--score-batches", type=_positive_int, default=2, help="training batches for the correlation")
    g = resp.add_argument_group("adapter folders without a run record (e.g. `heartlora import`): scored on these data")
    g.add_argument("--score", default="taylor", choices=("taylor", "activation", "weight", "ablation"),
                   help="score shown for such adapters")
    g.add_argument("--data", default=None, metavar="ROOT", help="data root")
    g.add_argument("--data-kind", default="vtab", choices=("vtab", "fewshot", "folder"), help="data layout")
    g.add_argument("--task", default=None, help="task under ROOT")
    g.add_argument("--split", default="final", choices=("final", "paper", "tune"), help="split whose training images score")
    resp.set_defaults(func=_cmd_analyze)
    for name, text in (("deactivate", "the ne least responsive heads off vs controls (first, random, most "
                                      "responsive), as ratios to ne=0"),
                       ("ne-sweep", "accuracy vs ne per task")):
        p = asub.add_parser(name, formatter_class=_Formatter, help=text,
                            description=f"{text}. Runs go through the engine (resumable) under OUT/runs; train "
                                        "options set the recipe.")
        _train_parser(p, suppress)
        p.add_argument("--tasks", type=_csv_list, required=True, help="comma list of tasks under --data")
        p.add_argument("--ne-values", type=_int_list, default=[1, 3, 6], help="ne values")
        p.add_argument("--seeds", type=_int_list, default=None, help="run seeds (default: --seed)")
        p.add_argument("--protocol", choices=("paper", "clean"), default="paper", help="which accuracy to compare")
        p.add_argument("--parallel", type=_positive_int, default=1, help="runs in parallel")
        if name == "deactivate":
            p.add_argument("--random-seeds", type=_int_list, default=[0, 1, 2],
                           help="select_seed values of the random control (one random head set each)")
            p.add_argument("--controls", type=_csv_list, default=None,
                           help="controls beside the responsive choice (default: first,random,reverse; first only "
                                "when head counts differ per layer, e.g. Swin)")
        p.set_defaults(func=_cmd_analyze)
    dep = asub.add_parser(
        "task-dependence", formatter_class=_Formatter, help="task x task agreement of head scores and selections",
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
    dep.set_defaults(func=_cmd_analyze)
    att = asub.add_parser("attention", formatter_class=_Formatter, help="attention maps of chosen heads",
                          description="Attention of chosen heads over the given images, one column per run and head "
                                      "(e.g. a heart-lora run and a bilora run), one shared colour scale. ViT: the "
                                      "class token's attention to each patch; Swin: the attention each token "
                                      "receives inside its window, put back on the image grid.")
    att.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="finished run folders")
    att.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help="image files")
    att.add_argument("--heads", type=_csv_list, required=True, metavar="L:H,...", help="layer:head pairs (from 0)")
    att.add_argument("--out", required=True, metavar="DIR")
    att.set_defaults(func=_cmd_analyze)

    demo = sub.add_parser("demo", formatter_class=_Formatter, help="the offline demo (shipped backbone, digits)",
                          description="--suite digits (default): transfer the shipped Fashion-MNIST ViT to "
                                      "scikit-learn's digits with linear probe, LoRA, Heart-LoRA and Heart-LoRA†; "
                                      "prints a table and writes run records, adapters and two PNGs. --suite "
                                      "mini-vtab: build the mini-VTAB (heartlora data make-mini-vtab) under OUT/data, "
                                      "run the same methods on its tasks with 3 seeds as a resumable bench sweep, "
                                      "then heartlora report, analyze responsiveness and analyze task-dependence "
                                      "(about 20 minutes on 2 CPU cores).")
    demo.add_argument("--suite", choices=("digits", "mini-vtab"), default="digits", help="which demo")
    demo.add_argument("--epochs", type=_positive_int, default=None, help="epochs per run (default: digits 10, "
                                                                          "mini-vtab 5)")
    demo.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/demo, "
                                                                 "runs/demo-mini-vtab)")
    demo.add_argument("--methods", type=_csv_list, default=None, help="comma list (default: linear,lora,heart-lora,"
                                                                      "heart-lora-layer)")
    demo.add_argument("--seed", type=_nonneg_int, default=None, help="run seed of the digits demo (default 42)")
    demo.add_argument("--quiet", action="store_true", help="no per-epoch lines (digits)")
    g = demo.add_argument_group("--suite mini-vtab")
    g.add_argument("--seeds", type=_int_list, default=None, help="run seeds (default: 42,43,44)")
    g.add_argument("--tasks", type=_csv_list, default=None,
                   help="mini-VTAB tasks (default: digits,fmnist_orientation,fmnist_position,fmnist_count; "
                        "fmnist_scale is built too)")
    g.add_argument("--parallel", type=_positive_int, default=None, help="runs at a time, one process and one "
                                                                        "thread each (default: 2)")
    g.add_argument("--data-seed", type=_nonneg_int, default=0, help="seed of the mini-VTAB build")
    g.add_argument("--fmnist", default=None, metavar="DIR",
                   help="folder holding Fashion-MNIST's t10k-images-idx3-ubyte[.gz] (default: Debian's "
                        "/usr/share/datasets/fashion-mnist)")
    demo.set_defaults(func=_cmd_demo)


# ------------------------------------------------------------------------------ predict / serve
def _task_spec(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition("=")
    if not sep or not name.strip() or not directory.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=DIR (a task name and its adapter folder), got {text!r}")
    return name.strip(), directory.strip()


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def _byte_size(text: str) -> int:
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS or float(match.group(1)) * _BYTE_UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 10MB, 512KiB or 1048576, got {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def _serving_task_args(parser) -> None:
    g = parser.add_argument_group("tasks (adapters of lora, bilora, heart-lora, heart-lora-layer or linear on one backbone)")
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
    g.add_argument("--top-k", type=_positive_int, default=5, help="classes reported per image (at most a task's count)")


def _serving_parsers(sub) -> None:
    predict = sub.add_parser(
        "predict", formatter_class=_Formatter, help="top-k predictions of adapters for image files",
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
    g.add_argument("--batch-size", type=_positive_int, default=32, help="images per model call")
    g.add_argument("--workers", type=_positive_int, default=4, help="image decoding threads")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    serve = sub.add_parser(
        "serve", formatter_class=_Formatter, help="HTTP inference server for many tasks on one backbone",
        description="Serve task adapters on one backbone over HTTP (FastAPI + uvicorn: pip install heartlora[serve]). "
                    "POST /predict (multipart 'file' + 'task', or the image bytes as the body with ?task=NAME) -> "
                    "top-k JSON; GET /tasks; GET /health. Concurrent requests of any tasks are batched together.")
    _serving_task_args(serve)
    g = serve.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=_nonneg_int, default=8000, help="port (0: any free port, printed at start)")
    g.add_argument("--max-batch", type=_positive_int, default=32, help="most images in one model call")
    g.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    g.add_argument("--max-upload-bytes", type=_byte_size, default=10 * 2 ** 20, metavar="SIZE",
                   help="largest request body (larger: 413), e.g. 10MiB")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level")
    serve.set_defaults(func=_cmd_serve)


def _serving_model(args: argparse.Namespace):
    from .engine.build import resolve_amp, resolve_device
    from .serve.adapters import default_task_name
    from .serve.multitask import MultiTask

    tasks: dict[str, str] = {}
    for name, directory in [(default_task_name(d), d) for d in args.adapter] + list(args.task):
        if name in tasks:
            raise ConfigError(f"option '--task': task name {name!r} is given twice (name them with --task NAME=DIR)")
        tasks[name] = directory
    if not tasks:
        raise ConfigError("option '--adapter' or '--task NAME=DIR': give at least one adapter")
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device).enabled
    return MultiTask.from_adapters(tasks, device=device, weights=args.weights), amp


def _cmd_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .fsio import atomic_write
    from .serve.inputs import collect_images
    from .serve.predict import expand_jobs, format_rows, predict

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
                print(f"{PROG}: error: {p.error}", file=sys.stderr)
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


def _cmd_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .serve.server import bind, create_app, make_server, require_serve_extra

    try:
        require_serve_extra()
    except ImportError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.max_wait_ms < 0:
        raise ConfigError(f"option '--max-wait-ms': expected >= 0, got {args.max_wait_ms}")
    model, amp = _serving_model(args)
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_upload_bytes=args.max_upload_bytes, top_k=args.top_k, amp=amp)
    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
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
        return 130
    return 0


# ------------------------------------------------------------------------------- commands
def _explicit_train_values(argv: Sequence[str]) -> dict:
    """Only the train flags actually typed on the command line."""
    parser = build_parser(suppress=True)
    namespace = parser.parse_args(list(argv))
    values = {k: v for k, v in vars(namespace).items() if k not in ("command", "func")}
    return values


def _config_from_args(argv: Sequence[str], extra: Sequence[str] = ()) -> RunConfig:
    """RunConfig from the train options typed in ``argv``; ``extra`` names the command's own
    options (bench, analyze), which are not run settings."""
    explicit = _explicit_train_values(argv)
    for key in list(extra) + ["kind", "analysis", "nproc"]:
        explicit.pop(key, None)
    config_file = explicit.pop("config", None)
    preset = explicit.pop("preset", None)
    options = {}
    for item in explicit.pop("opt", []) or []:
        options.update(parse_key_values(item, "--opt"))
    flags = {k: v for k, v in explicit.items() if v is not None or k not in METHOD_SHORTCUTS}
    if options:
        flags["opt"] = options

    config = RunConfig()
    out, resume = flags.get("out"), flags.get("resume", False)
    if resume and out is not None and not extra:  # `train --resume`: there must be a run to continue
        if not (Path(out) / "checkpoint.pt").is_file() and not (Path(out) / "run.json").is_file():
            raise ConfigError(f"option '--resume': {out} holds no run to continue (no checkpoint.pt); "
                              "start it without --resume")
    if resume and out is not None:
        checkpoint = Path(out) / "checkpoint.pt"
        if checkpoint.is_file():
            from .engine.checkpoint import load_checkpoint

            config = RunConfig.from_dict(load_checkpoint(checkpoint)["config"], str(checkpoint))
    if preset is not None:
        config = apply_mapping(config, {"preset": preset})
    if config_file is not None:
        values, lines = load_yaml(config_file)
        config = apply_mapping(config, values, str(config_file), lines)
    return apply_mapping(config, flags)


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
    import os
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "heartlora", *_without_option(argv, "--nproc")]
    print(f"{PROG}: launching {' '.join(command[1:])}", file=sys.stderr)
    return subprocess.call(command, env=dict(os.environ))


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .engine.loop import train

    nproc = getattr(args, "nproc", None)
    if nproc and nproc > 1:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("option '--nproc': this process is already one of a torchrun job; leave --nproc out")
        _config_from_args(argv)  # usage errors before launching anything
        return _launch_torchrun(nproc, argv)
    config = _config_from_args(argv)
    record = train(config)
    p = record["protocols"]
    paper, final = p["paper"], p["final"]
    where = f"; record: {Path(config.out) / 'run.json'}" if config.out else ""
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the job
    print(f"{record['data']['task']} {record['method']['name']}: paper {paper['accuracy']:.2f} (epoch {paper['epoch'] + 1}), "
          f"final {final['accuracy']:.2f} (epoch {final['epoch'] + 1}), adapter {record['adapter_bytes']['with_classifier']:,} "
          f"bytes{where}")
    return 0


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None


def _cmd_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from .adapters_io import load_adapter, read_adapter_config
    from .data import DataError, load_task
    from .engine.build import build_backbone, new_classifier, resolve_amp, resolve_device
    from .engine.loop import BACKBONE_NAME, evaluate

    adapter = Path(args.adapter)
    if not (adapter / "adapter_config.json").is_file() and (adapter / "adapter" / "adapter_config.json").is_file():
        adapter = adapter / "adapter"
    adapter_config = read_adapter_config(adapter)
    backbone = _read_json(adapter / BACKBONE_NAME) or {}
    run = _read_json(adapter.parent / "run.json")
    given = vars(args)
    # data settings default to the run's own (run.json beside the adapter) unless --data is given
    run_data = (run.get("config") or {}).get("data", {}) if isinstance(run, dict) and "data" not in given else {}

    def pick(key: str, stored: Any, fallback: Any = None) -> Any:
        return given[key] if key in given else (stored if stored is not None else fallback)

    name = pick("model", backbone.get("model"))
    if name is None:
        raise ConfigError(f"option '--model': required, {adapter / BACKBONE_NAME} is missing (give the backbone's timm name)")
    kwargs = dict(backbone.get("kwargs") or {})
    if "model_kwargs" in given:
        kwargs.update(parse_model_kwargs(given["model_kwargs"], "--model-kwargs"))
    pretrained = bool(pick("pretrained", backbone.get("pretrained"), False))
    weights = given.get("weights") if "pretrained" in given else pick("weights", backbone.get("weights"))
    random_init = bool(pick("random_init", backbone.get("random_init"), False)) and not (weights or pretrained)
    model_cfg = ModelConfig(name=name, weights=weights, weights_sha256=given.get("weights_sha256"), kwargs=kwargs, drop_path=0.0,
                            pretrained=pretrained, random_init=random_init)
    data = {k: pick(k, run_data.get(field), default) for k, field, default in (
        ("data_kind", "kind", "vtab"), ("data", "root", None), ("task", "task", None), ("split", "split", "final"),
        ("shots", "shots", None), ("fewshot_seed", "fewshot_seed", None), ("num_classes", "num_classes", None),
        ("image_size", "image_size", backbone.get("img_size") or 224),
        ("normalize", "normalize", backbone.get("normalize") or "none"),
        ("workers", "workers", 0), ("check_images", "check_images", False))}
    if "check_images" not in given:
        data["check_images"] = False
    if data["data"] is None:
        raise ConfigError("option '--data': required (the data root; no run.json beside the adapter to take it from)")
    seed = pick("seed", backbone.get("seed"), 42)
    device = resolve_device(args.device)
    use_amp = resolve_amp(args.amp, device).enabled

    if backbone.get("weights_sha256") and weights and Path(weights).is_file():
        from .models import sha256_file

        if sha256_file(weights) != backbone["weights_sha256"]:
            warnings.warn(f"{weights}: sha256 differs from the weights the adapter was trained on "
                          f"({backbone['weights_sha256']}); accuracy will not match the run", stacklevel=1)

    trained = {"image size": backbone.get("img_size"), "patch size": (backbone.get("kwargs") or {}).get("patch_size")}
    now = {"image size": data["image_size"], "patch size": kwargs.get("patch_size")}
    changed = [f"{k} {trained[k]} → {now[k]}" for k in trained if trained[k] is not None and trained[k] != now[k]]
    if changed:
        warnings.warn(f"{adapter / BACKBONE_NAME}: the adapter was trained at another input geometry ({'; '.join(changed)}); "
                      "accuracy will not match the run", stacklevel=1)
    task = load_task(data["data_kind"], data["data"], data["task"], split=data["split"], shots=data["shots"],
                     seed=data["fewshot_seed"], image_size=data["image_size"], normalize=data["normalize"],
                     num_classes=data["num_classes"], check_images=data["check_images"])
    classes = adapter_config.get("num_classes")
    if classes is not None and classes != task.num_classes:
        raise DataError(f"{adapter / 'adapter_config.json'}: the adapter's classifier has {classes} classes, but "
                        f"{data['data_kind']} task '{task.name}' has {task.num_classes}")
    model = build_backbone(model_cfg, data["image_size"], seed)
    new_classifier(model, classes if classes is not None else task.num_classes)
    load_adapter(model, adapter)
    model.to(device)
    show = not args.quiet and not args.json and sys.stderr.isatty()
    with torch.no_grad():
        accuracy = evaluate(model, task.eval, args.batch_size, device=device, workers=data["workers"], amp=use_amp,
                            progress=show)
    result = {"accuracy": accuracy, "eval_images": len(task.eval), "task": task.name, "split": data["split"],
              "eval_split": task.manifest.get("eval_split"), "manifest_hash": task.manifest_hash,
              "adapter": str(adapter), "method": adapter_config.get("method"), "model": name}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{task.name} ({result['eval_split']}, {len(task.eval)} images): accuracy {accuracy:.2f}%  "
              f"[{adapter_config.get('method')} adapter {adapter}]")
    return 0


def _cmd_verify(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .data import format_verify_report, verify

    report = verify(args.kind, args.root, args.task, shots=args.shots, seed=args.fewshot_seed,
                    check_images=args.check_images, allow_outside_root=args.allow_outside_root)
    print(json.dumps(report, indent=2) if args.json else format_verify_report(report))
    return 0 if report["ok"] else EXIT_FAILURE


def _cmd_make_mini_vtab(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .data.minivtab import build_mini_vtab, format_registry
    from .data.tasks import MINI_VTAB_TASKS

    unknown = [t for t in args.tasks or () if t not in MINI_VTAB_TASKS]
    if unknown:
        raise ConfigError(f"option '--tasks': unknown mini-VTAB task {unknown[0]!r}; expected some of "
                          f"{', '.join(MINI_VTAB_TASKS)}")
    registry = build_mini_vtab(args.out, args.seed, fmnist=args.fmnist, tasks=args.tasks,
                               log=lambda line: print(line, file=sys.stderr))
    print(format_registry(registry, args.out))
    return 0


def _format_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


DEFAULT_TUNE_GRID = {"scale": [0.01, 0.1, 1, 10]}


def _default_tasks(kind: str, root: str | None) -> list[str]:
    from .data import FEWSHOT_DATASETS, VTAB_TASKS

    if kind == "vtab":
        return list(VTAB_TASKS)
    if kind == "fewshot":
        return list(FEWSHOT_DATASETS)
    if root is None or not Path(root).is_dir():
        raise ConfigError("option '--tasks': give the task folders, or --data ROOT holding them")
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and (p / "train").is_dir())


def _cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .bench.executors import make_executor
    from .bench.sweep import load_presets, parse_grid, plan, run_cells, tune_then_final

    base = _config_from_args(argv, BENCH_KEYS)
    if not base.out:
        raise ConfigError("option '--out': required (the sweep folder)")
    out_root, base = Path(base.out), base.replace(out=None, data={"kind": args.kind})
    if base.data.cache_dir is None:  # cells of a sweep share one cache folder (not part of a cell's identity)
        from .engine.build import CACHE_DIR_NAME

        base = base.replace(data={"cache_dir": str(out_root / CACHE_DIR_NAME)})
    base.validate()
    tasks = args.tasks or _default_tasks(args.kind, base.data.root)
    grid = parse_grid(args.grid)
    presets = {} if args.no_presets else (load_presets(args.presets) if args.presets or args.kind == "vtab" else {})
    shots = args.shots_list if args.kind == "fewshot" else [None]
    list_seeds = args.fewshot_seeds if args.kind == "fewshot" else [None]
    options = {m: dict(base.method.options) for m in args.methods} if base.method.options else None
    if options:  # --opt applies to every method that has the option
        from .bench.sweep import method_accepts

        options = {m: {k: v for k, v in o.items() if method_accepts(m, k)} for m, o in options.items()}
    if args.tune:
        for key in args.tune:
            if key not in grid:
                if key not in DEFAULT_TUNE_GRID:
                    raise ConfigError(f"option '--tune': no grid for {key!r}; give --grid {key}=V1,V2,...")
                grid[key] = DEFAULT_TUNE_GRID[key]
    split = "tune" if args.tune else "final"
    cells = plan(args.kind, tasks, args.methods, args.seeds, grid, presets, options, shots, list_seeds, split)
    devices = _devices(base, args.parallel) if args.executor == "local" else None
    with make_executor(args.executor, workers=args.parallel, devices=devices, address=args.address,
                       gpus_per_cell=args.gpus_per_cell, cpus_per_cell=args.cpus_per_cell) as executor:
        if args.tune:
            result = tune_then_final(base, out_root, cells, retries=args.retries, executor=executor)
        else:
            result = run_cells(cells, base, out_root, retries=args.retries, executor=executor)
    print(result.summary())
    print(f"tables: heartlora report {out_root}")
    return 0 if result.ok else EXIT_FAILURE


def _devices(base: RunConfig, parallel: int) -> list[str]:
    import torch

    if base.device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [base.device if base.device != "auto" else "cpu"]


def _cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .bench.report import write_report

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


def _cmd_analyze(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .bench import analyze

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
        base = _config_from_args(argv, ANALYZE_KEYS)
        if not base.out:
            raise ConfigError("option '--out': required")
        out, base = Path(base.out), base.replace(out=None)
        if base.data.cache_dir is None:  # the analysis' runs share one cache folder
            from .engine.build import CACHE_DIR_NAME

            base = base.replace(data={"cache_dir": str(out / CACHE_DIR_NAME)})
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


def _cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .demo import DEMO_METHODS, run_demo

    methods = args.methods or DEMO_METHODS
    if args.suite == "digits":
        for option, value in (("--seeds", args.seeds), ("--tasks", args.tasks), ("--parallel", args.parallel),
                              ("--fmnist", args.fmnist)):
            if value is not None:
                raise ConfigError(f"option '{option}': only for --suite mini-vtab (the digits demo takes --seed)")
        run_demo(args.out or "runs/demo", epochs=args.epochs or 10, methods=methods,
                 seed=42 if args.seed is None else args.seed, quiet=args.quiet)
        return 0
    from .data.tasks import MINI_VTAB_TASKS
    from .demo_suite import SUITE_EPOCHS, SUITE_PARALLEL, SUITE_SEEDS, SUITE_TASKS, run_suite
    from .methods.base import get_method

    if args.seed is not None:
        raise ConfigError("option '--seed': the mini-vtab suite takes --seeds (a comma list)")
    tasks = args.tasks or list(SUITE_TASKS)
    unknown = [t for t in tasks if t not in MINI_VTAB_TASKS]
    if unknown:
        raise ConfigError(f"option '--tasks': unknown mini-VTAB task {unknown[0]!r}; expected some of "
                          f"{', '.join(MINI_VTAB_TASKS)}")
    for method in methods:
        try:
            get_method(method)
        except ValueError as err:
            raise ConfigError(f"option '--methods': {err}") from None
    run_suite(args.out or "runs/demo-mini-vtab", epochs=args.epochs or SUITE_EPOCHS, methods=methods,
              seeds=args.seeds or list(SUITE_SEEDS), tasks=tasks, parallel=args.parallel or SUITE_PARALLEL,
              data_seed=args.data_seed, fmnist=args.fmnist)
    return 0


def _cmd_methods(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .methods.factory import methods

    table = methods()
    if args.json:
        print(json.dumps(table, indent=2, default=list))
        return 0
    width = max(len(name) for name in table) if table else 6
    for name, info in table.items():
        merge = "mergeable" if info.get("mergeable") else "not mergeable"
        print(f"{name:<{width}}  {info.get('summary', '')} ({merge})")
        options = info.get("options") or {}
        if options:
            print(f"{'':<{width}}  options: " + "  ".join(f"{k}={_format_value(v)}" for k, v in options.items()))
        if info.get("paper"):
            print(f"{'':<{width}}  paper: {info['paper']}")
    return 0


# ------------------------------------------------------------------ export / import (interop)
def _interop_parsers(sub) -> None:
    export = sub.add_parser(
        "export", formatter_class=_Formatter, help="an adapter as a plain timm checkpoint or a PEFT adapter",
        description="--merged OUT.safetensors: fold the adapter into its backbone and write a plain timm checkpoint "
                    "(keys exactly timm's) plus OUT.json (timm name, create_model arguments, classes, the "
                    "pretrained_cfg_overlay timm's loader takes). --to peft OUT/: write adapter_model.safetensors + "
                    "adapter_config.json that peft.PeftModel.from_pretrained(timm_model, OUT) loads (lora, bilora, "
                    "heart-lora, heart-lora-layer).")
    export.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (RUN/adapter; a run folder also works)")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--merged", metavar="OUT.safetensors", help="merged plain timm checkpoint (+ OUT.json beside it)")
    what.add_argument("--to", choices=("peft",), help="adapter format to write into the folder OUT")
    export.add_argument("out", nargs="?", metavar="OUT", help="output folder of --to peft")
    export.add_argument("--weights", metavar="FILE", default=None,
                        help="the backbone weights file, if it moved (it must have the sha256 in backbone.json)")
    export.add_argument("--overwrite", action="store_true", help="replace existing output files")
    export.set_defaults(func=_cmd_export)

    imp = sub.add_parser(
        "import", formatter_class=_Formatter, help="a PEFT LoRA adapter as a heartlora adapter",
        description="Turn a PEFT LoRA adapter trained on a timm ViT/Swin's qkv into a heartlora adapter folder "
                    "(adapter.safetensors, adapter_config.json, backbone.json) with identical outputs; `heartlora "
                    "eval` and `heartlora analyze responsiveness` then take it. Backbone settings default to a "
                    "backbone.json in DIR (heartlora's own exports) or the adapter's base_model_name_or_path.")
    imp.add_argument("--from", dest="source_format", required=True, choices=("peft",), help="format of DIR")
    imp.add_argument("source", metavar="DIR", help="the PEFT adapter folder (adapter_config.json, adapter_model.safetensors)")
    imp.add_argument("--out", required=True, metavar="ADAPTER_DIR", help="heartlora adapter folder to write (new)")
    g = _model_args(imp, False, defaults=False)
    g.add_argument("--image-size", type=_positive_int, default=None, help="input size the adapter was trained at "
                   "(default: backbone.json in DIR, else the model's)")
    g.add_argument("--normalize", choices=("none", "imagenet", "inception"), default=None,
                   help="input normalisation of training (default: backbone.json in DIR, else from the timm model's "
                        "pretrained mean/std)")
    imp.set_defaults(func=_cmd_import)


def _refuse_existing_outputs(paths: list[Path], overwrite: bool, option: str) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"option '{option}': {existing[0]} already exists; choose another path or pass --overwrite")


def _cmd_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .adapters_io import read_adapter_config
    from .interop.folder import load_adapter_folder, resolve_adapter_dir
    from .methods.base import get_method

    adapter = resolve_adapter_dir(args.adapter)
    method = read_adapter_config(adapter)["method"]
    if args.merged:
        from .interop.timm_io import export_merged, merged_json_path

        out = Path(args.merged)
        if args.out is not None:
            raise ConfigError(f"option '--merged' writes {out} and {merged_json_path(out)}; drop the extra {args.out!r}")
        if out.suffix != ".safetensors":
            raise ConfigError(f"option '--merged': {out} must end in .safetensors")
        try:
            mergeable = get_method(method).mergeable
        except ValueError as err:
            raise ValueError(f"{adapter / 'adapter_config.json'}: {err}") from None
        if not mergeable:
            raise ConfigError(f"option '--merged': method '{method}' cannot be merged into the backbone (it adds "
                              "computation a plain timm model has no weights for); use it with heartlora itself")
        _refuse_existing_outputs([out, merged_json_path(out)], args.overwrite, "--merged")
        model, backbone = load_adapter_folder(adapter, weights=args.weights)
        out.parent.mkdir(parents=True, exist_ok=True)
        written = export_merged(model, out, name=backbone["model"], kwargs=backbone.get("kwargs"),
                                img_size=backbone["img_size"], normalize=backbone.get("normalize") or "none",
                                class_names=backbone.get("class_names"), source=str(adapter))
        print(f"wrote {written[0]} (plain timm state dict, method '{method}' merged) and {written[1]}")
        return 0
    from .interop.peft_io import PEFT_CONFIG, PEFT_METHODS, PEFT_WEIGHTS, to_peft

    if args.out is None:
        raise ConfigError("option '--to peft': give the output folder OUT (heartlora export --adapter DIR --to peft OUT)")
    if method not in PEFT_METHODS:
        raise ConfigError(f"option '--to peft': method '{method}' has no PEFT LoRA counterpart; the PEFT export "
                          f"takes {', '.join(PEFT_METHODS)}")
    out = Path(args.out)
    _refuse_existing_outputs([out / PEFT_WEIGHTS, out / PEFT_CONFIG], args.overwrite, "OUT")
    model, backbone = load_adapter_folder(adapter, backbone_weights=False)
    try:
        to_peft(model, out, base_model_name=backbone["model"], backbone=backbone, overwrite=True)
    except ImportError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {out / PEFT_WEIGHTS} and {out / PEFT_CONFIG} (PEFT LoRA on qkv, from method '{method}')")
    return 0


def _timm_name(hub_name: Any) -> str | None:
    """timm name of a PEFT ``base_model_name_or_path`` (``timm/NAME``, ``hf-hub:timm/NAME`` or NAME)."""
    if not isinstance(hub_name, str) or not hub_name:
        return None
    return hub_name.removeprefix("hf-hub:").removeprefix("timm/")


def _cmd_import(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .data.transforms import NORMALIZATIONS
    from .engine.build import new_classifier
    from .interop.peft_io import import_peft, read_peft
    from .models import create_backbone, names_pretrained_weights, sha256_file

    source, out = Path(args.source), Path(args.out)
    given = {k: v for k, v in vars(args).items() if v is not None}
    if (out / "adapter_config.json").exists() or (out / "backbone.json").exists():
        raise ConfigError(f"option '--out': {out} already holds an adapter; choose a new folder")
    stored = _read_json(source / "backbone.json") or {}
    peft_config, tensors, _ = read_peft(source)
    name = given.get("model") or stored.get("model") or _timm_name(peft_config.get("base_model_name_or_path"))
    if not name:
        raise ConfigError("option '--model': required (the timm name of the backbone the PEFT adapter was trained on; "
                          "its adapter_config.json names none)")
    kwargs = dict(stored.get("kwargs") or {}) if "model" not in given or given["model"] == stored.get("model") else {}
    kwargs.update(parse_model_kwargs(given.get("model_kwargs"), "--model-kwargs"))
    pretrained = bool(given.get("pretrained", stored.get("pretrained", False)))
    weights = given.get("weights") if ("pretrained" in given or "weights" in given) else stored.get("weights")
    random_init = bool(given.get("random_init", stored.get("random_init", False))) and not (weights or pretrained)
    if not (weights or pretrained or random_init) and names_pretrained_weights(name):
        raise ConfigError(f"option '--model': '{name}' names timm's pretrained weights; say which weights the PEFT "
                          "adapter was trained on: --pretrained (timm's, from the local cache), --weights FILE, or "
                          "--random-init")
    img_size = given.get("image_size") or kwargs.pop("img_size", None) or stored.get("img_size")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # built for its shapes only; the weights are recorded, not needed
        model = create_backbone(name, random_init=True, num_classes=0, drop_path_rate=0.0,
                                **({"img_size": img_size} if img_size else {}), **kwargs)
    head = (model.pretrained_cfg or {}).get("classifier")
    if f"{head}.weight" not in tensors:
        raise ValueError(f"{source}: the PEFT adapter stores no classifier ('{head}' in modules_to_save); heartlora "
                         f"adapters carry their classifier — save the PEFT adapter with modules_to_save=['{head}']")
    new_classifier(model, tensors[f"{head}.weight"].shape[0])
    built_size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm ViT / Swin
    img_size = img_size or (built_size[0] if built_size else int((model.pretrained_cfg or {}).get("input_size", [224])[-1]))
    mean = tuple(round(v, 4) for v in (model.pretrained_cfg or {}).get("mean", ()))
    inferred = next((k for k, v in NORMALIZATIONS.items() if v and tuple(round(x, 4) for x in v[0]) == mean), "none")
    backbone = {
        "model": name, "weights": weights,
        "weights_sha256": sha256_file(weights) if weights and Path(weights).is_file() else stored.get("weights_sha256"),
        "kwargs": kwargs, "img_size": int(img_size), "seed": stored.get("seed", 42), "drop_path": stored.get("drop_path", 0.1),
        "normalize": given.get("normalize") or stored.get("normalize") or inferred,
        "pretrained": pretrained, "random_init": random_init, "class_names": stored.get("class_names"),
        "imported_from": {"format": "peft", "path": str(source)},
    }
    import_peft(source, out, model, backbone)
    from .adapters_io import read_adapter_config

    method = read_adapter_config(out)["method"]
    print(f"wrote {out} (heartlora '{method}' adapter from the PEFT adapter {source})")
    return 0


# ----------------------------------------------------------------------------------- main
def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit with code 2 here
    from .data import DataError
    from .fsio import OutputError
    from .models import WeightsError

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args, argv) or 0)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, WeightsError, OutputError, FileNotFoundError, NotADirectoryError, PermissionError,
            ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (a run continues with `heartlora train --out DIR --resume`; a sweep with the "
              "same `heartlora bench` command)", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
