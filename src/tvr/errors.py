"""Errors that describe bad input (a config key, a file, a checkpoint) rather than a bug in tvr.

The entry points print a ``UserInputError`` as one message naming the key or file and what to do,
without a traceback (set ``HYDRA_FULL_ERROR=1`` to see one). Anything else keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path


class UserInputError(ValueError):
    """Bad configuration, file or checkpoint; the message says which one and what to pass instead."""


class ConfigError(UserInputError):
    """A config value that cannot work, found before any data is generated, cached or read."""

    def __init__(self, key: str, problem: str, hint: str = "") -> None:
        self.key = key
        message = f"{key}: {problem}"
        super().__init__(f"{message}; {hint}" if hint else message)


class AnnotationError(UserInputError):
    """An annotation file that is missing or cannot be parsed; the message names the file (and line)."""


class CheckpointError(UserInputError):
    """A checkpoint file that is missing, empty, unreadable or not a tvr checkpoint."""


class NonFiniteScoresError(RuntimeError):
    """NaN or inf in a real text/video representation or score: the metrics would be silently wrong."""


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss or gradient during training (``train.nonfinite=stop``); ``step`` is where."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class DiskFullError(OSError):
    """No space left on the disk while writing ``path``, which keeps its previous content; ``step`` is the
    training step whose checkpoint it was (None for other files)."""

    def __init__(self, path: str | os.PathLike, step: int | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.path, self.step = Path(path), step

    def __str__(self) -> str:
        at_step = f" (the checkpoint of step {self.step})" if self.step is not None else ""
        kept = (
            f"{self.path.name} keeps its previous content" if self.path.exists() else f"no {self.path.name} was written"
        )
        return (
            f"no space left on the disk holding {self.path.parent}: writing {self.path}{at_step} failed, and {kept}; "
            "free space on that disk, then run the command again (a training run continues from its last "
            "checkpoint with ckpt_path=last)"
        )


def exit_on_user_error(task):
    """Wrap an entry point's task: a :class:`UserInputError` or a non-finite score or loss ends the run with
    its message alone (exit status 2; a full disk too) instead of a traceback, unless ``HYDRA_FULL_ERROR=1``. In a sweep
    (``-m``) the error is raised on after its message, so that Hydra records the job as failed and runs
    the others."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except (UserInputError, NonFiniteScoresError, NonFiniteLossError, DiskFullError) as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {error}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
            if in_sweep():
                raise
            sys.exit(2)

    return wrapper


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
