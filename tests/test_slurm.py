"""SLURM support without a cluster: the submitit launcher option (conf/hydra/launcher/slurm.yaml) and the
single-run batch script (tools/slurm/train.sbatch).

``sbatch``/``srun`` are small stand-ins on PATH that record what they are given, so the launcher runs its
real code (hydra-submitit-launcher's ``launch``, submitit's SlurmExecutor) up to the submission. The slow
test goes further on a stand-in cluster (sbatch/srun/scontrol/sacct scripts that run the job locally):
``tvr-train -m hydra/launcher=slurm`` trains, gets submitit's time-limit signal, is requeued and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from hydra.utils import instantiate
from omegaconf import OmegaConf
from submitit.core.utils import DelayedSubmission
from submitit.slurm.slurm import SlurmJobEnvironment

from conftest import SMALL_OVERRIDES
from tvr.config import compose_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SBATCH_SCRIPT = REPO_ROOT / "tools" / "slurm" / "train.sbatch"
MULTINODE = ["hydra/launcher=slurm", "trainer=ddp_multinode", "trainer.devices=4", "trainer.num_nodes=2"]
JOB_ID = "4242"


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` that keeps the submitted script and answers like SLURM; ``srun`` that records its arguments."""
    bin_dir = tmp_path / "fake_slurm_bin"
    bin_dir.mkdir()
    record = tmp_path / "fake_slurm_record"
    record.mkdir()
    write_executable(
        bin_dir / "sbatch",
        f'#!/bin/bash\ncp "$1" "{record}/submitted_$(ls "{record}" | wc -l).sh"\necho "Submitted batch job {JOB_ID}"\n',
    )
    write_executable(bin_dir / "srun", f'#!/bin/bash\nprintf "%s\\n" "$@" > "{record}/srun_args"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def sbatch_flags(text: str) -> dict[str, str | bool]:
    """``#SBATCH --key=value`` lines as {key: value}; a flag without value maps to True."""
    flags = {}
    for line in text.splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if match:
            flags[match.group(1)] = match.group(2) if match.group(2) is not None else True
    return flags


def launcher_config(overrides: list[str], sweep_dir: Path):
    cfg = compose_config([*overrides, f"hydra.sweep.dir={sweep_dir}"])
    return cfg, cfg.hydra.launcher


def submit(overrides: list[str], sweep_overrides: list[list[str]], sweep_dir: Path, record: Path, monkeypatch):
    """Run hydra-submitit-launcher's launch() as ``tvr-train -m`` would, up to sbatch; returns the submitted
    sbatch text and the pickled submissions submitit will run on the cluster."""
    cfg, launcher_cfg = launcher_config(overrides, sweep_dir)
    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    # the jobs never run here: results() would wait for them
    monkeypatch.setattr(submitit.core.core.Job, "results", lambda job: [job.job_id])
    job_ids = launcher.launch(sweep_overrides, initial_job_idx=0)
    submitted = sorted(record.glob("submitted_*.sh"))
    assert len(submitted) == 1  # the sweep is one job array
    pickles = sorted((sweep_dir / ".submitit").rglob("*_submitted.pkl"))
    return job_ids, submitted[0].read_text(), [DelayedSubmission.load(path) for path in pickles]


# --------------------------------------------------------------------------------- the launcher option
def test_slurm_launcher_option_composes_from_the_trainer(tmp_path):
    cfg, launcher = launcher_config([*MULTINODE, "ckpt_path=last"], tmp_path / "sweep")
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    values = OmegaConf.to_container(launcher, resolve=True)
    assert values["tasks_per_node"] == values["gpus_per_node"] == 4  # one task per GPU
    assert values["nodes"] == 2
    assert values["cpus_per_task"] == 8 and values["timeout_min"] == 1440
    assert values["signal_delay_s"] >= 90
    assert values["max_num_timeout"] > 0
    assert values["partition"] is None and values["account"] is None
    assert values["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"
    assert cfg.ckpt_path == "last"
    # the trainer the launcher sizes is the one tvr-train builds
    assert (cfg.trainer.strategy, cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.num_nodes) == (
        "ddp",
        "gpu",
        4,
        2,
    )


def test_slurm_launcher_option_follows_other_sizes_and_cluster_settings(tmp_path):
    overrides = [
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=8",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj",
        "hydra.launcher.mem_gb=256",
        "hydra.launcher.cpus_per_task=12",
    ]
    values = OmegaConf.to_container(launcher_config(overrides, tmp_path)[1], resolve=True)
    assert (values["nodes"], values["tasks_per_node"], values["gpus_per_node"]) == (1, 8, 8)
    assert (values["partition"], values["account"], values["mem_gb"], values["cpus_per_task"]) == (
        "gpu",
        "proj",
        256,
        12,
    )


def test_slurm_launcher_option_leaves_ckpt_path_to_the_command_line(tmp_path):
    """Hydra merges hydra/launcher before conf/train.yaml, so the option cannot set ckpt_path: sweeps
    pass ckpt_path=last (as the option's header says); this pins that statement."""
    cfg, _ = launcher_config(MULTINODE, tmp_path)
    assert cfg.ckpt_path is None


# ------------------------------------------------------------------------- what submitit submits
def test_sweep_submission_sbatch_header_and_requeue_state(tmp_path, fake_slurm, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    jobs = [["ckpt_path=last", "seed=0"], ["ckpt_path=last", "seed=1"]]
    job_ids, text, delayed = submit(MULTINODE, jobs, sweep_dir, fake_slurm, monkeypatch)
    assert job_ids == [f"{JOB_ID}_0", f"{JOB_ID}_1"]
    print(text)  # the generated submission file (pytest -s shows it)

    flags = sbatch_flags(text)
    assert flags["nodes"] == "2"
    assert flags["ntasks-per-node"] == "4"
    assert flags["gpus-per-node"] == "4"
    assert flags["cpus-per-task"] == "8"
    assert flags["time"] == "1440"
    assert flags["signal"] == f"{SlurmJobEnvironment.USR_SIG}@120"
    if "SUBMITIT_PREEMPT_SIGNAL" not in os.environ:
        assert flags["signal"] == "USR2@120"  # not SIGUSR1, which Lightning's own auto-requeue listens to
    assert flags["requeue"] is True
    assert flags["open-mode"] == "append"
    assert flags["array"] == "0-1%2"  # the sweep is one job array
    assert flags["output"] == f"{sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out"
    assert not {"partition", "account", "mem", "cpus-per-gpu", "gpus-per-task"} & set(flags)
    # srun starts the tasks (one per GPU): each one runs the pickled Hydra job
    command = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(command) == 1 and command[0].endswith(f"-u -m submitit.core._submit {sweep_dir}/.submitit/%j")
    assert "export SUBMITIT_EXECUTOR=slurm" in text

    # what each array task runs: the launcher itself, with its job's overrides, allowed 5 time-outs
    assert len(delayed) == 2
    for number, submission in enumerate(delayed):
        assert type(submission.function).__name__ == "SlurmLauncher"
        overrides, job_dir_key, job_num = submission.args[:3]
        assert (overrides, job_dir_key, job_num) == (jobs[number], "hydra.sweep.dir", number)
        assert submission._timeout_min == 1440 and submission._timeout_countdown == 5
        # at the time-limit signal, rank 0 calls checkpoint(): the resubmission is the same Hydra job (same
        # overrides, so the same job folder), which ckpt_path=last continues
        requeued = submission._checkpoint_function()
        assert requeued.function is submission.function
        assert requeued.args == submission.args and requeued.kwargs == submission.kwargs


def test_sweep_submission_cluster_settings_reach_sbatch(tmp_path, fake_slurm, monkeypatch):
    overrides = [
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=8",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj",
        "hydra.launcher.mem_gb=256",
        "hydra.launcher.timeout_min=60",
    ]
    _, text, _ = submit(overrides, [["ckpt_path=last"]], tmp_path / "sweep", fake_slurm, monkeypatch)
    flags = sbatch_flags(text)
    assert (flags["nodes"], flags["ntasks-per-node"], flags["gpus-per-node"]) == ("1", "8", "8")
    assert (flags["partition"], flags["account"], flags["mem"], flags["time"]) == ("gpu", "proj", "256GB", "60")
    assert "array" not in flags  # a single job is not an array


# ------------------------------------------------------------------------------ tools/slurm/train.sbatch
def test_sbatch_script_is_valid_bash_with_the_documented_directives():
    subprocess.run(["bash", "-n", str(SBATCH_SCRIPT)], check=True)
    text = SBATCH_SCRIPT.read_text()
    flags = sbatch_flags(text)
    assert (flags["nodes"], flags["ntasks-per-node"], flags["gpus-per-node"], flags["cpus-per-task"]) == (
        "2",
        "4",
        "4",
        "8",
    )
    assert flags["signal"] == "SIGUSR1@90"  # tvr.resume.SlurmRequeue's signal, to every task
    assert flags["requeue"] is True and flags["open-mode"] == "append" and flags["time"] and flags["output"]
    # sbatch reads #SBATCH lines only above the first command
    first_command = next(n for n, line in enumerate(text.splitlines()) if line.strip() and not line.startswith("#"))
    assert all(n < first_command for n, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    for part in ("tvr-train", "trainer=ddp_multinode", "ckpt_path=last", '"$@"'):
        assert part in srun[0]


def run_sbatch_script(fake_slurm: Path, args: list[str], **slurm_env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SLURM_JOB_ID": "77",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_GPUS_PER_NODE": "4",
        "SLURM_CPUS_PER_TASK": "8",
        **slurm_env,
    }
    return subprocess.run(["bash", str(SBATCH_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_sbatch_script_runs_tvr_train_sized_by_the_allocation(tmp_path, fake_slurm):
    result = run_sbatch_script(
        fake_slurm,
        ["experiment=clip4clip_meanp_msrvtt", "data.source.root=/datasets/msrvtt"],
        SLURM_GPUS_PER_NODE="a100:4",
        SLURM_RESTART_COUNT="1",
    )
    assert result.returncode == 0, result.stderr
    assert "job 77 attempt 2" in result.stdout
    argv = (fake_slurm / "srun_args").read_text().splitlines()
    assert argv == [
        "tvr-train",
        "trainer=ddp_multinode",
        "trainer.num_nodes=2",
        "trainer.devices=4",
        "hydra.run.dir=outputs/slurm/77",
        "ckpt_path=last",
        "experiment=clip4clip_meanp_msrvtt",
        "data.source.root=/datasets/msrvtt",
    ]
    # the command line composes: 2 nodes x 4 GPUs of DDP, resuming its job's own folder
    cfg = compose_config(argv[1:])
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)
    assert cfg.ckpt_path == "last" and cfg.hydra.run.dir == "outputs/slurm/77"
    assert cfg.data.source.root == "/datasets/msrvtt"


def test_sbatch_script_refuses_tasks_that_do_not_match_the_gpus(fake_slurm):
    result = run_sbatch_script(fake_slurm, [], SLURM_GPUS_PER_NODE="8")
    assert result.returncode == 2 and "one task per GPU" in result.stderr
    assert not (fake_slurm / "srun_args").exists()


# ------------------------------------------------- a sweep job on a stand-in cluster, requeued and resumed
FAKE_CLUSTER = {
    # submission: keep the script, run it in the background as job 4242, answer like sbatch
    "sbatch": """#!/bin/bash
cp "$1" "$REC/job.sh"
echo RUNNING > "$REC/state"
nohup "$(dirname "$0")/run_job" > "$REC/run_job.log" 2>&1 &
echo "Submitted batch job 4242"
""",
    # the job's life: every attempt runs the batch script with SLURM's variables for one task on one node;
    # an attempt that asked for a requeue (scontrol) is followed by another one, as SLURM would do
    "run_job": """#!/bin/bash
echo $$ > "$REC/run_job_pid"
export SLURM_JOB_ID=4242 SLURM_NTASKS=1 SLURM_NTASKS_PER_NODE=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 \
    SLURM_JOB_NUM_NODES=1 SLURM_NNODES=1 SLURM_JOB_NODELIST=localhost SLURM_NODELIST=localhost SLURM_JOB_NAME=train
attempt=0
while :; do
    rm -f "$REC/requeue"
    echo "$attempt" >> "$REC/attempts"
    SLURM_RESTART_COUNT=$attempt bash "$REC/job.sh"
    rc=$?
    [ -e "$REC/requeue" ] || break
    attempt=$((attempt + 1))
done
if [ $rc = 0 ]; then echo COMPLETED > "$REC/state"; else echo FAILED > "$REC/state"; fi
""",
    # one task: write its pid (for the test's signal), run the command with srun's --output/--error files
    "srun": """#!/bin/bash
while [[ "$1" == --* ]]; do
    case "$1" in
        --output) out="$2"; shift 2 ;;
        --error) err="$2"; shift 2 ;;
        *) shift ;;
    esac
done
out="${out//%j/$SLURM_JOB_ID}"; out="${out//%t/0}"; err="${err//%j/$SLURM_JOB_ID}"; err="${err//%t/0}"
echo $$ > "$REC/task_pid"
exec "$@" >> "$out" 2>> "$err"
""",
    "scontrol": """#!/bin/bash
[ "$1" = requeue ] && [ "$2" = 4242 ] && touch "$REC/requeue"
""",
    "sacct": """#!/bin/bash
printf 'JobID|State|NodeList\\n4242|%s|localhost\\n' "$(cat "$REC/state" 2>/dev/null || echo PENDING)"
""",
}


def job_logs(sweep_dir: Path) -> str:
    return "\n".join(path.read_text() for path in sorted((sweep_dir / ".submitit").rglob("*_log.*")))


@pytest.mark.slow
def test_sweep_job_requeued_on_the_signal_continues_in_its_folder(data_dir, tmp_path):
    """``tvr-train -m hydra/launcher=slurm ckpt_path=last`` on a stand-in cluster: the job (one CPU task)
    gets submitit's signal once its first last.ckpt exists; rank 0 requeues it, and the next attempt runs
    the same Hydra job in the same folder and continues from that checkpoint."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir(), record.mkdir()
    for name, text in FAKE_CLUSTER.items():
        write_executable(bin_dir / name, text)
    sweep_dir = tmp_path / "sweep"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "REC": str(record),
        "TVR_DATA_DIR": str(data_dir),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.sweep.dir={sweep_dir}",
        "ckpt_path=last",
        "seed=0",
        "trainer.max_epochs=6",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *SMALL_OVERRIDES,
    ]
    tvr_train = Path(sys.executable).with_name("tvr-train")
    master = subprocess.Popen(
        [str(tvr_train), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list(sweep_dir.glob("*/checkpoints/last.ckpt")):  # the first epoch's checkpoint
            if master.poll() is not None or time.monotonic() > deadline:
                master.kill()
                pytest.fail(
                    f"no checkpoint from the job:\n{master.communicate()[0][-3000:]}\n{job_logs(sweep_dir)[-3000:]}"
                )
            time.sleep(0.05)
        os.kill(int((record / "task_pid").read_text()), SlurmJobEnvironment._usr_sig())
        output = master.communicate(timeout=120)[0]
    finally:
        if master.poll() is None:
            master.kill()
        # a job left running by a failure: its processes bypass SIGTERM (submitit's handler)
        for pid_file in ("run_job_pid", "task_pid"):
            if (record / pid_file).exists() and (record / "state").read_text().strip() == "RUNNING":
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int((record / pid_file).read_text()), signal.SIGKILL)
    logs = job_logs(sweep_dir)
    assert master.returncode == 0, output[-3000:] + logs[-3000:]
    assert (record / "attempts").read_text().split() == ["0", "1"]  # requeued once
    assert "this job is preempted" in logs and f"Requeued job {JOB_ID}" in logs
    job_dirs = [path.parent for path in sweep_dir.glob("*/metrics.json")]
    assert len(job_dirs) == 1  # the requeued attempt wrote into the first one's folder
    run = json.loads((job_dirs[0] / "metrics.json").read_text())["run"]
    assert run["resumed_from"] == str(job_dirs[0] / "checkpoints" / "last.ckpt")
    flags = sbatch_flags((record / "job.sh").read_text())
    assert flags["signal"].startswith(f"{SlurmJobEnvironment.USR_SIG}@") and flags["requeue"] is True
