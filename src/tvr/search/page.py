"""Self-contained HTML pages for ``tvr-search --html`` (results) and ``tvr-index`` (index summary).

A page is one file with everything inlined (CSS, the thumbnail strips as ``data:image/jpeg;base64``
URIs), so it can be mailed, attached to an issue or opened from any folder without breaking. Every
user-provided string (queries, paths, reasons, summary values) is HTML-escaped.

Each page carries a tiny inline script that, once the page has loaded, records on ``<body>`` how many
strips actually decoded (``data-thumbnails-rendered``) next to how many there are (``data-thumbnails``):
a headless browser can then tell a rendered page from one with broken images by reading the DOM.
``screenshot`` drives headless Chromium to capture a page as PNG (used for the screenshot under docs/).
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path

CHROMIUM = "chromium"
CHROMIUM_TIMEOUT_S = 60.0  # in all, shared by the attempts
CHROMIUM_ATTEMPTS = 2
# Virtual time lets Chromium run the page (load event included) without waiting in real time.
VIRTUAL_TIME_BUDGET_MS = 5000

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; }
td, th { padding: 4px 10px; text-align: left; vertical-align: middle; border-bottom: 1px solid #ddd; }
table.summary th { font-weight: 600; color: #555; }
.note { color: #555; font-style: italic; }
.num { font-variant-numeric: tabular-nums; text-align: right; }
.path { font-family: ui-monospace, monospace; word-break: break-all; }
.duration { color: #666; font-size: 0.9em; }
img.strip { display: block; height: 72px; width: auto; }
.no-thumb { display: flex; align-items: center; justify-content: center; height: 72px; width: 240px;
  background: #eee; color: #777; border: 1px dashed #aaa; font-size: 0.85em; }
.reason { color: #a33; }
"""

RENDER_CHECK_SCRIPT = """
// Render check: count the strips the browser actually decoded, so headless Chromium (tests, the docs
// screenshot) can tell a rendered page from one with broken images by reading this attribute.
window.addEventListener("load", function () {
  var rendered = 0;
  document.querySelectorAll("img.strip").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { rendered += 1; }
  });
  document.body.setAttribute("data-thumbnails-rendered", String(rendered));
});
"""


@dataclass
class Hit:
    """One video on a page: its rank and score for a query (unused on the index page) and its strip."""

    rank: int
    score: float
    path: str
    duration: float | None  # seconds; None when unknown
    thumbnail: bytes | None  # JPEG bytes of the horizontal strip of sampled frames; None: not available


@dataclass
class QueryResult:
    """The top-k hits of one query, with an optional note on how they were ranked."""

    query: str
    hits: list[Hit]
    note: str = ""  # e.g. "two-stage: 100 candidates re-scored by xpool"


def results_page(results: list[QueryResult], index_summary: dict[str, object], title: str = "tvr search") -> str:
    """The ``tvr-search --html`` page: the index summary, then one section per query with its hits."""
    sections = [_query_section(result) for result in results]
    strips = sum(hit.thumbnail is not None for result in results for hit in result.hits)
    return _document(title, [_summary_table(index_summary), *sections], strips)


def index_page(
    index_summary: dict[str, object], videos: list[Hit], unreadable: dict[str, str], title: str = "tvr index"
) -> str:
    """The ``tvr-index`` page: the summary, every indexed video (path, duration, strip), the unreadable ones."""
    video_rows = [f"<tr><td>{_strip(video)}</td><td>{_path_and_duration(video)}</td></tr>" for video in videos]
    indexed = f"<h2>Indexed videos ({len(videos)})</h2>" + _table("videos", video_rows, "no videos indexed")
    unreadable_rows = [
        f'<tr><td class="path">{escape(path)}</td><td class="reason">{escape(reason)}</td></tr>'
        for path, reason in unreadable.items()
    ]
    not_indexed = f"<h2>Unreadable videos ({len(unreadable)})</h2>" + _table("unreadable", unreadable_rows, "none")
    strips = sum(video.thumbnail is not None for video in videos)
    return _document(title, [_summary_table(index_summary), indexed, not_indexed], strips)


