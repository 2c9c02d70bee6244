"""The whole config is checked before anything is generated, cached or read: a bad value fails at once with
its dotted key, every problem is reported together, and nothing is written under the data folder."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SMALL_OVERRIDES, compose_train
from tvr.checkpoint import TVR_HYPER_PARAMETERS, atomic_torch_save
from tvr.config import config_dir, to_plain
from tvr.config_checker import InvalidConfigError
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.models.backbone import resolve_architecture
from tvr.models.heads import create_head
from tvr.models.heads.hbi import BanzhafModule
from tvr.train import train
from tvr.validation import validate_eval_config, validate_train_config

RECIPES = sorted(path.stem for path in (Path(config_dir()) / "experiment").glob("[!_]*.yaml"))  # _*.yaml: bases
# One short epoch, so that on code without the up-front check a value that only fails (or silently
# misbehaves) late costs seconds, not a full run, before the test fails.
SHORT_RUN = SMALL_OVERRIDES + [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def compose_with_empty_data_folder(overrides: list[str], tmp_path: Path):
    """A train config whose data folder exists and is empty, so any generation or caching would show."""
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    data_dir.mkdir()
    return compose_train(SHORT_RUN + overrides, data_dir, run_dir), data_dir, run_dir


def assert_nothing_written(data_dir: Path, run_dir: Path) -> None:
    assert list(data_dir.iterdir()) == []  # no synthetic videos, no frame_cache
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, key, shown",
    [
        ("optim.name=foo", "optim.name", "got 'foo', expected one of adamw, bertadam"),
        ("data.batch_size=-4", "data.batch_size", "got -4, expected an integer >= 1"),
        (
            "data.video.eval_sampler.max_frames=0",
            "data.video.eval_sampler.max_frames",
            "got 0, expected an integer >= 1",
        ),
        (
            "data.video.train_sampler.max_frames=-1",
            "data.video.train_sampler.max_frames",
            "got -1, expected an integer >= 1",
        ),
        ("+head.foo=1", "head.foo", "is not an option of head 'meanpool'"),
        ("optim.schedule=linear", "optim.schedule", "expected one of warmup_cosine, clip4clip_warmup_cosine"),
        ("data.max_words=78", "data.max_words", "got 78, expected an integer in [3, 77]"),
        (
            "train.select_metric=val/t2v_MdR",
            "train.select_metric",
            "the best checkpoint is the one with the highest value",
        ),
        ("evaluation.memory_budget_gb=0", "evaluation.memory_budget_gb", "got 0, expected a number > 0"),
        (
            "data.video.backend_options.timeout_s=-1",
            "data.video.backend_options.timeout_s",
            "got -1, expected a number > 0 or null",
        ),
        (
            "head=seqtransf head.layers=-1",
            "head",
            "the temporal transformer needs layers >= 1",
        ),  # used to build no transformer
        ("+foo=1", "foo", "is not a key of tvr-train's config"),  # was accepted and ignored
        ("+train.ckpt_every=5", "train.ckpt_every", "is not a key of the train section"),
        ("train.nonfinite=ignore", "train.nonfinite", "expected one of stop, skip"),
        ("train.clip_param_dtype=bf16", "train.clip_param_dtype", "got 'bf16', expected one of fp32, fp16"),
        ("train.clip_param_dtype=fp16", "train.clip_param_dtype", "but optim.name is 'adamw'"),  # BertAdam's fp16 step
        ("train.checkpoint_every_n_steps=-1", "train.checkpoint_every_n_steps", "got -1, expected an integer >= 0"),
        # from the constructors' annotations (no hand-written check)
        ("backbone.text_padding_mask=maybe", "backbone.text_padding_mask", "got 'maybe', expected one of True, False"),
        ("head=xpool head.dropout=high", "head.dropout", "got 'high', expected a number"),
        ("+optim.coef_lr=0.001", "optim.coef_lr", "is not a key of the optim section"),
        ("evaluation.dsl.temperature=0", "evaluation.dsl.temperature", "got 0, expected a number > 0"),
        ("data.source.frame_size=63", "data.source", "frame_size must be an even number of pixels, got 63"),
    ],
)
def test_a_bad_value_fails_naming_its_key_before_any_data_is_made(override, key, shown, tmp_path):
    cfg, data_dir, run_dir = compose_with_empty_data_folder(override.split(), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert error.value.key == key and message.startswith(f"{key}: ") and shown in message
    assert key in message.rsplit("; ", 1)[1]  # the hint: what to pass (or remove) instead
    assert_nothing_written(data_dir, run_dir)


def test_a_data_root_that_is_a_file_fails_naming_its_key(tmp_path):
    a_file = tmp_path / "videos.tar"
    a_file.write_bytes(b"not a folder")
    cfg, data_dir, run_dir = compose_with_empty_data_folder([f"data.source.root={a_file}"], tmp_path)
    with pytest.raises(ConfigError, match=r"^data.source.root: '.*videos.tar' is a file; pass data.source.root="):
        train(cfg)
    assert_nothing_written(data_dir, run_dir)
    assert a_file.read_bytes() == b"not a folder"


@pytest.mark.parametrize(
    "override, key, shown",
    [
        (
            "+backbone.image_size=224",
            "backbone.image_size",
            "is no longer a setting: backbone 'tvr-tiny' takes 32 px input",
        ),
        ("+data.image_size=32", "data.image_size", "is no longer a setting: backbone 'tvr-tiny' takes 32 px input"),
        ("backbone=vit_b32 +data.image_size=32", "data.image_size", "backbone 'ViT-B-32-quickgelu' takes 224 px input"),
        (
            "backbone.model_name=ViT-L-14",
            "backbone.pretrained",
            "open_clip's pretrained weights of 'ViT-L-14' are preprocessed differently",
        ),
        (
            "backbone.pretrained=openai",
            "backbone.pretrained",
            "'openai' is not a pretrained tag of open_clip's 'tvr-tiny'",
        ),
    ],
)
def test_the_input_geometry_is_the_backbones_and_setting_it_fails_before_any_data_is_made(
    override, key, shown, tmp_path
):
    cfg, data_dir, run_dir = compose_with_empty_data_folder(override.split(), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert error.value.key == key and message.startswith(f"{key}: ") and shown in message
    assert key in message.rsplit("; ", 1)[1]  # the hint: remove the key, or name the weights' tag
    assert_nothing_written(data_dir, run_dir)


def test_a_head_option_its_constructor_refuses_fails_before_any_data_is_made(tmp_path):
    cfg, data_dir, run_dir = compose_with_empty_data_folder(["head=xpool", "head.num_heads=3"], tmp_path)
    with pytest.raises(
        ConfigError, match=r"^head: head 'xpool' at embedding width 64 refuses these options: .*must divide"
    ):
        train(cfg)
    assert_nothing_written(data_dir, run_dir)


def test_every_problem_is_reported_at_once_one_line_per_key(tmp_path):
    overrides = [
        "optim.name=foo",
        "data.batch_size=-4",
        "data.video.eval_sampler.max_frames=0",
        "data.video.train_sampler.max_frames=-1",
        "+head.foo=1",
        "trainer.max_epochs=0",
    ]
    cfg, data_dir, run_dir = compose_with_empty_data_folder(overrides, tmp_path)
    with pytest.raises(InvalidConfigError) as error:
        train(cfg)
    keys = [
        "head.foo",
        "optim.name",
        "data.batch_size",
        "data.video.train_sampler.max_frames",
        "data.video.eval_sampler.max_frames",
        "trainer.max_epochs",
    ]
    assert [problem.key for problem in error.value.problems] == keys
    lines = str(error.value).splitlines()
    assert lines[0] == "6 config values cannot work:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == keys
    assert_nothing_written(data_dir, run_dir)


@pytest.mark.parametrize("recipe", [None, *RECIPES])
def test_the_default_config_and_every_recipe_pass(recipe, tmp_path):
    overrides = [] if recipe is None else [f"experiment={recipe}", "data.source.root=/datasets/somewhere"]
    if (
        recipe and recipe.startswith("hbi_") and not recipe.startswith("hbi_estimator")
    ):  # HBI needs its estimator stage's file
        atomic_torch_save(
            {"format": "tvr-hbi-estimator", "state_dict": BanzhafModule().state_dict()}, tmp_path / "estimator.pt"
        )
        overrides.append(f"head.estimator_ckpt={tmp_path / 'estimator.pt'}")
    if recipe and "diffusionret_gen" in recipe:  # stage 2 needs stage 1's checkpoint
        overrides.append(f"head.stage1_ckpt={stage1_head_checkpoint(recipe, tmp_path)}")
    validate_train_config(compose_train(overrides, tmp_path, tmp_path / "run"))


def stage1_head_checkpoint(recipe: str, folder: Path) -> Path:
    """A stage-1 checkpoint as start-up reads it: the recipe's head at stage 1 (its CLIP weights left out, which
    only loading, not start-up, compares)."""
    cfg = compose_train([f"experiment={recipe}", "head.stage=discrimination"], folder, folder / "stage1")
    width = resolve_architecture(cfg.backbone.model_name, to_plain(cfg.backbone.get("architecture")))["embed_dim"]
    options = {key: value for key, value in to_plain(cfg.head).items() if key in STAGE1_KEYS}
    head = create_head("diffusionret", embed_dim=width, **options)
    hyper_parameters = {key: to_plain(cfg[key]) for key in TVR_HYPER_PARAMETERS}
    state = {f"head.{key}": value.half() for key, value in head.state_dict().items() if torch.is_tensor(value)}
    atomic_torch_save({"hyper_parameters": hyper_parameters, "state_dict": state}, folder / "stage1.ckpt")
    return folder / "stage1.ckpt"


STAGE1_KEYS = ("temporal_layers", "temporal_heads")


def saved_run(tmp_path: Path) -> Path:
    """A checkpoint carrying only a run config: enough for tvr-eval's config to merge it."""
    run_config = OmegaConf.to_container(compose_train([], tmp_path / "data", tmp_path / "train"), resolve=True)
    path = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": {"run_config": run_config}}, path)
    return path


