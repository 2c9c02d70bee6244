"""Video decoding: open a file, sample frame indices, decode only those frames.

Backends share one small interface (:class:`VideoBackend`) so another decoder can be swapped in by
config. Every failure surfaces as :class:`VideoReadError`, which datasets catch, count and report
instead of crashing a long run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvr.data.sampling import FrameSampler
from tvr.registry import Registry

VIDEO_BACKENDS: Registry["VideoBackend"] = Registry("video backend")


class VideoReadError(RuntimeError):
    """A video that is missing, empty, corrupt or yields no frames."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 [N, H, W, 3], RGB, in sampled order
    indices: list[int]
    num_frames: int
    fps: float


class VideoBackend:
    name: str

    def read(self, path: Path, sampler: FrameSampler, start=None, end=None, rng=None) -> DecodedClip:
        raise NotImplementedError


def check_readable_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"missing video file {path}")
    if path.stat().st_size == 0:
        raise VideoReadError(f"empty (zero-byte) video file {path}")


def gather_in_order(decoded: np.ndarray, unique_sorted: list[int], wanted: list[int]) -> np.ndarray:
    """Decoders read each distinct index once, in file order; callers want their own order and repeats."""
    position = {index: row for row, index in enumerate(unique_sorted)}
    return decoded[[position[index] for index in wanted]]


@VIDEO_BACKENDS.register("decord")
class DecordBackend(VideoBackend):
    """decord seeks to the sampled frames and decodes those (plus what their GOPs need), not the file."""

    name = "decord"

    def __init__(self, num_threads: int = 1) -> None:
        self.num_threads = num_threads

    def read(self, path, sampler, start=None, end=None, rng: random.Random | None = None) -> DecodedClip:
        import decord

        path = Path(path)
        check_readable_file(path)
        try:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.num_threads)
            num_frames = len(reader)
            fps = float(reader.get_avg_fps())
        except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
            raise VideoReadError(f"cannot open video {path}: {error}") from error
        if num_frames <= 0:
            raise VideoReadError(f"video {path} has no frames")
        indices = sampler(num_frames, fps, start, end, rng)
        if not indices:
            raise VideoReadError(f"sampler selected no frames of {path} (span {start}-{end}, {num_frames} frames)")
        unique_sorted = sorted(set(indices))
        try:
            decoded = reader.get_batch(unique_sorted).asnumpy()
        except Exception as error:
            raise VideoReadError(f"cannot decode frames {unique_sorted} of {path}: {error}") from error
        return DecodedClip(gather_in_order(decoded, unique_sorted, indices), indices, num_frames, fps)


def create_backend(name: str, **kwargs) -> VideoBackend:
    return VIDEO_BACKENDS.create(name, **kwargs)
