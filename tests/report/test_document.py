"""The report document renders the same content to Markdown and to self-contained HTML."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from crammer.report.document import Bullets, Code, Document, Heading, Image, Paragraph, Table, to_html, to_markdown


def _png(path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def test_markdown_and_html_carry_the_same_content(tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    png = _png(plots / "loss.png")
    doc = Document("Run <x>")
    doc.add(
        Heading("Data"),
        Paragraph("uses `cram run` & more"),
        Bullets(["one", "two|three"]),
        Table(["task", "score"], [["CoLA", "12.5"], ["a|b", "1"]]),
        Image(png, "loss curve"),
        Code('{"a": 1}', "json"),
    )
    md = to_markdown(doc, tmp_path)
    assert md.startswith("# Run <x>\n")
    assert "## Data" in md and "- two|three" in md
    assert "| a\\|b | 1 |" in md  # a pipe inside a cell must not split the column
    assert "![loss curve](plots/loss.png)" in md
    assert '```json\n{"a": 1}\n```' in md

    page = to_html(doc)
    assert "<title>Run &lt;x&gt;</title>" in page
    assert "<code>cram run</code> &amp; more" in page
    assert "<td>CoLA</td><td>12.5</td>" in page
    # The image is embedded, byte for byte, so the HTML needs no other file.
    start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    embedded = page[start : page.index('"', start)]
    assert base64.b64decode(embedded) == png.read_bytes()
    assert "plots/loss.png" not in page
