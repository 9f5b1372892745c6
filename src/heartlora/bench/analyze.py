"""The paper's analyses, each writing a PNG and a CSV.

- ``responsiveness``: layer × head heatmaps of several runs side by side, switched-off heads
  marked (Figure 1), and the rank correlation of the cheap scores with exact ``ablation``.
- ``deactivate``: the first ``ne`` heads switched off (arbitrary) vs the ``ne`` least
  responsive ones, as ratios to the ne=0 run per task (Figure 3).
- ``ne_sweep``: accuracy vs ne per task (Figure 4).
- ``attention``: attention maps of chosen heads, two adapters side by side (Figure 5).

Training analyses go through :mod:`heartlora.bench.sweep`, so they resume and skip finished runs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..plots import plot_lines, plot_responsiveness
from .sweep import RUN_NAME, make_cell, read_record, run_cells

CHEAP_SCORES = ("taylor", "activation", "weight")


# ----- loading a finished run -------------------------------------------------------------------------
def load_run(run_dir: str | Path, device: str = "cpu"):
    """(model with its adapter, run record, task data) of a finished ``heartlora train`` run."""
    from ..data import load_task
    from ..engine.loop import ADAPTER_DIR
    from ..interop.folder import load_adapter_folder

    run_dir = Path(run_dir)
    record_path = run_dir / RUN_NAME
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: not a finished run (no {RUN_NAME})")
    record = json.loads(record_path.read_text())
    model, backbone = load_adapter_folder(run_dir / ADAPTER_DIR)  # its backbone as trained: weights, pretrained, …
    data = record["config"]["data"]
    task = load_task(data["kind"], data["root"], data["task"], split=data["split"], shots=data.get("shots"),
                     seed=data.get("fewshot_seed"), image_size=backbone["img_size"],
                     normalize=backbone.get("normalize", "none"))
    return model.to(device).eval(), record, task


def _batches(dataset, count: int, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for images, labels in loader:
        out.append((images, torch.as_tensor(labels)))
        if len(out) == count:
            break
    return out


# ----- responsiveness -------------------------------------------------------------------------------
def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # average ranks for ties
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def score_run(model, batches, kinds: Sequence[str] = CHEAP_SCORES + ("ablation",)) -> dict[str, list[torch.Tensor]]:
    """Score kinds (default: every one) on the same batches (eval mode: no dropout, no drop-path)."""
    from ..methods.responsiveness import HeadScorer, ablation_scores

    results = {}
    for kind in (k for k in CHEAP_SCORES if k in kinds):
        with HeadScorer(model, kind) as scorer:
            if kind != "weight":
                for images, labels in batches:
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(model(images), labels).backward()
            results[kind] = scorer.scores()
    model.zero_grad(set_to_none=True)
    if "ablation" in kinds:
        results["ablation"] = ablation_scores(model, batches)
    return results


def _adapter_panel(adapter_dir: Path, data: dict, batches: int, batch_size: int, score: str, correlate: bool):
    """(label, scores, masks, results by score kind) of an adapter folder without a run record
    (e.g. imported from PEFT): its heads are scored on ``data``'s training split."""
    from ..data import load_task
    from ..interop.folder import load_adapter_folder
    from ..methods import get_state

    if not data.get("root"):
        raise ValueError(f"{adapter_dir}: an adapter folder without run.json is scored on data; give --data (and --task)")
    model, backbone = load_adapter_folder(adapter_dir)
    task = load_task(data.get("kind") or "vtab", data["root"], data.get("task"), split=data.get("split") or "final",
                     image_size=backbone["img_size"], normalize=backbone.get("normalize") or "none")
    kinds = CHEAP_SCORES + ("ablation",) if correlate else (score,)
    results = score_run(model, _batches(task.train, batches, batch_size), kinds)
    state = get_state(model)
    masks = state.head_masks or [[True] * len(layer) for layer in results[score]]
    label = f"{task.name}\n{state.method} · {adapter_dir.name} ({score})"
    return label, [t.tolist() for t in results[score]], masks, results


