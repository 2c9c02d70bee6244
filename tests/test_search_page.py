"""The HTML pages of ``tvr-search --html`` and ``tvr-index``: escaping, content, self-containment, atomic
writes, and (with Chromium on PATH) that the embedded thumbnail strips really render in a browser."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tvr.search import page
from tvr.search.page import (
    Hit,
    QueryResult,
    headless_chromium,
    index_page,
    results_page,
    screenshot,
)

SUMMARY = {"head": "xpool", "backbone": "ViT-B/32", "videos": 3, "unreadable": 1}
FAKE_JPEG = b"\xff\xd8\xff\xe0not-really-a-jpeg"  # the unit tests only embed it, nothing decodes it

RED, GREEN, BLUE, YELLOW, MAGENTA, CYAN = (
    (230, 20, 20),
    (20, 200, 20),
    (20, 20, 230),
    (240, 220, 20),
    (220, 20, 220),
    (20, 210, 220),
)
# One pair of colours per hit, so each strip can be found (or found missing) in a screenshot.
STRIP_COLOURS = [(RED, GREEN), (BLUE, YELLOW), (MAGENTA, CYAN)]
# Not a JPEG past its start-of-image marker: the browser cannot decode it at all.
CORRUPT_JPEG = b"\xff\xd8" + bytes(512)

# Skipped on a developer's machine without a browser; in CI (.ci/run installs chromium and sets CI) a missing
# browser fails the render check instead of skipping it, so it can never pass unseen.
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="chromium is not on PATH (Debian: apt-get install chromium); the render check needs a real browser",
)


class _RowCollector(HTMLParser):
    """Text of every table row, one string per cell, so assertions can look at one hit at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and data.strip():
            self._cell.append(data.strip())


def table_rows(html_text: str) -> list[list[str]]:
    collector = _RowCollector()
    collector.feed(html_text)
    return collector.rows


def hit(rank: int, score: float, path: str, thumbnail: bytes | None = FAKE_JPEG) -> Hit:
    return Hit(rank=rank, score=score, path=path, duration=12.5, thumbnail=thumbnail)


def test_user_strings_are_escaped() -> None:
    query = "<script>alert(1)</script>"
    path = 'clips/<b>bold</b> & "quoted".mp4'
    results = [QueryResult(query, [hit(1, 0.5, path)], note="<i>note</i>")]
    html_text = results_page(results, {"head": "<img src=x>"}, title="<title>")
    unreadable = {"bad/<em>x</em>.mp4": "decoder said <oops> & died"}
    index_text = index_page(SUMMARY, [hit(1, math.nan, path)], unreadable)

    assert "<script>alert(1)</script>" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    for raw in ("<b>bold</b>", "<i>note</i>", "<img src=x>"):
        assert raw not in html_text
    assert "<title>&lt;title&gt;</title>" in html_text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in html_text
    assert "<em>x</em>" not in index_text and "<oops>" not in index_text
    assert "decoder said &lt;oops&gt; &amp; died" in index_text


def test_every_hit_appears_with_its_rank_score_and_path() -> None:
    hits = [hit(1, 0.912345, "a.mp4"), hit(2, 0.5, "dir/b.mp4"), hit(3, -0.00004, "c d.mkv")]
    html_text = results_page([QueryResult("a dog", hits, note="two-stage: 100 candidates")], SUMMARY)

    rows = {row[-1]: row for row in table_rows(html_text) if len(row) == 4 and row[0] != "rank"}
    assert rows == {
        "a.mp4 12.5 s": ["1", "0.9123", "", "a.mp4 12.5 s"],
        "dir/b.mp4 12.5 s": ["2", "0.5000", "", "dir/b.mp4 12.5 s"],
        "c d.mkv 12.5 s": ["3", "-0.0000", "", "c d.mkv 12.5 s"],
    }
    assert "two-stage: 100 candidates" in html_text
    assert ["backbone", "ViT-B/32"] in table_rows(html_text)


def test_missing_thumbnail_gets_a_labelled_placeholder_not_an_img() -> None:
    hits = [hit(1, 0.9, "with.mp4"), hit(2, 0.8, "without.mp4", thumbnail=None)]
    html_text = results_page([QueryResult("q", hits)], SUMMARY)

    assert html_text.count("<img") == 1
    assert 'data-thumbnails="1"' in html_text
    assert "no thumbnail" in html_text
    assert 'src=""' not in html_text


def test_index_page_lists_videos_and_unreadable_ones_with_their_count() -> None:
    videos = [Hit(0, math.nan, "v1.mp4", 3.0, FAKE_JPEG), Hit(0, math.nan, "v2.mp4", None, None)]
    unreadable = {"broken.mp4": "moov atom not found", "empty.mp4": "no frames"}
    html_text = index_page(SUMMARY, videos, unreadable)

    rows = table_rows(html_text)
    assert ["", "v1.mp4 3.0 s"] in rows
    assert ["no thumbnail", "v2.mp4 duration unknown"] in rows
    assert ["broken.mp4", "moov atom not found"] in rows and ["empty.mp4", "no frames"] in rows
    assert "Unreadable videos (2)" in html_text and "Indexed videos (2)" in html_text


