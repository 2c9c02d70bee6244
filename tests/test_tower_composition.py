"""Towers compose with heads: ``head.video_tower``/``head.text_tower`` (and their options) put any head over
any tower that gives what the head reads, checked at start-up; the head configs are presets of today's
towers (TempMe's: meanP over the tempme and lora_text towers); X-Pool over TempMe's tower and GLSCL with
LoRA train on the synthetic set."""

import csv
import math

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO_ROOT, SMALL_OVERRIDES, compose_train
from tvr.builders import backbone_preprocessing, build_datamodule, build_module
from tvr.checkpoint import load_checkpoint_file
from tvr.errors import ConfigError
from tvr.models.heads import create_head
from tvr.models.heads.base import split_tower_choice
from tvr.models.heads.xpool import XPoolHead
from tvr.models.retriever import Retriever
from tvr.models.towers.lora_text import LoRATextTower
from tvr.train import train
from tvr.validation import validate_train_config

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
HEAD_CONFIGS = sorted(path.stem for path in (REPO_ROOT / "conf" / "head").glob("*.yaml"))
DEEP = {"model_name": "tvr-tiny-deep"}
TEMPME_ON_DEEP = {
    "frames": 8,
    "clip_layers": [3, 4, 5],
    "clip_groups": [2, 2, 2],
}  # conf/backbone_head/tiny_tempme*.yaml


@pytest.mark.parametrize("head", HEAD_CONFIGS)
def test_every_head_config_names_the_towers_its_head_reads_by_default(head, data_dir, tmp_path):
    cfg = compose_train([f"head={head}"], data_dir, tmp_path)
    options, choice = split_tower_choice({key: value for key, value in cfg.head.items() if key != "name"})
    with torch.device("meta"):
        built = create_head(cfg.head.name, embed_dim=64, **options)
    defaults = built.default_towers()
    for kind in ("video", "text"):
        assert choice[kind].name == defaults[kind]["name"] and choice[kind].options == {}, kind


def test_the_tempme_preset_is_meanpool_over_the_tempme_and_lora_text_towers():
    torch.manual_seed(0)
    preset = Retriever(DEEP, {"name": "tempme", "clip_weights": "trainable", **TEMPME_ON_DEEP}).eval()
    composed = Retriever(
        DEEP,
        {
            "name": "meanpool",
            "video_tower": "tempme",
            "text_tower": "lora_text",
            "video_tower_options": {"clip_weights": "trainable", **TEMPME_ON_DEEP},
            "text_tower_options": {"clip_weights": "trainable"},
        },
    ).eval()
    assert {kind: tower.identity() for kind, tower in composed.head.towers().items()} == {
        kind: tower.identity() for kind, tower in preset.head.towers().items()
    }
    with torch.no_grad():
        for _, param in preset.head.tower_parameters():
            param.normal_(0, 0.1)  # trained adapters, so the towers' weights matter
    composed.load_state_dict(preset.state_dict(), strict=True)  # same keys, same tower identities
    frames, mask = torch.randn(2, 8, 3, 32, 32), torch.ones(2, 8, dtype=torch.bool)
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0], [49406, 320, 1125, 539, 49407]])
    with torch.no_grad():
        scores = [
            model.score(model.encode_texts(tokens), model.encode_videos(frames, mask)) for model in (preset, composed)
        ]
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)
    # LoRA of rank 0 reads CLIP's own text tower, as the preset always has (its checkpoints load as saved)
    assert Retriever(DEEP, {"name": "tempme", "lora_rank": 0, **TEMPME_ON_DEEP}).head.text_tower.name == "clip_text"


def test_a_preset_s_own_options_carry_over_only_to_a_tower_that_takes_them():
    with torch.device("meta"):
        head = create_head("tempme", embed_dim=64, tome_r=1, clip_weights="trainable")
    _, choice = split_tower_choice({"video_tower": "per_frame", "text_tower_options": {"lora_rank": 4}})
    assert head.tower_specs(choice) == {
        "video": {"name": "per_frame", "clip_weights": "trainable"},
        "text": {"name": "lora_text", "lora_rank": 4, "clip_weights": "trainable"},
    }


