"""Every config option composes through Hydra's compose API, and bad names fail at start-up."""

from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import SMALL_OVERRIDES, compose_train
from tvr.builders import backbone_preprocessing, build_datamodule, build_module
from tvr.config import config_dir
from tvr.errors import ConfigError
from tvr.models.towers.token_merging import plan_schedule
from tvr.models.weights import WeightsError
from tvr.train import train

CONF = Path(config_dir())
GROUPS = ["data", "backbone", "head", "loss", "optim", "trainer", "logger", "experiment"]


def group_options():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("[!_]*.yaml")):  # _name.yaml: shared bases, not choices
            yield group, path.stem


def leaves_like(composed: dict, own: dict) -> dict:
    """``composed`` restricted to the keys ``own`` sets, recursively."""
    return {
        key: leaves_like(composed[key], value)
        if isinstance(value, dict) and isinstance(composed.get(key), dict)
        else composed.get(key, "<missing>")
        for key, value in own.items()
    }


@pytest.mark.parametrize("group, option", list(group_options()))
def test_every_group_option_composes_and_resolves(group, option, data_dir, tmp_path):
    cfg = compose_train([f"{group}={option}"], data_dir, tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["hydra"]["runtime"]["choices"][group] == option
    # the option's own values are what was composed (an experiment is a global package; the others sit at
    # cfg[group]), except where the backbone-head preset applied after it sets them
    own = OmegaConf.load(CONF / group / f"{option}.yaml")
    own.pop("defaults", None)
    preset = CONF / "backbone_head" / f"{resolved['hydra']['runtime']['choices'].get('backbone_head')}.yaml"
    if group != "experiment" and preset.is_file():
        own = OmegaConf.merge(own, OmegaConf.load(preset).get(group) or {})
    own = OmegaConf.to_container(own)
    composed = OmegaConf.to_container(cfg if group == "experiment" else cfg[group])
    assert leaves_like(composed, own) == own, f"{group}={option}"


def test_eval_naming_the_checkpoints_own_head_keeps_its_trained_settings(data_dir, tmp_path):
    saved = compose_train(["head=seqtransf", "head.layers=2"], data_dir, tmp_path)
    torch.save({"hyper_parameters": {"run_config": OmegaConf.to_container(saved, resolve=True)}}, tmp_path / "run.ckpt")
    cfg = compose_train(
        [f"ckpt_path={tmp_path / 'run.ckpt'}", "head=seqtransf"], data_dir, tmp_path, config_name="eval"
    )
    assert cfg.head.name == "seqtransf" and cfg.head.layers == 2  # not the head config's default


def test_eval_config_composes_over_the_checkpoints_own_config(data_dir, tmp_path):
    cfg = compose_train(["ckpt_path=/some/best.ckpt", "split=val"], data_dir, tmp_path, config_name="eval")
    assert (
        cfg.get("data") is None and cfg.split == "val" and cfg.trainer.accelerator == "cpu"
    )  # no file: nothing merged

    saved = compose_train(["data.video.eval_sampler.max_frames=6", "head=seqtransf"], data_dir, tmp_path)
    torch.save({"hyper_parameters": {"run_config": OmegaConf.to_container(saved, resolve=True)}}, tmp_path / "run.ckpt")
    cfg = compose_train(
        [f"ckpt_path={tmp_path / 'run.ckpt'}", "data.source.root=/new/place", "head.layers=1"],
        data_dir,
        tmp_path,
        config_name="eval",
    )
    assert cfg.data.video.eval_sampler.max_frames == 6 and cfg.head.name == "seqtransf" and cfg.head.layers == 1
    assert (
        cfg.data.source.root == "/new/place" and cfg.data.frame_cache.dir == "/new/place/frame_cache"
    )  # follows the root
    chosen = compose_train(
        [f"ckpt_path={tmp_path / 'run.ckpt'}", "data=msrvtt", "data.source.root=/msrvtt"],
        data_dir,
        tmp_path,
        config_name="eval",
    )
    assert (
        chosen.data.name == "msrvtt" and backbone_preprocessing(chosen.backbone).image_size == 32
    )  # the checkpoint's backbone


def test_default_run_is_synthetic_tiny_cpu(data_dir, tmp_path):
    cfg = compose_train([], data_dir, tmp_path)
    assert (cfg.data.name, cfg.backbone.model_name, cfg.head.name, cfg.trainer.accelerator) == (
        "synthetic",
        "tvr-tiny",
        "meanpool",
        "cpu",
    )
    assert backbone_preprocessing(cfg.backbone).image_size == 32  # the backbone's own, no config key
    assert "image_size" not in cfg.backbone and "image_size" not in cfg.data


@pytest.mark.parametrize("head", ["meanpool", "seqtransf"])
def test_composed_configs_build_a_module_and_datamodule(head, data_dir, tmp_path):
    overrides = [f"head={head}"] + (["experiment=synthetic_seqtransf"] if head == "seqtransf" else [])
    cfg = compose_train(overrides + SMALL_OVERRIDES, data_dir, tmp_path)
    module = build_module(cfg)
    assert module.head.name == head
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    assert datamodule.describe()["train_sampler"]["max_frames"] == 8


def test_wrong_group_option_lists_valid_choices(data_dir, tmp_path):
    with pytest.raises(MissingConfigException) as error:
        compose_train(["head=xpoo"], data_dir, tmp_path)
    message = str(error.value)
    assert "Available options in 'head'" in message and "meanpool" in message and "xpool" in message


@pytest.mark.parametrize(
    "override, error, message",
    [
        (
            "head.name=xpoo",
            ConfigError,
            "head.name: got 'xpoo', expected a head: diffusionret, drl, glscl, hbi, hbi_estimator, meanpool, prompt_switch, seqtransf, tempme, ucofia, xpool",
        ),
        (
            "data.name=msrvt",
            ConfigError,
            "data.name: got 'msrvt', expected a dataset: activitynet, didemo, lsmdc, msrvtt, msvd, synthetic",
        ),
        ("backbone.model_name=ViT-B-99", ValueError, "unknown backbone model_name 'ViT-B-99'"),
        ("backbone.weights=/nonexistent/ViT-B-32.pt", WeightsError, "not found at '/nonexistent/ViT-B-32.pt'"),
        (
            "data.frame_cache.mode=always",
            ConfigError,
            "data.frame_cache.mode: got 'always', expected one of off, auto, build",
        ),
        (
            "data.video.backend=opencv",
            ConfigError,
            "data.video.backend: got 'opencv', expected a video backend: decord, pyav",
        ),
    ],
)
def test_bad_names_fail_at_start_up_before_any_work(override, error, message, data_dir, tmp_path):
    cfg = compose_train([override] + SMALL_OVERRIDES, data_dir, tmp_path)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


CLIP_TEXT_BLOCK = 4 * 512 * 512 + 4 * 512 + 2 * 2 * 512 + 2 * 2048 * 512 + 2048 + 512  # attn, 2 LNs, MLP


@pytest.mark.parametrize(
    "recipe, head_parameters",
    [
        ("clip4clip_meanp_msrvtt", 0),
        ("clip4clip_seqtransf_msrvtt", 77 * 512 + 4 * CLIP_TEXT_BLOCK),  # position table + 4 text blocks
        ("xpool_msrvtt", 1_316_352),  # the spec's count for the pooling module
        ("glscl_msrvtt", 25.27e6),  # spec: "used non-CLIP parameters: 25.27M"
    ],
)
def test_paper_recipes_build_the_papers_models(recipe, head_parameters, tmp_path):
    cfg = compose_train([f"experiment={recipe}"], tmp_path, tmp_path / "run")
    module = build_module(cfg)
    assert module.backbone.model_name == "ViT-B-32-quickgelu" and module.backbone.quick_gelu
    count = sum(p.numel() for p in module.head.parameters())
    assert (
        count == head_parameters if isinstance(head_parameters, int) else round(count / 1e6, 2) == head_parameters / 1e6
    )
    assert cfg.expected.t2v.R1 > 40 and cfg.trainer.max_epochs == 5
    if recipe.startswith(("clip4clip", "glscl")):
        assert (cfg.optim.name, cfg.optim.backbone_lr, cfg.optim.head_lr, cfg.train.gather_grad) == (
            "bertadam",
            1e-7,
            1e-4,
            "slice",
        )
    frozen = [n for n, p in module.backbone.named_parameters() if not p.requires_grad]
    if recipe.startswith("clip4clip"):
        assert "clip.visual.conv1.weight" in frozen and "clip.transformer.resblocks.0.attn.in_proj_weight" not in frozen
    if recipe.startswith("glscl"):  # the reference freezes the patch embedding alone; token_embedding trains
        assert frozen == ["clip.visual.conv1.weight"]
    if recipe == "xpool_msrvtt":
        assert cfg.optim.head_lr == 3e-5 and cfg.data.train_augment == "xpool" and cfg.train.select_window == 5
        assert build_datamodule(
            cfg.data, preprocessing=backbone_preprocessing(cfg.backbone)
        ).eval_sampler.describe() == {"sampler": "segment_uniform", "max_frames": 12}


@pytest.mark.parametrize("recipe", ["glscl_msrvtt", "hbi_msrvtt", "hbi_estimator_msrvtt", "clip4clip_meanp_msrvtt"])
def test_recipes_freeze_the_patch_embedding_as_their_references(recipe, tmp_path):
    """GLSCL's and HBI's CLIP modules never train visual.conv1; CLIP4Clip's (freeze_layer_num aside) do."""
    cfg = compose_train([f"experiment={recipe}"], tmp_path, tmp_path / "run")
    assert cfg.train.freeze_patch_embedding == (not recipe.startswith("clip4clip"))


def test_tempme_recipe_builds_the_reference_model(tmp_path):
    """507,648 trainable parameters (spec §1.2: vision + text LoRA and temporal embeddings of ViT-B/32), all
    of them in the tower group; 600 -> 97 tokens per 12-frame video; TempMe's data rules; no invented targets."""
    cfg = compose_train(["experiment=tempme_msrvtt"], tmp_path, tmp_path / "run")
    module = build_module(cfg)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 507_648
    assert sum(p.numel() for _, p in module.head.tower_parameters()) == 507_648
    assert module.head.video_tower.tokens_per_video()[-1] == 97
    assert (cfg.optim.tower_lr, cfg.optim.betas, cfg.data.train_augment) == (6e-4, [0.9, 0.999], "drl_randaugment")
    assert build_datamodule(cfg.data, preprocessing=backbone_preprocessing(cfg.backbone)).train_sampler.describe() == {
        "sampler": "fps_uniform_decord",
        "max_frames": 12,
        "video_framerate": 1,
        "fill": "repeat",
    }
    assert "expected" not in cfg  # the paper's table could not be checked (spec §1.9)
    for dataset, frames in (("activitynet", 64), ("didemo", 64), ("lsmdc", 12)):
        other = compose_train([f"experiment=tempme_{dataset}"], tmp_path, tmp_path / dataset)
        assert other.head.frames == frames and "expected" not in other
        plan_schedule(
            12, 50, frames, other.head.tome_r, list(other.head.clip_layers), list(other.head.clip_groups), 0.3, 0.1
        )


def test_a_split_used_for_val_and_test_is_cached_once_and_augmented_training_not_at_all(data_dir, tmp_path):
    cfg = compose_train(SMALL_OVERRIDES + ["data.splits.val=test", "data.train_augment=xpool"], data_dir, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    targets = list(datamodule.cache_targets())
    assert [(role, split.name) for role, split, _, _ in targets] == [("val", "test")]
    assert not datamodule.frames_are_fixed("train") and datamodule.frames_are_fixed("test")
