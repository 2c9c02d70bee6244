"""Video decoding: open a file, sample frame indices, decode only those frames.

Backends share one small interface (:class:`VideoBackend`) so another decoder can be swapped in by
config: each is a module of this package registered with ``@VIDEO_BACKENDS.register(name)``, its
constructor's arguments its options (``data.video.backend_options``). Every failure surfaces as :class:`VideoReadError`, which datasets catch, count and report
instead of crashing a long run.
"""

from __future__ import annotations

import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvr.data.sampling import FrameSampler
from tvr.registry import Registry

VIDEO_BACKENDS: Registry["VideoBackend"] = Registry("video backend", package="tvr.data.video")


class VideoReadError(RuntimeError):
    """A video that is missing, empty, corrupt or yields no frames."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 [N, H, W, 3], RGB, in sampled order
    indices: list[int]
    num_frames: int
    fps: float


class VideoBackend:
    """Reads the frames a sampler picks; subclasses implement ``_read`` on a checked, existing file."""

    name: str
    timeout_s: float | None = 60.0

    def read(self, path, sampler: FrameSampler, start=None, end=None, rng: random.Random | None = None) -> DecodedClip:
        path = Path(path)
        check_readable_file(path)
        with deadline(self.timeout_s, path):
            return self._read(path, sampler, start, end, rng)

    def _read(self, path: Path, sampler: FrameSampler, start, end, rng) -> DecodedClip:
        raise NotImplementedError


def check_readable_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"missing video file {path}")
    if path.stat().st_size == 0:
        raise VideoReadError(f"empty (zero-byte) video file {path}")


def sample_indices(path: Path, sampler: FrameSampler, num_frames: int, fps: float, start, end, rng) -> list[int]:
    indices = sampler(num_frames, fps, start, end, rng)
    if not indices:
        raise VideoReadError(f"sampler selected no frames of {path} (span {start}-{end}, {num_frames} frames)")
    return indices


def gather_in_order(decoded: np.ndarray, unique_sorted: list[int], wanted: list[int]) -> np.ndarray:
    """Decoders read each distinct index once, in file order; callers want their own order and repeats."""
    position = {index: row for row, index in enumerate(unique_sorted)}
    return decoded[[position[index] for index in wanted]]


@contextmanager
def deadline(seconds: float | None, path: Path):
    """Raise :class:`VideoReadError` if the block runs longer than ``seconds``.

    Uses ``SIGALRM`` where possible (the main thread of a process: DataLoader workers, ``num_workers=0``
    runs, cache-building processes), which interrupts Python code but not a single native call — a call
    that never returns is beyond any in-process timeout; ``tools/check_videos.py`` finds such files with a
    hard, process-level timeout and writes a skip list. Elsewhere the block runs without a deadline.
    """
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise VideoReadError(f"decoding {path} took longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def create_backend(name: str, **kwargs) -> VideoBackend:
    return VIDEO_BACKENDS.create(name, **kwargs)