def test_a_tower_that_lacks_what_the_head_reads_is_refused_naming_the_key(data_dir, tmp_path, monkeypatch):
    """GLSCL reads word tokens; a text tower that gives only sentence vectors cannot serve it (meanP it can).
    A head that reads patch tokens cannot sit on TempMe's tower, which gives a merged token set instead."""
    monkeypatch.setattr(LoRATextTower, "outputs", frozenset({"sentence", "mask"}))
    cfg = compose_train(["head=glscl", "head.text_tower=lora_text"], data_dir, tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"head\.text_tower: is 'lora_text', whose text features lack tokens, which head "
        r"'glscl' reads.*clip_text",
    ) as error:
        validate_train_config(cfg)
    assert "video_tower" not in str(error.value)
    validate_train_config(compose_train(["head=meanpool", "head.text_tower=lora_text"], data_dir, tmp_path))

    monkeypatch.setattr(XPoolHead, "reads", {**XPoolHead.reads, "video": XPoolHead.reads["video"] | {"patches"}})
    cfg = compose_train(["head=xpool", "backbone_head=tiny_tempme_tower"], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"head\.video_tower: is 'tempme', whose video features lack patches"):
        validate_train_config(cfg)
    with pytest.raises(ValueError, match=r"reads patches .* 'tempme' video tower \(head\.video_tower\)"):
        Retriever(DEEP, {"name": "xpool", "video_tower": "tempme", "video_tower_options": TEMPME_ON_DEEP})
    per_frame = Retriever({"model_name": "tvr-tiny"}, {"name": "xpool"})  # a head reading patches gets them
    assert (
        per_frame.frame_features(torch.randn(1, 2, 3, 32, 32), torch.ones(1, 2, dtype=torch.bool)).patches is not None
    )


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (
            ["head.video_tower=lora_text"],
            "head.video_tower",
            "'lora_text' is a text tower, not a video tower; valid video towers: per_frame, prompt_switch, tempme",
        ),
        (
            ["head.text_tower=gpt"],
            "head.text_tower",
            "unknown text tower 'gpt'; valid text towers: clip_text, lora_text",
        ),
        (["head.text_tower_options=8"], "head.text_tower_options", "expected a mapping"),
        (
            ["+head.video_tower_options.lora_rank=4"],
            "head.video_tower_options.lora_rank",
            "not an option of the 'per_frame' video tower",
        ),
        (
            ["head.text_tower=lora_text", "+head.text_tower_options.lora_rank=0"],
            "head.text_tower_options",
            "lora_rank must be an integer >= 1",
        ),
        (
            ["backbone_head=tiny_tempme_tower", "+head.video_tower_options.tome_r=9"],
            "head.video_tower_options",
            "'tempme' video tower of head 'xpool' does not fit the backbone's ViT.*tome_r=9 removes more tokens",
        ),
        (["head.video_tower=tempme"], "data.video.train_sampler.max_frames", "built for clips of 12 frames"),
    ],
)
def test_a_tower_choice_that_cannot_work_fails_at_start_up_naming_the_key(overrides, key, message, data_dir, tmp_path):
    cfg = compose_train(["head=xpool", *overrides], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        validate_train_config(cfg)
    assert f"{key}:" in str(error.value)


def logged_losses(run_dir) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, towers, trained",
    [
        (["head=xpool", "backbone_head=tiny_tempme_tower"], {"video": "tempme", "text": "clip_text"}, "video_tower."),
        (["head=glscl", "head.text_tower=lora_text"], {"video": "per_frame", "text": "lora_text"}, "text_tower."),
    ],
    ids=["xpool_over_tempme", "glscl_with_lora_text"],
)
def test_a_head_trains_over_a_tower_of_another_method(overrides, towers, trained, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_train(
        [*overrides, "trainer.max_epochs=2", "trainer.log_every_n_steps=1", *SMALL_OVERRIDES, *QUIET], data_dir, run_dir
    )
    pl.seed_everything(cfg.seed, workers=True)  # as tvr-train does before building the data and the model
    build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    initial = build_module(cfg).state_dict()
    results = train(cfg)

    losses = logged_losses(run_dir)
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)  # 2 epochs x 4 batches
    assert all(0 <= results[direction]["R1"] <= 100 for direction in ("t2v", "v2t"))  # evaluation ran
    state = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    adapters = [key for key in state if key.startswith(f"head.{trained}") and torch.is_tensor(state[key])]
    assert adapters and any(not torch.equal(state[key], initial[key]) for key in adapters)
    assert all(
        not torch.equal(state[key], initial[key]) for key in adapters if key.endswith(".up")
    )  # every LoRA B left 0
    retriever = Retriever.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert {kind: tower.name for kind, tower in retriever.head.towers().items()} == towers
    assert retriever.head.name == cfg.head.name
    assert {
        kind: identity["name"] for kind, identity in results["run"]["towers"].items()
    } == towers  # metrics.json says which
