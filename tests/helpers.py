"""Test-only Lightning callbacks, importable by tvr-train subprocesses (tests/ is put on PYTHONPATH)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class GradRecorder(pl.Callback):
    """Saves every parameter's gradient right before the first optimiser step (after DDP's all-reduce)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.done or not trainer.is_global_zero:
            return
        grads = {name: p.grad.detach().clone() for name, p in pl_module.named_parameters() if p.grad is not None}
        torch.save(grads, self.path)
        self.done = True


class HangingBackend:
    """A video backend whose decoder never returns for files named *hang*: stands in for a file that
    makes FFmpeg loop inside one native call (spawned checker processes import it from here)."""

    name = "hanging"
    timeout_s = None

    def read(self, path, sampler, start=None, end=None, rng=None):
        import time

        from tvr.data.video.decord_backend import DecordBackend

        if "hang" in path.name:
            while True:
                time.sleep(3600)
        return DecordBackend().read(path, sampler, start, end, rng)


class PoisonBatch(pl.Callback):
    """Turns the frames of the batch(es) of optimiser step ``step`` (only batch ``batch_idx`` of the epoch,
    if given) into NaN: a non-finite loss on demand."""

    def __init__(self, step: int, batch_idx: int | None = None) -> None:
        self.step, self.batch_idx = step, batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.batch_idx in (None, batch_idx):
            # the loaders deliver uint8 frames, which hold no NaN: normalised float frames of NaN instead
            batch["frames"] = torch.full(batch["frames"].shape, float("nan"), device=batch["frames"].device)


class PoisonGradient(pl.Callback):
    """Makes one gradient NaN after the backward pass of optimiser step ``step`` (the loss stays finite)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            next(param for param in pl_module.parameters() if param.grad is not None).grad.fill_(float("nan"))


class PauseAtStep(pl.Callback):
    """Sleeps at the end of optimiser step ``step`` before it is checkpointed (checkpoint callbacks run
    after the others), so that a test can kill the run while ``last.ckpt`` holds step ``step - 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import time

            time.sleep(600)


class WeightsAroundStep(pl.Callback):
    """Saves the parameters before and after the batch of optimiser step ``step`` to ``path``."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path
        self.before = None

    def _snapshot(self, pl_module) -> dict:
        return {name: param.detach().clone() for name, param in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.before = self._snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.before is not None:
            torch.save({"before": self.before, "after": self._snapshot(pl_module)}, self.path)
            self.before = None


class SignalAtStep(pl.Callback):
    """Sends ``signum`` to this process at the start of optimiser step ``step`` (SLURM's time-limit warning)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import os

            os.kill(os.getpid(), self.signum)
