"""The HTML report: one self-contained file (inline CSS and SVG charts; no script, no
network, no external asset) from a :class:`onnxq.report.page.Page`.

Rendered with jinja2 (autoescaping on: tensor and node names are data) from
``templates/report.html.j2``; charts by :mod:`onnxq.report.charts` (matplotlib). Both
come with the ``report`` extra: ``pip install 'onnxq[report]'``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from onnxq.errors import ConfigError
from onnxq.report.page import Page, db, pct, share

__all__ = ["EXTRA_MESSAGE", "render_html", "require_report_extra"]

EXTRA_MESSAGE = "--html needs the report extra: pip install 'onnxq[report]'"
HISTOGRAMS = 4  # worst tensors drawn as histograms
TABLE_LAYERS = 50  # rows of the per-layer table


def require_report_extra() -> None:
    """Raise :class:`ConfigError` (one line, exit 2) when jinja2 or matplotlib is missing."""
    if any(importlib.util.find_spec(m) is None for m in ("jinja2", "matplotlib")):
        raise ConfigError(EXTRA_MESSAGE)


def render_html(page: Page) -> str:
    """The page as one HTML document."""
    require_report_extra()
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("onnxq.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["db"] = db
    env.filters["pct"] = pct
    env.filters["share"] = share
    charts = {k: Markup(v) for k, v in _charts(page).items()}
    return env.get_template("report.html.j2").render(
        page=page, charts=charts, table_layers=TABLE_LAYERS, histograms=HISTOGRAMS
    )


def _charts(page: Page) -> dict[str, Any]:
    from onnxq.report import charts

    out: dict[str, Any] = {}
    layers = page.layers
    if layers is not None and layers.layers:
        out["layers"] = charts.layer_chart(layers.layers)
        out["histograms"] = charts.histograms_chart(layers.layers, HISTOGRAMS)
    if layers is not None and layers.sensitivity is not None and layers.sensitivity.nodes:
        out["sensitivity"] = charts.sensitivity_chart(layers.sensitivity)
    groups = []
    if page.sizes is not None:
        labels = ["float", "quantized"] if page.kind == "quantize" else ["reference", "candidate"]
        groups.append(("file size", labels, [s / 1e6 for s in page.sizes], "MB"))
    if page.latency is not None:
        groups.append(("latency, one sample", ["reference", "candidate"], list(page.latency), "ms"))
    if groups:
        out["bars"] = charts.bars_chart(groups)
    return out
