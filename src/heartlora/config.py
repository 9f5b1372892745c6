"""Composable run configuration: model × method × data × schedule (+ run settings).

Each part is a dataclass with the benchmark recipe as its defaults, so ``RunConfig()`` *is* the
``paper`` preset (ViT-B/16, Heart-LoRA, VTAB-1K final protocol, AdamW 1e-3 / 1e-4, batch 64
drop_last, 100 epochs, cosine with 10 warm-up epochs from 1e-6 to a floor of 1e-5 stepped per
epoch, drop-path 0.1, seed 42). Parts are swapped independently::

    from heartlora.config import RunConfig, DataConfig
    cfg = RunConfig(data=DataConfig(kind="vtab", root="/data/vtab-1k", task="cifar"), out="runs/cifar")
    cfg = cfg.replace(schedule={"epochs": 10}, method={"name": "lora"})

The same settings load from flat ``key: value`` mappings whose keys are the CLI's long option
names (``lr``, ``warmup-epochs``, ``data-kind``, ``opt``, …; see :data:`FLAT_KEYS`) or from
nested sections (``model:``, ``method:``, ``data:``, ``schedule:``) as written in ``run.json``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "CLASSIFIER_INITS", "ConfigError", "DataConfig", "FLAT_KEYS", "METHOD_SHORTCUTS", "MethodConfig", "ModelConfig", "PRESETS",
    "RunConfig", "ScheduleConfig", "coerce_option", "load_yaml",
]


class ConfigError(ValueError):
    """A setting the user gave is unknown or invalid (CLI flag, YAML key, method option)."""


#: Values of the ``classifier_init`` option: torch = nn.Linear's default (Bi-LoRA lineage), trunc_normal = std
#: .02 and zero bias (NOAH).
CLASSIFIER_INITS = ("torch", "trunc_normal")


@dataclass
class ModelConfig:
    """The backbone: any timm name, local weights, extra ``timm.create_model`` kwargs."""

    name: str = "vit_base_patch16_224"
    weights: Optional[str] = None  # local .npz / .pth / .bin / .safetensors; None = random init
    weights_sha256: Optional[str] = None
    pretrained: bool = False  # timm's own pretrained weights for the name's tag, from the local HF cache only
    random_init: bool = False  # a name with a pretrained tag, deliberately without its weights
    kwargs: dict = field(default_factory=dict)  # e.g. {"patch_size": 8, "depth": 2}
    img_size: Optional[int] = None  # None: the data's image size
    drop_path: float = 0.1
    classifier_init: str = "torch"  # torch: nn.Linear default (Bi-LoRA lineage) | trunc_normal: std .02, zero bias (NOAH)


@dataclass
class MethodConfig:
    """A registered method (``heartlora.methods()``) and its options."""

    name: str = "heart-lora"
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """A task of ``heartlora.data`` and how it is read."""

    kind: str = "vtab"  # vtab | fewshot | folder
    root: Optional[str] = None
    task: Optional[str] = None
    split: str = "final"  # final: train800val200 → test; tune: train800 → val200
    shots: Optional[int] = None
    fewshot_seed: Optional[int] = None
    num_classes: Optional[int] = None  # checked against the task's class count
    image_size: int = 224
    normalize: str = "none"  # none | imagenet | inception
    augment: bool = False
    check_images: bool = True  # decode every image before training starts
    allow_outside_root: bool = False  # list lines may name images outside the task folder
    fingerprint: str = "stat"  # stat: sizes + modification times | content: sha256 of the bytes | off (see resume)
    workers: int = 4
    cache: str = "auto"  # auto: decode + resize each split once (heartlora.data.cache) | off: decode on every access
    cache_memory_mb: int = 2048  # splits kept in memory up to this many MiB, training split first
    cache_dir: Optional[str] = None  # memory-mapped files of splits over the budget; None: OUT/data_cache


@dataclass
class ScheduleConfig:
    """Optimiser and learning-rate schedule (timm CosineLRScheduler stepped after each epoch)."""

    epochs: int = 100
    warmup_epochs: int = 10
    lr: float = 1e-3
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    batch_size: int = 64
    drop_last: bool = True
    eval_every: int = 10  # evaluate after epochs e with (e+1) % eval_every == 0, and the last; 0: last only
    eval_batch_size: Optional[int] = None  # None: batch_size


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 42
    device: str = "auto"  # auto: cuda if available, else cpu
    amp: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with AMX, else fp32 | bf16 | off
    out: Optional[str] = None
    resume: bool = False
    quiet: bool = False
    compile: bool = False  # torch.compile the training forward (GPU speed; minutes of compile on CPU)
    # experiment trackers (heartlora.tracking): a comma list of tensorboard, mlflow, wandb; "" = the
    # HEARTLORA_LOG environment variable's list (else none); "none" = none
    log: str = ""
    log_dir: Optional[str] = None  # where the trackers write; None: OUT/tensorboard and each tracker's own variables

    # ----------------------------------------------------------------------------- helpers
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "") -> "RunConfig":
        """Build from nested and/or flat keys (see :func:`apply_mapping`)."""
        return apply_mapping(cls(), values, source)

    def replace(self, **parts: Any) -> "RunConfig":
        """Copy with parts replaced: a dataclass, or a dict of fields to update."""
        new = copy.deepcopy(self)
        for name, value in parts.items():
            if name not in SECTIONS and name not in _RUN_FIELDS:
                raise ConfigError(f"unknown config part '{name}'")
            if name in SECTIONS and isinstance(value, dict):
                section = getattr(new, name)
                for key, item in value.items():
                    _set_field(section, key, item, f"{name}.{key}")
            else:
                setattr(new, name, copy.deepcopy(value))
        return new

    def validate(self) -> "RunConfig":
        """Check values that need no data or backbone; raise ConfigError naming the option."""
        s, d, m = self.schedule, self.data, self.model

        def need(ok: bool, option: str, value: Any, expected: str) -> None:
            if not ok:
                raise ConfigError(f"option '{option}': got {value!r}; expected {expected}")

        def positive_int(option: str, value: Any, minimum: int = 1) -> None:
            need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, option, value,
                 f"an integer >= {minimum}")

        positive_int("epochs", s.epochs)
        positive_int("warmup_epochs", s.warmup_epochs, 0)
        positive_int("batch_size", s.batch_size)
        positive_int("eval_every", s.eval_every, 0)
        if s.eval_batch_size is not None:
            positive_int("eval_batch_size", s.eval_batch_size)
        def finite(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for option in ("lr", "warmup_lr", "min_lr"):
            value = getattr(s, option)
            need(finite(value) and value >= 0, option, value, "a finite number >= 0")
        need(s.lr > 0, "lr", s.lr, "a positive learning rate")
        need(finite(s.weight_decay) and s.weight_decay >= 0, "weight_decay", s.weight_decay, "a finite number >= 0")
        positive_int("seed", self.seed, 0)
        positive_int("workers", d.workers, 0)
        positive_int("image_size", d.image_size)
        from .data.cache import CACHE_MODES
        from .data.fingerprint import FINGERPRINT_MODES
        from .data.loader import KINDS, SPLITS
        from .data.transforms import NORMALIZE_CHOICES
        from .precision import AMP_CHOICES

        need(d.kind in KINDS, "data_kind", d.kind, f"one of {', '.join(KINDS)}")
        need(d.split in SPLITS, "split", d.split, "one of final, tune (paper: an alias of final)")
        need(d.normalize in NORMALIZE_CHOICES, "normalize", d.normalize, f"one of {', '.join(NORMALIZE_CHOICES)}")
        if d.split == "paper":
            d.split = "final"  # one name in every record: reports and the clean protocol read "final"
        need(d.fingerprint in FINGERPRINT_MODES, "data_fingerprint", d.fingerprint, f"one of {', '.join(FINGERPRINT_MODES)}")
        need(d.cache in CACHE_MODES, "cache", d.cache, f"one of {', '.join(CACHE_MODES)}")
        positive_int("cache_memory_mb", d.cache_memory_mb, 0)
        need(d.cache_dir is None or (isinstance(d.cache_dir, str) and d.cache_dir != ""), "cache_dir", d.cache_dir,
             "a folder path (or leave it out: OUT/data_cache)")
        need(d.root is not None and str(d.root) != "", "data", d.root, "the data root folder (--data ROOT)")
        need(self.amp in AMP_CHOICES, "amp", self.amp, "one of auto, bf16, off")
        need(isinstance(self.device, str) and self.device.split(":")[0] in ("auto", "cpu", "cuda", "mps"),
             "device", self.device, "auto, cpu, cuda, cuda:N or mps")
        need(finite(m.drop_path) and 0.0 <= m.drop_path < 1.0, "drop_path", m.drop_path, "0 <= drop_path < 1")
        need(m.classifier_init in CLASSIFIER_INITS, "classifier_init", m.classifier_init, f"one of {', '.join(CLASSIFIER_INITS)}")
        need(isinstance(m.kwargs, dict), "model_kwargs", m.kwargs, "a mapping of timm.create_model keyword arguments")
        need(isinstance(self.method.options, dict), "opt", self.method.options, "a mapping of method options")
        if self.resume and not self.out:
            raise ConfigError("option 'resume' needs option 'out' (the run directory to continue)")
        return self


SECTIONS = {"model": ModelConfig, "method": MethodConfig, "data": DataConfig, "schedule": ScheduleConfig}
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS}

#: Flat keys (CLI long option names with '_' for '-') → (section or None for run level, field).
FLAT_KEYS: dict[str, tuple[str | None, str]] = {
    "model": ("model", "name"), "weights": ("model", "weights"), "weights_sha256": ("model", "weights_sha256"),
    "pretrained": ("model", "pretrained"), "random_init": ("model", "random_init"),
    "model_kwargs": ("model", "kwargs"), "img_size": ("model", "img_size"), "drop_path": ("model", "drop_path"),
    "classifier_init": ("model", "classifier_init"),
    "method": ("method", "name"), "opt": ("method", "options"),
    "data_kind": ("data", "kind"), "data": ("data", "root"), "task": ("data", "task"), "split": ("data", "split"),
    "shots": ("data", "shots"), "fewshot_seed": ("data", "fewshot_seed"), "num_classes": ("data", "num_classes"),
    "image_size": ("data", "image_size"), "normalize": ("data", "normalize"), "augment": ("data", "augment"),
    "check_images": ("data", "check_images"), "workers": ("data", "workers"),
    "allow_outside_root": ("data", "allow_outside_root"), "data_fingerprint": ("data", "fingerprint"),
    "cache": ("data", "cache"), "cache_memory_mb": ("data", "cache_memory_mb"), "cache_dir": ("data", "cache_dir"),
    **{f.name: ("schedule", f.name) for f in dataclasses.fields(ScheduleConfig)},
    **{name: (None, name) for name in _RUN_FIELDS},
}
#: Shortcut keys that set a method option (``--ne 3`` ≡ ``--opt ne=3``).
METHOD_SHORTCUTS = ("rank", "scale", "ne", "bits", "ablation_batches")

#: Named presets. ``paper`` is the benchmark recipe (also the dataclass defaults).
PRESETS: dict[str, dict] = {
    "paper": {
        "model": {"drop_path": 0.1, "classifier_init": "torch"},
        "data": {"image_size": 224, "normalize": "none", "augment": False},
        "schedule": {"epochs": 100, "warmup_epochs": 10, "lr": 1e-3, "warmup_lr": 1e-6, "min_lr": 1e-5,
                     "weight_decay": 1e-4, "batch_size": 64, "drop_last": True, "eval_every": 10},
        "seed": 42,
    },
}


#: The spellings a boolean option accepts (YAML's and the command line's); nothing else is a boolean.
TRUE_WORDS = ("true", "yes", "on")
FALSE_WORDS = ("false", "no", "off")
_EXPECTED = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "a mapping"}


def coerce_option(value: Any, hint: Any, label: str, *, allow_nonfinite: bool = False) -> Any:
    """``value`` (a YAML scalar, a command-line string, a JSON value) as the type ``hint`` names;
    the one coercion of run settings and method options. Rules: booleans only from ``true`` /
    ``false`` (or ``yes``/``no``, ``on``/``off``), never from numbers; integers stay integers (a
    whole float becomes one, ``2.5`` is refused); floats are finite unless ``allow_nonfinite``;
    ``none``/``null``/empty is ``None`` only where the hint allows it; ``Union[int, str]`` is an int
    when the value is one, else the string; ``tuple[str, ...]`` takes a comma list; a mapping may be
    given as its JSON/YAML text. Raises :class:`ConfigError` ``"{label}: expected …, got …"``."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_union = origin is typing.Union or (sys.version_info >= (3, 10) and origin is types.UnionType)
    if is_union:
        optional = type(None) in typing.get_args(hint)
        if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if optional:
                return None
            raise ConfigError(f"{label}: a value is required")
        if len(args) == 1:
            return coerce_option(value, args[0], label, allow_nonfinite=allow_nonfinite)
        # e.g. Union[int, str]: an int if it is one, else the string. str goes last whatever the written
        # order: typing caches Union[str, int] and Union[int, str] as one object, so get_args' order
        # depends on which spelling some library (e.g. torch.compile) built first.
        ordered = sorted(args, key=lambda a: a is str)
        for candidate in ordered[:-1]:
            try:
                return coerce_option(value, candidate, label, allow_nonfinite=allow_nonfinite)
            except ConfigError:
                continue
        return coerce_option(value, ordered[-1], label, allow_nonfinite=allow_nonfinite)
    if value is None:
        raise ConfigError(f"{label}: a value is required")
    if origin is tuple:
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)) and all(isinstance(i, (str, int, float)) and not isinstance(i, bool)
                                                      for i in value):
            items = list(value)
        else:
            raise ConfigError(f"{label}: expected a comma list, got {value!r}")
        return tuple(str(i).strip() for i in items if str(i).strip())
    ok, result = False, None
    if hint is bool:
        if isinstance(value, bool):
            ok, result = True, value
        elif isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            ok, result = True, value.strip().lower() in TRUE_WORDS
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            ok, result = True, value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            ok, result = True, int(value)
        elif isinstance(value, str):
            try:
                ok, result = True, int(value.strip())
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ok, result = True, float(value)
        elif isinstance(value, str):
            try:
                ok, result = True, float(value.strip())
            except ValueError:
                pass
        if ok and not allow_nonfinite and not math.isfinite(result):
            ok = False
    elif hint is str:
        if isinstance(value, bool):  # YAML reads an unquoted off / on (no / yes) as a boolean
            ok, result = True, "on" if value else "off"
        elif isinstance(value, (str, int, float)):
            ok, result = True, str(value)
    elif hint is dict:
        if isinstance(value, str):  # a mapping written as JSON / YAML text (e.g. --opt subnet={...})
            import yaml

            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        ok, result = isinstance(value, dict), dict(value) if isinstance(value, dict) else None
    else:
        return value
    if not ok:
        expected = _EXPECTED.get(hint, getattr(hint, "__name__", str(hint)))
        raise ConfigError(f"{label}: expected {expected}, got {value!r}")
    return result


