"""Video decoding: open a file, sample frame indices, decode only those frames.

Backends share one small interface (:class:`VideoBackend`) so another decoder can be swapped in by
config. Every failure surfaces as :class:`VideoReadError`, which datasets catch, count and report
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


@VIDEO_BACKENDS.register("decord")
class DecordBackend(VideoBackend):
    """decord seeks to the sampled frames and decodes those (plus what their GOPs need), not the file."""

    name = "decord"

    def __init__(self, num_threads: int = 1, timeout_s: float | None = 60.0) -> None:
        self.num_threads = num_threads
        self.timeout_s = timeout_s

    def _read(self, path: Path, sampler, start, end, rng) -> DecodedClip:
        import decord

        try:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.num_threads)
            num_frames = len(reader)
            fps = float(reader.get_avg_fps())
        except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
            raise VideoReadError(f"cannot open video {path}: {error}") from error
        if num_frames <= 0:
            raise VideoReadError(f"video {path} has no frames")
        indices = sample_indices(path, sampler, num_frames, fps, start, end, rng)
        unique_sorted = sorted(set(indices))
        try:
            decoded = reader.get_batch(unique_sorted).asnumpy()
        except Exception as error:
            raise VideoReadError(f"cannot decode frames {unique_sorted} of {path}: {error}") from error
        return DecodedClip(gather_in_order(decoded, unique_sorted, indices), indices, num_frames, fps)


@VIDEO_BACKENDS.register("pyav")
class PyAVBackend(VideoBackend):
    """PyAV (FFmpeg bundled in the wheel): decodes in order from the start up to the last sampled frame,
    counting frames, and converts only the sampled ones. Slower for late frames than decord's seeking,
    but it tolerates damaged streams (a corrupt packet costs a frame, not the clip) and gives the same
    frame indices as decord for the same sampler."""

    name = "pyav"

    def __init__(self, timeout_s: float | None = 60.0) -> None:
        self.timeout_s = timeout_s

    def _read(self, path: Path, sampler, start, end, rng) -> DecodedClip:
        import av

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoReadError(f"{path} has no video stream")
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 0)
                num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
                if num_frames <= 0 or fps <= 0:
                    raise VideoReadError(f"video {path} has no frames")
                indices = sample_indices(path, sampler, num_frames, fps, start, end, rng)
                container.seek(0)
                wanted, last = set(indices), max(indices)
                decoded: dict[int, np.ndarray] = {}
                for position, frame in enumerate(container.decode(stream)):
                    if position in wanted:
                        decoded[position] = frame.to_ndarray(format="rgb24")
                    if position >= last:
                        break
        except av.FFmpegError as error:
            raise VideoReadError(f"cannot decode {path}: {error}") from error
        missing = sorted(wanted - decoded.keys())
        if missing:
            raise VideoReadError(f"{path} ended before frames {missing[:5]} (header says {num_frames} frames)")
        return DecodedClip(np.stack([decoded[i] for i in indices]), indices, num_frames, fps)


def create_backend(name: str, **kwargs) -> VideoBackend:
    return VIDEO_BACKENDS.create(name, **kwargs)