def test_eval_reports_its_own_bad_values_together_before_opening_the_checkpoint(tmp_path):
    overrides = [f"ckpt_path={tmp_path / 'missing.ckpt'}", "split=train", "evaluation.memory_budget_gb=0"]
    cfg = compose_train(overrides, tmp_path, tmp_path / "eval", config_name="eval")
    with pytest.raises(InvalidConfigError) as error:
        evaluate(cfg)
    assert [problem.key for problem in error.value.problems] == ["split", "evaluation.memory_budget_gb"]


def test_eval_checks_the_checkpoints_run_config_with_its_overrides(tmp_path):
    checkpoint = saved_run(tmp_path)
    validate_eval_config(compose_train([f"ckpt_path={checkpoint}"], tmp_path, tmp_path / "eval", config_name="eval"))
    overrides = [
        f"ckpt_path={checkpoint}",
        "split=val",
        "data.splits.val=null",
        "data.eval_batch_size=0",
        "+head.foo=1",
    ]
    cfg = compose_train(overrides, tmp_path, tmp_path / "eval", config_name="eval")
    with pytest.raises(InvalidConfigError) as error:
        evaluate(cfg)
    assert [problem.key for problem in error.value.problems] == ["head.foo", "data.eval_batch_size", "data.splits.val"]


def test_eval_refuses_an_unknown_top_level_key(tmp_path):
    checkpoint = saved_run(tmp_path)
    cfg = compose_train([f"ckpt_path={checkpoint}", "+foo=1"], tmp_path, tmp_path / "eval", config_name="eval")
    with pytest.raises(ConfigError, match=r"^foo: is not a key of tvr-eval's config; valid keys: .*ckpt_path"):
        evaluate(cfg)