def headless_chromium(
    page: str | os.PathLike[str], *flags: str, profile_dir: str | os.PathLike[str], timeout: float = CHROMIUM_TIMEOUT_S
) -> str:
    """Load a local page in headless Chromium with extra ``flags`` (e.g. ``--dump-dom``); return its stdout.

    ``profile_dir`` is a throwaway ``--user-data-dir`` so runs share no state with each other or a desktop
    browser. ``--no-sandbox`` because CI runs as root, where Chromium's sandbox refuses to start.
    Headless Chromium occasionally hangs instead of exiting, so an attempt that outlives its share of
    ``timeout`` is killed and run once more; RuntimeError if Chromium is absent, fails or hangs twice.
    """
    chromium = shutil.which(CHROMIUM)
    if chromium is None:
        raise RuntimeError(f"{CHROMIUM!r} is not on PATH; install it (Debian: apt-get install chromium)")
    for attempt in range(CHROMIUM_ATTEMPTS):
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--run-all-compositor-stages-before-draw",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            # A fresh profile per attempt: a killed attempt may leave its profile locked.
            f"--user-data-dir={Path(profile_dir) / f'attempt-{attempt}'}",
            *flags,
            Path(page).resolve().as_uri(),
        ]
        finished = _run_once(command, timeout / CHROMIUM_ATTEMPTS)
        if finished is not None:
            return finished
    raise RuntimeError(f"chromium did not finish within {timeout:.0f} s ({CHROMIUM_ATTEMPTS} attempts)")


def _run_once(command: list[str], timeout: float) -> str | None:
    """Stdout of one Chromium run, or None if it hung (then its whole process group is killed)."""
    # Output goes to files, not pipes: Chromium's crash handlers run in sessions of their own and may
    # outlive the browser holding an inherited pipe, which would block reading it after the browser exits.
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session, so this reaches only its processes
            process.wait()
            return None
        stdout.seek(0)
        stderr.seek(0)
        if returncode != 0:
            message = stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"chromium exited with {returncode}: {message}")
        return stdout.read().decode("utf-8", errors="replace")


def screenshot(
    html_path: str | os.PathLike[str], png_path: str | os.PathLike[str], width: int = 1200, height: int = 900
) -> None:
    """Capture the page as a ``width`` x ``height`` PNG with headless Chromium; RuntimeError if it cannot."""
    png = Path(png_path).resolve()
    png.unlink(missing_ok=True)  # so a stale file cannot pass for a fresh capture
    with tempfile.TemporaryDirectory(prefix="tvr-chromium-") as profile:
        headless_chromium(html_path, f"--window-size={width},{height}", f"--screenshot={png}", profile_dir=profile)
    if not png.is_file():
        raise RuntimeError(f"chromium reported success but wrote no screenshot at {png}")


def _document(title: str, parts: list[str], strips: int) -> str:
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n<script>{RENDER_CHECK_SCRIPT}</script>\n"
        f'</head>\n<body data-thumbnails="{strips}">\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n'
    )


def _summary_table(index_summary: dict[str, object]) -> str:
    rows = [
        f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>" for key, value in index_summary.items()
    ]
    return _table("summary", rows, "no index summary")


def _query_section(result: QueryResult) -> str:
    note = f'<p class="note">{escape(result.note)}</p>' if result.note else ""
    rows = [
        f'<tr><td class="num">{hit.rank}</td><td class="num">{_score(hit.score)}</td>'
        f"<td>{_strip(hit)}</td><td>{_path_and_duration(hit)}</td></tr>"
        for hit in result.hits
    ]
    header = "<tr><th>rank</th><th>score</th><th>frames</th><th>video</th></tr>"
    table = _table("hits", rows, "no results", header)
    return f"<section>\n<h2>{escape(result.query)}</h2>\n{note}\n{table}\n</section>"


def _table(css_class: str, rows: list[str], empty: str, header: str = "") -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    lines = [header, *rows] if header else rows
    return f'<table class="{css_class}">\n' + "\n".join(lines) + "\n</table>"


def _strip(hit: Hit) -> str:
    # A missing thumbnail gets a labelled box rather than an <img> without a source, which would render
    # as a broken-image icon and count as a failed strip.
    if hit.thumbnail is None:
        return '<div class="no-thumb">no thumbnail</div>'
    data = base64.b64encode(hit.thumbnail).decode("ascii")
    alt = escape(f"sampled frames of {hit.path}")
    return f'<img class="strip" alt="{alt}" src="data:image/jpeg;base64,{data}">'


def _path_and_duration(hit: Hit) -> str:
    duration = "duration unknown" if hit.duration is None else f"{hit.duration:.1f} s"
    return f'<div class="path">{escape(hit.path)}</div><div class="duration">{duration}</div>'


def _score(score: float) -> str:
    return "n/a" if math.isnan(score) else f"{score:.4f}"
