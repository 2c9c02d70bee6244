"""Guards the documentation promises and no other test exercised: resuming a checkpoint of another backbone
is refused (docs/clusters.md), the non-finite check under ``16-mixed`` is left to the loss scaler but
still stops on a non-finite loss (docs/clusters.md), and ``tvr-eval strict=false`` evaluates a checkpoint
that ``tvr-eval`` otherwise refuses (docs/evaluation.md, docs/training.md)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.plugins.precision import Precision

import tvr.evaluate
from conftest import FIXTURES, SMALL_OVERRIDES, compose_train
from test_cli import QUIET
from tvr.builders import build_module
from tvr.checkpoint import CheckpointMismatchError, load_checkpoint_file
from tvr.errors import CheckpointError, NonFiniteLossError
from tvr.evaluate import evaluate
from tvr.train import train

# a tvr-train checkpoint of X-Pool on the small synthetic set over the micro backbone 'legacy-micro'
XPOOL_CHECKPOINT = FIXTURES / "legacy" / "xpool_tiny_e3d39b2.ckpt"


def test_resuming_a_checkpoint_of_another_backbone_is_refused_naming_both(data_dir, tmp_path):
    cfg = compose_train(["head=xpool", f"ckpt_path={XPOOL_CHECKPOINT}"] + SMALL_OVERRIDES + QUIET, data_dir, tmp_path)
    with pytest.raises(CheckpointError, match="cannot continue") as error:
        train(cfg)
    assert "backbone.model_name: checkpoint 'legacy-micro', this run 'tvr-tiny'" in str(error.value)
    assert "head.name" not in str(error.value) and "data.name" not in str(error.value)  # the backbone alone differs
    assert not (tmp_path / "checkpoints").exists()  # refused before training


# ------------------------------------------------------------------------------ the non-finite guard under fp16
def attached_module(tmp_path, precision: str, nonfinite: str = "stop"):
    """A module as Lightning holds it at its gradient-clipping hook, under a stand-in trainer of ``precision``
    (fp16 AMP needs CUDA; this checks which check the guard makes under it, not the GradScaler itself)."""
    module = build_module(compose_train([f"train.nonfinite={nonfinite}"], tmp_path, tmp_path))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.trainer = SimpleNamespace(
        precision=precision,
        precision_plugin=Precision(),
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
        optimizers=[optimizer],
        global_step=7,
        current_epoch=1,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_idx=3)),
    )
    for param in module.parameters():
        param.grad = torch.ones_like(param)
    return module, optimizer


def after_backward(module, loss: float, gradient: float) -> None:
    """The state ``training_step`` and the backward pass leave: the loss, and one gradient entry."""
    module._losses_finite = torch.isfinite(torch.tensor(loss))
    module._loss_terms = {"contrastive": torch.tensor(loss)}
    module.backbone.logit_scale.grad.fill_(gradient)


def test_under_16_mixed_a_non_finite_gradient_is_left_to_the_loss_scaler(tmp_path):
    module, optimizer = attached_module(tmp_path, "16-mixed")
    after_backward(module, loss=2.0, gradient=float("inf"))  # an fp16 overflow: the GradScaler skips the step itself
    module.configure_gradient_clipping(optimizer)
    assert torch.isinf(module.backbone.logit_scale.grad) and module.skipped_nonfinite_steps == 0
    module, optimizer = attached_module(tmp_path, "32-true")  # elsewhere the same gradient stops the run
    after_backward(module, loss=2.0, gradient=float("inf"))
    with pytest.raises(
        NonFiniteLossError, match=r"^non-finite gradient at step 7 \(epoch 1, batch 3\): gradient_norm=inf"
    ):
        module.configure_gradient_clipping(optimizer)


def test_under_16_mixed_a_non_finite_loss_still_stops_or_is_skipped(tmp_path):
    module, optimizer = attached_module(tmp_path, "16-mixed")
    after_backward(module, loss=float("nan"), gradient=float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 7 \(epoch 1, batch 3\): contrastive=nan"):
        module.configure_gradient_clipping(optimizer)
    module, optimizer = attached_module(tmp_path, "16-mixed", nonfinite="skip")
    after_backward(module, loss=float("nan"), gradient=float("nan"))
    module.configure_gradient_clipping(optimizer)
    assert module.skipped_nonfinite_steps == 1 and all(param.grad is None for param in module.parameters())


# ------------------------------------------------------------------------------ tvr-eval strict=false
@pytest.fixture
def mismatching_checkpoint(tmp_path):
    """The X-Pool checkpoint less one weight and plus one stray tensor."""
    checkpoint = torch.load(XPOOL_CHECKPOINT, map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    missing = next(key for key in state if key.startswith("head."))
    del state[missing]
    state["head.stray.weight"] = torch.zeros(3)
    path = tmp_path / "mismatching.ckpt"
    torch.save(checkpoint, path)
    return path, missing


def test_tvr_eval_refuses_a_mismatching_checkpoint_naming_strict_false(mismatching_checkpoint, data_dir, tmp_path):
    path, missing = mismatching_checkpoint
    cfg = compose_train([f"ckpt_path={path}"] + QUIET, data_dir, tmp_path / "eval", config_name="eval")
    with pytest.raises(CheckpointMismatchError, match="pass strict=false to load the matching keys anyway") as error:
        evaluate(cfg)
    assert missing in str(error.value) and "head.stray.weight" in str(error.value)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_tvr_eval_strict_false_evaluates_with_the_matching_weights(
    mismatching_checkpoint, data_dir, tmp_path, monkeypatch, caplog
):
    path, missing = mismatching_checkpoint
    built = []
    module_from_config = tvr.evaluate.module_from_config
    monkeypatch.setattr(
        tvr.evaluate,
        "module_from_config",
        lambda *args, **kwargs: built.append(module_from_config(*args, **kwargs)) or built[-1],
    )
    cfg = compose_train([f"ckpt_path={path}", "strict=false"] + QUIET, data_dir, tmp_path / "eval", config_name="eval")
    with caplog.at_level(logging.WARNING, logger="tvr.evaluate"):
        results = evaluate(cfg)
    assert results["split"] == "test" and (tmp_path / "eval" / "metrics.json").is_file()
    assert f"loaded partially: missing ['{missing}'], unexpected ['head.stray.weight']" in caplog.text
    (module,) = built
    loaded = module.state_dict()
    saved = load_checkpoint_file(path)["state_dict"]
    assert all(torch.equal(loaded[key], value) for key, value in saved.items() if key != "head.stray.weight")
    assert not torch.equal(
        loaded[missing], load_checkpoint_file(XPOOL_CHECKPOINT)["state_dict"][missing]
    )  # left at its init
