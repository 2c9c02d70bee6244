"""In-process training runs on the small synthetic set: precisions, heads, logging, re-evaluation."""

import json

import pytest
import torch

from conftest import RANKING_OVERRIDES, SMALL_OVERRIDES, assert_ranks_by_text, compose_train, recorded_scores
from tvr.builders import build_module
from tvr.checkpoint import load_checkpoint_file
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.train import train
from tvr.validation import validate_train_config

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.precision=32-true"],
        ["trainer.precision=bf16-mixed", "backbone.grad_checkpointing=true"],
        ["experiment=synthetic_seqtransf", "loss=dual_softmax", "evaluation.rerank=dsl"],
        [
            "experiment=synthetic_xpool",
            "optim=bertadam",
            "optim.schedule=clip4clip_warmup_cosine",
            "train.freeze_layer_num=0",
        ],
        [
            "experiment=synthetic_glscl",
            "train.select_window=3",
            "train.select_metric=val/t2v_R1_window",
            "train.freeze_patch_embedding=true",
        ],
        ["experiment=synthetic_seqtransf", "optim=bertadam", "train.clip_param_dtype=fp16"],
        pytest.param(["train.compile=true"], marks=pytest.mark.slow),  # minutes of compiling on 2 cores
    ],
    ids=[
        "fp32-meanpool",
        "bf16-checkpointing",
        "seqtransf-dsl",
        "xpool-bertadam",
        "glscl-window",
        "fp16-clip-bertadam",
        "compiled",
    ],
)
def test_fast_dev_run_trains_and_writes_results(overrides, data_dir, tmp_path):
    # two steps: CLIP4Clip's warm-up schedule gives the first one a learning rate of 0
    record = [
        "+callbacks.weights._target_=helpers.WeightsAroundStep",
        "+callbacks.weights.step=1",
        f"+callbacks.weights.path={tmp_path / 'weights.pt'}",
    ]
    cfg = compose_train(["+trainer.fast_dev_run=2"] + overrides + record + SMALL_OVERRIDES + QUIET, data_dir, tmp_path)
    results = train(cfg)
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)  # the parameters around the second optimiser step
    changed = {name for name, before in weights["before"].items() if not torch.equal(before, weights["after"][name])}
    assert any(name.startswith("backbone.") for name in changed), "the step left every CLIP weight as it was"
    # the patch embedding trains unless a recipe freezes it (the GLSCL/HBI references, CLIP4Clip's rule)
    patch_embedding_frozen = cfg.train.freeze_patch_embedding or cfg.train.freeze_layer_num >= 0
    assert ("backbone.clip.visual.conv1.weight" in changed) == (not patch_embedding_frozen)
    assert all(torch.isfinite(value).all() for value in weights["after"].values())
    fp16 = {name for name, value in weights["after"].items() if value.dtype == torch.float16}
    assert bool(fp16) == (cfg.train.clip_param_dtype == "fp16") and "backbone.clip.logit_scale" not in fp16
    assert fp16 & changed or not fp16  # the fp16 weights train
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["t2v"] == pytest.approx(results["t2v"])
    for direction in ("t2v", "v2t"):
        assert set(written[direction]) == {"R1", "R5", "R10", "MdR", "MnR", "RSum"}
    facts = written["run"]
    assert facts["head"] == cfg.head.name and facts["dataset"] == "synthetic" and facts["seed"] == 42
    assert (
        facts["global_batch"] == facts["contrastive_batch"] == 8
        and facts["frames"] == 8
        and facts["sampler"] == "clip4clip"
    )
    assert facts["rerank"] == cfg.evaluation.rerank
    assert facts["freeze_patch_embedding"] == cfg.train.freeze_patch_embedding
    assert facts["clip_param_dtype"] == cfg.train.clip_param_dtype
    assert facts["compile"] == cfg.train.compile
    assert written["decode_failures"]["train_replaced_samples"] == 0
    table = (tmp_path / "results.md").read_text()
    assert "| test | t2v |" in table
    if cfg.evaluation.rerank == "dsl":
        assert written["reranked"]["method"] == "dsl" and "(DSL re-ranked)" in table


