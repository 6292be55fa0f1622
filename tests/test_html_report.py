"""``--html`` and ``--markdown`` of quantize, compare and diagnose: one self-contained HTML
file (no script, no external asset; charts as inline SVG) with the documented sections,
and a short Markdown summary."""

from __future__ import annotations

import importlib.util
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from onnxq.cli.main import cli
from onnxq.report.html import EXTRA_MESSAGE

from conftest import SAMPLES

FLOAT = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
EVAL = SAMPLES / "digits_eval.npz"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


class Page(HTMLParser):
    """Tags, external references and the number of inline <svg> of each <section>."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[str] = []
        self.svgs: dict[str, int] = {}
        self._section: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        values = dict(attrs)
        for key in ("src", "href", "xlink:href", "action", "data"):
            ref = values.get(key) or ""
            if ref.startswith(("http:", "https:", "//", "file:")):
                self.external.append(f"<{tag} {key}={ref}>")
        if tag == "section":
            self._section = values.get("id")
            self.svgs[self._section or ""] = 0
        elif tag == "svg" and self._section is not None:
            self.svgs[self._section] += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None


def assert_self_contained(text: str) -> Page:
    page = Page(text)
    assert page.external == []
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "http://" not in text and "https://" not in text  # not even a namespace URL
    assert not re.search(r"url\((?!#)", text) and "@import" not in text  # only url(#id)
    return page


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The sample model quantized with --html and --markdown, on the first 64 samples of
    the sample data (the reports' contents are tested, not the model's quality)."""
    folder = tmp_path_factory.mktemp("html")
    calib, held_out = folder / "calib.npz", folder / "eval.npz"
    for source, target in ((CALIB, calib), (EVAL, held_out)):
        with np.load(source) as data:
            np.savez(target, **{k: data[k][:64] for k in data.files})
    out, html, md = folder / "q.onnx", folder / "q.html", folder / "q.md"
    # size: the int8 model whatever the timing finds, so that every section has content
    result = invoke(
        "quantize", FLOAT, "-o", out, "--data", calib, "--eval", held_out, "--labels", "labels",
        "--html", html, "--markdown", md, "-q", "--optimize-for", "size",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"model": out, "html": html, "markdown": md, "dir": folder, "calib": calib,
            "eval": held_out}  # fmt: skip


def test_quantize_html_has_every_section_inline(quantized):
    text = quantized["html"].read_text()
    page = assert_self_contained(text)
    for section in ("summary", "outputs", "layers", "histograms", "size-latency", "settings"):
        assert section in page.svgs, section
    assert page.svgs["layers"] == 1 and page.svgs["histograms"] == 1
    assert page.svgs["size-latency"] == 1 and page.svgs["summary"] == 0
    assert "/res_b/Conv_output_0" in text  # a tensor of the per-layer table
    assert "calibration.method" in text and "minmax" in text  # the settings used
    assert "accuracy</th><td>float " in text  # accuracy in the summary


def test_quantize_markdown_is_a_short_summary(quantized):
    text = quantized["markdown"].read_text()
    assert text.startswith("### onnxq quantize: ")
    assert "|  | value |" in text and "| size |" in text
    assert "| output | cosine mean | SQNR dB | max abs err | top-1 agree |" in text
    assert "| logits |" in text
    assert len(text.splitlines()) < 40


def test_compare_html_shows_size_and_latency(quantized):
    html, md = quantized["dir"] / "c.html", quantized["dir"] / "c.md"
    result = invoke(
        "compare", FLOAT, quantized["model"], "--data", quantized["eval"], "--latency-runs", 3,
        "--html", html, "--markdown", md, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = html.read_text()
    page = assert_self_contained(text)
    assert page.svgs["layers"] == 1 and page.svgs["size-latency"] == 1
    assert "latency, one sample" in text and "candidate.quantize.mode" in text
    assert "| latency |" in md.read_text()


def test_diagnose_html_with_sensitivity(quantized):
    html = quantized["dir"] / "d.html"
    result = invoke(
        "diagnose", FLOAT, quantized["model"], "--data", quantized["calib"], "--limit", 32,
        "--sensitivity", "--html", html, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    page = assert_self_contained(html.read_text())
    assert page.svgs["layers"] == 1 and page.svgs["histograms"] == 1
    assert page.svgs["sensitivity"] == 1
    assert "size-latency" not in page.svgs


def test_html_without_the_extra_is_one_line_exit_2(quantized, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jinja2" else real(name, *a)
    )
    target = quantized["dir"] / "never.onnx"
    result = invoke(
        "quantize", FLOAT, "-o", target, "--data", CALIB, "--html", quantized["dir"] / "x.html"
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {EXTRA_MESSAGE}"
    assert not target.exists()  # refused before any work


def test_report_files_never_overwrite_an_input(quantized):
    for args in (
        ("compare", FLOAT, quantized["model"], "--data", EVAL, "--html", EVAL),
        ("compare", FLOAT, quantized["model"], "--data", quantized["eval"], "--markdown", FLOAT),
        ("quantize", FLOAT, "-o", quantized["dir"] / "y.onnx", "--data", CALIB, "--html", CALIB),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ")
