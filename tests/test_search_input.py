"""tvr-index and tvr-search on odd input: ``=`` inside a query or a videos path, and settings or files that
cannot work, each answered by one ``error:`` line (before the model loads where it can be)."""

from __future__ import annotations

import re

import pytest
import torch

from test_index_build import write_video
from tvr.search import searcher as searcher_module
from tvr.search.cli import run_index, run_search
from tvr.search.searcher import Searcher

ZERO_SHOT = ["backbone=tiny", "head=meanpool", "num_workers=0", "progress=false"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A zero-shot index of eight one-second videos."""
    root = tmp_path_factory.mktemp("search_input")
    videos = root / "videos"
    colours = [
        (200, 0, 0),
        (0, 200, 0),
        (0, 0, 200),
        (200, 200, 0),
        (0, 200, 200),
        (200, 0, 200),
        (90,) * 3,
        (250,) * 3,
    ]
    for number, colour in enumerate(colours):
        write_video(videos / f"clip{number}.mp4", colour, 1)
    result = run_index([str(videos), *ZERO_SHOT, f"index={root / 'index'}"])
    assert result["total"] == len(colours)
    return root / "index"


def test_a_query_holding_equals_signs_is_searched(index, capsys):
    capsys.readouterr()
    run_search(["E=mc2 physics lecture", f"index={index}", "--top-k", "3"])
    out = capsys.readouterr().out
    assert out.startswith("# E=mc2 physics lecture\n") and out.count(".mp4") == 3


def test_a_videos_folder_holding_equals_is_found(tmp_path, monkeypatch):
    write_video(tmp_path / "run=1" / "take=2" / "a.mp4", (10, 120, 200), 1)
    assert run_index([str(tmp_path / "run=1"), *ZERO_SHOT, f"index={tmp_path / 'index'}"])["total"] == 1
    monkeypatch.chdir(tmp_path / "run=1")  # relative: the path looks like an override but names a folder
    write_video(tmp_path / "run=1" / "take=2" / "b.mp4", (200, 120, 10), 1)
    assert run_index(["take=2", *ZERO_SHOT, f"index={tmp_path / 'index'}"])["total"] == 2


def bad_queries_file(folder):
    (folder / "queries.txt").write_bytes(b"a red clip\n\xff\xfe broken\n")
    return ["--queries", str(folder / "queries.txt")]


@pytest.mark.parametrize(
    "arguments, message, before_the_model",
    [
        (bad_queries_file, r"--queries .*queries.txt is not UTF-8 text", True),
        (["red", "--factory", "bogus"], r"factory='bogus' is not a faiss index factory string", False),
        (["red", "--factory", "IVF1024,PQ64"], r"1024 inverted lists but only 8 training vectors", False),
        (["red", "--factory", "IVF4,Flat", "--nprobe", "-3"], r"--nprobe \(-3\) must be at least 1", True),
        (lambda folder: ["red", "--html", str(folder / "a_file" / "page.html")], r"a_file is not a folder", True),
    ],
)
def test_bad_search_settings_end_in_one_error_line(
    index, tmp_path, capsys, monkeypatch, arguments, message, before_the_model
):
    (tmp_path / "a_file").write_text("")
    if callable(arguments):
        arguments = arguments(tmp_path)
    if before_the_model:
        monkeypatch.setattr(searcher_module, "load_retriever", lambda *_: pytest.fail("the model was loaded"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_search([*arguments, f"index={index}"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in error
    assert error.startswith("error: ") and re.search(message, error.splitlines()[0])


def test_a_cached_trained_index_is_not_reused_after_a_video_is_replaced(tmp_path):
    videos = tmp_path / "videos"
    for number in range(4):
        write_video(videos / f"clip{number}.mp4", (60 * number, 100, 200 - 40 * number), 1)
    index = tmp_path / "index"

    def assert_ivf_matches_exact():
        # IVF2 visiting both lists is exhaustive: a fresh (or rightly cached) index scores as Flat does
        exact, ivf = Searcher(index), Searcher(index, factory="IVF2,Flat", nprobe=2)
        query = exact.contents.summary[:1]
        torch.testing.assert_close(ivf.vectors.search(query, 4)[0], exact.vectors.search(query, 4)[0])

    run_index([str(videos), *ZERO_SHOT, f"index={index}"])
    assert_ivf_matches_exact()
    write_video(videos / "clip0.mp4", (250, 250, 250), 2)  # replaced in place: same count of videos
    run_index([str(videos), *ZERO_SHOT, f"index={index}"])
    assert_ivf_matches_exact()
