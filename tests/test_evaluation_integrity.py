"""Numbers that cannot be silently wrong: NaN checkpoints fail, unreadable videos never earn hits, every
table says what it measured, and tvr-eval follows the checkpoint's config without creating data."""

import json
import shutil

import numpy as np
import pytest

from conftest import SMALL_OVERRIDES, compose_train
from tvr.checkpoint import atomic_torch_save, load_checkpoint_file
from tvr.data.synthetic import write_mp4
from tvr.data.tokenizer import CaptionTokenizer
from tvr.errors import ConfigError, NonFiniteScoresError
from tvr.evaluate import evaluate
from tvr.evaluation.report import describe_measurement, measured_block
from tvr.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One short training run on the small synthetic set: (run dir, its metrics)."""
    run_dir = tmp_path_factory.mktemp("trained_run")
    results = train(compose_train(["trainer.max_epochs=2"] + SMALL_OVERRIDES + QUIET, data_dir, run_dir))
    return run_dir, results


def evaluate_checkpoint(checkpoint, data_dir, out_dir, *overrides):
    return evaluate(
        compose_train([f"ckpt_path={checkpoint}", *overrides] + QUIET, data_dir, out_dir, config_name="eval")
    )


def test_a_nan_token_embedding_fails_the_evaluation_naming_the_texts(trained, data_dir, tmp_path):
    run_dir, _ = trained
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")
    captions = [
        entry["caption"]
        for entry in json.loads((data_dir / "synthetic" / "annotations.json").read_text())["splits"]["test"]
    ]
    tokenizer = CaptionTokenizer(16)
    token_sets = [set(tokenizer(caption).tolist()) for caption in captions]
    # a word that some test captions use and others do not: its embedding becomes NaN
    poisoned = next(
        t
        for t in sorted(set.union(*token_sets) - {0, 49406, 49407})
        if 0 < sum(t in s for s in token_sets) < len(captions)
    )
    affected = sum(poisoned in tokens for tokens in token_sets)
    checkpoint["state_dict"]["backbone.clip.token_embedding.weight"][poisoned] = float("nan")
    atomic_torch_save(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(
        NonFiniteScoresError, match=rf"representations of {affected} of {len(captions)} texts \(text \d+ of video test_"
    ):
        evaluate_checkpoint(tmp_path / "nan.ckpt", data_dir, tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_test_split_of_unreadable_videos_completes_with_every_query_a_miss(trained, data_dir, tmp_path):
    run_dir, _ = trained
    damaged = shutil.copytree(data_dir, tmp_path / "data")
    shutil.rmtree(damaged / "synthetic" / "frame_cache")
    for video in (damaged / "synthetic" / "videos").glob("test_*.mp4"):
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42 corrupt")
    result = evaluate_checkpoint(
        run_dir / "checkpoints" / "best.ckpt", damaged, tmp_path / "eval", f"data.source.root={damaged / 'synthetic'}"
    )
    assert result["num_videos"] == 12 and result["unreadable_videos"] == 12
    for direction in ("t2v", "v2t"):  # no unreadable video earns a hit, however its empty clip scores
        assert result[direction]["R10"] == 0.0 and result[direction]["MdR"] == 12.0 and result[direction]["MnR"] == 12.0
    assert len(result["decode_failures"]["eval_unreadable_videos"]["test"]) == 12
    assert result["decode_failures"]["train_replaced_samples"] is None  # same keys as tvr-train's; nothing trained
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "12 texts x 12 videos" in table and "12 unreadable" in table and "count as misses" in table


def test_metrics_json_and_table_state_what_was_measured(trained):
    run_dir, results = trained
    measured = results["measured"]
    assert (measured["texts"], measured["videos"], measured["missing_videos"], measured["unreadable_videos"]) == (
        12,
        12,
        0,
        0,
    )
    assert measured["checkpoint_selected_on"] == "val" and not measured["selected_on_evaluated_split"]
    # 6 s at 3 fps: CLIP4Clip's 1-fps sampler finds 6 of the 8 frames in every video, so every video is short
    assert (measured["short_videos"], measured["train_short_videos"]) == (12, 32)
    assert results["run"]["train_set"] == {"split": "train", "pairs": 32, "videos": 32, "missing_videos": 0}
    assert set(results["decode_failures"]) == {
        "train_replaced_samples",
        "train_unreadable_videos",
        "eval_unreadable_videos",
    }
    table = (run_dir / "results.md").read_text()
    assert (
        "measured: split 'test', 12 texts x 12 videos (0 of 12 annotated videos missing from disk, 0 unreadable); "
        "short videos (fewer distinct frames than a clip holds, padded or repeated): 12 of 12, 32 in training" in table
    )
    assert (
        "re-ranking: none" in table and "checkpoint: best val/t2v_R1 on split 'val'" in table and "warning" not in table
    )


def test_a_partial_gallery_and_test_split_selection_are_flagged():
    metrics = {"num_texts": 100, "num_videos": 100, "unreadable_videos": 3, "short_videos": 7}
    lines = describe_measurement(measured_block("test", metrics, 900, "dsl", "test", "best val/t2v_R1_window"))
    text = "\n".join(lines)
    assert "100 texts x 100 videos (900 of 1000 annotated videos missing from disk, 3 unreadable)" in text
    assert "padded or repeated): 7 of 100;" in text  # tvr-eval: nothing trained, no training count
    assert "not the protocol's full gallery" in text and "3 unreadable videos" in text
    assert "selected on the evaluated split 'test' itself" in text and "DSL, a transductive method" in text


def test_eval_overrides_any_key_of_the_checkpoint_config(trained, data_dir, tmp_path):
    run_dir, results = trained
    moved = shutil.copytree(data_dir / "synthetic", tmp_path / "elsewhere" / "synthetic")
    result = evaluate_checkpoint(
        run_dir / "checkpoints" / "best.ckpt",
        tmp_path / "unused",
        tmp_path / "eval",
        f"data.source.root={moved}",
        "evaluation.rerank=dsl",
    )
    assert result["t2v"] == pytest.approx(results["t2v"]) and result["reranked"]["method"] == "dsl"
    assert result["run"]["changed_from_checkpoint"] == {  # recorded, and the derived cache path followed the root
        "data.source.root": [str(data_dir / "synthetic"), str(moved)],
        "data.frame_cache.dir": [str(data_dir / "synthetic" / "frame_cache"), str(moved / "frame_cache")],
    }
    assert result["run"]["data"]["frame_cache"]["used"] == {"test": True}  # the moved cache is found and used
    shutil.rmtree(moved / "frame_cache")  # and it was the moved one: without it, no cache is used (none is built)
    again = evaluate_checkpoint(
        run_dir / "checkpoints" / "best.ckpt", tmp_path / "unused", tmp_path / "eval2", f"data.source.root={moved}"
    )
    assert again["run"]["data"]["frame_cache"]["used"] == {"test": False} and not (moved / "frame_cache").exists()
    assert again["t2v"] == pytest.approx(results["t2v"])


def test_eval_never_creates_data_and_names_the_key_for_a_stale_root(trained, tmp_path):
    run_dir, _ = trained
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")
    stale = tmp_path / "gone" / "synthetic"
    checkpoint["hyper_parameters"]["run_config"]["data"]["source"]["root"] = str(stale)
    atomic_torch_save(checkpoint, tmp_path / "stale.ckpt")
    with pytest.raises(ConfigError, match=r"data.source.root: .*does not exist; pass data.source.root=<folder"):
        evaluate_checkpoint(tmp_path / "stale.ckpt", tmp_path / "data", tmp_path / "eval")
    assert not (tmp_path / "gone").exists()


def test_eval_never_regenerates_a_lost_video_and_counts_it(trained, data_dir, tmp_path):
    run_dir, _ = trained
    copy = shutil.copytree(data_dir / "synthetic", tmp_path / "copy" / "synthetic")
    shutil.rmtree(copy / "frame_cache")
    (copy / "videos" / "test_00003.mp4").unlink()
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")
    assert checkpoint["hyper_parameters"]["run_config"]["data"]["source"]["generate"]  # trained with generation on
    result = evaluate_checkpoint(
        run_dir / "checkpoints" / "best.ckpt", data_dir, tmp_path / "eval", f"data.source.root={copy}"
    )
    assert not (copy / "videos" / "test_00003.mp4").exists()  # the synthetic generator did not re-render it
    # the synthetic set lists its videos by path: a lost file stays in the gallery as an unreadable video, a miss
    assert result["num_videos"] == 12 and result["unreadable_videos"] == 1
    assert result["decode_failures"]["eval_unreadable_videos"]["test"] == ["test_00003"]
    assert (
        "12 texts x 12 videos (0 of 12 annotated videos missing from disk, 1 unreadable)"
        in (tmp_path / "eval" / "results.md").read_text()
    )


def test_eval_counts_a_video_shorter_than_the_clip(trained, data_dir, tmp_path):
    """At 6 frames a clip, the set's 6-second videos fill every slot at 1 fps; a 2-second one does not."""
    run_dir, _ = trained
    copy = shutil.copytree(data_dir / "synthetic", tmp_path / "copy" / "synthetic")
    shutil.rmtree(copy / "frame_cache")
    frames = [np.full((64, 64, 3), 40 * i, dtype=np.uint8) for i in range(6)]
    write_mp4(copy / "videos" / "test_00005.mp4", frames, fps=3)
    result = evaluate_checkpoint(
        run_dir / "checkpoints" / "best.ckpt",
        data_dir,
        tmp_path / "eval",
        f"data.source.root={copy}",
        "data.video.eval_sampler.max_frames=6",
    )
    assert result["measured"]["short_videos"] == 1 and result["measured"]["train_short_videos"] is None
    assert result["unreadable_videos"] == 0
    assert "padded or repeated): 1 of 12;" in (tmp_path / "eval" / "results.md").read_text()


def test_eval_reads_only_the_evaluated_split(trained, data_dir, tmp_path, monkeypatch):
    run_dir, _ = trained
    loaded = []
    from tvr.data.datasets.synthetic import SyntheticDataset

    original = SyntheticDataset.load_split
    monkeypatch.setattr(
        SyntheticDataset, "load_split", lambda self, split: loaded.append(split) or original(self, split)
    )
    evaluate_checkpoint(run_dir / "checkpoints" / "best.ckpt", data_dir, tmp_path / "eval", "split=val")
    assert set(loaded) == {"val"}


def test_eval_with_qbnorm_reads_the_training_captions_it_needs(trained, data_dir, tmp_path):
    run_dir, _ = trained
    result = evaluate_checkpoint(
        run_dir / "checkpoints" / "best.ckpt", data_dir, tmp_path / "eval", "evaluation.rerank=qbnorm"
    )
    assert (
        result["reranked"]["method"] == "qbnorm" and result["reranked"]["bank_size"] == 32
    )  # the 32 training captions