def responsiveness(run_dirs: Sequence[str | Path], out_dir: str | Path, correlate: bool = True,
                   batches: int = 2, batch_size: int = 32, data: dict | None = None,
                   score: str = "taylor") -> dict[str, Path]:
    """Heatmaps of finished heart-lora runs' recorded head scores; an adapter folder without a
    run record (any low-rank adapter, e.g. one imported from PEFT) is scored afresh with ``score``
    on ``data`` (``{"kind", "root", "task", "split"}``)."""
    if score not in CHEAP_SCORES + ("ablation",):
        raise ValueError(f"score {score!r}: expected one of {', '.join(CHEAP_SCORES + ('ablation',))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels, score_rows, corr_rows = {}, [], []
    for run_dir in run_dirs:
        results = None
        if not (Path(run_dir) / RUN_NAME).is_file() and _is_adapter_folder(Path(run_dir)):
            label, scores, masks, results = _adapter_panel(Path(run_dir), data or {}, batches, batch_size, score,
                                                           correlate)
            heads = {"scores": scores, "head_masks": masks}
        else:
            record = json.loads((Path(run_dir) / RUN_NAME).read_text())
            heads = record.get("heads")
            if not heads or not heads.get("scores"):
                raise ValueError(f"{Path(run_dir) / RUN_NAME}: no head scores (a heart-lora run is needed)")
            label = f"{record['data']['task']}\n{record['config']['method']['name']} · {Path(run_dir).name}"
        if label in panels:
            raise ValueError(f"{run_dir}: given twice")
        panels[label] = (heads["scores"], heads["head_masks"])
        for layer, (scores, mask) in enumerate(zip(heads["scores"], heads["head_masks"])):
            for head, (value, active) in enumerate(zip(scores, mask)):
                score_rows.append([label.replace("\n", " "), layer, head, value, int(active)])
        if correlate:
            if results is None:
                model, _, task = load_run(run_dir)
                results = score_run(model, _batches(task.train, batches, batch_size))
            masks = heads["head_masks"]
            active = lambda per_layer: [float(v) for s, m in zip(per_layer, masks) for v, a in zip(s.tolist(), m) if a]
            exact = active(results["ablation"])
            for kind in CHEAP_SCORES:
                corr_rows.append([label.replace("\n", " "), kind, spearman(active(results[kind]), exact), len(exact)])
    png = plot_responsiveness(panels, out / "responsiveness.png")
    with open(out / "responsiveness.csv", "w", newline="") as f:
        csv.writer(f).writerows([["run", "layer", "head", "score", "active"], *score_rows])
    written = {"png": png, "csv": out / "responsiveness.csv"}
    if correlate:
        with open(out / "score_correlation.csv", "w", newline="") as f:
            csv.writer(f).writerows([["run", "score", "spearman_vs_ablation", "heads"], *corr_rows])
        written["correlation_csv"] = out / "score_correlation.csv"
    return written


def _is_adapter_folder(path: Path) -> bool:
    from ..interop.folder import resolve_adapter_dir

    return (resolve_adapter_dir(path) / "adapter_config.json").is_file()


# ----- training analyses --------------------------------------------------------------------------
def _accuracy(record: dict, protocol: str) -> float:
    entry = record["protocols"]["paper" if protocol == "paper" else "final"]
    return float(entry["accuracy"])


def deactivate(base, tasks: Sequence[str], out_dir: str | Path, ne_values: Sequence[int] = (1, 3, 6),
               seed: int | None = None, protocol: str = "paper", workers: int = 1, log=print) -> dict[str, Path]:
    """Figure 3: ratio to the ne=0 run of (a) the first ne heads off and (b) the ne least
    responsive heads off, per task."""
    out = Path(out_dir)
    seed = base.seed if seed is None else seed
    kind = base.data.kind
    options = dict(base.method.options)
    cells = {"baseline": {t: make_cell(kind, t, "heart-lora", {**options, "ne": 0}, seed) for t in tasks}}
    for ne in ne_values:
        cells[f"first ne={ne}"] = {t: make_cell(kind, t, "heart-lora", {**options, "ne": ne, "select": "first"}, seed)
                                   for t in tasks}
        cells[f"responsive ne={ne}"] = {t: make_cell(kind, t, "heart-lora", {**options, "ne": ne, "select": "global"},
                                                     seed) for t in tasks}
    every = [c for group in cells.values() for c in group.values()]
    result = run_cells(every, base, out / "runs", workers=workers, log=log)
    if not result.ok:
        raise RuntimeError("deactivate: some runs failed\n" + result.summary())
    rows, series = [], {}
    for task in tasks:
        baseline = _accuracy(read_record(cells["baseline"][task], out / "runs"), protocol)
        for name, group in cells.items():
            accuracy = _accuracy(read_record(group[task], out / "runs"), protocol)
            rows.append([task, name, accuracy, accuracy / baseline if baseline else float("nan")])
    for kind_name in ("first", "responsive"):
        for task in tasks:
            ratios = [r[3] for r in rows if r[0] == task and r[1].startswith(kind_name)]
            series[f"{task}: {kind_name}"] = (list(ne_values), ratios)
    csv_path = out / "deactivate.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([["task", "setting", "accuracy", "ratio_to_ne0"], *rows])
    png = plot_lines(series, out / "deactivate.png", "heads switched off per layer (ne)",
                     "accuracy / accuracy at ne=0", title="Arbitrary (first ne) vs responsiveness-selected")
    return {"png": png, "csv": csv_path}


def ne_sweep(base, tasks: Sequence[str], out_dir: str | Path, ne_values: Sequence[int], method: str = "heart-lora",
             seed: int | None = None, protocol: str = "paper", workers: int = 1, log=print) -> dict[str, Path]:
    """Figure 4: accuracy vs ne per task."""
    out = Path(out_dir)
    seed = base.seed if seed is None else seed
    options = dict(base.method.options)
    cells = {(t, ne): make_cell(base.data.kind, t, method, {**options, "ne": ne}, seed) for t in tasks for ne in ne_values}
    result = run_cells(list(cells.values()), base, out / "runs", workers=workers, log=log)
    if not result.ok:
        raise RuntimeError("ne-sweep: some runs failed\n" + result.summary())
    rows = [[t, ne, _accuracy(read_record(c, out / "runs"), protocol)] for (t, ne), c in cells.items()]
    series = {t: (list(ne_values), [r[2] for r in rows if r[0] == t]) for t in tasks}
    csv_path = out / "ne_sweep.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([["task", "ne", "accuracy"], *rows])
    png = plot_lines(series, out / "ne_sweep.png", "heads switched off per layer (ne)", "test accuracy (%)",
                     title=f"{method}: accuracy vs ne ({protocol} protocol)")
    return {"png": png, "csv": csv_path}


# ----- attention maps -----------------------------------------------------------------------------
@torch.no_grad()
def attention_maps(model, images: torch.Tensor, layer: int) -> torch.Tensor:
    """(batch, heads, tokens, tokens) attention probabilities of attention block ``layer``.
    timm's fused kernel never materialises them, so the explicit path is switched on only while
    drawing, and the probabilities are read where they enter ``attn_drop``."""
    from ..heads import find_attention_sites

    site = find_attention_sites(model)[layer]
    attn = model.get_submodule(site.name)
    captured = []
    handle = attn.attn_drop.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    fused = attn.fused_attn
    attn.fused_attn = False
    try:
        model(images)
    finally:
        attn.fused_attn = fused
        handle.remove()
    if not captured:
        raise RuntimeError(f"{site.name}: no attention probabilities captured")
    return captured[0]


def attention(run_dirs: Sequence[str | Path], image_paths: Sequence[str | Path], heads: Sequence[tuple[int, int]],
              out_dir: str | Path) -> dict[str, Path]:
    """Figure 5: class-token attention of the chosen (layer, head)s for each image, one column
    block per run (e.g. Heart-LoRA vs Bi-LoRA)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ..data import build_transform

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    size = runs[0][0].patch_embed.img_size[0]
    transform = build_transform(size, runs[0][1]["config"]["data"].get("normalize", "none"))
    raw = [Image.open(p).convert("RGB") for p in image_paths]
    batch = torch.stack([transform(img) for img in raw])
    fig, axes = plt.subplots(len(raw), 1 + len(runs) * len(heads),
                             figsize=(1.9 * (1 + len(runs) * len(heads)), 2.0 * len(raw)), squeeze=False)
    rows = []
    for r, ((model, record, _), run_dir) in enumerate(zip(runs, run_dirs)):
        prefix = getattr(model, "num_prefix_tokens", 1)
        label = f"{record['config']['method']['name']} ({Path(run_dir).name})"
        for h, (layer, head) in enumerate(heads):
            probs = attention_maps(model, batch, layer)[:, head, 0, prefix:]  # class token → patches
            side = int(round(probs.shape[-1] ** 0.5))
            for i in range(len(raw)):
                grid = probs[i].reshape(side, side).numpy()
                ax = axes[i][1 + r * len(heads) + h]
                ax.imshow(grid, cmap="inferno")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{label}\nlayer {layer} head {head}", fontsize=8)
                rows.append([label, Path(image_paths[i]).name, layer, head, *grid.flatten().round(6).tolist()])
    for i, img in enumerate(raw):
        axes[i][0].imshow(img)
        axes[i][0].set_xticks([])
        axes[i][0].set_yticks([])
        axes[i][0].set_ylabel(Path(image_paths[i]).name, fontsize=8)
    axes[0][0].set_title("image", fontsize=8)
    png = out / "attention.png"
    fig.savefig(png, dpi=130, bbox_inches="tight")
    plt.close(fig)
    csv_path = out / "attention.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([["run", "image", "layer", "head", "class-token attention to patches (row-major)"],
                                 *rows])
    return {"png": png, "csv": csv_path}
