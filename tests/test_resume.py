"""Runs that survive: last.ckpt is the last state, a killed run resumes exactly, a bad resume is refused.

The kill tests stop real ``tvr-train`` processes with SIGKILL mid-epoch and compare the resumed run with
an uninterrupted one bit for bit: weights, validation and test metrics.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train
from test_cli import QUIET, TESTS, run_cli
from tvr.checkpoint import atomic_torch_save, load_checkpoint_file
from tvr.data.order import TrainOrderSampler, item_randomness
from tvr.errors import CheckpointError, ConfigError
from tvr.resume import capture_rng, remove_orphan_temp_files, resolve_resume, restore_rng, with_resume_run_dir
from tvr.train import train

BATCHES_PER_EPOCH = 4  # 32 training pairs, batch size 8
# X-Pool's recipe draws at random in the data (segment_random frames, crop and flip) and in the model
# (dropout); validation twice an epoch and a logit-scale cap below CLIP's initial 1/0.07, clamped every step
RANDOM_EVERYWHERE = (
    [
        "experiment=synthetic_xpool",
        "trainer.max_epochs=3",
        "train.checkpoint_every_n_steps=1",
        "+trainer.val_check_interval=0.5",
        "train.max_logit_scale=10",
    ]
    + [o for o in SMALL_OVERRIDES if not o.startswith("data.num_workers")]
    + QUIET
)


def killed_mid_run(args: list[str], data_dir: Path, cwd: Path, run_dir: Path, step: int) -> dict:
    """Start ``tvr-train``, SIGKILL it (every process of it) once last.ckpt holds ``step``; the checkpoint."""
    env = {
        **os.environ,
        "TVR_DATA_DIR": str(data_dir),
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    pause = ["+callbacks.pause._target_=helpers.PauseAtStep", f"+callbacks.pause.step={step + 1}"]
    command = [str(Path(sys.executable).with_name("tvr-train")), *args, *pause, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if last.is_file() and load_checkpoint_file(last)["global_step"] == step:
                break
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL and not (run_dir / "metrics.json").exists()
    return load_checkpoint_file(last)


def assert_same_run(resumed_dir: Path, reference_dir: Path) -> None:
    resumed, reference = (json.loads((folder / "metrics.json").read_text()) for folder in (resumed_dir, reference_dir))
    for key in ("t2v", "v2t", "val_last_epoch", "decode_failures"):
        assert resumed[key] == reference[key], key
    weights = [
        load_checkpoint_file(folder / "checkpoints" / "last.ckpt")["state_dict"]
        for folder in (resumed_dir, reference_dir)
    ]
    assert weights[0].keys() == weights[1].keys()
    different = [name for name in weights[0] if not torch.equal(weights[0][name], weights[1][name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(data_dir, tmp_path):
    args = RANDOM_EVERYWHERE + ["data.num_workers=1"]  # workers: their RNG streams restart on resume
    reference = run_cli("tvr-train", args + [f"hydra.run.dir={tmp_path / 'reference'}"], data_dir, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    checkpoint = killed_mid_run(args, data_dir, tmp_path, run_dir, step=BATCHES_PER_EPOCH + 3)  # after a validation
    assert checkpoint["RetrievalDataModule"]["train_order"] == {
        "epoch": 1,
        "batches_done": 3,
        "batch_size": 8,
        "world_size": 1,
        "seed": 42,
    }  # mid-epoch
    orphan = run_dir / "checkpoints" / ".last.ckpt.killed.tmp"  # what a write killed half-way leaves
    orphan.write_bytes(b"\0" * 1024)

    resumed = run_cli("tvr-train", args + ["ckpt_path=last", f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert_same_run(run_dir, tmp_path / "reference")
    facts = json.loads((run_dir / "metrics.json").read_text())["run"]
    assert facts["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_a_two_process_ddp_run_resumes_from_its_own_checkpoint(data_dir, tmp_path):
    ddp = (
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "data.batch_size=4",
            "trainer.max_epochs=2",
            "train.checkpoint_every_n_steps=1",
            "data.num_workers=0",
        ]
        + [o for o in SMALL_OVERRIDES if not o.startswith(("data.batch_size", "data.num_workers"))]
        + QUIET
    )
    reference = run_cli("tvr-train", ddp + [f"hydra.run.dir={tmp_path / 'reference'}"], data_dir, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_dir = tmp_path / "run"
    checkpoint = killed_mid_run(ddp, data_dir, tmp_path, run_dir, step=BATCHES_PER_EPOCH + 1)
    assert checkpoint["RetrievalDataModule"]["train_order"]["world_size"] == 2
    assert len(checkpoint["callbacks"]["LastCheckpoint"]["rng"]) == 2  # one RNG state per rank
    resumed = run_cli("tvr-train", ddp + ["ckpt_path=last", f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, tmp_path / "reference")


@pytest.mark.slow
def test_ckpt_path_continues_in_the_runs_own_folder(data_dir, tmp_path):
    args = ["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET
    first = run_cli("tvr-train", args, data_dir, tmp_path)  # outputs/synthetic_meanpool/<time>/
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "synthetic_meanpool").iterdir()
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0

    longer = run_cli("tvr-train", ["trainer.max_epochs=2", "ckpt_path=last"] + args[1:], data_dir, tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert [run_dir] == list((tmp_path / "outputs" / "synthetic_meanpool").iterdir())  # no new folder
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["run"]["resumed_from"].endswith("last.ckpt")

    by_file = run_cli(
        "tvr-train",
        ["trainer.max_epochs=3", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"] + args[1:],
        data_dir,
        tmp_path,
    )
    assert by_file.returncode == 0, by_file.stderr[-3000:]
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2

    elsewhere = run_cli("tvr-train", ["ckpt_path=last", "head=seqtransf"] + args[1:], data_dir, tmp_path)
    assert elsewhere.returncode == 2 and "no run of 'synthetic_seqtransf' with a checkpoint" in elsewhere.stderr
    other_seed = run_cli("tvr-train", ["ckpt_path=last", "seed=7"] + args[1:], data_dir, tmp_path)  # not that run
    assert other_seed.returncode == 2 and "the runs there were started with other overrides" in other_seed.stderr


# ------------------------------------------------------------------------------ in-process
@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished")
    train(compose_train(["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET, data_dir, run_dir))
    return run_dir


def test_training_into_a_folder_with_a_checkpoint_is_refused_not_overwritten(finished_run, data_dir):
    before = (finished_run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    cfg = compose_train(["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET, data_dir, finished_run)
    with pytest.raises(
        ConfigError, match=r"^ckpt_path: the run folder .* already holds last.ckpt.*pass ckpt_path=last"
    ):
        train(cfg)
    assert (finished_run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_a_resumed_runs_wall_time_counts_every_part(finished_run, data_dir, tmp_path):
    checkpoint = load_checkpoint_file(finished_run / "checkpoints" / "last.ckpt")
    assert checkpoint["tvr_progress"]["wall_time_s"] > 0  # what the first part had spent
    checkpoint["tvr_progress"]["wall_time_s"] = 1000.0  # an earlier part far longer than this one
    run_dir = tmp_path / "continued"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    overrides = ["trainer.max_epochs=2", "ckpt_path=last"] + SMALL_OVERRIDES + QUIET
    wall_time = train(compose_train(overrides, data_dir, run_dir))["run"]["wall_time_s"]
    assert 1000.0 < wall_time < 1000.0 + 600


@pytest.mark.parametrize(
    "override, named",
    [
        ("head=seqtransf", "head.name: checkpoint 'meanpool', this run 'seqtransf'"),
        ("data=msrvtt", "data.name: checkpoint 'synthetic', this run 'msrvtt'"),
        (
            "optim=bertadam train.clip_param_dtype=fp16",  # its moments were saved in fp32
            "train.clip_param_dtype: checkpoint 'fp32', this run 'fp16'",
        ),
    ],
)
def test_resuming_another_heads_or_datasets_checkpoint_is_refused_naming_both(
    override, named, finished_run, data_dir, tmp_path
):
    checkpoint = finished_run / "checkpoints" / "last.ckpt"
    cfg = compose_train([*override.split(), f"ckpt_path={checkpoint}"] + QUIET, data_dir, tmp_path)
    with pytest.raises(CheckpointError, match="cannot continue") as error:
        train(cfg)
    assert named in str(error.value)


def test_a_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^ckpt_path: '.*nowhere.ckpt' not found"):
        resolve_resume(str(tmp_path / "nowhere.ckpt"), tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"^ckpt_path: '.*' is a folder, not a file; pass a checkpoint file"):
        resolve_resume(str(tmp_path / "checkpoints"), tmp_path)
    assert resolve_resume("last", tmp_path) is None  # a job's first attempt: nothing to continue yet
    assert resolve_resume(None, tmp_path) is None


def test_orphan_temp_files_are_removed_and_checkpoints_kept(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"x")
    (tmp_path / ".last.ckpt.ab12.tmp").write_bytes(b"partial")
    assert [path.name for path in remove_orphan_temp_files(tmp_path)] == [".last.ckpt.ab12.tmp"]
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_checkpoint_file_of_a_run_continues_in_that_run_folder(tmp_path):
    run_dir = tmp_path / "outputs" / "x"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(b"x")
    assert with_resume_run_dir([f"ckpt_path={checkpoint}"]) == [f"ckpt_path={checkpoint}", f"hydra.run.dir='{run_dir}'"]
    explicit = [f"ckpt_path={checkpoint}", "++hydra.run.dir=elsewhere"]
    assert with_resume_run_dir(explicit) == explicit
    sweep_job = tmp_path / "multirun" / "head=x,seed=1"  # a job folder: quoted for Hydra on the way in and out
    (sweep_job / ".hydra").mkdir(parents=True)
    (sweep_job / "checkpoints").mkdir()
    quoted = f"ckpt_path='{sweep_job / 'checkpoints' / 'last.ckpt'}'"
    assert with_resume_run_dir([quoted]) == [quoted, f"hydra.run.dir='{sweep_job}'"]
    loose = tmp_path / "loose.ckpt"
    assert with_resume_run_dir([f"ckpt_path={loose}"]) == [f"ckpt_path={loose}"]  # not inside a run: a new folder
    assert with_resume_run_dir(["-m", "ckpt_path=last", "seed=0,1"]) == [
        "-m",
        "ckpt_path=last",
        "seed=0,1",
    ]  # sweep jobs have theirs


def test_the_training_order_restarts_mid_epoch_where_it_stopped():
    data = list(range(40))
    full = TrainOrderSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(index for index, _ in order) == data and {epoch for _, epoch in order} == {2}
    restarted = TrainOrderSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    restarted.resume_at(2, 16)
    restarted.set_epoch(2)  # Lightning's call at the epoch start keeps the skip
    assert list(restarted) == order[16:]
    assert list(restarted) == order  # later passes over the epoch are whole
    restarted.set_epoch(3)
    assert list(restarted) != order and len(list(restarted)) == 40
    ranks = [TrainOrderSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3) for rank in (0, 1)]
    shares = [[index for index, _ in rank] for rank in ranks]
    assert sorted(shares[0] + shares[1]) == data and not set(shares[0]) & set(shares[1])


def test_a_samples_random_draws_depend_on_seed_epoch_and_index_only():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    random.seed(0)
    before = (random.getstate(), torch.get_rng_state())
    with item_randomness(42, 1, 7):
        first = draws()
    after_first = np.random.get_state()[1].copy()
    assert random.getstate() == before[0]
    assert torch.equal(torch.get_rng_state(), before[1])  # the main process's stream is untouched
    draws()  # whatever ran before: the sample draws the same
    with item_randomness(42, 1, 7):
        assert draws() == first
    # NumPy's stream is left where the sample's draws leave it: a function of (seed, epoch, index) too
    assert (np.random.get_state()[1] == after_first).all()
    with item_randomness(42, 2, 7):
        assert draws() != first


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    atomic_torch_save({"rng": capture_rng()}, tmp_path / "state.ckpt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng(load_checkpoint_file(tmp_path / "state.ckpt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_slurms_time_limit_signal_saves_at_the_step_end_and_requeues_the_job(data_dir, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # a stand-in that records what it was asked
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "tvr-train",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    for name, value in {**slurm, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}.items():
        monkeypatch.setenv(name, value)
    previous = signal.getsignal(signal.SIGUSR1)
    signalled = [
        "+callbacks.signal._target_=helpers.SignalAtStep",
        "+callbacks.signal.step=2",
        f"+callbacks.signal.signum={int(signal.SIGUSR1)}",
    ]
    saved = []
    monkeypatch.setattr("tvr.resume.LastCheckpoint.save", lambda self, trainer: saved.append(trainer.global_step))
    try:
        train(compose_train(["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET + signalled, data_dir, tmp_path / "run"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert saved[0] == 3  # at the end of the step the signal arrived in, then the epoch end
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert not list((tmp_path / "run").glob("hpc_ckpt_*.ckpt"))  # Lightning's mid-step save stayed off
