"""The EDA's charts (eda.html): each a function of figures from ``eda.json`` that returns the chart as a PNG
``data:`` URI (html_page.png_uri). Every chart is drawn even when there is nothing to show (``empty_chart``), so
the page keeps its layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .html_page import ACCENT, figure, png_uri

TARGET_BARS = 40  # classes drawn with their name in the target chart; every class is in the table beside it


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="both", alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


def empty_chart(title: str, width: float = 6.0) -> str:
    """A chart frame saying there is nothing to draw, so the page keeps its layout."""
    fig = figure(width, 2.2)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "no values to show", ha="center", va="center", fontsize=11, color="#52606d")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=11, loc="left")
    return png_uri(fig)


def bar_chart(counts: dict[str, int], title: str, xlabel: str, ylabel: str, *,
               horizontal: bool | None = None, log: bool = False, width: float = 6.0) -> str:
    if not counts:
        return empty_chart(title, width)
    labels, values = list(counts), list(counts.values())
    horizontal = len(labels) > 12 if horizontal is None else horizontal
    if horizontal:
        fig = figure(width, max(2.2, 0.6 + 0.2 * len(labels)))
        ax = fig.add_subplot()
        ax.barh(range(len(labels)), values, color=ACCENT)
        ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 20 else 8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
        ax.set_ylabel(xlabel)
        if log:
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,}", va="center", fontsize=6.5, color="#333")
        ax.margins(x=0.12)
    else:
        fig = figure(width, 3.4)
        ax = fig.add_subplot()
        ax.bar(range(len(labels)), values, color=ACCENT)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0,
                      ha="right" if len(labels) > 5 else "center")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=7, color="#333")
        ax.margins(y=0.12)
    _style(ax)
    ax.set_title(title, fontsize=11, loc="left")
    return png_uri(fig)


def _class_colours(values: Sequence[int]) -> list[str]:
    return ["#c8553d" if v < 10 else "#e0a458" if v < 100 else ACCENT for v in values]


def class_chart(counts: dict[str, int], label: str, top: int = TARGET_BARS) -> str:
    """The ``top`` largest classes as labelled horizontal bars: a hundred names under vertical bars would be a few
    pixels tall, so only the largest are named here and every class is in the table beside the chart."""
    if not counts:
        return empty_chart(f"{label}: products per class")
    title = f"The {top} largest of {len(counts)} {label} classes" if len(counts) > top else f"{label} classes"
    items = list(counts.items())[:top]
    labels, values = [k for k, _ in items], [v for _, v in items]
    fig = figure(5.6, 0.9 + 0.22 * len(labels))  # about the width of its column: shown unscaled
    ax = fig.add_subplot()
    ax.barh(range(len(labels)), values, color=_class_colours(values), height=0.75)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.invert_yaxis()
    # A linear axis: bar lengths compare as counts (the long tail is on the rank chart's log axis).
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8, color="#333")
    ax.margins(x=0.1, y=0.01)  # room for the count beside the longest bar
    ax.set_xlabel("products")
    legend = "\nbars in orange: < 100 products, red: < 10" if min(values) < 100 else ""
    ax.set_title(title + legend, fontsize=10.5, loc="left")
    _style(ax)
    return png_uri(fig)


def class_rank_chart(counts: dict[str, int], label: str) -> str:
    """Every class by rank on a log scale: the shape of the long tail, which the labelled chart cannot show."""
    if not counts:
        return empty_chart(f"{label}: all classes by rank")
    values = list(counts.values())
    fig = figure(6.0, 3.4)
    ax = fig.add_subplot()
    ax.bar(range(1, len(values) + 1), values, color=_class_colours(values), width=0.85)
    ax.set_yscale("log")
    ax.axhline(10, color="#c8553d", lw=0.8, ls="--", label="10 products")
    ax.axhline(100, color="#e0a458", lw=0.8, ls="--", label="100 products")
    ax.set_xlim(0.3, len(values) + 0.7)
    ax.set_xlabel("class rank (1 = largest; names in the table)")
    ax.set_ylabel("products (log scale)")
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_title(f"All {len(values)} classes by size (red: < 10, orange: < 100)", fontsize=11, loc="left")
    _style(ax)
    return png_uri(fig)


def coverage_chart(counts: dict[str, int], marks: Sequence[int]) -> str:
    if not counts:
        return empty_chart("Share of products covered by the top-k classes")
    values = np.array(list(counts.values()), dtype=float)
    cumulative = np.cumsum(values) / values.sum()
    fig = figure(6.0, 3.4)
    ax = fig.add_subplot()
    k = np.arange(1, len(values) + 1)
    ax.plot(k, cumulative * 100, color=ACCENT, lw=2)
    for top in marks:
        if top <= len(values):
            ax.plot(top, cumulative[top - 1] * 100, "o", color="#c8553d", ms=4)
            ax.annotate(f"top {top}: {cumulative[top - 1]:.1%}", (top, cumulative[top - 1] * 100),
                        textcoords="offset points", xytext=(6, -12), fontsize=7)
    ax.set_xlabel("number of largest classes (k)")
    ax.set_ylabel("share of products covered (%)")
    ax.set_ylim(0, 102)
    ax.set_title("Share of products covered by the top-k classes", fontsize=11, loc="left")
    _style(ax)
    return png_uri(fig)


def heatmap(table: dict[str, dict[str, int]], classes: list[str], col: str, order: list[str], label: str,
            n_rows: int) -> str:
    rows = classes[:n_rows]
    if not rows or not order:
        return empty_chart(f"{label} × {col}")
    matrix = np.array([[table.get(r, {}).get(c, 0) for c in order] for r in rows], dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    fig = figure(max(5.5, 2.6 + 0.85 * len(order)), 1.2 + 0.27 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(order)):
            if matrix[i, j]:
                ax.text(j, i, f"{int(matrix[i, j]):,}", ha="center", va="center", fontsize=6.5,
                        color="white" if shares[i, j] > 0.55 else "#222")
    ax.set_xlabel(col)
    ax.set_ylabel(f"{label} (largest {len(rows)})")
    ax.set_title(f"{label} × {col}", fontsize=11, loc="left")
    fig.colorbar(im, ax=ax, shrink=0.6, label="share of the class")
    return png_uri(fig)


def image_chart(images: dict[str, Any]) -> str:
    fig = figure(11.0, 3.2)
    axes = fig.subplots(1, 3)
    panels = [
        ({k: v for k, v in images["status"].items() if v or k != "unchecked"}, "Image status", "status"),
        (dict(list(images["sizes"].items())[:8]), "Image sizes (readable, top 8)", "width x height"),
        (images["modes"], "Colour modes (readable)", "PIL mode"),
    ]
    for ax, (counts, title, xlabel) in zip(axes, panels, strict=True):
        labels, values = list(counts), list(counts.values())
        colors = ["#c8553d" if lab in ("missing", "corrupt") else ACCENT for lab in labels]
        ax.bar(range(len(labels)), values, color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0,
                      ha="right" if len(labels) > 3 else "center")
        if values and max(values) > 50 * max(1, min(values)):
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=7)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("products")
        ax.margins(y=0.15)
        _style(ax)
    return png_uri(fig)
