"""Test-only Lightning callbacks, importable by tvr-train subprocesses (tests/ is put on PYTHONPATH)."""

from __future__ import annotations

import torch
import pytorch_lightning as pl


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

        from tvr.data.video import DecordBackend

        if "hang" in path.name:
            while True:
                time.sleep(3600)
        return DecordBackend().read(path, sampler, start, end, rng)
