"""``heartlora data verify``, ``heartlora data prepare vtab`` and ``heartlora data make-mini-vtab``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..data.loader import KINDS
from ..data.vtab_prepare import IMAGE_FORMATS
from .common import EXIT_FAILURE, ConfigError, Formatter, csv_list, nonneg_int, positive_int


def add_parsers(sub, suppress: bool) -> None:
    data = sub.add_parser("data", formatter_class=Formatter, help="data tools", description="Data tools.")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    verify = data_sub.add_parser("verify", formatter_class=Formatter, help="check a task's data and print its manifest hash",
                                 description="Split sizes, label range vs class count, unreadable images, duplicates, "
                                             "and the manifest hash that runs record. Exit code 1 if there are problems.")
    verify.add_argument("root", metavar="ROOT", help="data root (or the task folder itself)")
    verify.add_argument("--kind", default="vtab", choices=KINDS, help="data layout")
    verify.add_argument("--task", default=None, help="task / dataset name under ROOT")
    verify.add_argument("--shots", default=None, type=positive_int, help="few-shot K (with --fewshot-seed)")
    verify.add_argument("--fewshot-seed", default=None, type=nonneg_int, help="few-shot list seed S")
    verify.add_argument("--check-images", default=True, action=argparse.BooleanOptionalAction, help="decode every image")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--allow-outside-root", action="store_true",
                        help="accept list lines whose image path is absolute or leaves the data folder via '..'")
    verify.set_defaults(func=cmd_verify)

    prepare = data_sub.add_parser("prepare", formatter_class=Formatter, help="build a benchmark's data from its source",
                                  description="Build a benchmark's task folders from the datasets' source.")
    prepare_sub = prepare.add_subparsers(dest="source", metavar="BENCHMARK", required=True)
    vtab = prepare_sub.add_parser(
        "vtab", formatter_class=Formatter, help="build VTAB-1K from TensorFlow Datasets (pip install heartlora[vtab-data])",
        description="Write the 19 VTAB-1K tasks into ROOT in the layout heartlora and NOAH read "
                    "(images/{train800,val200,test}/, train800.txt, val200.txt, train800val200.txt, test.txt, "
                    "classes.txt, vtab_build.json), with the benchmark's own TFDS builders, versions, split slices and "
                    "label rules. Each task is written atomically; a rerun skips finished tasks and resumes the rest. "
                    "Tasks whose files must be downloaded by hand (RESISC45, diabetic retinopathy) say what to put "
                    "where; the others still build. Exit code 1 when some task was not built.")
    vtab.add_argument("--out", required=True, metavar="ROOT", help="data root to write (one folder per task)")
    vtab.add_argument("--tasks", type=csv_list, default=None,
                      help="comma list of tasks: names, aliases or the groups natural / specialized / structured "
                           "(default: all 19)")
    vtab.add_argument("--tfds-dir", default=None, metavar="DIR", help="TensorFlow Datasets data folder (default: TFDS's own)")
    vtab.add_argument("--manual-dir", default=None, metavar="DIR",
                      help="folder holding manual downloads: DIR/resisc45/…, DIR/diabetic_retinopathy_detection/…")
    vtab.add_argument("--format", choices=tuple(IMAGE_FORMATS), default="png",
                      help="png: lossless, the same pixels as the TFDS tensor pipeline; jpeg: byte-compatible with "
                           "NOAH-style JPEG copies (lossy; changes results)")
    vtab.set_defaults(func=cmd_prepare_vtab)

    mini = data_sub.add_parser(
        "make-mini-vtab", formatter_class=Formatter, help="build the mini-VTAB (real images, offline) into OUT",
        description="Write the mini-VTAB into OUT in the VTAB-1K layout: natural: digits (scikit-learn's "
                    "handwritten digits); structured: fmnist_orientation, fmnist_position, fmnist_count, "
                    "fmnist_scale (Fashion-MNIST TEST images only, rotated / placed / counted / scaled on a 32x32 "
                    "canvas). 32x32 PNGs, 800 train800 / 200 val200 / 800 test images per task (digits: 797 test), "
                    "and OUT/mini_vtab.json (groups, classes, manifest hashes). The same --seed writes "
                    "byte-identical files; rerunning on a finished build does nothing.")
    mini.add_argument("out", metavar="OUT", help="data root to write (the task folders go directly below it)")
    mini.add_argument("--seed", type=nonneg_int, default=0, help="data seed (splits, labels, placements)")
    mini.add_argument("--fmnist", default=None, metavar="DIR",
                      help="folder holding Fashion-MNIST's t10k-images-idx3-ubyte[.gz] (default: Debian's "
                           "/usr/share/datasets/fashion-mnist, from `apt-get install dataset-fashion-mnist`)")
    mini.add_argument("--tasks", type=csv_list, default=None, help="comma list of tasks (default: all five)")
    mini.set_defaults(func=cmd_make_mini_vtab)


def cmd_verify(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..data.verify import format_verify_report, verify

    report = verify(args.kind, args.root, args.task, shots=args.shots, seed=args.fewshot_seed,
                    check_images=args.check_images, allow_outside_root=args.allow_outside_root)
    print(json.dumps(report, indent=2) if args.json else format_verify_report(report))
    return 0 if report["ok"] else EXIT_FAILURE


def cmd_prepare_vtab(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..data.vtab_prepare import run_prepare_vtab

    summary, status = run_prepare_vtab(args.out, args.tasks, args.tfds_dir, args.manual_dir, args.format,
                                       log=lambda line: print(line, file=sys.stderr))
    print(summary)
    return status


def check_mini_vtab_tasks(tasks: Sequence[str] | None) -> None:
    """Usage error for a name that is not a mini-VTAB task."""
    from ..data.tasks import MINI_VTAB_TASKS

    unknown = [t for t in tasks or () if t not in MINI_VTAB_TASKS]
    if unknown:
        raise ConfigError(f"option '--tasks': unknown mini-VTAB task {unknown[0]!r}; expected some of "
                          f"{', '.join(MINI_VTAB_TASKS)}")


def cmd_make_mini_vtab(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..data.minivtab import build_mini_vtab, format_registry

    check_mini_vtab_tasks(args.tasks)
    registry = build_mini_vtab(args.out, args.seed, fmnist=args.fmnist, tasks=args.tasks,
                               log=lambda line: print(line, file=sys.stderr))
    print(format_registry(registry, args.out))
    return 0
