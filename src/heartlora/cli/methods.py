"""``heartlora methods [NAME]``: the registered methods, their options and capabilities."""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from .common import ConfigError, Formatter

_CAPABILITIES = (("mergeable", "mergeable"), ("peft_exportable", "PEFT export"), ("servable", "mixed-batch serving"),
                 ("selects_heads", "selects heads"))


def add_parsers(sub, suppress: bool) -> None:
    methods = sub.add_parser("methods", formatter_class=Formatter, help="list registered methods and their options",
                             description="Registered methods with their capabilities; with NAME, every option of that "
                                         "method: name, type, default and meaning.")
    methods.add_argument("name", nargs="?", metavar="NAME", help="one method: its options in full")
    methods.add_argument("--json", action="store_true", help="print JSON")
    methods.set_defaults(func=cmd_methods)


def _format_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _capabilities(info: dict) -> str:
    return ", ".join(text for key, text in _CAPABILITIES if info.get(key)) or "none declared"


def cmd_methods(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..methods.factory import methods

    table = methods()
    if args.name is not None:
        if args.name not in table:
            raise ConfigError(f"unknown method '{args.name}'; registered methods: {', '.join(sorted(table))}")
        table = {args.name: table[args.name]}
    if args.json:
        print(json.dumps(table, indent=2, default=list))
        return 0
    if args.name is not None:
        info = table[args.name]
        print(f"{args.name}: {info['summary']}")
        print(f"source: {info['paper']}")
        print(f"capabilities: {_capabilities(info)}")
        rows = info["option_docs"]
        if not rows:
            print("options: none")
        for row in rows:
            print(f"  {row['name']} ({row['type']}, default {_format_value(row['default'])})\n      {row['help']}")
        return 0
    width = max(len(name) for name in table) if table else 6
    for name, info in table.items():
        print(f"{name:<{width}}  {info.get('summary', '')} ({_capabilities(info)})")
        options = info.get("options") or {}
        if options:
            print(f"{'':<{width}}  options: " + "  ".join(f"{k}={_format_value(v)}" for k, v in options.items()))
    print("`heartlora methods NAME` shows each option's type and meaning.")
    return 0
