"""The ``heartlora`` command line: a thin entry point over one module per command group —
``train`` / ``eval`` (:mod:`.train`), ``data`` (:mod:`.data`), ``bench`` / ``report`` / ``analyze``
(:mod:`.bench`), ``predict`` / ``serve`` (:mod:`.serving`), ``export`` / ``import`` (:mod:`.interop`),
``demo`` (:mod:`.demo`) and ``methods`` (:mod:`.methods`). Commands parse, call the library and print.

Settings come from (lowest to highest precedence) the ``paper`` recipe defaults, ``--preset``,
``--config FILE.yaml`` (keys = the long option names, or nested model/method/data/schedule
sections as in ``run.json``), then the flags given on the command line.

Exit codes: 0 success; 1 bad data, weights, adapter or files (the message names the file and
line); 2 usage errors (unknown flag, method or option, invalid value); 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from . import bench, data, demo, interop, methods, serving, train
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, PROG, ConfigError, Formatter, fail

#: The command groups, in the order ``heartlora --help`` lists them.
COMMAND_MODULES = (train, data, bench, serving, interop, demo, methods)


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The whole command line. ``suppress``: every default of the run options is SUPPRESSed, so
    a parse yields only the options actually typed."""
    from ..version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=Formatter,
        description="Head-level LoRA (Heart-LoRA) and PETL baselines for timm Vision Transformers.",
        epilog="Run `heartlora COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub, suppress)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # usage errors exit with code 2 here
    from ..data.errors import DataError
    from ..fsio import OutputError
    from ..models import WeightsError

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args, argv) or 0)
    except ConfigError as err:
        fail(str(err))
        return EXIT_USAGE
    except (DataError, WeightsError, OutputError, FileNotFoundError, NotADirectoryError, PermissionError,
            ValueError) as err:
        fail(str(err))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (a run continues with `heartlora train --out DIR --resume`; a sweep with the "
              "same `heartlora bench` command)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.showwarning = previous


__all__ = ["COMMAND_MODULES", "build_parser", "main"]
