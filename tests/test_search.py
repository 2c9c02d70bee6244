"""Searching the user's own videos end to end: tvr-index a folder with a trained checkpoint (or a zero-shot
backbone), tvr-search it; the search agrees with the evaluation, and bad input gets a clear message."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import RANKING_OVERRIDES, SMALL_OVERRIDES, assert_ranks_by_text, compose_train, recorded_scores
from test_cli import run_cli
from tvr.search.cli import run_index, run_search
from tvr.search.searcher import Searcher, SearchOptions
from tvr.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
INDEX_QUIET = ["num_workers=0", "progress=false"]


@pytest.fixture(scope="module")
def test_videos(tmp_path_factory, data_dir):
    """The synthetic test split's mp4s, as a user's folder (one in a sub-folder), and each caption's video file."""
    folder = tmp_path_factory.mktemp("my_videos")
    videos = sorted((data_dir / "synthetic" / "videos").glob("test_*.mp4"))
    for number, video in enumerate(videos):
        target = folder / ("more" if number % 3 == 0 else "") / video.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(video, target)
    captions = [
        (entry["caption"], entry["video_id"])
        for entry in json.loads((data_dir / "synthetic" / "annotations.json").read_text())["splits"]["test"]
    ]
    return folder, captions


@pytest.fixture(scope="module")
def meanpool(ranking_meanpool):
    """(best checkpoint, its metrics, the test scores and text_to_video tvr-train's evaluation ranked)."""
    run_dir, results, scores, text_to_video = ranking_meanpool
    return run_dir / "checkpoints" / "best.ckpt", results, scores, text_to_video


