"""Runs that survive: ``last.ckpt`` that is always the last state, and exact continuation from it.

* :class:`LastCheckpoint` writes ``<run>/checkpoints/last.ckpt`` at the end of every epoch, every
  ``train.checkpoint_every_n_steps`` optimiser steps and at the end of training (atomically, through
  :class:`tvr.checkpoint.AtomicCheckpointIO`), and carries every rank's RNG states (torch, CUDA,
  NumPy, Python), restored when training restarts. With the data order of :mod:`tvr.data.order` and
  Lightning's optimiser, scheduler and loop state, a resumed run repeats the uninterrupted one exactly.
* :func:`resolve_resume` turns ``ckpt_path=last|<file>`` into the file to continue from, and refuses
  a checkpoint of another head, backbone or dataset; :func:`remove_orphan_temp_files` clears what a
  killed write left behind.
* :func:`with_resume_run_dir` makes ``tvr-train ckpt_path=…`` continue in the run's own folder.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback, Checkpoint

from tvr.atomic import temp_files
from tvr.checkpoint import load_tvr_checkpoint
from tvr.config import compose_config
from tvr.distributed import gather_objects
from tvr.errors import CheckpointError, ConfigError
from tvr.models.weights import not_a_file
from tvr.overrides import hydra_quote, parse_overrides

log = logging.getLogger(__name__)

LAST = "last.ckpt"
CHECKPOINT_DIR = "checkpoints"
# what a checkpoint must share with the run that continues it
SAME_RUN_KEYS = (
    ("head", "name"),
    ("backbone", "model_name"),
    ("backbone", "architecture"),
    ("data", "name"),
    ("train", "clip_param_dtype"),  # the optimiser's moments are stored in the parameters' dtype
)


# ---------------------------------------------------------------------------------------------- RNG states
def capture_rng() -> dict:
    """This process's RNG states, as objects ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "gauss": float(numpy_state[4]),
        },
        "python": {"version": python_version, "internal": list(python_internal), "gauss": python_gauss},
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))


# ------------------------------------------------------------------------------------------ the callback
class LastCheckpoint(Checkpoint):
    """``last.ckpt``: the newest state of the run, written whatever the validation score did."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self._saved_at_step: int | None = None
        self._rng_to_restore: list[dict] | None = None

    def save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_at_step:  # e.g. the end of training right after an epoch end
            return
        trainer.save_checkpoint(
            self.path, weights_only=False
        )  # every rank calls it: RNG states are gathered in state_dict
        self._saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps
            and step
            and step % self.every_n_steps == 0
            and not ends_before_validation(trainer, batch_idx)
        ):
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def state_dict(self) -> dict:
        return {"rng": gather_objects(capture_rng())}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        # restored here, after Lightning has built the loaders, so the first resumed step draws exactly
        # what the uninterrupted run drew after the checkpoint was written
        states, self._rng_to_restore = self._rng_to_restore, None
        if states is None:
            return
        if len(states) != trainer.world_size:
            log.warning(
                "the checkpoint holds RNG states of %d processes and this run has %d: continuing with "
                "fresh RNG streams, so dropout draws differ from the interrupted run's",
                len(states),
                trainer.world_size,
            )
            return
        restore_rng(states[trainer.global_rank])


def ends_before_validation(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether validation (or the epoch end) follows this batch. A checkpoint written between the batch
    and that validation would resume past it without running it, so the step checkpoint waits a batch
    (the epoch end writes its own, after validation)."""
    every = trainer.val_check_batch
    return batch_idx + 1 >= trainer.num_training_batches or (
        isinstance(every, int) and every > 0 and (batch_idx + 1) % every == 0
    )


