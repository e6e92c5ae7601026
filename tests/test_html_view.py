"""The HTML view of a compression (CompressedPrompt.to_html, mmcompress compress --html): its structure read back
with an HTML parser, and a rendering in headless Chromium (skipped where the system package is absent)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mmcompress import create_compressor
from mmcompress.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = ["Paris is the capital and most populous city of France. The river flows to the sea through the city. "
        "Berlin is the capital of Germany.",
        "Photosynthesis converts light energy into chemical energy <that> can later be released & used."]
CHROMIUM = Path("/usr/bin/chromium")


class Segments(HTMLParser):
    """Text of each segment body, split into (class, text) runs."""

    def __init__(self):
        super().__init__()
        self.segments: list[list[tuple[str, str]]] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class", "")
        if cls == "body" and self._stack and self._stack[-1] == "segment":
            self.segments.append([])
        self._stack.append(cls)

    def handle_endtag(self, tag):
        self._stack.pop()

    def handle_data(self, data):
        if "body" in self._stack:
            self.segments[-1].append((self._stack[-1], data))


@pytest.fixture
def result(tiny_dir):
    compressor = create_compressor("random", model=str(tiny_dir), unit="word")
    return compressor.compress(DOCS, rate=0.5, question="What is the capital of France?")


def test_to_html_shows_every_original_character_with_kept_and_dropped_units(result):
    page = result.to_html()
    parser = Segments()
    parser.feed(page)
    assert len(parser.segments) == len(result.original.segments) == 3
    for segment, selection, runs in zip(result.original.segments, result.selections, parser.segments):
        assert "".join(text for _, text in runs) == segment.text  # nothing lost, escaping undone by the parser
        if segment.compressible:
            units = [segment.text[s:e] for s, e in selection.spans.tolist()]
            kept = [t for cls, t in runs if cls == "kept"]
            dropped = [t for cls, t in runs if cls == "dropped"]
            assert kept == [u for u, k in zip(units, selection.kept) if k]
            assert dropped == [u for u, k in zip(units, selection.kept) if not k]
            assert kept and dropped
        else:
            assert [cls for cls, _ in runs] == ["verbatim"]
    assert "&lt;" in page and "&amp;" in page and "<that>" not in page  # escaped, not markup
    assert f"{result.origin_tokens} &rarr; {result.compressed_tokens} tokens" in page


def test_cli_html_flag_writes_the_view(tmp_path, tiny_dir, capsys):
    doc, view = tmp_path / "doc.txt", tmp_path / "view.html"
    doc.write_text(DOCS[0])
    assert main(["compress", str(doc), "--method", "random", "--rate", "0.5", "--model", str(tiny_dir),
                 "--html", str(view), "--quiet"]) == 0
    out = capsys.readouterr().out
    page = view.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'class="dropped"' in page and out.strip()
    assert main(["compress", str(doc), "--method", "icae", "--model", str(tiny_dir), "--html", str(view)]) == 2
    assert capsys.readouterr().err.startswith("error: --html")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (Debian package: chromium)")
def test_headless_chromium_renders_kept_highlights_and_struck_through_drops(result, tmp_path):
    from PIL import Image

    from mmcompress.html_view import DROPPED_COLOUR, KEPT_BACKGROUND

    page, png = tmp_path / "view.html", tmp_path / "view.png"
    page.write_text(result.to_html())
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--hide-scrollbars", "--window-size=1000,700", f"--screenshot={png}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert png.exists(), proc.stderr[-2000:]
    keep_dir = Path(__file__).resolve().parent.parent / "outputs"
    if keep_dir.is_dir():  # for a person to look at (outputs/ is git-ignored)
        shutil.copy(png, keep_dir / "html_view.png")
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)

    def near(colour: str, tolerance: int = 12) -> int:
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=1) <= tolerance).sum())

    assert near(KEPT_BACKGROUND) > 2000, "kept units are highlighted"
    assert near(DROPPED_COLOUR, 40) > 200, "dropped units are drawn in red"
    assert near("#ffffff") > pixels.shape[0] // 3, "a page, not a blank or error screen"
