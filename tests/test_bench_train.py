"""tools/bench_train.py: both sides run end to end and compare like with like (no assertion on speed)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest
import torch

from conftest import REPO_ROOT, SMALL_OVERRIDES, compose_train, run_tool
from tvr.builders import backbone_preprocessing, build_datamodule, build_module


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO_ROOT / "tools" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("head", ["meanpool", "seqtransf", "xpool", "glscl"])
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_plain_loss_is_the_training_step_loss(head, data_dir, tmp_path):
    """The plain loop's loss is RetrievalModule.training_step's on the same weights and batch, extra
    losses (glscl) and dropout (xpool, glscl: same RNG state) included."""
    bench = load_bench()
    cfg = compose_train([*SMALL_OVERRIDES, f"head={head}", "data.batch_size=4"], data_dir, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    module = build_module(cfg)
    plain = copy.deepcopy(module)
    torch.manual_seed(0)
    expected = module.training_step(batch, 0)
    torch.manual_seed(0)
    assert torch.equal(bench.training_loss(plain, batch), expected)


@pytest.mark.slow
def test_bench_train_end_to_end(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    command = [
        "tools/bench_train.py",
        "--steps",
        "3",
        "--warmup-steps",
        "1",
        "--eval-passes",
        "1",
        "--json",
        str(out),
        *SMALL_OVERRIDES,
        f"paths.data_dir={data_dir}",
    ]
    result = run_tool(*command, timeout=600)
    assert "| train | tvr |" in result.stdout and "| eval | plain |" in result.stdout
    assert "| backward |" in result.stdout  # the per-segment attribution table
    figures = json.loads(out.read_text())
    for phase, steps in (("train", 3), ("eval", 1)):
        for side in ("tvr", "plain"):
            row = figures[phase][side]
            assert row["steps"] == steps
            assert math.isfinite(row["s_per_step"]) and row["s_per_step"] > 0
            assert math.isfinite(row["clips_per_s"]) and row["clips_per_s"] > 0
        assert figures[phase]["ratio"] == pytest.approx(
            figures[phase]["tvr"]["s_per_step"] / figures[phase]["plain"]["s_per_step"]
        )
    assert "mfu" not in figures["train"]["tvr"]  # CPU: no MFU column
    for side in ("tvr", "plain"):  # every segment stamped on both sides, in order
        segments = figures["train"]["segments_s"][side]
        assert list(segments) == list(load_bench().MARKS) and all(value >= 0 for value in segments.values())
    assert figures["config"]["flops_per_step"] > 0
    # like with like: the same losses step by step, the same weights after training, the same test metrics
    train = figures["train"]
    assert len(train["tvr"]["losses"]) == len(train["plain"]["losses"]) == 4
    assert train["tvr"]["losses"] == pytest.approx(train["plain"]["losses"], rel=1e-5)
    assert train["max_weight_diff"] < 1e-5
    for direction in ("t2v", "v2t"):
        assert figures["eval"]["tvr"][direction] == figures["eval"]["plain"][direction]
