"""A checkpoint written by an older main still loads, validates for tvr-eval and scores as it did."""

import pytest
import torch

from conftest import FIXTURES, compose_train
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.models.retriever import Retriever
from tvr.validation import validate_eval_config

LEGACY = FIXTURES / "legacy"
CHECKPOINT = LEGACY / "xpool_tiny_e3d39b2.ckpt"


def recorded():
    return torch.load(LEGACY / "xpool_tiny_e3d39b2_inputs.pt", weights_only=True)


def test_an_old_checkpoint_scores_recorded_inputs_as_it_did():
    inputs = recorded()
    retriever = Retriever.from_checkpoint(CHECKPOINT)
    with torch.no_grad():
        scores = retriever.score(
            retriever.encode_texts(inputs["tokens"]), retriever.encode_videos(inputs["frames"], inputs["frame_mask"])
        )
    torch.testing.assert_close(scores, inputs["scores"], rtol=0, atol=1e-6)


def test_an_old_checkpoint_passes_tvr_eval_validation(tmp_path):
    cfg = compose_train([f"ckpt_path={CHECKPOINT}"], tmp_path, tmp_path / "eval", config_name="eval")
    validate_eval_config(cfg)
    assert cfg.head.name == "xpool" and cfg.backbone.model_name == "legacy-micro"


def test_the_models_own_preprocessing_gives_the_recorded_frames():
    from tvr.data.transforms import ClipFrameTransform

    inputs = recorded()
    transform = ClipFrameTransform(Retriever.from_checkpoint(CHECKPOINT).backbone.preprocessing)
    for clip, frames, mask in zip(inputs["raw_frames"].numpy(), inputs["frames"], inputs["frame_mask"]):
        real = mask.bool()
        torch.testing.assert_close(transform(clip)[real], frames[real], rtol=0, atol=0)


def test_another_head_than_the_checkpoints_is_named_as_such(tmp_path):
    cfg = compose_train([f"ckpt_path={CHECKPOINT}", "head=meanpool"], tmp_path, tmp_path / "eval", config_name="eval")
    assert cfg.head.name == "meanpool"  # head=meanpool's own config, not the checkpoint's head over it
    with pytest.raises(ConfigError, match=r"^head: .* trained with head 'xpool', and head=meanpool replaced it"):
        evaluate(cfg)
