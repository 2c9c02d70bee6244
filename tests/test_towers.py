"""The tower seam: towers own what they add inside CLIP, get their own learning-rate group and freezing
policy, are chosen by the head, are validated against the backbone and the data before any work, and
refuse checkpoints of another tower; `tvr-train head=tempme` runs on the synthetic set like any head."""

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import SMALL_OVERRIDES, compose_train
from tvr.builders import backbone_preprocessing, build_datamodule, build_module
from tvr.checkpoint import load_checkpoint_file
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.models.backbone import CLIPBackbone
from tvr.models.retriever import Retriever
from tvr.models.towers import create_tower, list_towers
from tvr.models.towers.blocks import UnsupportedBlockError, block_forward, check_standard_blocks
from tvr.train import train
from tvr.validation import validate_train_config

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
TOKENS = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [49406, 320, 1125, 539, 320, 49407]])


def test_registry_lists_the_towers():
    assert {"per_frame", "clip_text", "tempme", "lora_text"} <= set(list_towers())


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_tvr_runs_open_clip_blocks_exactly_as_open_clip_does(tower):
    """The blocks TempMe and LoRA run are open_clip's own weights through tvr's code: without an adapter
    they compute what open_clip's forward computes, masks included."""
    backbone = CLIPBackbone("tvr-tiny")
    torch.manual_seed(0)
    blocks = backbone.clip.visual.transformer.resblocks if tower == "visual" else backbone.clip.transformer.resblocks
    x = torch.randn(3, 7, 64)
    bias = None
    if tower == "text":
        bias = torch.zeros(3, 1, 7, 7)
        bias[1, ..., 5:] = float("-inf")
    heads = blocks[0].attn.num_heads
    for block in blocks:
        mask = None if bias is None else bias.expand(3, heads, 7, 7).flatten(0, 1)
        torch.testing.assert_close(block_forward(block, x, bias=bias), block(x, attn_mask=mask), atol=1e-5, rtol=0)


def test_nonstandard_blocks_are_refused_by_name():
    with pytest.raises(UnsupportedBlockError, match="block 0 is a Linear"):
        check_standard_blocks(nn.ModuleList([nn.Linear(2, 2)]), "vision")


def test_lora_text_tower_starts_as_clip_and_adapts():
    backbone = CLIPBackbone("tvr-tiny")
    plain, adapted = create_tower("clip_text"), create_tower("lora_text", backbone=backbone, lora_rank=4)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(backbone, TOKENS).tokens, plain(backbone, TOKENS).tokens, atol=1e-5, rtol=0
        )  # B = 0
        adapted.lora[1].up.normal_()
        changed = adapted(backbone, TOKENS)
    assert not torch.allclose(changed.sentence, plain(backbone, TOKENS).sentence, atol=1e-3)
    assert sum(p.numel() for p in adapted.parameters()) == 2 * (4 * 64 + 192 * 4)


def tempme_module(data_dir, tmp_path, *overrides):
    cfg = compose_train(["head=tempme", *overrides, *SMALL_OVERRIDES], data_dir, tmp_path)
    return cfg, build_module(cfg)


def test_tempme_trains_its_adapters_alone_in_their_own_group(data_dir, tmp_path):
    cfg, module = tempme_module(data_dir, tmp_path, "optim.tower_lr=0.01", "head.clip_weights=frozen")
    assert cfg.backbone.model_name == "tvr-tiny-deep"  # conf/backbone_head/tiny_tempme.yaml
    trainable = {name for name, param in module.named_parameters() if param.requires_grad}
    assert trainable == {f"head.{name}" for name, _ in module.head.tower_parameters()}
    assert not module.backbone.logit_scale.requires_grad
    module.trainer = type("T", (), {"estimated_stepping_batches": 10, "precision": "32-true", "max_epochs": 1})()
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert {group["name"] for group in groups} == {"tower"} and groups[0][
        "initial_lr"
    ] == 0.01  # lr: 0 at warm-up start


