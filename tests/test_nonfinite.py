"""A NaN or inf loss or gradient stops the run at that step, naming it (or is skipped and counted), and
the last good checkpoint stays."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train
from test_cli import QUIET, run_cli
from tvr.checkpoint import load_checkpoint_file
from tvr.errors import NonFiniteLossError
from tvr.optim import SCHEDULES
from tvr.train import train

SHORT = ["trainer.max_epochs=2", "train.checkpoint_every_n_steps=1"] + SMALL_OVERRIDES + QUIET


def poisoned(kind: str, step: int) -> list[str]:
    return [f"+callbacks.poison._target_=helpers.Poison{kind}", f"+callbacks.poison.step={step}"]


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_naming_step_terms_and_learning_rates(data_dir, tmp_path):
    cfg = compose_train(SHORT + ["experiment=synthetic_glscl"] + poisoned("Batch", 5), data_dir, tmp_path)
    with pytest.raises(NonFiniteLossError) as error:
        train(cfg)
    message = str(error.value)
    assert error.value.step == 5 and message.startswith("non-finite loss at step 5 (epoch 1, batch 1): contrastive=nan")
    assert "learning rates backbone=" in message and "head=" in message and "train.nonfinite=skip" in message
    kept = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")
    assert kept["global_step"] == 5  # the last good state, not one after the NaN
    assert all(torch.isfinite(value).all() for value in kept["state_dict"].values())


@pytest.mark.parametrize("precision", ["32-true", pytest.param("bf16-mixed", marks=pytest.mark.slow)])
def test_a_nan_gradient_stops_the_run_though_the_loss_is_finite(precision, data_dir, tmp_path):
    cfg = compose_train(SHORT + poisoned("Gradient", 2) + [f"trainer.precision={precision}"], data_dir, tmp_path)
    with pytest.raises(
        NonFiniteLossError, match=r"^non-finite gradient at step 2 \(epoch 0, batch 2\): gradient_norm=nan"
    ):
        train(cfg)
    assert load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["Batch", "Gradient"])
def test_skip_leaves_the_weights_alone_for_that_step_and_counts_it(kind, data_dir, tmp_path):
    record = [
        "+callbacks.weights._target_=helpers.WeightsAroundStep",
        "+callbacks.weights.step=2",
        f"+callbacks.weights.path={tmp_path / 'weights.pt'}",
    ]
    cfg = compose_train(
        SHORT + ["train.nonfinite=skip", "trainer.max_epochs=1"] + poisoned(kind, 2) + record, data_dir, tmp_path
    )
    results = train(cfg)
    assert results["run"]["skipped_nonfinite_steps"] == 1
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert all(torch.equal(weights["before"][name], weights["after"][name]) for name in weights["before"])
    assert all(math.isfinite(value) for direction in ("t2v", "v2t") for value in results[direction].values())
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["run"]["skipped_nonfinite_steps"] == 1
    # the learning-rate schedule advanced on the skipped step too: it stands where the step count says
    kept = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt")
    scheduler, steps = kept["lr_schedulers"][0], kept["global_step"]
    assert scheduler["last_epoch"] == steps == 4
    factor = SCHEDULES[cfg.optim.schedule](cfg.optim.warmup_proportion, steps)(steps)
    assert scheduler["_last_lr"] == pytest.approx([base * factor for base in scheduler["base_lrs"]])


@pytest.mark.slow
def test_the_cli_stops_with_one_error_line_and_records_it_for_tvr_results(data_dir, tmp_path):
    result = run_cli(
        "tvr-train", SHORT + poisoned("Batch", 3) + [f"hydra.run.dir={tmp_path / 'run'}"], data_dir, tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: non-finite loss at step 3" in result.stderr
    recorded = json.loads((tmp_path / "run" / "error.json").read_text())
    assert recorded["type"] == "NonFiniteLossError" and recorded["step"] == 3


@pytest.mark.slow
def test_a_nan_loss_in_an_earlier_micro_batch_of_an_accumulated_step_is_named_as_a_loss(data_dir, tmp_path):
    # batches 2 and 3 make optimiser step 1; the poisoned batch is the first of the two
    first_of_two = poisoned("Batch", 1) + ["+callbacks.poison.batch_idx=2"]
    cfg = compose_train(SHORT + ["+trainer.accumulate_grad_batches=2"] + first_of_two, data_dir, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 1 "):
        train(cfg)
