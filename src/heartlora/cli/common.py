"""What every command module shares: exit codes, argument types, the option groups of a run
(backbone, data, method, schedule, run) and turning the typed options into a run's settings."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Sequence

from ..config import CLASSIFIER_INITS, PRESETS, ConfigError, DataConfig, ModelConfig, RunConfig, ScheduleConfig
from ..data.cache import CACHE_MODES
from ..data.fingerprint import FINGERPRINT_MODES
from ..data.loader import KINDS, SPLITS
from ..data.transforms import NORMALIZE_CHOICES
from ..precision import AMP_CHOICES

PROG = "heartlora"
EXIT_FAILURE = 1  # bad data, weights, adapter or files (the message names the file and line)
EXIT_USAGE = 2  # unknown flag, method or option, invalid value
EXIT_INTERRUPTED = 130


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def fail(message: str) -> None:
    """Print one error line the way every command does."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------ argument types
def key_value(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def int_at_least(minimum: int):
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


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def head_count(text: str) -> int | str:
    """argparse type: a head count >= 0, or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    return nonneg_int(text)


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def byte_size(text: str) -> int:
    """argparse type: a positive size such as 10MB, 512KiB or 1048576."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS or float(match.group(1)) * _BYTE_UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 10MB, 512KiB or 1048576, got {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def add(group, suppress: bool, *flags: str, default: Any = None, **kwargs: Any) -> None:
    """add_argument whose default is shown in --help, or SUPPRESSed to detect explicit flags."""
    group.add_argument(*flags, default=argparse.SUPPRESS if suppress else default, **kwargs)


# ------------------------------------------------------------------------------ option groups
def model_args(parser, suppress: bool, defaults: bool = True):
    m = ModelConfig()
    g = parser.add_argument_group("backbone")
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    add(g, suppress, "--model", default=d(m.name), metavar="NAME", help="timm model name (never downloaded)")
    add(g, suppress, "--weights", default=d(m.weights), metavar="FILE",
        help="local backbone weights: .npz (Google ViT, e.g. ViT-B_16.npz), .pth, .bin or .safetensors")
    add(g, suppress, "--weights-sha256", default=d(m.weights_sha256), metavar="HEX", help="expected sha256 of --weights")
    add(g, suppress, "--pretrained", default=d(m.pretrained), action="store_true",
        help="timm's own pretrained weights for the name's tag (e.g. vit_base_patch16_224.augreg_in21k), read from "
             "the local Hugging Face cache only (offline; never downloaded)")
    add(g, suppress, "--random-init", default=d(m.random_init), action="store_true",
        help="random weights although the name has a pretrained tag (otherwise an error)")
    add(g, suppress, "--model-kwargs", default=d([]), metavar="KEY=VALUE", nargs="+", action="extend", type=key_value,
        help="extra timm.create_model arguments, e.g. patch_size=8 depth=2 num_heads=4")
    return g


def data_args(parser, suppress: bool, defaults: bool = True, loader: bool = True) -> None:
    c = DataConfig()
    g = parser.add_argument_group("data")
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    add(g, suppress, "--data-kind", default=d(c.kind), choices=KINDS, help="data layout")
    add(g, suppress, "--data", default=d(c.root), metavar="ROOT", help="data root folder")
    add(g, suppress, "--task", default=d(c.task),
        help="task / dataset name under ROOT (any alias; leave out when ROOT is the task)")
    add(g, suppress, "--split", default=d(c.split), choices=SPLITS,
        help="final: train800val200 -> test; tune: train800 -> val200 (paper: an alias of final)")
    add(g, suppress, "--shots", default=d(c.shots), type=positive_int, help="few-shot K (fewshot kind)")
    add(g, suppress, "--fewshot-seed", default=d(c.fewshot_seed), type=nonneg_int, help="few-shot list seed S (fewshot kind)")
    add(g, suppress, "--num-classes", default=d(c.num_classes), type=positive_int, help="expected class count (checked)")
    add(g, suppress, "--image-size", default=d(c.image_size), type=positive_int, help="Resize((S,S), bicubic)")
    add(g, suppress, "--normalize", default=d(c.normalize), choices=NORMALIZE_CHOICES, help="input normalisation")
    if loader:
        add(g, suppress, "--augment", default=d(c.augment), action=argparse.BooleanOptionalAction,
            help="few-shot training augmentation (flip + colour jitter)")
    add(g, suppress, "--check-images", default=d(c.check_images if loader else False), action=argparse.BooleanOptionalAction,
        help="decode every image before starting")
    add(g, suppress, "--workers", default=d(c.workers), type=nonneg_int, help="DataLoader worker processes")
    if loader:
        add(g, suppress, "--allow-outside-root", default=d(c.allow_outside_root), action=argparse.BooleanOptionalAction,
            help="let list lines name images outside the task folder (absolute or ../ paths)")
        add(g, suppress, "--data-fingerprint", default=d(c.fingerprint), choices=FINGERPRINT_MODES,
            help="how a resumed run checks its images are unchanged: stat = sizes and modification times (cheap), "
                 "content = sha256 of every image, off = no check (recorded)")
        add(g, suppress, "--cache", default=d(c.cache), choices=CACHE_MODES,
            help="decoded-image cache: auto = decode and resize each split once (in memory within --cache-memory-mb, "
                 "beyond it a memory-mapped file in --cache-dir; batches are bit-identical), off = decode every access")
        add(g, suppress, "--cache-memory-mb", default=d(c.cache_memory_mb), type=nonneg_int, metavar="MIB",
            help="memory for cached splits (training split first); 0 = every cached split in a file")
        add(g, suppress, "--cache-dir", default=d(c.cache_dir), metavar="DIR",
            help="folder of the cache files of splits over --cache-memory-mb (default: OUT/data_cache; for bench: "
                 "the sweep's OUT/data_cache, shared by its cells); files are keyed by the images and the resize, "
                 "and the folder may be deleted between runs")


def train_args(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options of one run: backbone, method, data, schedule and run settings."""
    g = model_args(parser, suppress)
    m = ModelConfig()
    add(g, suppress, "--drop-path", default=m.drop_path, type=float, help="stochastic depth rate")
    add(g, suppress, "--classifier-init", default=m.classifier_init, choices=CLASSIFIER_INITS,
        help="new classifier init: torch = nn.Linear default (Bi-LoRA lineage), trunc_normal = std .02, zero bias (NOAH)")

    g = parser.add_argument_group("method")
    add(g, suppress, "--method", default="heart-lora", help="registered method (see `heartlora methods`)")
    add(g, suppress, "--opt", default=[], metavar="KEY=VALUE", action="append", type=key_value,
        help="method option, repeatable (e.g. --opt score=ablation --opt restart=true)")
    add(g, suppress, "--rank", default=None, type=positive_int, help="shortcut for --opt rank=R (method default if unset)")
    add(g, suppress, "--scale", default=None, type=float, help="shortcut for --opt scale=S")
    add(g, suppress, "--ne", default=None, type=head_count, help="shortcut for --opt ne=N (heads switched off per layer; "
        "'auto': the most heads whose held-out accuracy stays within --opt tolerance)")
    add(g, suppress, "--bits", default=None, type=int, help="shortcut for --opt bits=B (32 = full precision)")

    data_args(parser, suppress)

    s = ScheduleConfig()
    g = parser.add_argument_group("schedule (the benchmark recipe's defaults)")
    add(g, suppress, "--epochs", default=s.epochs, type=positive_int, help="training epochs")
    add(g, suppress, "--warmup-epochs", default=s.warmup_epochs, type=nonneg_int,
        help="linear warm-up epochs (also the default Heart-LoRA scoring length)")
    add(g, suppress, "--lr", default=s.lr, type=float, help="AdamW peak learning rate")
    add(g, suppress, "--warmup-lr", default=s.warmup_lr, type=float, help="lr at the start of warm-up")
    add(g, suppress, "--min-lr", default=s.min_lr, type=float, help="cosine floor")
    add(g, suppress, "--weight-decay", default=s.weight_decay, type=float, help="AdamW weight decay")
    add(g, suppress, "--batch-size", default=s.batch_size, type=positive_int, help="training batch size")
    add(g, suppress, "--drop-last", default=s.drop_last, action=argparse.BooleanOptionalAction,
        help="drop the last incomplete training batch")
    add(g, suppress, "--eval-every", default=s.eval_every, type=nonneg_int,
        help="evaluate after epochs e with (e+1) %% N == 0, and after the last (0: last only)")
    add(g, suppress, "--eval-batch-size", default=s.eval_batch_size, type=positive_int, help="default: --batch-size")
    add(g, suppress, "--ablation-batches", default=None, type=positive_int,
        help="shortcut for --opt ablation_batches=N (batches measured by --opt score=ablation; method default 4)")

    r = RunConfig()
    g = parser.add_argument_group("run")
    add(g, suppress, "--seed", default=r.seed, type=nonneg_int, help="run seed (init, order, dropout)")
    add(g, suppress, "--device", default=r.device, help="auto, cpu, cuda, cuda:N")
    add(g, suppress, "--amp", default=r.amp, choices=AMP_CHOICES, metavar="{auto,bf16,off}",
        help="auto: bf16 autocast on CUDA and on CPUs with native bf16 matmul (AMX), else fp32; bf16 / off force it")
    add(g, suppress, "--out", default=r.out, metavar="DIR", help="run directory: run.json, adapter/, checkpoint.pt")
    add(g, suppress, "--resume", default=r.resume, action="store_true", help="continue the run in --out from its checkpoint")
    add(g, suppress, "--quiet", default=r.quiet, action="store_true", help="no progress bar or per-epoch lines")
    add(g, suppress, "--compile", default=r.compile, action="store_true",
        help="torch.compile the training forward (worth it on GPUs; compiling takes minutes on a CPU)")
    add(g, suppress, "--log", default=r.log, metavar="tensorboard,mlflow,wandb",
        help="experiment trackers, any of tensorboard, mlflow, wandb (default: $HEARTLORA_LOG; none: off); run.json "
             "stays the record, a tracker that fails only warns")
    add(g, suppress, "--log-dir", default=r.log_dir, metavar="DIR",
        help="where trackers write (TensorBoard folders, MLflow's SQLite store, W&B run folders); default: "
             "OUT/tensorboard and each tracker's own environment variables (MLFLOW_TRACKING_URI, WANDB_MODE, ...)")
    add(g, suppress, "--config", default=None, metavar="YAML", help="settings file (keys = long option names); flags override")
    add(g, suppress, "--preset", default="paper", choices=tuple(PRESETS), help="recipe preset applied before --config")


# ------------------------------------------------------------------------------ typed options → settings
def explicit_values(argv: Sequence[str]) -> dict:
    """Only the options actually typed on the command line (every default suppressed)."""
    from . import build_parser

    namespace = build_parser(suppress=True).parse_args(list(argv))
    return {k: v for k, v in vars(namespace).items() if k not in ("command", "func")}


def run_config(argv: Sequence[str], command_keys: Sequence[str] = (), *, require_run_to_resume: bool = True) -> RunConfig:
    """The run settings the typed options give; ``command_keys`` name a command's own options (a
    sweep's, an analysis'), which are not run settings."""
    from ..engine.settings import resolve_run_config

    explicit = explicit_values(argv)
    for key in list(command_keys) + ["kind", "analysis", "nproc", "data_command"]:
        explicit.pop(key, None)
    config_file = explicit.pop("config", None)
    preset = explicit.pop("preset", None)
    return resolve_run_config(explicit, config_file=config_file, preset=preset,
                              require_run_to_resume=require_run_to_resume)


__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "ConfigError", "Formatter", "PROG", "add", "byte_size", "csv_list",
    "data_args", "explicit_values", "fail", "head_count", "int_at_least", "int_list", "key_value", "model_args",
    "nonneg_int", "positive_int", "run_config", "train_args",
]
