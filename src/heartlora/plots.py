"""Figures a paper can print: responsiveness heatmaps and accuracy vs adapter size.

Matplotlib with the Agg backend only (no display needed); every function writes one PNG and
returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grid(rows: Sequence[Sequence[float]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    grid = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        grid[i, : len(row)] = row
    return grid


def plot_responsiveness(
    panels: dict[str, tuple[Sequence[Sequence[float]], Sequence[Sequence[bool]] | None]],
    path: str | Path,
    score_name: str = "taylor",
) -> Path:
    """Layer × head heatmaps, one panel per task: ``{task: (scores, head_masks)}``.
    Scores are normalised per panel to [0, 1]; switched-off heads (mask False) are crossed."""
    path = Path(path)
    n = len(panels)
    first = _grid(next(iter(panels.values()))[0])
    cell = 0.45
    fig, axes = plt.subplots(1, n, figsize=(max(3.2, cell * first.shape[1] + 1.6) * n, cell * first.shape[0] + 1.8),
                             squeeze=False, gridspec_kw={"wspace": 0.4})
    image = None
    for ax, (task, (scores, masks)) in zip(axes[0], panels.items()):
        grid = _grid(scores)
        top = np.nanmax(grid) if np.isfinite(grid).any() and np.nanmax(grid) > 0 else 1.0
        image = ax.imshow(grid / top, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        if masks is not None:
            for layer, row in enumerate(masks):
                for head, active in enumerate(row):
                    if not active:
                        ax.plot(head, layer, marker="x", color="red", markersize=9, markeredgewidth=2)
        ax.set_title(task)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
    cbar = fig.colorbar(image, ax=list(axes[0]), shrink=0.85)
    cbar.set_label(f"responsiveness ({score_name}, / max)")
    if any(m is not None for _, m in panels.values()):
        axes[0][0].plot([], [], "x", color="red", markeredgewidth=2, label="switched off")
        axes[0][0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False, fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_vs_bytes(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Scatter of accuracy (%) vs adapter bytes (log scale), one labelled point per method.
    ``rows``: dicts with ``method``, ``accuracy`` (0-100) and ``adapter_bytes``."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for row in rows:
        ax.scatter(row["adapter_bytes"], row["accuracy"], s=50)
        ax.annotate(row["method"], (row["adapter_bytes"], row["accuracy"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("adapter bytes (log scale, classifier excluded)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
               ylabel: str, title: str = "", logx: bool = False) -> Path:
    """Generic labelled line plot (few-shot curves, ne sweeps)."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    if all(float(x).is_integer() for xs, _ in series.values() for x in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_bars(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two aligned bar charts per method: test accuracy (%) and adapter bytes (classifier
    excluded). ``rows``: dicts with ``method``, ``paper`` (accuracy %) and ``adapter_bytes``."""
    path = Path(path)
    methods = [r["method"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax_acc, ax_bytes) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    bars = ax_acc.bar(x, [r["paper"] for r in rows], color="tab:blue")
    ax_acc.bar_label(bars, fmt="%.1f", fontsize=8)
    low = min(r["paper"] for r in rows)
    ax_acc.set_ylim(max(0.0, low - 10.0), 100.0)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("accuracy")
    kib = [r["adapter_bytes"] / 1024 for r in rows]
    bars = ax_bytes.bar(x, kib, color="tab:orange")
    ax_bytes.bar_label(bars, labels=[f"{v:,.1f}" for v in kib], fontsize=8)
    ax_bytes.set_ylabel("adapter size (KiB, classifier excluded)")
    ax_bytes.set_title("stored adapter")
    for ax in (ax_acc, ax_bytes):
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=20, ha="right")
        ax.set_xlabel("method")
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
