"""The Markdown report: a short summary for a CI comment (GitHub-flavoured tables), from
a :class:`onnxq.report.page.Page`. Pure text; needs no extra."""

from __future__ import annotations

from onnxq.report.page import Page, db, pct, share

__all__ = ["render_markdown"]

WORST = 5  # tensors and nodes listed


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(page: Page) -> str:
    """Summary table, per-output metrics, notes, and the worst tensors and nodes."""
    lines = [f"### {_cell(page.title)}", ""]
    lines += _table(["", "value"], [[k, v] for k, v in page.summary])
    if page.outputs:
        lines += [f"**{_cell(page.outputs_title)}**", ""]
        lines += _table(
            ["output", "cosine mean", "SQNR dB", "max abs err", "top-1 agree"],
            [[o.name, o.cosine_mean, o.sqnr_db, o.max_abs_error, o.top1] for o in page.outputs],
        )
    lines += [f"- {_cell(n)}" for n in page.notes]
    if page.notes:
        lines.append("")
    lines += _layers(page)
    lines.append(f"<sub>onnxq {page.version}</sub>")
    return "\n".join(lines) + "\n"


def _layers(page: Page) -> list[str]:
    d = page.layers
    if d is None or not d.layers:
        return []
    lines = [f"**worst tensors** ({d.samples} samples)", ""]
    lines += _table(
        ["tensor", "own SQNR dB", "SQNR dB", "clipped", "range used", "range seen"],
        [
            [
                f"`{e.tensor}`",
                db(e.own_sqnr_db),
                db(e.sqnr_db),
                share(e.clipped_share),
                f"[{e.range_min:.4g}, {e.range_max:.4g}]",
                f"[{e.observed_min:.4g}, {e.observed_max:.4g}]",
            ]
            for e in d.layers[:WORST]
        ],
    )
    s = d.sensitivity
    if s is not None and s.nodes:
        lines += [f"**most sensitive nodes** (each quantized alone, {s.samples} samples)", ""]
        lines += _table(
            ["node", "op", "output SQNR dB", "share of noise"],
            [[f"`{n.node}`", n.op_type, db(n.sqnr_db), pct(n.share, 1)] for n in s.nodes[:WORST]],
        )
    return lines
