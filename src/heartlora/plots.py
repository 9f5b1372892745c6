"""Figures a paper can print: every function writes a vector PDF and a 300-dpi PNG of one figure.

Matplotlib with the Agg backend only (no display needed). Spreads over seeds are drawn as error
bars or bands and the figure says which (std or 95% interval). Each function takes the output path
with or without a suffix and returns the :class:`FigureFiles` it wrote.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

PNG_DPI = 300
_STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
          "ytick.labelsize": 8, "pdf.fonttype": 42}
OFF_COLOR = "#d62728"


class FigureFiles(NamedTuple):
    pdf: Path
    png: Path


def save_figure(fig, path: str | Path) -> FigureFiles:
    """``path`` minus its suffix + ``.pdf`` and ``.png``, each written atomically."""
    from .fsio import atomic_write

    stem = Path(path)
    if stem.suffix.lower() in (".png", ".pdf"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = FigureFiles(stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png"))
    with plt.rc_context(_STYLE):  # pdf.fonttype applies at save time
        for target, options in ((files.pdf, {}), (files.png, {"dpi": PNG_DPI})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=target.suffix[1:], bbox_inches="tight", **options)
            atomic_write(target, buffer.getvalue())
    plt.close(fig)
    return files


def _figure(*args, **kwargs):
    return plt.subplots(*args, layout="constrained", **kwargs)


def _grid(rows: Sequence[Sequence[float]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    grid = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        grid[i, : len(row)] = row
    return grid


# ----- responsiveness maps (Figure 1) --------------------------------------------------------------
def plot_responsiveness(
    panels: Mapping[str, tuple],
    path: str | Path,
    score_name: str | None = None,
) -> FigureFiles:
    """Layer × head heatmaps, one panel per run: ``{title: (scores, head_masks[, score_kind])}``.

    Each panel is scaled to its own maximum (one shared colour bar, 0..1) and says which score kind
    produced it; switched-off heads (mask False) carry a red ×. Layers with fewer heads (Swin) leave
    the missing cells blank."""
    return save_figure(responsiveness_figure(panels, score_name), path)


def figure_pixels(fig, dpi: int = 100) -> np.ndarray:
    """The figure as height × width × 3 uint8 RGB pixels (for experiment trackers), cropped as the
    saved figures are; closes it."""
    from PIL import Image

    buffer = io.BytesIO()
    with plt.rc_context(_STYLE):
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))


def responsiveness_figure(panels: Mapping[str, tuple], score_name: str | None = None):
    """The figure of :func:`plot_responsiveness`, not saved (the caller closes it)."""
    with plt.rc_context(_STYLE):
        items = list(panels.items())
        kinds = [(p[2] if len(p) > 2 and p[2] else score_name) or "score" for _, p in items]
        widths = [max(2.4, 0.42 * _grid(p[0]).shape[1] + 1.0) for _, p in items]
        height = max(2.6, 0.34 * max(_grid(p[0]).shape[0] for _, p in items) + 1.6)
        fig, axes = _figure(1, len(items), figsize=(sum(widths) + 1.2, height), squeeze=False,
                            gridspec_kw={"width_ratios": widths})
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("#f0f0f0")
        image = None
        any_off = False
        for ax, (title, panel), kind in zip(axes[0], items, kinds):
            scores, masks = panel[0], panel[1]
            grid = _grid(scores)
            top = np.nanmax(grid) if np.isfinite(grid).any() and np.nanmax(grid) > 0 else 1.0
            image = ax.imshow(np.ma.masked_invalid(grid / top), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                              interpolation="nearest")
            for layer, row in enumerate(masks or []):
                for head, active in enumerate(row):
                    if not active:
                        any_off = True
                        ax.plot(head, layer, marker="x", color=OFF_COLOR, markersize=8, markeredgewidth=2)
            ax.set_title(f"{title}\nscore: {kind}")
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(grid.shape[1]))
            ax.set_yticks(range(grid.shape[0]))
        bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.9, pad=0.02)
        used = sorted(set(kinds))
        bar.set_label(f"responsiveness ({', '.join(used)}; ÷ panel max)")
        if any_off:
            axes[0][0].plot([], [], "x", color=OFF_COLOR, markeredgewidth=2, label="switched off")
            fig.legend(loc="outside lower center", frameon=False)
    return fig


# ----- accuracy vs stored bytes ------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both fewer bytes and higher accuracy, by bytes."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _bytes_text(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def plot_accuracy_vs_bytes(rows: Sequence[dict], path: str | Path, title: str = "",
                           ylabel: str = "test accuracy (%)") -> FigureFiles:
    """Accuracy vs adapter bytes, one labelled point per row, with the Pareto front.

    ``rows``: dicts with ``method`` (the label), ``accuracy``, ``adapter_bytes`` and optional ``std``
    (error bar: ± std over seeds). Zero-byte methods (a linear probe stores only its classifier,
    which is excluded) stay on the plot: the x axis is symmetric-log, linear below its smallest
    positive size."""
    with plt.rc_context(_STYLE):
        fig, ax = _figure(figsize=(6.4, 4.2))
        xs = [float(r["adapter_bytes"] or 0.0) for r in rows]
        ys = [float(r["accuracy"]) for r in rows]
        errs = [float(r.get("std") or 0.0) if not math.isnan(float(r.get("std") or 0.0)) else 0.0 for r in rows]
        colors = plt.get_cmap("tab10")
        markers = "osD^vP*Xh<>"
        for i, (x, y, e, row) in enumerate(zip(xs, ys, errs, rows)):
            # a legend entry per point: labels of nearby points never overlap
            ax.errorbar([x], [y], yerr=[e] if e else None, fmt=markers[i % len(markers)], color=colors(i % 10),
                        capsize=3, ms=6, zorder=3, label=row["method"])
        front = pareto_front(list(zip(xs, ys)))
        if len(front) > 1:
            fx, fy = [xs[i] for i in front], [ys[i] for i in front]
            ax.step(fx, fy, where="post", color="0.4", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
        fig.legend(loc="outside lower center", ncol=min(3, len(rows) + 1), frameon=False,
                   title="bars: ± std over seeds" if any(errs) else None)
        positive = [x for x in xs if x > 0]
        if positive and any(x == 0 for x in xs):
            ax.set_xscale("symlog", linthresh=min(positive) / 2, linscale=0.6)
            ax.set_xlim(left=-min(positive) / 4, right=max(positive) * 3)
            ax.set_xlabel("adapter size (symmetric log axis, linear near 0; classifier excluded)")
        elif positive:
            ax.set_xscale("log")
            ax.set_xlim(min(positive) / 3, max(positive) * 3)
            ax.set_xlabel("adapter size (log axis, classifier excluded)")
        else:
            ax.set_xlabel("adapter size (classifier excluded)")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _bytes_text(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        spread = max(errs, default=0.0)
        pad = max(1.0, (max(ys) - min(ys)) * 0.15) if ys else 1.0
        ax.set_ylim(min(ys) - pad - spread, max(ys) + pad + spread)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)


# ----- curves with seed bands --------------------------------------------------------------------
def _integer_axis(ax, xs: Sequence[float], log2: bool) -> None:
    """Plain numbers at exactly the x values used (1, 2, 4, 8, 16 — not 2^0 …)."""
    if log2:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs))))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _draw_series(ax, series: Mapping[str, tuple], log2: bool, colors: dict, clip: tuple | None = None) -> None:
    for label, values in series.items():
        xs, ys = values[0], values[1]
        ax.plot(xs, ys, marker="o", ms=4, label=label, color=colors[label])
        if len(values) > 3 and values[2] is not None:
            lo, hi = np.asarray(values[2], float), np.asarray(values[3], float)
            if clip is not None:  # a band of ± std must not leave the range accuracy lives in
                lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(np.asarray(xs, float)[ok], lo[ok], hi[ok], color=colors[label], alpha=0.18, lw=0)
    if all(float(x).is_integer() for v in series.values() for x in v[0]):
        _integer_axis(ax, [x for v in series.values() for x in v[0]], log2)
    ax.grid(True, alpha=0.3)


def _colors(labels: Sequence[str]) -> dict:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def plot_lines(series: Mapping[str, tuple], path: str | Path, xlabel: str, ylabel: str, title: str = "",
               logx: bool = False, band: str = "", clip: tuple | None = None) -> FigureFiles:
    """Labelled lines ``{label: (xs, ys[, lo, hi])}``; ``lo``/``hi`` draw a band (kept inside
    ``clip``), which ``band`` names in the legend title (e.g. "band: ± std over 3 seeds")."""
    with plt.rc_context(_STYLE):
        fig, ax = _figure(figsize=(5.6, 3.9))
        _draw_series(ax, series, logx, _colors(list(series)), clip=clip)
        if clip is not None:  # a flat line must not put the axis beyond the possible range
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, clip[0] - 1.0), min(high, clip[1] + 1.0))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend(title=band or None, frameon=False, fontsize=8, title_fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_fewshot(panels: Mapping[str, Mapping[str, tuple]], path: str | Path, band: str = "",
                 title: str = "") -> FigureFiles:
    """Accuracy vs shots, one panel per dataset (the average over datasets last):
    ``{panel title: {variant: (shots, means, lo, hi)}}``; one shared legend."""
    with plt.rc_context(_STYLE):
        n = len(panels)
        cols = min(3, n)
        rows = math.ceil(n / cols)
        fig, axes = _figure(rows, cols, figsize=(3.3 * cols, 2.8 * rows + 0.6), squeeze=False)
        labels = list(dict.fromkeys(label for p in panels.values() for label in p))
        colors = _colors(labels)
        for ax, (name, series) in zip(axes.flat, panels.items()):
            _draw_series(ax, series, True, colors, clip=(0.0, 100.0))
            ax.set_title(name)
            ax.set_xlabel("shots per class")
            ax.set_ylabel("test accuracy (%)")
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles = [plt.Line2D([], [], color=colors[label], marker="o", ms=4) for label in labels]
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), frameon=False,
                   title=band or None)
        if title:
            fig.suptitle(title)
    return save_figure(fig, path)


# ----- grouped bars (Figure 3) -------------------------------------------------------------------
def plot_grouped_bars(panels: Mapping[str, Mapping[str, Mapping[str, tuple]]], path: str | Path, ylabel: str,
                      title: str = "", reference: float | None = None, note: str = "") -> FigureFiles:
    """``{panel: {group (x tick): {bar: (value, low, high, n)}}}``: grouped bars with interval error
    bars (omitted where n < 2); ``reference`` draws a horizontal line (e.g. ratio 1)."""
    with plt.rc_context(_STYLE):
        n = len(panels)
        bars = list(dict.fromkeys(b for p in panels.values() for g in p.values() for b in g))
        groups_max = max(len(p) for p in panels.values())
        width = max(3.6, 0.9 * groups_max * max(1, len(bars)) / 2 + 1.6) * n
        fig, axes = _figure(1, n, figsize=(width, 3.8 + 0.25 * math.ceil(len(bars) / 2)), squeeze=False, sharey=True)
        colors = _colors(bars)
        width = 0.8 / max(1, len(bars))
        for ax, (name, groups) in zip(axes[0], panels.items()):
            xs = np.arange(len(groups))
            for j, bar in enumerate(bars):
                values = [groups[g].get(bar) for g in groups]
                heights = [v[0] if v else np.nan for v in values]
                lo = [v[0] - v[1] if v and v[3] >= 2 else 0.0 for v in values]
                hi = [v[2] - v[0] if v and v[3] >= 2 else 0.0 for v in values]
                ax.bar(xs + (j - (len(bars) - 1) / 2) * width, heights, width * 0.95, color=colors[bar],
                       yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8}, label=bar)
            if reference is not None:
                ax.axhline(reference, color="0.3", linewidth=0.8, linestyle="--")
            ax.set_xticks(xs)
            ax.set_xticklabels(list(groups), rotation=20, ha="right")
            ax.set_title(name)
            ax.grid(True, axis="y", alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        finite = [v[k] for p in panels.values() for g in p.values() for v in g.values() for k in (0, 1, 2)
                  if v and np.isfinite(v[k])]
        if finite:
            low, high = min(finite), max(finite)
            span = max(high - low, 0.05)
            axes[0][0].set_ylim(max(0.0, low - 0.35 * span), high + 0.15 * span)
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center",
                   ncol=min(len(bars), max(1, int(width // 2.6))), frameon=False, title=note or None)
        if title:
            fig.suptitle(title)
    return save_figure(fig, path)


# ----- attention maps (Figure 5) -----------------------------------------------------------------
def plot_attention(images: Sequence[np.ndarray], image_names: Sequence[str], columns: Sequence[dict],
                   path: str | Path, colorbar_label: str) -> FigureFiles:
    """Attention overlaid on each input image, one column per (run, layer, head).

    ``images``: HxWx3 arrays (0..1) as the model saw them; ``columns``: dicts with ``title``,
    ``maps`` (one 2-D array per image, any resolution: drawn stretched over the image) and ``off``
    (the head's update is switched off: red frame and title). All maps share one colour scale."""
    with plt.rc_context(_STYLE):
        n_rows, n_cols = len(images), 1 + len(columns)
        fig, axes = _figure(n_rows, n_cols, figsize=(1.75 * n_cols + 0.8, 1.8 * n_rows + 0.9), squeeze=False)
        top = max(float(np.nanmax(m)) for c in columns for m in c["maps"]) or 1.0
        mappable = None
        for i, (image, name) in enumerate(zip(images, image_names)):
            h, w = image.shape[:2]
            axes[i][0].imshow(image, extent=(0, w, h, 0))
            axes[i][0].set_ylabel(name, fontsize=7)
            for j, column in enumerate(columns, 1):
                ax = axes[i][j]
                ax.imshow(image.mean(axis=2), cmap="gray", extent=(0, w, h, 0), vmin=0, vmax=1)
                mappable = ax.imshow(column["maps"][i], cmap="inferno", alpha=0.65, vmin=0, vmax=top,
                                     extent=(0, w, h, 0), interpolation="bilinear")
                if column.get("off"):
                    for spine in ax.spines.values():
                        spine.set_edgecolor(OFF_COLOR)
                        spine.set_linewidth(2)
        for row in axes:
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0][0].set_title("input")
        for j, column in enumerate(columns, 1):
            axes[0][j].set_title(column["title"] + ("\n(switched off)" if column.get("off") else ""),
                                 color=OFF_COLOR if column.get("off") else "black", fontsize=7)
        bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, pad=0.01)
        bar.set_label(colorbar_label)
    return save_figure(fig, path)


