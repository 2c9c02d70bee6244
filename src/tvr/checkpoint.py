"""Checkpoint files: written atomically, read with ``weights_only=True``.

A crash or pre-emption while saving must never leave a truncated ``last.ckpt`` behind: the bytes go to
a temporary file in the same folder, are flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from tvr.models.weights import state_dict_mismatch


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return load_checkpoint_file(path, map_location or "cpu")


class CheckpointMismatchError(RuntimeError):
    """A state_dict whose keys do not match the model it is loaded into."""


def load_state_dict_checked(module, state_dict: dict, strict: bool = True, source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """Load ``state_dict`` into ``module``, naming every missing and unexpected key.

    With ``strict`` (the default) any mismatch is refused; otherwise the matching keys are loaded and
    the mismatch is returned (and logged by the caller), e.g. for a checkpoint of a different head.
    """
    expected = module.state_dict()
    missing, unexpected, wrong_shape = state_dict_mismatch(expected, state_dict)
    if wrong_shape:
        details = ", ".join(f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape[:10])
        raise CheckpointMismatchError(f"{source}: tensors of the wrong shape: {details}")
    if (missing or unexpected) and strict:
        raise CheckpointMismatchError(
            f"{source} does not match the model: {len(missing)} missing keys {missing[:10]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:10]}; pass strict=false to load the matching keys anyway"
        )
    module.load_state_dict(state_dict, strict=False)
    return missing, unexpected