class SlurmRequeue(Callback):
    """SLURM's warning before the time limit (``sbatch --signal=SIGUSR1@90``): at the end of the step in
    progress every rank writes ``last.ckpt`` together, then rank 0 requeues the job, which continues from
    that checkpoint with ``ckpt_path=last``. Lightning's own auto-requeue (turned off in
    :func:`tvr.builders.build_trainer`) saves inside the signal handler instead, at any point of a step:
    mid optimiser update, with the checkpoint's collectives interleaved with the step's."""

    def __init__(self, last: LastCheckpoint, signum: int = signal.SIGUSR1) -> None:
        self.last, self.signum = last, signum
        self._signalled = False
        self._requeued = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signalled = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._requeued:
            return
        signalled = torch.tensor(float(self._signalled), device=pl_module.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(
                signalled, op=torch.distributed.ReduceOp.MAX
            )  # ranks get it at different steps
        if not signalled.item():
            return
        self.last.save(trainer)
        self._requeued = True
        if trainer.is_global_zero:
            job = os.environ["SLURM_JOB_ID"]
            log.warning(
                "time limit near: saved %s at step %d, requeueing SLURM job %s",
                self.last.path,
                trainer.global_step,
                job,
            )
            subprocess.run(["scontrol", "requeue", job], check=True)


# ------------------------------------------------------------------------------------------ start-up
def remove_orphan_temp_files(folder: Path) -> list[Path]:
    """Temporary files of checkpoint writes killed half-way; called at start-up, before this run writes
    anything, so none of them can be a write in progress."""
    orphans = temp_files(folder)
    for orphan in orphans:
        log.warning(
            "removing %s (%.1f MB), left by a checkpoint write that was killed", orphan, orphan.stat().st_size / 2**20
        )
        orphan.unlink()
    return orphans


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The run folder's ``checkpoints/last.ckpt``, if any."""
    path = run_dir / CHECKPOINT_DIR / LAST
    return path if path.is_file() else None


def resolve_resume(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The checkpoint ``ckpt_path`` names for this run folder (None: start from step 0).

    ``last`` continues this folder's newest checkpoint and starts from step 0 when there is none yet
    (the first attempt of a job that a cluster may requeue). Without ``ckpt_path``, a folder that already
    holds a checkpoint is refused: training from scratch there would overwrite it.
    """
    if ckpt_path == "last":
        found = newest_checkpoint(run_dir)
        if found is None:
            log.info("ckpt_path=last: no checkpoint in %s yet, starting from step 0", run_dir)
        return found
    if ckpt_path:
        path = Path(ckpt_path)
        problem = not_a_file(path)
        if problem:
            raise ConfigError(
                "ckpt_path",
                problem,
                "pass a checkpoint file, or ckpt_path=last to continue the run folder's last.ckpt",
            )
        last = newest_checkpoint(run_dir)
        if last is not None and last.resolve() != path.resolve() and last.stat().st_mtime_ns > path.stat().st_mtime_ns:
            log.warning(
                "continuing from %s, which is older than %s: the run goes back to that point and overwrites "
                "the newer state (ckpt_path=last continues from the newest)",
                path,
                last,
            )
        return path
    existing = newest_checkpoint(run_dir)
    if existing is not None:
        raise ConfigError(
            "ckpt_path",
            f"the run folder {run_dir} already holds {existing.name}, which training from step 0 would overwrite",
            "pass ckpt_path=last to continue that run, or choose another hydra.run.dir",
        )
    return None


def check_same_run(checkpoint_path: Path, run_config: dict) -> None:
    """Refuse to continue a checkpoint of another head, backbone or dataset, naming both."""
    saved = load_tvr_checkpoint(checkpoint_path)["hyper_parameters"].get("run_config") or {}
    differences = []
    for section, key in SAME_RUN_KEYS:
        was, now = (saved.get(section) or {}).get(key), (run_config.get(section) or {}).get(key)
        if was is not None and was != now:
            differences.append(f"{section}.{key}: checkpoint '{was}', this run '{now}'")
    if differences:
        raise CheckpointError(
            f"cannot continue '{checkpoint_path}' as this run: {'; '.join(differences)}. "
            "Resume with the checkpoint's own settings, or start a new run without ckpt_path"
        )


# ------------------------------------------------------------------------------------------ the run folder
def with_resume_run_dir(argv: list[str]) -> list[str]:
    """``tvr-train`` arguments plus ``hydra.run.dir=<the run being continued>``, so that a resumed run
    writes into its own folder rather than a new timestamped one.

    ``ckpt_path=<file>`` in ``<run>/checkpoints/`` continues in ``<run>``; ``ckpt_path=last`` continues
    the newest run folder of this configuration (``outputs/<run_name>/*``, started with the same
    overrides but for ``trainer.max_epochs``) holding a checkpoint. An explicit ``hydra.run.dir``, sweeps
    (each job has its own folder) and Hydra's informational flags (``--cfg``, ``--help``) are left alone.
    """
    overrides = parse_overrides(argv)
    ckpt_path = overrides.get("ckpt_path")
    if (
        not ckpt_path
        or "hydra.run.dir" in overrides
        or overrides.get("hydra.mode") == "MULTIRUN"
        or any(item.startswith("-") for item in argv)
    ):
        return argv
    if ckpt_path == "last":
        run_dir = newest_run_with_checkpoint(argv, overrides)
    else:
        folder = Path(ckpt_path).resolve().parent
        run_dir = folder.parent if folder.name == CHECKPOINT_DIR and (folder.parent / ".hydra").is_dir() else None
    return [*argv, f"hydra.run.dir={hydra_quote(str(run_dir))}"] if run_dir is not None else argv


def newest_run_with_checkpoint(argv: list[str], overrides: dict[str, str]) -> Path | None:
    try:
        run_name = compose_config([item for item in argv if "=" in item], "train").run_name
    except Exception:  # a bad override: tvr-train itself reports it with its key
        return None
    wanted = comparable(overrides)
    parent = Path("outputs") / run_name
    runs = sorted(
        (path for path in parent.glob("*") if newest_checkpoint(path) is not None), key=lambda path: path.name
    )
    same = [path for path in runs if comparable(saved_overrides(path)) == wanted]
    if not same:
        others = (
            f"; the runs there were started with other overrides ({', '.join(path.name for path in runs[-3:])})"
            if runs
            else ""
        )
        print(
            f"error: ckpt_path=last: no run of '{run_name}' with a checkpoint and these overrides under {parent}/{others}; "
            "pass ckpt_path=<file> or hydra.run.dir=<run folder>",
            file=sys.stderr,
        )
        sys.exit(2)
    log.info("continuing %s", same[-1])
    return same[-1]


def saved_overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return parse_overrides(yaml.safe_load(path.read_text()) or []) if path.is_file() else {}


def comparable(overrides: dict[str, str]) -> dict[str, str]:
    """The overrides that make a run what it is: not how to continue it or for how long."""
    return {key: value for key, value in overrides.items() if key not in ("ckpt_path", "trainer.max_epochs")}
