"""tools/gpu_check.py: the whole script runs on the CPU with the tiny model (so it never rots before a GPU runs it),
refuses to run without a GPU unless told ``--device cpu``, and reports rather than stops on a head out of memory."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, run_tool
from tvr.errors import NonFiniteLossError
from tvr.models.heads import list_heads


def load_tool():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "tools" / "gpu_check.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = tool  # its dataclasses look their module up there
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.slow
def test_the_tiny_run_on_the_cpu_passes_every_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run_tool("tools/gpu_check.py", "--device", "cpu", "--tiny", "--json", str(out), timeout=900)
    figures = json.loads(out.read_text())
    tiny = load_tool().parse_args(["--device", "cpu", "--tiny"])
    expected = [name for name in list_heads() if name != "tempme"] + ["tempme PEFT", "tempme full FT"]
    assert sorted(row["case"] for row in figures["train"]) == sorted(expected)
    for row in figures["train"]:
        assert row["status"] == "ok", row
        assert (
            all(map(torch.isfinite, torch.tensor(row["losses"])))
            and len(row["losses"]) == tiny.warmup_steps + tiny.steps
        )
        assert row["clips_per_s"] > 0 and row["gflop_per_clip"] > 0 and row["attention_flops_counted"], row
    assert [row["case"] for row in figures["eval"]] == [row["case"] for row in figures["train"]]
    assert all(row["status"] == "ok" and row["shape"] == [tiny.eval_size] * 2 for row in figures["eval"])
    assert {check["check"]: check["ok"] for check in figures["checks"]} == {
        "resume": True,
        "process group": True,
        "data pipeline": True,
    }
    assert "| resume | ok |" in result.stdout and "| tempme PEFT | ok |" in result.stdout
    # the run reports what it cost in CPU time (a loaded machine's wall time says little), overall and per section
    spent = figures["cpu_s_by_section"]
    assert set(spent) == {"train", "eval", "resume", "process_group", "pipeline"} and spent["train"] > 0
    assert all(seconds >= 0 for seconds in spent.values())
    assert figures["cpu_s"] >= sum(spent.values()) and f"{figures['cpu_s']:.0f} s CPU" in result.stdout
    assert "CPU seconds by section: train" in result.stdout


def test_without_a_gpu_it_says_so_and_points_to_the_cpu_run():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "tools/gpu_check.py"], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 2
    assert "no GPU visible to torch" in result.stderr and "--device cpu --tiny" in result.stderr


@pytest.mark.parametrize(
    "failure, status, shown",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out of memory", "20.00 GiB"),
        (
            NonFiniteLossError("non-finite loss at step 2 (epoch 0, batch 2): loss=nan", step=2),
            "non-finite loss",
            "step 2",
        ),
    ],
)
def test_a_failing_head_is_reported_in_its_row_and_the_next_head_runs(failure, status, shown, monkeypatch):
    tool = load_tool()
    real_train_case = tool.train_case

    def failing_xpool(case, setup, *args):
        if case.label == "xpool":
            raise failure
        return real_train_case(case, setup, *args)

    monkeypatch.setattr(tool, "train_case", failing_xpool)
    args = tool.parse_args(["--device", "cpu", "--tiny", "--heads", "xpool", "meanpool", "--sections"])
    results = tool.run(args)
    rows = {row["case"]: row for row in results["train"]}
    assert rows["xpool"]["status"] == status and shown in rows["xpool"]["error"]
    assert rows["meanpool"]["status"] == "ok"
    assert f"| xpool | {status} |" in tool.report(results)


def test_a_gpu_without_bf16_falls_back_to_fp16_with_a_note(monkeypatch):
    tool = load_tool()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    precision, note = tool.choose_precision(torch.device("cuda"), "bf16-mixed")
    assert precision == "16-mixed" and "no bf16" in note
    assert tool.choose_precision(torch.device("cpu"), "bf16-mixed") == ("bf16-mixed", None)


def test_the_resume_check_fails_when_rng_states_are_not_restored(monkeypatch, tmp_path):
    """The check compares weights bit for bit: a resume that loses the RNG states (dropout draws) is caught."""
    tool = load_tool()
    setup = tool.Setup(torch.device("cpu"), "32-true", True, 8, 8, tmp_path)
    assert tool.resume_check(setup)["ok"]
    monkeypatch.setattr("tvr.resume.restore_rng", lambda state: None)
    failed = tool.resume_check(tool.Setup(torch.device("cpu"), "32-true", True, 8, 8, tmp_path / "again"))
    assert not failed["ok"] and "tensors differ" in failed["detail"]