def test_tempme_full_fine_tuning_trains_clip_in_the_backbone_group(data_dir, tmp_path):
    _, module = tempme_module(data_dir, tmp_path)  # the synthetic setup's default: no pretrained CLIP to keep
    assert all(param.requires_grad for param in module.backbone.parameters())
    module.trainer = type("T", (), {"estimated_stepping_batches": 10, "precision": "32-true", "max_epochs": 1})()
    names = {group["name"] for group in module.configure_optimizers()["optimizer"].param_groups}
    assert {"tower", "backbone", "backbone_no_decay"} <= names


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (
            ["backbone.model_name=tvr-tiny"],
            "head",
            r"does not fit the backbone's ViT \(2 blocks.*below the vision depth 2",
        ),
        (["head.clip_groups=[2,2,3]"], "head", r"do not fit 8 frames.*clip_groups=\[2, 2, 2\]"),
        (["head.tome_r=9"], "head", r"tome_r=9 removes more tokens"),
        (
            ["data.video.eval_sampler.max_frames=12"],
            "data.video.eval_sampler.max_frames",
            "built for clips of 8 frames",
        ),
        (["data.video.train_sampler.fill=pad"], "data.video.train_sampler.name", "may pad short videos"),
    ],
)
def test_a_schedule_or_sampler_that_does_not_fit_fails_at_start_up(overrides, key, message, data_dir, tmp_path):
    cfg = compose_train(["head=tempme", *overrides], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        validate_train_config(cfg)
    assert key in str(error.value)


@pytest.mark.slow
def test_tvr_train_head_tempme_trains_evaluates_and_reloads(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_train(
        ["head=tempme", "head.clip_weights=frozen", "trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET, data_dir, run_dir
    )
    pl.seed_everything(cfg.seed, workers=True)  # as tvr-train does before building the data and the model
    build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    initial = build_module(cfg).state_dict()
    results = train(cfg)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["run"]["head"] == "tempme" and written["run"]["sampler"] == "fps_uniform_decord"
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")  # weights_only=True
    state = checkpoint["state_dict"]
    assert state["head.video_tower._extra_state"]["clip_groups"] == [2, 2, 2]
    changed = {key for key, value in state.items() if torch.is_tensor(value) and not torch.equal(value, initial[key])}
    assert changed and all(".lora." in key or "temporal_embeddings" in key for key in changed), (
        changed
    )  # CLIP untouched
    eval_cfg = compose_train(
        [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"] + QUIET, data_dir, tmp_path / "eval", config_name="eval"
    )
    assert evaluate(eval_cfg)["t2v"] == pytest.approx(results["t2v"])
    retriever = Retriever.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert retriever.head.video_tower.tokens_per_video()[-1] < 8 * 17
    overridden = compose_train(
        [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "head.tome_r=1"] + QUIET,
        data_dir,
        tmp_path / "eval2",
        config_name="eval",
    )
    with pytest.raises(ValueError, match=r"trained with video tower 'tempme' \(.*tome_r=2.*tome_r=1"):
        evaluate(overridden)


@pytest.fixture(scope="module")
def promptswitch_run(tmp_path_factory, data_dir):
    """A Prompt Switch run (groups of 4 in the tiny ViT) with the reference's opt-in selection: on the test
    split (``data.select_on``, which a real dataset's ``splits.val`` follows; the synthetic set's does not by
    itself), by the windowed mean of t2v R@1."""
    run_dir = tmp_path_factory.mktemp("promptswitch_run")
    overrides = [
        "experiment=synthetic_promptswitch",
        "trainer.max_epochs=2",
        "+data.select_on=test",
        "data.splits.val=${data.select_on}",
        "train.select_window=2",
        "train.select_metric=val/t2v_R1_window",
    ]
    return run_dir, train(compose_train(overrides + SMALL_OVERRIDES + QUIET, data_dir, run_dir))


def evaluate_promptswitch(run_dir, data_dir, out_dir, *overrides):
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    return evaluate(
        compose_train([f"ckpt_path={checkpoint}", *overrides] + QUIET, data_dir, out_dir, config_name="eval")
    )


@pytest.mark.parametrize(
    "override, trained, asked",
    [
        ("head.video_tower=per_frame", "'prompt_switch' (num_prompts=4", "'per_frame'"),
        (
            "head.num_prompts=2",
            "'prompt_switch' (num_prompts=4, test_aggregation=per_group)",
            "'prompt_switch' (num_prompts=2, test_aggregation=per_group)",
        ),
    ],
    ids=["another-tower", "another-prompt-count"],
)
def test_tvr_eval_refuses_a_prompt_switch_checkpoint_with_another_tower(
    promptswitch_run, data_dir, tmp_path, override, trained, asked
):
    run_dir, _ = promptswitch_run
    with pytest.raises(ValueError) as refused:
        evaluate_promptswitch(run_dir, data_dir, tmp_path / "eval", override)
    message = str(refused.value)
    assert f"trained with video tower {trained}" in message and f"this model's video tower is {asked}" in message
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_prompt_switch_run_selected_on_test_says_so_in_train_and_eval(promptswitch_run, data_dir, tmp_path):
    run_dir, results = promptswitch_run
    assert results["run"]["head"] == "prompt_switch" and results["run"]["sampler"] == "segment_passes"
    for measured, table in (
        (results["measured"], (run_dir / "results.md").read_text()),
        (
            evaluate_promptswitch(run_dir, data_dir, tmp_path / "eval")["measured"],
            (tmp_path / "eval" / "results.md").read_text(),
        ),
    ):
        assert measured["checkpoint_selected_on"] == "test" and measured["selected_on_evaluated_split"]
        assert measured["checkpoint_selection"] == "best val/t2v_R1_window"
        assert "checkpoint: best val/t2v_R1_window on split 'test'" in table
        assert "warning: the checkpoint was selected on the evaluated split 'test' itself" in table
