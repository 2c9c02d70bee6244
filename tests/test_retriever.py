"""The Retriever out of the training loop: a checkpoint alone gives the model, evaluation runs without a
Trainer and gives tvr-train's numbers, and tvr-eval evaluates a backbone zero-shot."""

import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train, recorded_scores
from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.checkpoint import load_checkpoint_file
from tvr.config import to_plain
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.evaluation.engine import EvalCollector, evaluate_loaders
from tvr.models.retriever import Retriever

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def trained(ranking_meanpool):
    run_dir, results, _, _ = ranking_meanpool
    return run_dir, results


def test_evaluation_without_a_trainer_gives_the_numbers_tvr_train_printed(ranking_meanpool, data_dir, tmp_path):
    run_dir, results, train_scores, train_text_to_video = ranking_meanpool
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    retriever = Retriever.from_checkpoint(checkpoint)
    assert type(retriever) is Retriever and not retriever.training
    assert retriever.run_config["head"]["name"] == "meanpool" and retriever.source == str(checkpoint.resolve())
    cfg = compose_train(SMALL_OVERRIDES, data_dir, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.prepare_data()
    datamodule.setup("test")
    with recorded_scores() as calls:
        metrics, failed = evaluate_loaders(
            retriever, datamodule.test_dataloader(), to_plain(cfg.evaluation), records=datamodule.records["test"]
        )
    assert failed == [] and (metrics["num_texts"], metrics["num_videos"]) == (12, 12)
    ((scores, text_to_video),) = calls  # the same similarity matrix, query by query, as tvr-train's test evaluation
    assert torch.equal(text_to_video, train_text_to_video)
    torch.testing.assert_close(scores, train_scores, atol=1e-6, rtol=0)
    assert torch.equal(scores.argsort(1, descending=True), train_scores.argsort(1, descending=True))
    assert metrics["t2v"] == results["t2v"] and metrics["v2t"] == results["v2t"]


def test_from_checkpoint_needs_only_the_file_and_refuses_foreign_weights(trained, tmp_path):
    run_dir, _ = trained
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")
    retriever = Retriever.from_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    for key, value in retriever.state_dict().items():  # every weight from the file, none left at its initial value
        assert torch.equal(value, checkpoint["state_dict"][key]), key
    checkpoint["state_dict"]["head.unexpected"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "extra.ckpt")
    with pytest.raises(Exception, match=r"unexpected keys \['head.unexpected'\]"):
        Retriever.from_checkpoint(tmp_path / "extra.ckpt")


def test_identity_names_head_backbone_and_changes_with_any_weight():
    torch.manual_seed(0)
    retriever = Retriever({"model_name": "tvr-tiny"}, {"name": "meanpool"})
    first = retriever.identity()
    assert first["head"] == "meanpool" and first["backbone"] == "tvr-tiny" and len(first["weights_sha256"]) == 16
    assert retriever.identity() == first  # a function of the weights alone
    with torch.no_grad():
        retriever.backbone.clip.visual.conv1.weight[0, 0, 0, 0] += 1e-3
    assert retriever.identity()["weights_sha256"] != first["weights_sha256"]


def test_summaries_are_the_head_embeddings_for_query_independent_heads_and_clip_vectors_otherwise():
    torch.manual_seed(0)
    frames, mask = (
        torch.randn(3, 4, 3, 32, 32),
        torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool),
    )
    tokens = torch.zeros(3, 8, dtype=torch.long)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, torch.tensor([320, 1929, 2368]), 49407
    meanpool = Retriever({"model_name": "tvr-tiny"}, {"name": "meanpool"}).eval()
    rep, summary = meanpool.encode_videos_with_summary(frames, mask)
    text_rep, text_summary = meanpool.encode_texts_with_summary(tokens)
    assert meanpool.summary_is_exact
    assert torch.allclose(text_summary @ summary.T, meanpool.score(text_rep, rep), atol=1e-6)
    xpool = Retriever({"model_name": "tvr-tiny"}, {"name": "xpool"}).eval()
    _, summary = xpool.encode_videos_with_summary(frames, mask)
    assert not xpool.summary_is_exact
    features = xpool.frame_features(frames, mask)  # CLIP4Clip's mean of unit frame vectors, over real frames only
    expected = torch.nn.functional.normalize(
        torch.nn.functional.normalize(features.frames[1, :2], dim=-1).mean(0), dim=0
    )
    assert torch.allclose(summary[1], expected, atol=1e-6)


def test_tvr_eval_evaluates_a_backbone_zero_shot(data_dir, tmp_path):
    torch.manual_seed(3)
    retriever = Retriever({"model_name": "tvr-tiny"}, {"name": "meanpool"}).eval()
    weights = tmp_path / "clip.pt"
    torch.save(retriever.backbone.clip.state_dict(), weights)
    overrides = [
        "backbone=tiny",
        f"backbone.weights={weights}",
        "head=meanpool",
        "data=synthetic",
        *SMALL_OVERRIDES,
        *QUIET,
    ]
    result = evaluate(compose_train(overrides, data_dir, tmp_path / "eval", config_name="eval"))
    assert (
        result["run"]["checkpoint"].startswith("none (zero-shot")
        and "zero-shot" in result["measured"]["checkpoint_selection"]
    )
    cfg = compose_train(SMALL_OVERRIDES, data_dir, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.prepare_data()
    datamodule.setup("test")
    expected, _ = evaluate_loaders(retriever, datamodule.test_dataloader(), to_plain(cfg.evaluation))
    assert result["t2v"] == expected["t2v"] and result["v2t"] == expected["v2t"]  # the weights file's model, exactly
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_tvr_eval_without_checkpoint_or_model_says_both_ways(data_dir, tmp_path):
    with pytest.raises(
        ConfigError, match=r"ckpt_path: has no value and backbone, head, data are not chosen.*zero-shot with backbone="
    ):
        evaluate(compose_train(QUIET, data_dir, tmp_path, config_name="eval"))


def test_collector_refuses_a_batch_that_does_not_say_what_it_holds():
    with pytest.raises(ValueError, match="unknown role 'frames'"):
        EvalCollector().add(None, {"role": ["frames"]})
