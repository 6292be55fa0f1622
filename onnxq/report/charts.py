"""Charts of the HTML report as inline SVG, drawn with matplotlib's object API (a
``Figure`` rendered by the Agg/SVG canvas; pyplot's global state is never touched).

Text stays text (``svg.fonttype: none``, the page's fonts draw it), ids are
deterministic (``svg.hashsalt``), and the XML prologue, DOCTYPE and metadata are
stripped, so the SVG embeds in HTML and references nothing outside the page. Needs the
``report`` extra (matplotlib).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullLocator

from onnxq.report.layer_stats import LayerError
from onnxq.report.page import share
from onnxq.report.sensitivity import Sensitivity

__all__ = ["bars_chart", "histograms_chart", "layer_chart", "sensitivity_chart"]

_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "onnxq",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_BAR = "#4c72b0"
_BAD = "#dd8452"
_PALE = "#b8c7e0"
_RANGE = "#c44e52"
MAX_LAYERS = 40  # rows of the per-layer chart (worst first)


def _style() -> AbstractContextManager[Any]:
    """matplotlib settings for the duration of one chart (the global ones are restored)."""
    return matplotlib.rc_context(cast(Any, _RC))  # its keys are typed as literals


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    # HTML5 puts <svg> and xlink:href in their namespaces itself: no namespace URLs needed
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _clamped(value: float) -> float:
    return -50.0 if value != value else max(min(value, 150.0), -50.0)


def layer_chart(layers: Sequence[LayerError]) -> str:
    """Own SQNR (dB, the bars; orange when more than 0.1 % of the values are clipped, the
    share written beside) and SQNR against float at that point (the pale bars), worst at
    the top."""
    shown = list(layers[:MAX_LAYERS])
    with _style():
        fig = Figure(figsize=(9.0, 1.0 + 0.32 * len(shown)))
        ax = fig.add_subplot()
        y = np.arange(len(shown))
        own = [_clamped(e.own_sqnr_db) for e in shown]
        at = [_clamped(e.sqnr_db) for e in shown]
        colors = [_BAD if e.clipped_share > 1e-3 else _BAR for e in shown]
        ax.barh(y - 0.2, own, height=0.4, color=colors, label="own SQNR (this tensor's range)")
        ax.barh(y + 0.2, at, height=0.4, color=_PALE, label="SQNR against float at this point")
        ax.set_yticks(y, [_short(e.tensor) for e in shown])
        ax.invert_yaxis()
        ax.set_xlabel("dB (higher is better)")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
        for i, e in enumerate(shown):
            if e.clipped_share > 1e-3:
                ax.text(own[i], i - 0.2, f"  {share(e.clipped_share)} clipped", va="center")
        return _svg(fig)


def histograms_chart(layers: Sequence[LayerError], count: int = 4) -> str:
    """Histograms of the float values of the ``count`` worst tensors (log counts), with
    the range their codes hold drawn as red lines and the clipped outside shaded."""
    shown = [e for e in layers if e.histogram is not None][:count]
    cols = 2 if len(shown) > 1 else 1
    rows = max(1, -(-len(shown) // cols))
    with _style():
        fig = Figure(figsize=(9.0, 2.6 * rows))
        for i, e in enumerate(shown):
            ax = fig.add_subplot(rows, cols, i + 1)
            _histogram(ax, e)
        fig.tight_layout()
        return _svg(fig)


def _histogram(ax: Axes, e: LayerError) -> None:
    h = e.histogram
    assert h is not None
    edges, counts = h.edges(), h.counts
    used = np.nonzero(counts)[0]
    first, last = (int(used[0]), int(used[-1]) + 1) if used.size else (0, counts.size)
    low = min(edges[first], e.range_min)
    high = max(edges[last], e.range_max)
    pad = 0.04 * (high - low or 1.0)
    ax.stairs(np.maximum(counts, 0.8), edges, fill=True, color=_BAR, baseline=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(numticks=4))
    ax.yaxis.set_minor_locator(NullLocator())  # hundreds of tick labels otherwise (slow)
    ax.set_xlim(low - pad, high + pad)
    for edge in (e.range_min, e.range_max):
        ax.axvline(edge, color=_RANGE, linestyle="--", linewidth=1.2)
    ax.axvspan(low - pad, e.range_min, color=_RANGE, alpha=0.08)
    ax.axvspan(e.range_max, high + pad, color=_RANGE, alpha=0.08)
    ax.set_title(
        f"{_short(e.tensor, 40)}\nown {e.own_sqnr_db:.1f} dB, {share(e.clipped_share)} clipped",
        fontsize=8,
    )
    ax.set_ylabel("values")


def sensitivity_chart(sens: Sensitivity, count: int = 20) -> str:
    """Each node's share of the output noise when quantized alone, worst at the top."""
    shown = list(sens.nodes[:count])
    with _style():
        fig = Figure(figsize=(9.0, 0.8 + 0.26 * len(shown)))
        ax = fig.add_subplot()
        y = np.arange(len(shown))
        ax.barh(y, [100 * n.share for n in shown], color=_BAR)
        ax.set_yticks(y, [f"{_short(n.node, 40)} ({n.op_type})" for n in shown])
        ax.invert_yaxis()
        ax.set_xlabel("share of the summed output noise, each node quantized alone (%)")
        return _svg(fig)


def bars_chart(
    groups: Sequence[tuple[str, Sequence[str], Sequence[float], str]],
) -> str:
    """Side-by-side bar panels: (title, labels, values, unit) each."""
    with _style():
        fig = Figure(figsize=(4.2 * len(groups), 2.4))
        for i, (title, labels, values, unit) in enumerate(groups):
            ax = fig.add_subplot(1, len(groups), i + 1)
            ax.bar(list(labels), list(values), color=[_BAR, _BAD][: len(values)])
            ax.set_title(title)
            ax.set_ylabel(unit)
            for x, v in enumerate(values):
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom")
        fig.tight_layout()
        return _svg(fig)
