"""The decord decoder (seeks to the sampled frames)."""

from __future__ import annotations

from pathlib import Path

from tvr.data.video.base import (
    VIDEO_BACKENDS,
    DecodedClip,
    VideoBackend,
    VideoReadError,
    gather_in_order,
    sample_indices,
)


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
