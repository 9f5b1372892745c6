"""``heartlora export`` and ``heartlora import``: adapters out to plain timm / PEFT, PEFT adapters in."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..data.transforms import NORMALIZE_CHOICES
from ..methods.base import registered
from .common import EXIT_FAILURE, ConfigError, Formatter, fail, model_args, positive_int
from .train import backbone_overrides


def add_parsers(sub, suppress: bool) -> None:
    exportable = ", ".join(sorted(name for name, spec in registered().items() if spec.peft_exportable))
    export = sub.add_parser(
        "export", formatter_class=Formatter, help="an adapter as a plain timm checkpoint or a PEFT adapter",
        description="--merged OUT.safetensors: fold the adapter into its backbone and write a plain timm checkpoint "
                    "(keys exactly timm's) plus OUT.json (timm name, create_model arguments, classes, the "
                    "pretrained_cfg_overlay timm's loader takes). --to peft OUT/: write adapter_model.safetensors + "
                    "adapter_config.json that peft.PeftModel.from_pretrained(timm_model, OUT) loads "
                    f"({exportable}).")
    export.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (RUN/adapter; a run folder also works)")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--merged", metavar="OUT.safetensors", help="merged plain timm checkpoint (+ OUT.json beside it)")
    what.add_argument("--to", choices=("peft",), help="adapter format to write into the folder OUT")
    export.add_argument("out", nargs="?", metavar="OUT", help="output folder of --to peft")
    export.add_argument("--weights", metavar="FILE", default=None,
                        help="the backbone weights file, if it moved (it must have the sha256 in backbone.json)")
    export.add_argument("--overwrite", action="store_true", help="replace existing output files")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser(
        "import", formatter_class=Formatter, help="a PEFT LoRA adapter as a heartlora adapter",
        description="Turn a PEFT LoRA adapter trained on a timm ViT/Swin's qkv into a heartlora adapter folder "
                    "(adapter.safetensors, adapter_config.json, backbone.json) with identical outputs; `heartlora "
                    "eval` and `heartlora analyze responsiveness` then take it. Backbone settings default to a "
                    "backbone.json in DIR (heartlora's own exports) or the adapter's base_model_name_or_path.")
    imp.add_argument("--from", dest="source_format", required=True, choices=("peft",), help="format of DIR")
    imp.add_argument("source", metavar="DIR", help="the PEFT adapter folder (adapter_config.json, adapter_model.safetensors)")
    imp.add_argument("--out", required=True, metavar="ADAPTER_DIR", help="heartlora adapter folder to write (new)")
    g = model_args(imp, False, defaults=False)
    g.add_argument("--image-size", type=positive_int, default=None, help="input size the adapter was trained at "
                   "(default: backbone.json in DIR, else the model's)")
    g.add_argument("--normalize", choices=NORMALIZE_CHOICES, default=None,
                   help="input normalisation of training (default: backbone.json in DIR, else from the timm model's "
                        "pretrained mean/std)")
    imp.set_defaults(func=cmd_import)


def cmd_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.merged:
        from ..interop.timm_io import export_adapter_merged, merged_json_path

        if args.out is not None:
            raise ConfigError(f"option '--merged' writes {args.merged} and {merged_json_path(args.merged)}; "
                              f"drop the extra {args.out!r}")
        checkpoint, description, method = export_adapter_merged(args.adapter, args.merged, weights=args.weights,
                                                                overwrite=args.overwrite)
        print(f"wrote {checkpoint} (plain timm state dict, method '{method}' merged) and {description}")
        return 0
    from ..interop.peft_io import PEFT_CONFIG, PEFT_WEIGHTS, export_adapter_peft

    if args.out is None:
        raise ConfigError("option '--to peft': give the output folder OUT (heartlora export --adapter DIR --to peft OUT)")
    if args.weights is not None:
        raise ConfigError("option '--weights': the PEFT export reads only the adapter's own tensors; leave it out")
    try:
        out, method = export_adapter_peft(args.adapter, args.out, overwrite=args.overwrite)
    except ImportError as err:
        fail(str(err))
        return EXIT_FAILURE
    print(f"wrote {out / PEFT_WEIGHTS} and {out / PEFT_CONFIG} (PEFT LoRA on qkv, from method '{method}')")
    return 0


def cmd_import(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import dataclasses

    from ..interop.peft_io import import_peft_folder

    given = {k: v for k, v in vars(args).items() if v is not None}
    overrides = dataclasses.replace(backbone_overrides(given), img_size=args.image_size)
    out, method = import_peft_folder(args.source, args.out, overrides, normalize=args.normalize)
    print(f"wrote {out} (heartlora '{method}' adapter from the PEFT adapter {args.source})")
    return 0
