"""The console scripts, run as a user runs them: in a subprocess, from the command line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import RANKING_OVERRIDES, SMALL_OVERRIDES, assert_ranks_by_text, compose_train, recorded_scores
from tvr.checkpoint import load_checkpoint_file
from tvr.evaluate import evaluate

TESTS = Path(__file__).parent
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_cli(script: str, args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TVR_DATA_DIR": str(data_dir),
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    }
    executable = Path(sys.executable).with_name(script)
    return subprocess.run([str(executable), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| test |")]


@pytest.fixture
def damaged_data(data_dir, tmp_path) -> Path:
    """A copy of the small synthetic set with one corrupt training video and one empty test video."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    (copy / "synthetic" / "videos" / "train_00004.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    (copy / "synthetic" / "videos" / "test_00002.mp4").write_bytes(b"")
    return copy


@pytest.mark.slow
def test_train_then_eval_from_the_command_line_survive_bad_videos(damaged_data, tmp_path):
    run_dir = tmp_path / "run"
    # generate=false: otherwise the generator would re-render the empty file before training
    args = [*RANKING_OVERRIDES, "data.source.generate=false", f"hydra.run.dir={run_dir}"] + SMALL_OVERRIDES + QUIET
    train = run_cli("tvr-train", args, damaged_data, tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    failures = metrics["decode_failures"]
    assert failures["train_unreadable_videos"] == ["train_00004"]
    assert failures["train_replaced_samples"] == 2  # once per epoch
    assert failures["eval_unreadable_videos"]["test"] == ["test_00002"]
    assert metrics["num_videos"] == 12  # the unreadable video stays in the gallery
    assert "could not be decoded" in train.stderr + train.stdout
    for name in ("best.ckpt", "last.ckpt"):
        assert "state_dict" in load_checkpoint_file(run_dir / "checkpoints" / name)
    assert (run_dir / "csv" / "metrics.csv").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    train_rows = table_rows((run_dir / "results.md").read_text())
    assert train_rows and train_rows == table_rows(train.stdout)

    evaluation = run_cli(
        "tvr-eval",
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}"] + QUIET,
        damaged_data,
        tmp_path,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert table_rows(evaluation.stdout) == train_rows
    # equal tables mean something only for a model whose ranking depends on the text (its scores, in process)
    with recorded_scores() as calls:
        evaluate(
            compose_train(
                [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"] + QUIET,
                damaged_data,
                tmp_path / "in_process",
                config_name="eval",
            )
        )
    assert_ranks_by_text(calls[-1][0])
    assert table_rows((tmp_path / "in_process" / "results.md").read_text()) == train_rows
    for output in (train.stdout, evaluation.stdout):  # the table says what it measured, and that it is not clean
        assert (
            "12 texts x 12 videos" in output and "1 unreadable" in output and "warning: 1 unreadable videos" in output
        )

    stale = run_cli(
        "tvr-eval",
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            f"data.source.root={tmp_path / 'gone'}",
            f"hydra.run.dir={tmp_path / 'eval2'}",
        ]
        + QUIET,
        damaged_data,
        tmp_path,
    )
    assert stale.returncode == 2 and "data.source.root" in stale.stderr and "Traceback" not in stale.stderr
    assert not (tmp_path / "gone").exists()


@pytest.mark.slow
def test_wrong_group_option_fails_at_start_up_with_choices(data_dir, tmp_path):
    result = run_cli("tvr-train", ["head=xpoll"], data_dir, tmp_path)
    assert result.returncode != 0
    assert (
        "Available options in 'head'" in result.stderr and "meanpool" in result.stderr and "seqtransf" in result.stderr
    )
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_bad_values_end_the_run_with_one_message_per_key_and_no_traceback(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    result = run_cli("tvr-train", ["optim.name=foo", "data.batch_size=-4"], empty, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "optim.name: got 'foo'" in result.stderr and "data.batch_size: got -4" in result.stderr
    assert not any(empty.iterdir())  # nothing generated, nothing cached


@pytest.mark.slow
@pytest.mark.parametrize(
    "head", [[], ["experiment=synthetic_glscl", "head.decoder_dropout=0.0"]], ids=["meanpool", "glscl"]
)
def test_two_process_ddp_step_and_evaluation_equal_single_process(head, data_dir, tmp_path):
    data_dir = shutil.copytree(data_dir, tmp_path / "data")  # num_test=11 regenerates: keep the shared set intact
    common = (
        head
        + [
            "data.source.num_test=11",
            "data.shuffle_train=false",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "optim.warmup_proportion=0.0",
            "+callbacks.grads._target_=helpers.GradRecorder",
        ]
        + [o for o in SMALL_OVERRIDES if not o.startswith(("data.batch_size", "data.source.num_test"))]
        + QUIET
    )
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single = run_cli(
        "tvr-train",
        common
        + ["data.batch_size=8", f"+callbacks.grads.path={tmp_path / 'single.pt'}", f"hydra.run.dir={single_dir}"],
        data_dir,
        tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(
        "tvr-train",
        common
        + [
            "data.batch_size=4",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            f"+callbacks.grads.path={tmp_path / 'ddp.pt'}",
            f"hydra.run.dir={ddp_dir}",
        ],
        data_dir,
        tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single_grads = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp_grads = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert single_grads.keys() == ddp_grads.keys() and len(single_grads) > 10
    for name, grad in single_grads.items():
        scale = grad.abs().max().item()  # float32 summation order differs between 1 and 2 processes
        torch.testing.assert_close(ddp_grads[name], grad, atol=1e-5 * scale + 1e-8, rtol=1e-4, msg=name)
    single_metrics = json.loads((single_dir / "metrics.json").read_text())
    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp_metrics["run"]["world_size"] == 2 and ddp_metrics["run"]["global_batch"] == 8
    assert ddp_metrics["num_texts"] == single_metrics["num_texts"] == 11  # DistributedSampler padding dropped
    assert ddp_metrics["t2v"] == pytest.approx(single_metrics["t2v"]) and ddp_metrics["v2t"] == pytest.approx(
        single_metrics["v2t"]
    )


def run_tool(script: str, args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TVR_DATA_DIR": str(data_dir)}
    tool = TESTS.parent / "tools" / script
    return subprocess.run(
        [sys.executable, str(tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_video_tools_from_the_command_line(data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    (copy / "synthetic" / "videos" / "val_00001.mp4").write_bytes(b"junk")
    shutil.rmtree(copy / "synthetic" / "frame_cache", ignore_errors=True)
    overrides = [o for o in SMALL_OVERRIDES if o.startswith("data.source")] + ["data.source.generate=false"]

    check = run_tool(
        "check_videos.py", overrides + ["--timeout", "30", "--report", str(tmp_path / "bad.json")], copy, tmp_path
    )
    assert check.returncode == 0, check.stderr[-2000:]
    report = json.loads((tmp_path / "bad.json").read_text())
    assert report["counts"]["ok"] == 51 and report["counts"]["unreadable"] == 1 and list(report["bad"]) == ["val_00001"]
    assert "| unreadable | 1 |" in check.stdout

    cache = run_tool("cache_frames.py", overrides, copy, tmp_path)
    assert cache.returncode == 0, cache.stderr[-2000:]
    assert cache.stdout.count("| built |") == 3 and "1 videos could not be decoded" in cache.stdout
    again = run_tool("cache_frames.py", overrides, copy, tmp_path)
    assert again.stdout.count("valid, kept") == 3

    raw = copy / "synthetic" / "videos"
    out = tmp_path / "compressed"
    compress = run_tool("compress_videos.py", [str(raw), str(out), "--workers", "2"], copy, tmp_path)
    assert compress.returncode == 0, compress.stderr[-2000:]
    assert "52 videos: 51 compressed, 0 already done, 1 failed" in compress.stdout
    assert json.loads((out / "compress_failures.json").read_text())[0]["source"].endswith("val_00001.mp4")
    rerun = run_tool("compress_videos.py", [str(raw), str(out), "--workers", "2"], copy, tmp_path)
    assert "0 compressed, 51 already done, 1 failed" in rerun.stdout