@pytest.fixture(scope="module")
def xpool(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("search_xpool")
    with recorded_scores() as calls:
        results = train(compose_train(["head=xpool", *RANKING_OVERRIDES] + SMALL_OVERRIDES + QUIET, data_dir, run_dir))
    scores, text_to_video = calls[-1]  # the test split is evaluated last
    assert_ranks_by_text(scores)
    return run_dir / "checkpoints" / "best.ckpt", results, scores, text_to_video


@pytest.fixture(scope="module")
def prompt_switch(tmp_path_factory, data_dir):
    """A Prompt Switch run (the video tower switching prompts inside the ViT, meanP, the captioning loss)."""
    run_dir = tmp_path_factory.mktemp("search_prompt_switch")
    overrides = ["experiment=synthetic_promptswitch", *RANKING_OVERRIDES] + SMALL_OVERRIDES + QUIET
    with recorded_scores() as calls:
        results = train(compose_train(overrides, data_dir, run_dir))
    scores, text_to_video = calls[-1]
    assert_ranks_by_text(scores)
    return run_dir / "checkpoints" / "best.ckpt", results, scores, text_to_video


def search_r1(searcher: Searcher, captions, **options) -> tuple[float, list]:
    results = searcher.search([caption for caption, _ in captions], SearchOptions(top_k=5, **options))
    hits = [result.hits[0].path.endswith(f"/{video_id}.mp4") for result, (_, video_id) in zip(results, captions)]
    return 100.0 * sum(hits) / len(hits), results


def hit_ids(result) -> list[str]:
    return [Path(hit.path).stem for hit in result.hits]


def evaluation_top_ids(scores, text_to_video, captions, k: int = 5) -> list[list[str]]:
    """Each query's top-k video ids as the evaluation ranked them (column ``text_to_video[i]`` is caption i's video)."""
    assert sorted(text_to_video.tolist()) == list(range(len(captions)))  # one caption per video in the test split
    column_ids = {int(column): video_id for column, (_, video_id) in zip(text_to_video, captions)}
    return [[column_ids[int(column)] for column in row] for row in scores.topk(k, dim=1).indices]


def assert_one_stage_search_equals_the_evaluation(trained, test_videos, index: Path, head: str) -> list:
    """A query-independent head's index serves the evaluation's top-5 ids and scores and its t2v R@1."""
    checkpoint, results, scores, text_to_video = trained
    folder, captions = test_videos
    run_index([str(folder), f"ckpt_path={checkpoint}", f"index={index}", *INDEX_QUIET])
    r1, found = search_r1(Searcher(index), captions)
    assert [hit_ids(result) for result in found] == evaluation_top_ids(scores, text_to_video, captions)
    top_scores = scores.topk(5, dim=1).values
    assert torch.allclose(torch.tensor([[hit.score for hit in result.hits] for result in found]), top_scores, atol=1e-5)
    assert r1 == results["t2v"]["R1"]
    assert f"Flat inner-product search over the {head} embeddings" in found[0].note
    return found


def test_search_r1_equals_the_evaluation_for_a_query_independent_head(meanpool, test_videos, tmp_path):
    found = assert_one_stage_search_equals_the_evaluation(meanpool, test_videos, tmp_path / "index", "meanpool")
    assert all(a.score >= b.score for result in found for a, b in zip(result.hits, result.hits[1:]))
    assert "clip4clip, 8 frames" in (tmp_path / "index" / "index.html").read_text()


def test_search_serves_a_prompt_switch_checkpoint_at_the_evaluations_accuracy(prompt_switch, test_videos, tmp_path):
    """Prompt Switch's video vector is query-independent: one index stage, the evaluation's ranking and R@1."""
    assert_one_stage_search_equals_the_evaluation(prompt_switch, test_videos, tmp_path / "index", "prompt_switch")
    assert "segment_passes, 8 frames" in (tmp_path / "index" / "index.html").read_text()  # the two groups of 4


@pytest.mark.slow
def test_two_stage_search_stays_within_a_point_of_exhaustive_xpool_scoring(xpool, test_videos, tmp_path):
    checkpoint, results, scores, text_to_video = xpool
    folder, captions = test_videos
    run_index([str(folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'index'}", *INDEX_QUIET])
    searcher = Searcher(tmp_path / "index")
    full_r1, full = search_r1(searcher, captions, rerank_k=len(captions), check_recall=True)  # every video re-scored
    assert [hit_ids(result) for result in full] == evaluation_top_ids(scores, text_to_video, captions)
    assert full_r1 == results["t2v"]["R1"] and all(result.first_stage_recall == 1.0 for result in full)
    narrow_r1, narrow = search_r1(searcher, captions, rerank_k=5, check_recall=True)
    assert "two stages: 5 candidates" in narrow[0].note
    assert abs(narrow_r1 - full_r1) <= 1.0
    for exhaustive, two_stage in zip(full, narrow):
        assert 0.0 <= two_stage.first_stage_recall <= 1.0
        if two_stage.first_stage_recall == 1.0:  # the first stage kept every exhaustive top-5 video: the same ranking
            assert hit_ids(two_stage) == hit_ids(exhaustive)


@pytest.mark.slow
def test_cli_prints_ranked_videos_json_lines_and_a_page(meanpool, test_videos, data_dir, tmp_path):
    checkpoint = meanpool[0]
    folder, captions = test_videos
    built = run_cli(
        "tvr-index",
        [str(folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'index'}", *INDEX_QUIET],
        data_dir,
        tmp_path,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "indexed 12 videos (12 new, 0 changed since indexed, 0 unreadable retried)" in built.stdout
    assert "; 0 unchanged; 0 unreadable now; 12 videos in" in built.stdout
    again = run_cli(
        "tvr-index",
        [str(folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'index'}", *INDEX_QUIET],
        data_dir,
        tmp_path,
    )
    assert "indexed 0 videos (0 new, 0 changed since indexed, 0 unreadable retried)" in again.stdout
    assert "; 12 unchanged; 0 unreadable now; 12 videos in" in again.stdout
    one = run_cli(
        "tvr-search",
        [captions[0][0], f"index={tmp_path / 'index'}", "--top-k", "3", "--html", str(tmp_path / "page.html")],
        data_dir,
        tmp_path,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    ranked = [line for line in one.stdout.splitlines() if not line.startswith("#")]
    assert len(ranked) == 3 and ranked[0].split()[0] == "1" and ranked[0].endswith(".mp4")
    page = (tmp_path / "page.html").read_text()
    assert captions[0][0] in page and page.count("data:image/jpeg;base64,") == 3
    assert "clip4clip" in page  # the index summary names the checkpoint's sampler
    (tmp_path / "queries.txt").write_text("\n".join(caption for caption, _ in captions[:4]) + "\n\n")
    many = run_cli(
        "tvr-search", ["--queries", str(tmp_path / "queries.txt"), f"index={tmp_path / 'index'}"], data_dir, tmp_path
    )
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert [line["query"] for line in lines] == [caption for caption, _ in captions[:4]]
    assert all(len(line["results"]) == 10 for line in lines)


def test_an_index_refuses_another_model_naming_both(meanpool, test_videos, tmp_path, capsys):
    checkpoint = meanpool[0]
    folder, captions = test_videos
    zero_shot = ["backbone=tiny", "head=meanpool", f"index={tmp_path / 'zero'}", *INDEX_QUIET]
    run_index([str(folder), *zero_shot])  # a zero-shot (random tiny CLIP) index
    capsys.readouterr()
    run_search([captions[0][0], f"index={tmp_path / 'zero'}"])  # reopening rebuilds the same zero-shot model
    assert captions[0][0] in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        run_index([str(folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'zero'}", *INDEX_QUIET])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.count("'backbone': 'tvr-tiny'") == 2 and error.count("weights_sha256") == 2

    # The index's checkpoint, moved and changed (one weight): the weights hash tells them apart.
    run_index([str(folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'index'}", *INDEX_QUIET])
    changed = torch.load(checkpoint, weights_only=True)
    next(value for key, value in changed["state_dict"].items() if key.startswith("backbone.")).add_(1.0)
    torch.save(changed, tmp_path / "changed.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_search([captions[0][0], f"index={tmp_path / 'index'}", f"ckpt_path={tmp_path / 'changed.ckpt'}"])
    error = capsys.readouterr().err
    assert "was built with {'head': 'meanpool'" in error and "but the model is {'head': 'meanpool'" in error
    hashes = re.findall(r"'weights_sha256': '([0-9a-f]{16})'", error)
    assert len(hashes) == 2 and hashes[0] != hashes[1]


@pytest.mark.parametrize(
    "query, message",
    [
        ("   ", "the query is empty"),
        ("red " * 40, r"has 40 tokens, but this model reads at most 14 \(its data.max_words=16"),
    ],
)
def test_bad_queries_are_refused_with_the_reason(meanpool, test_videos, tmp_path, capsys, query, message):
    checkpoint = meanpool[0]
    folder, _ = test_videos
    run_index([str(folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'index'}", *INDEX_QUIET])
    with pytest.raises(SystemExit):
        run_search([query, f"index={tmp_path / 'index'}"])
    assert re.search(message, capsys.readouterr().err)


def test_empty_and_non_video_folders_get_a_clear_message(meanpool, tmp_path, capsys):
    checkpoint = meanpool[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no video here")
    for folder, message in (("empty", "no video files"), ("docs", "it holds 1 files, none with a video extension")):
        with pytest.raises(SystemExit):
            run_index([str(tmp_path / folder), f"ckpt_path={checkpoint}", f"index={tmp_path / 'index'}", *INDEX_QUIET])
        assert message in capsys.readouterr().err


def test_unknown_config_choices_are_named_before_any_work(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    for overrides, message in (
        (["head=nope"], "Could not find 'head/nope'"),
        (["bogus=1"], "Could not override 'bogus'"),
        ([], "index: has no value"),
        ([f"index={tmp_path / 'out'}"], "ckpt_path: has no value"),
    ):
        with pytest.raises(SystemExit) as stop:
            run_index([str(tmp_path / "videos"), *overrides])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