def _set_field(section: Any, key: str, value: Any, option: str) -> None:
    key = key.replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(f"unknown key '{option}'; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(type(section))
    setattr(section, key, coerce_option(value, hints[key], f"option '{option}'"))


def apply_mapping(config: RunConfig, values: dict, source: str = "", lines: dict | None = None) -> RunConfig:
    """Return a copy of ``config`` updated from ``values``: flat CLI-named keys, method shortcuts
    (rank, scale, ne, bits), ``preset``, or nested sections (a dict under model/method/data/
    schedule). ``source`` and ``lines`` (key → line number) make error messages point at the file."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of option names to values, got {type(values).__name__}")
    config = copy.deepcopy(config)

    def where(key: str) -> str:
        line = (lines or {}).get(key)
        return f"{source}:{line}" if line else source

    if "preset" in values:
        name = values["preset"]
        if name not in PRESETS:
            raise ConfigError(f"{where('preset')}: unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        config = apply_mapping(config, PRESETS[name], f"preset '{name}'")
    for raw_key, value in values.items():
        if raw_key == "preset":
            continue
        key = str(raw_key).replace("-", "_")
        try:
            if key in SECTIONS and isinstance(value, dict):
                section = getattr(config, key)
                for sub, item in value.items():
                    sub_key = str(sub).replace("-", "_")
                    if key == "method" and sub_key == "options":
                        config.method.options.update(_options_mapping(item, f"{key}.{sub}"))
                    elif key == "schedule" and sub_key == "ablation_batches":
                        config.method.options[sub_key] = item  # a method option since record format 2
                    else:
                        _set_field(section, sub_key, item, f"{key}.{sub}")
            elif key in METHOD_SHORTCUTS:
                if value is not None:
                    config.method.options[key] = value
            elif key == "opt":
                config.method.options.update(_options_mapping(value, "opt"))
            elif key == "model_kwargs":
                config.model.kwargs.update(parse_model_kwargs(value, "model_kwargs"))
            elif key in FLAT_KEYS:
                section, field_name = FLAT_KEYS[key]
                target = config if section is None else getattr(config, section)
                _set_field(target, field_name, value, raw_key)
            else:
                valid = sorted(set(FLAT_KEYS) | set(METHOD_SHORTCUTS) | {"preset"})
                close = difflib.get_close_matches(key, valid, n=3)
                hint = f"; did you mean: {', '.join(close)}" if close else f"; valid keys: {', '.join(valid)}"
                raise ConfigError(f"unknown key '{raw_key}'{hint}")
        except ConfigError as err:
            raise ConfigError(f"{where(raw_key)}: {err}" if source else str(err)) from None
    return config


def parse_key_values(items: Any, option: str) -> dict:
    """``["ne=3", "bits=1"]`` (or a mapping) → ``{"ne": "3", "bits": "1"}``."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return {str(k).replace("-", "_"): v for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"option '{option}': expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _options_mapping(value: Any, option: str) -> dict:
    return parse_key_values(value, option)


def parse_model_kwargs(value: Any, option: str) -> dict:
    """timm kwargs: strings are parsed as YAML scalars/lists (``depth=2``, ``num_heads=4``, ``mlp_ratio=4.0``)."""
    import yaml

    parsed = {}
    for key, item in parse_key_values(value, option).items():
        if isinstance(item, str):
            try:
                item = yaml.safe_load(item) if item else item
            except yaml.YAMLError:
                pass
        parsed[key] = item
    return parsed


def _refuse_duplicate_keys(node: Any, path: Path) -> None:
    """YAML lets a repeated key silently win; a settings file must not."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigError(f"{path}:{line}: key '{key_node.value}' given twice (first on line "
                                  f"{seen[key_node.value]}); expected each key once")
            seen[key_node.value] = line
            _refuse_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path)


def load_yaml(path: str | Path) -> tuple[dict, dict]:
    """Read a YAML (or run.json) config: returns (mapping, key → line number).

    A run record (``run.json``, a mapping with a ``config`` section) yields its ``config``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found (option '--config')")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if values is None:
        return {}, {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values at the top level")
    _refuse_duplicate_keys(node, path)
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[key_node.value] = key_node.start_mark.line + 1
    if "config" in values and isinstance(values["config"], dict) and "format_version" in values:
        return values["config"], {}
    return values, lines
