"""Checkpoint files: written atomically (:mod:`tvr.atomic`), read with ``weights_only=True``.

A crash or pre-emption while saving must never leave a truncated ``last.ckpt`` behind. Reading names the
file when it is missing, empty or damaged, and :func:`load_tvr_checkpoint` says what a file that is not a
tvr checkpoint is instead (a released paper checkpoint, CLIP weights, a bare state_dict).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from tvr.atomic import atomic_torch_save
from tvr.errors import CheckpointError, DiskFullError
from tvr.models.weights import (
    CLIP_PREFIX,
    is_torchscript_archive,
    is_transformers_layout,
    load_tensor_file,
    state_dict_mismatch,
    strip_module_prefix,
)

# What RetrievalModule.save_hyperparameters stores and tvr.evaluate.module_from_checkpoint rebuilds the model from.
TVR_HYPER_PARAMETERS = ("backbone", "head", "loss", "optim", "train")
CHECKPOINT_HINT = "pass a checkpoint written by tvr-train (<run dir>/checkpoints/best.ckpt or last.ckpt) or by tools/convert_checkpoint.py"
CONVERT_HINT = (
    "a checkpoint released with a paper (CLIP under 'clip.', like CLIP4Clip's and GLSCL's pytorch_model.bin or "
    "X-Pool's model_best.pth): convert it with `python tools/convert_checkpoint.py <file> out.ckpt experiment=<recipe>` "
    "and evaluate out.ckpt"
)
CLIP_WEIGHTS_HINT = "CLIP weights, not a trained retrieval model: pass them to tvr-train as backbone.weights=<file>"


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """What a checkpoint file holds, read with ``weights_only=True``; a missing, empty or unreadable file
    raises :class:`CheckpointError` naming it."""
    return load_tensor_file(Path(path), CHECKPOINT_HINT, CheckpointError, map_location)


def load_tvr_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint tvr wrote: ``state_dict`` plus the ``hyper_parameters`` the model is rebuilt from.
    Any other file raises :class:`CheckpointError` saying what it looks like and what to do with it."""
    path = Path(path)
    if is_torchscript_archive(path):  # weights_only=True cannot open TorchScript; say what it is instead
        raise CheckpointError(f"'{path}' is not a tvr checkpoint: it is OpenAI's TorchScript {CLIP_WEIGHTS_HINT}")
    checkpoint = load_checkpoint_file(path, map_location)
    problem = not_a_tvr_checkpoint(checkpoint)
    if problem:
        raise CheckpointError(f"'{path}' is not a tvr checkpoint: {problem}")
    return checkpoint


def not_a_tvr_checkpoint(checkpoint) -> str | None:
    """None for a tvr checkpoint, else what the loaded object looks like and what to do with it."""
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a checkpoint dictionary; {CHECKPOINT_HINT}"
    hyper_parameters, state_dict = checkpoint.get("hyper_parameters"), checkpoint.get("state_dict")
    if isinstance(hyper_parameters, dict):
        absent = [key for key in TVR_HYPER_PARAMETERS if key not in hyper_parameters]
        if absent:
            return (
                f"its hyper_parameters lack {', '.join(absent)} (it has {', '.join(map(str, hyper_parameters)) or 'none'}), "
                f"so it is the checkpoint of another model; {CHECKPOINT_HINT}"
            )
        if not isinstance(state_dict, dict):
            return f"it has tvr's hyper_parameters but no state_dict (an incomplete save?); {CHECKPOINT_HINT}"
        return None
    weights = state_dict if isinstance(state_dict, dict) else checkpoint
    if not weights or not all(torch.is_tensor(value) for value in weights.values()):
        keys = ", ".join(map(str, list(checkpoint)[:8]))
        return f"it is a dictionary ({keys}) with neither tvr's hyper_parameters nor a state_dict of tensors; {CHECKPOINT_HINT}"
    return describe_state_dict(weights)


def describe_state_dict(state_dict: dict) -> str:
    """What model a state_dict without tvr's hyper_parameters belongs to, by its key names."""
    state_dict = strip_module_prefix(state_dict)
    keys = list(state_dict)
    if any(key.startswith(("backbone.", "head.")) for key in keys):
        return (
            "it holds tvr model weights without the configuration they were trained with (a bare state_dict); "
            "evaluate the .ckpt that tvr-train wrote (<run dir>/checkpoints/best.ckpt), which carries both"
        )
    if any(key.startswith(CLIP_PREFIX) for key in keys):
        return f"it is {CONVERT_HINT}"
    if (
        is_transformers_layout(state_dict)
        or "token_embedding.weight" in keys
        or any(key.startswith("visual.") for key in keys)
    ):
        return f"it holds {CLIP_WEIGHTS_HINT}"
    return f"it is the state_dict of an unknown model (keys such as {', '.join(keys[:5])}); {CHECKPOINT_HINT}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        try:
            atomic_torch_save(checkpoint, path)
        except DiskFullError as error:
            raise DiskFullError(error.path, checkpoint.get("global_step")) from error.__cause__

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return load_checkpoint_file(path, map_location or "cpu")


class CheckpointMismatchError(CheckpointError):
    """A state_dict whose keys do not match the model it is loaded into."""


def load_state_dict_checked(
    module, state_dict: dict, strict: bool = True, source: str = "checkpoint", partial_switch: str = "strict=false"
) -> tuple[list[str], list[str]]:
    """Load ``state_dict`` into ``module``, naming every missing and unexpected key.

    With ``strict`` (the default) any mismatch is refused, and the error names ``partial_switch``, the
    option of the calling command that loads the matching keys anyway (``tvr-eval``'s ``strict=false``
    by default); otherwise the matching keys are loaded and the mismatch is returned (and logged by the
    caller), e.g. for a checkpoint of a different head.
    """
    check = getattr(module, "check_state_dict", None)
    if check is not None:  # e.g. another video tower or merge schedule: say so, not just which keys differ
        check(state_dict)
    # weights only: a tower's saved identity (a non-tensor ``_extra_state``) was compared just above
    expected = {key: value for key, value in module.state_dict().items() if torch.is_tensor(value)}
    missing, unexpected, wrong_shape = state_dict_mismatch(
        expected, {k: v for k, v in state_dict.items() if torch.is_tensor(v)}
    )
    if wrong_shape:
        details = ", ".join(f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape[:10])
        raise CheckpointMismatchError(f"{source}: tensors of the wrong shape: {details}")
    if (missing or unexpected) and strict:
        raise CheckpointMismatchError(
            f"{source} does not match the model: {len(missing)} missing keys {missing[:10]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:10]}; pass {partial_switch} to load the matching keys anyway"
        )
    module.load_state_dict(state_dict, strict=False)
    return missing, unexpected
