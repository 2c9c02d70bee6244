"""The DRL family's decord frame sampler (TempMe, GLSCL, HBI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tvr.data.sampling.base import SAMPLERS, FrameSampler
from tvr.options import option

FILL_PAD, FILL_REPEAT = "pad", "repeat"
FILLS = (FILL_PAD, FILL_REPEAT)


@SAMPLERS.register("fps_uniform_decord")
@dataclass
class FpsUniformDecordSampler(FrameSampler):
    """The DRL family's decord reader (``_get_rawvideo_dec`` in TempMe, GLSCL, HBI; methods spec §0.3).

    Every ``round(fps / video_framerate)``-th frame of the span, from its first frame, then uniform
    ``linspace`` down to ``max_frames`` if longer. A shorter list is returned as it is with ``fill=pad``
    (GLSCL/HBI: the dataset zero-pads and masks) or, with ``fill=repeat`` (TempMe, which always feeds
    ``max_frames`` frames), replaced by ``linspace(first, last, max_frames)`` over the span's frames, which
    repeats frames when the span has fewer than ``max_frames``.
    """

    video_framerate: int = option(1, minimum=1, help="frames per second before the cut to max_frames")
    fill: Literal["pad", "repeat"] = FILL_PAD

    def __post_init__(self) -> None:
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if self.video_framerate < 1:
            raise ValueError(f"video_framerate must be >= 1 frame per second, got {self.video_framerate}")

    @property
    def always_full(self) -> bool:
        return self.fill == FILL_REPEAT

    def __call__(self, num_frames, fps, start=None, end=None, rng=None) -> list[int]:
        fps = fps if fps > 0 else 1.0  # a header without a frame rate (0 or NaN): read as 1 fps, as clip4clip does
        first, last = self._frame_span(num_frames, fps, start, end)
        if last < first:  # a span starting after the end: the reader reports the video (the reference pads it all)
            return []
        # round() is Python's (half to even), as the reference's; a stride below 1 would never advance
        stride = max(round(fps / self.video_framerate), 1)
        positions = list(range(first, last + 1, stride))
        # linspace truncated to int (dtype=int) as the reference's cut; TempMe's repeat is assumed to round alike
        if len(positions) > self.max_frames:
            return [positions[i] for i in np.linspace(0, len(positions) - 1, num=self.max_frames, dtype=int)]
        if self.fill == FILL_REPEAT and len(positions) < self.max_frames:
            return np.linspace(first, last, num=self.max_frames, dtype=int).tolist()
        return positions

    @staticmethod
    def _frame_span(num_frames: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
        """First and last frame of the span, as the reference computes them: times truncated to whole
        seconds, negatives read as 0, a reversed span swapped, an empty one made one second long; the last
        frame clipped to the video (the first is not: a span past the end selects nothing)."""
        if start is None:
            return 0, num_frames - 1
        start_sec = max(int(start), 0)
        if end is None:
            return int(start_sec * fps), num_frames - 1
        end_sec = max(int(end), 0)
        if start_sec > end_sec:
            start_sec, end_sec = end_sec, start_sec
        elif start_sec == end_sec:
            end_sec += 1
        return int(start_sec * fps), int(min(end_sec * fps, num_frames - 1))

    def describe(self) -> dict:
        return {
            "sampler": "fps_uniform_decord",
            "max_frames": self.max_frames,
            "video_framerate": self.video_framerate,
            "fill": self.fill,
        }
