"""CLIP4Clip's frame sampler (``RawVideoExtractorCV2`` + ``slice_framepos``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from tvr.data.sampling.base import SAMPLERS, FrameSampler
from tvr.options import option

SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM = 0, 1, 2
ORDER_KEEP, ORDER_REVERSE, ORDER_SHUFFLE = 0, 1, 2


@SAMPLERS.register("clip4clip")
@dataclass
class Clip4ClipSampler(FrameSampler):
    """CLIP4Clip ``RawVideoExtractorCV2``: frame 0 of every second (``feature_framerate`` per second).

    For a span [start, end] in integer seconds the seconds ``start..min(end, duration)`` are visited
    *inclusively*; indices past the last frame end the list (CLIP4Clip stops at the first failed read).
    Longer lists are cut to ``max_frames`` by ``slice_framepos`` (2 = uniform ``linspace``, the recipe).
    """

    feature_framerate: int = option(1, minimum=1, help="frames taken per second")
    slice_framepos: int = SLICE_UNIFORM
    frame_order: int = ORDER_KEEP

    def __post_init__(self) -> None:
        if self.slice_framepos not in (SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM):
            raise ValueError(f"slice_framepos must be 0 (head), 1 (tail) or 2 (uniform), got {self.slice_framepos}")
        if self.frame_order not in (ORDER_KEEP, ORDER_REVERSE, ORDER_SHUFFLE):
            raise ValueError(f"frame_order must be 0 (keep), 1 (reverse) or 2 (shuffle), got {self.frame_order}")

    @property
    def deterministic(self) -> bool:
        return self.frame_order != ORDER_SHUFFLE

    def __call__(self, num_frames, fps, start=None, end=None, rng=None) -> list[int]:
        fps_int = max(int(fps), 1)
        total_duration = (num_frames + fps_int - 1) // fps_int
        start_sec, end_sec = 0, total_duration
        if start is not None:
            start_sec = int(start)
            end_sec = min(int(end if end is not None else total_duration), total_duration)
        interval = max(fps_int // self.feature_framerate, 1)
        offsets = list(range(0, fps_int, interval))[: self.feature_framerate]
        indices: list[int] = []
        for second in range(start_sec, end_sec + 1):
            for offset in offsets:
                position = second * fps_int + offset
                if position >= num_frames:
                    return self._finish(indices, rng)
                indices.append(position)
        return self._finish(indices, rng)

    def _finish(self, indices: list[int], rng: random.Random | None) -> list[int]:
        if len(indices) > self.max_frames:
            if self.slice_framepos == SLICE_HEAD:
                indices = indices[: self.max_frames]
            elif self.slice_framepos == SLICE_TAIL:
                indices = indices[-self.max_frames :]
            else:
                picks = np.linspace(0, len(indices) - 1, num=self.max_frames, dtype=int)
                indices = [indices[i] for i in picks]
        if self.frame_order == ORDER_REVERSE:
            indices = indices[::-1]
        elif self.frame_order == ORDER_SHUFFLE:
            indices = list(indices)
            (rng or random).shuffle(indices)
        return indices

    def describe(self) -> dict:
        return {
            "sampler": "clip4clip",
            "max_frames": self.max_frames,
            "feature_framerate": self.feature_framerate,
            "slice_framepos": self.slice_framepos,
            "frame_order": self.frame_order,
        }