# ----- task × task agreement (task dependence of head scores) -------------------------------------
def plot_agreement(panels: Mapping[str, tuple], tasks: Sequence[str], path: str | Path, note: str = "",
                   spans: Sequence[tuple[str, int]] = ()) -> FigureFiles:
    """Task × task heatmaps, one panel per measure: ``{title: (matrix, (vmin, vmax))}`` with
    ``matrix[i][j]`` the agreement of tasks i and j (NaN: no pair; drawn grey). Diagonal cells
    (between seeds of one task) are framed; each cell shows its value; ``spans`` (group name,
    task count) draws group boundaries."""
    with plt.rc_context(_STYLE):
        n = len(tasks)
        side = max(2.6, 0.62 * n + 1.4)
        fig, axes = _figure(1, len(panels), figsize=(side * len(panels) + 0.9 * len(panels), side + 0.9),
                            squeeze=False)
        for ax, (title, (matrix, limits)) in zip(axes[0], panels.items()):
            grid = np.asarray(matrix, dtype=float)
            diverging = limits[0] < 0
            cmap = plt.get_cmap("RdBu_r" if diverging else "viridis").copy()
            cmap.set_bad("#f0f0f0")
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=limits[0], vmax=limits[1],
                              interpolation="nearest")
            for i in range(n):
                for j in range(n):
                    value = grid[i, j]
                    if np.isfinite(value):
                        shade = (value - limits[0]) / (limits[1] - limits[0])
                        dark = (abs(shade - 0.5) > 0.3) if diverging else shade < 0.55
                        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if dark else "black")
                ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2))
            edge = 0
            for _, count in list(spans)[:-1]:
                edge += count
                ax.axhline(edge - 0.5, color="0.2", linewidth=1.0)
                ax.axvline(edge - 0.5, color="0.2", linewidth=1.0)
            ax.set_xticks(range(n))
            ax.set_xticklabels(tasks, rotation=35, ha="right")
            ax.set_yticks(range(n))
            ax.set_yticklabels(tasks)
            ax.set_title(title)
            fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
        if note:
            fig.supxlabel(note, fontsize=7)
    return save_figure(fig, path)


# ----- the demo's two-panel summary ------------------------------------------------------------
def plot_accuracy_bars(rows: Sequence[dict], path: str | Path, title: str = "") -> FigureFiles:
    """Two aligned bar charts per method: test accuracy (%) and adapter bytes (classifier
    excluded). ``rows``: dicts with ``method``, ``paper`` (accuracy %) and ``adapter_bytes``."""
    with plt.rc_context(_STYLE):
        methods = [r["method"] for r in rows]
        x = np.arange(len(rows))
        fig, (ax_acc, ax_bytes) = _figure(1, 2, figsize=(9.5, 3.8))
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
    return save_figure(fig, path)