@pytest.mark.parametrize("which", ["results", "index"])
def test_page_is_self_contained(which: str) -> None:
    videos = [hit(1, 0.9, "/abs/path/a.mp4"), hit(2, 0.8, "b.mp4", thumbnail=None)]
    if which == "results":
        html_text = results_page([QueryResult("q", videos)], SUMMARY)
    else:
        html_text = index_page(SUMMARY, videos, {"x.mp4": "unreadable"})

    for reference in ("http://", "https://", 'src="file', "<link", "url("):
        assert reference not in html_text
    sources = re.findall(r'src="([^"]*)"', html_text)
    assert sources and all(src.startswith("data:image/jpeg;base64,") for src in sources)


def test_screenshot_without_chromium_raises_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="chromium.*not on PATH"):
        screenshot(tmp_path / "page.html", tmp_path / "page.png")


@pytest.mark.parametrize("hangs", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["hangs-once", "hangs-always"])
def test_a_hung_chromium_is_killed_and_retried_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hangs: int
) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    # Each call records its pid; the first `hangs` calls never finish, a later one prints a DOM. Python,
    # not sh, so the fake needs nothing else on PATH.
    fake.write_text(
        f"#!{sys.executable}\nimport os, pathlib, time\ncalls = pathlib.Path({str(calls)!r})\n"
        "with calls.open('a') as f:\n    f.write(f'{os.getpid()}\\n')\n"
        f"if len(calls.read_text().split()) <= {hangs}:\n    time.sleep(600)\nprint('<html>dom</html>')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")

    def load() -> str:  # 2 s per attempt: ample for the fake to start, print and exit
        return headless_chromium(tmp_path / "p.html", "--dump-dom", profile_dir=tmp_path, timeout=4)

    if hangs < page.CHROMIUM_ATTEMPTS:
        assert load() == "<html>dom</html>\n"
    else:
        with pytest.raises(RuntimeError, match="did not finish"):
            load()
    pids = [int(line) for line in calls.read_text().split()]
    assert len(pids) == min(hangs + 1, page.CHROMIUM_ATTEMPTS)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the hung attempts were killed, not left behind


def strip_jpeg(colours: tuple[tuple[int, int, int], ...], frames_per_colour: int = 2) -> bytes:
    """A horizontal strip of solid-colour 64x48 frames, like the sampled-frame strips tvr-index makes."""
    frames = [np.full((48, 64, 3), colour, dtype=np.uint8) for colour in colours for _ in range(frames_per_colour)]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(frames, axis=1)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def colour_pixels(png: Path, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(colour)).max(axis=-1) <= tolerance).sum())


@needs_chromium
@pytest.mark.parametrize("corrupt", [False, True], ids=["all-valid", "last-strip-corrupt"])
def test_thumbnails_render_in_headless_chromium(tmp_path: Path, corrupt: bool) -> None:
    thumbnails = [strip_jpeg(colours) for colours in STRIP_COLOURS]
    if corrupt:
        thumbnails[-1] = CORRUPT_JPEG
    hits = [hit(rank, 1.0 - rank / 10, f"clip{rank}.mp4", jpeg) for rank, jpeg in enumerate(thumbnails, 1)]
    html_path = tmp_path / "results.html"
    html_path.write_text(results_page([QueryResult("a red car", hits)], {"head": "meanpool"}), encoding="utf-8")

    # Check 1: the page's own load-time script counts the strips the browser decoded.
    dom = headless_chromium(html_path, "--dump-dom", profile_dir=tmp_path / "profile")
    rendered = re.search(r'data-thumbnails-rendered="(\d+)"', dom)
    assert rendered is not None, "the render-check script did not run:\n" + dom[:2000]
    assert f'data-thumbnails="{len(thumbnails)}"' in dom
    assert int(rendered.group(1)) == len(thumbnails) - (1 if corrupt else 0)

    # Check 2: the strips' colours are on screen, and the corrupt strip's colours are not.
    png_path = tmp_path / "results.png"
    screenshot(html_path, png_path, width=1000, height=700)
    assert Image.open(png_path).size == (1000, 700)
    for index, colours in enumerate(STRIP_COLOURS):
        shown = not (corrupt and index == len(STRIP_COLOURS) - 1)
        for colour in colours:
            count = colour_pixels(png_path, colour)
            # Two 64x48 frames shown 72 px high cover ~192x72 px; a missing strip leaves at most stray pixels.
            assert (count > 2000) if shown else (count < 50), f"strip {index} colour {colour}: {count} px"
