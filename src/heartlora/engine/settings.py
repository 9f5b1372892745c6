"""A run's settings from the layers a user gives them in, lowest precedence first: the recipe
defaults, a preset, a settings file (YAML, or a ``run.json``), then explicit values (the command
line's). A resumed run starts from its own checkpoint's settings, so ``--resume`` needs no other
option."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import METHOD_SHORTCUTS, ConfigError, RunConfig, apply_mapping, load_yaml, parse_key_values
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .record import RUN_NAME

__all__ = ["resolve_run_config"]


def resolve_run_config(values: dict[str, Any], *, config_file: str | None = None, preset: str | None = None,
                       require_run_to_resume: bool = True) -> RunConfig:
    """The :class:`RunConfig` of explicit ``values`` (flat keys as the CLI's long options: ``lr``,
    ``data_kind``, ``opt`` as a list of ``KEY=VALUE``, the method shortcuts ``rank``/``scale``/``ne``/
    ``bits``/``ablation_batches``; ``None`` for a shortcut means unset), over ``config_file``, over
    ``preset``, over the defaults — or, when ``values`` ask to resume a run in ``out``, over that
    run's checkpointed settings. ``require_run_to_resume``: resuming a folder that holds no run is
    an error (``train``); a sweep resumes whatever cells it finds."""
    values = dict(values)
    options: dict = {}
    for item in values.pop("opt", None) or []:
        options.update(parse_key_values(item, "--opt"))
    flags = {k: v for k, v in values.items() if v is not None or k not in METHOD_SHORTCUTS}
    if options:
        flags["opt"] = options

    config = RunConfig()
    out, resume = flags.get("out"), flags.get("resume", False)
    if resume and out is not None:
        checkpoint = Path(out) / CHECKPOINT_NAME
        if require_run_to_resume and not checkpoint.is_file() and not (Path(out) / RUN_NAME).is_file():
            raise ConfigError(f"option '--resume': {out} holds no run to continue (no {CHECKPOINT_NAME}); "
                              "start it without --resume")
        if checkpoint.is_file():
            config = RunConfig.from_dict(load_checkpoint(checkpoint)["config"], str(checkpoint))
    if preset is not None:
        config = apply_mapping(config, {"preset": preset})
    if config_file is not None:
        mapping, lines = load_yaml(config_file)
        config = apply_mapping(config, mapping, str(config_file), lines)
    return apply_mapping(config, flags)
