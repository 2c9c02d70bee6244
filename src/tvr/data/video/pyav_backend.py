"""The PyAV decoder (decodes in order; tolerates damaged streams)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvr.data.video.base import VIDEO_BACKENDS, DecodedClip, VideoBackend, VideoReadError, sample_indices


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