def test_a_batch_larger_than_the_training_set_is_recorded_as_trained(data_dir, tmp_path, caplog):
    """data.batch_size beyond the training set: one short batch per epoch, warned about, and the batch the
    steps really saw (the 32 training pairs), not the configured one, in metrics.json."""
    record = [
        "+callbacks.weights._target_=helpers.WeightsAroundStep",
        "+callbacks.weights.step=0",
        f"+callbacks.weights.path={tmp_path / 'weights.pt'}",
    ]
    cfg = compose_train(
        ["+trainer.fast_dev_run=1", *SMALL_OVERRIDES, "data.batch_size=100000000", *record, *QUIET], data_dir, tmp_path
    )
    with caplog.at_level("WARNING", logger="tvr.data.datamodule"):
        train(cfg)
    facts = json.loads((tmp_path / "metrics.json").read_text())["run"]
    pairs = facts["train_set"]["pairs"]
    assert pairs == 32 and facts["global_batch"] == facts["contrastive_batch"] == pairs
    assert "data.batch_size=100000000 is larger than the 32 training items" in caplog.text
    assert "set data.batch_size<=32" in caplog.text
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)  # the one step did train
    assert any(not torch.equal(before, weights["after"][name]) for name, before in weights["before"].items())


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    # fp16 storage at RANKING_OVERRIDES' 1e-4 collapses the tiny model (its gradients leave BertAdam's fp16 v at 0,
    # so the steps grow, spec Q8); at 1e-6 its scores still depend on the text
    [
        ["logger=wandb"],
        ["optim=bertadam", "train.clip_param_dtype=fp16", "optim.backbone_lr=1e-6", "optim.head_lr=1e-6"],
    ],
    ids=["fp32", "fp16-clip-bertadam"],
)
def test_checkpoint_reloads_and_eval_reproduces_its_metrics(overrides, data_dir, tmp_path):
    """tvr-eval scores a checkpoint as the run's own test did, query by query (fp16 CLIP storage included:
    the reloaded model computes CLIP in fp16 as the trained one did)."""
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    cfg = compose_train([*RANKING_OVERRIDES, *overrides] + SMALL_OVERRIDES + QUIET, data_dir, run_dir)
    with recorded_scores() as trained:
        results = train(cfg)
    train_scores, train_text_to_video = trained[-1]  # the test split is evaluated last
    assert_ranks_by_text(train_scores)
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")  # weights_only=True
    assert checkpoint["hyper_parameters"]["head"]["name"] == "meanpool"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    if "logger=wandb" in overrides:  # once: a second offline wandb run in one process does not write its folder
        assert list((run_dir / "wandb").glob("offline-run-*")), "wandb should have logged offline"
    assert checkpoint["state_dict"]["backbone.clip.logit_scale"].exp() <= 100.0 + 1e-4  # clamped

    eval_cfg = compose_train(
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"] + QUIET, data_dir, eval_dir, config_name="eval"
    )
    with recorded_scores() as evaluated:
        reevaluated = evaluate(eval_cfg)
    ((scores, text_to_video),) = evaluated  # the same similarity matrix, query by query
    assert torch.equal(text_to_video, train_text_to_video)
    exact = "train.clip_param_dtype=fp16" in overrides  # fp16 CLIP: the same kernels on the same fp16 weights
    torch.testing.assert_close(scores, train_scores, atol=0 if exact else 1e-6, rtol=0)
    assert reevaluated["t2v"] == pytest.approx(results["t2v"]) and reevaluated["v2t"] == pytest.approx(results["v2t"])
    assert (eval_dir / "results.md").read_text().splitlines()[-2:] == (run_dir / "results.md").read_text().splitlines()[
        -2:
    ]


@pytest.mark.slow
def test_validation_split_can_be_re_evaluated(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(compose_train(["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET, data_dir, run_dir))
    cfg = compose_train(
        [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "split=val"] + QUIET,
        data_dir,
        tmp_path / "eval",
        config_name="eval",
    )
    result = evaluate(cfg)
    assert result["split"] == "val" and result["num_videos"] == 8


def test_train_compile_compiles_the_towers_in_place(data_dir, tmp_path):
    """Compiled in place: the towers run compiled, and parameter names (so checkpoints) stay as they were."""
    plain = build_module(compose_train(SMALL_OVERRIDES, data_dir, tmp_path))
    compiled = build_module(compose_train([*SMALL_OVERRIDES, "train.compile=true"], data_dir, tmp_path))
    assert all(tower._compiled_call_impl is not None for tower in compiled.head.towers().values())
    assert all(tower._compiled_call_impl is None for tower in plain.head.towers().values())
    assert compiled.state_dict().keys() == plain.state_dict().keys()


def test_train_compile_without_a_compiler_is_refused_at_start_up(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    cfg = compose_train([*SMALL_OVERRIDES, "train.compile=true"], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"train.compile: torch.compile on the CPU needs a C\+\+ compiler"):
        validate_train_config(cfg)
    validate_train_config(compose_train(SMALL_OVERRIDES, data_dir, tmp_path))  # off: no compiler needed
