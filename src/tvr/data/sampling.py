"""Frame samplers: which frame indices of a video a clip is made of (datasets spec §1.2-§1.3).

A sampler maps (frame count, fps, optional time span) to a list of frame indices. Indices are computed
before decoding so the reader decodes only those frames. ``clip4clip`` may return fewer than
``max_frames`` indices (the dataset zero-pads and masks); the segment samplers always return exactly
``num_frames`` (repeating the last frame, as X-Pool does); ``fps_uniform_decord`` does either, by its
``fill`` option (GLSCL/HBI pad, TempMe repeats).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from tvr.registry import Registry

SAMPLERS: Registry["FrameSampler"] = Registry("frame sampler")

SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM = 0, 1, 2
ORDER_KEEP, ORDER_REVERSE, ORDER_SHUFFLE = 0, 1, 2


class FrameSampler:
    max_frames: int
    deterministic: bool
    always_full = False  # every clip has exactly max_frames frames, never padded (TempMe's merging needs it)

    def __call__(
        self,
        num_frames: int,
        fps: float,
        start: float | None = None,
        end: float | None = None,
        rng: random.Random | None = None,
    ) -> list[int]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Everything that determines the sampled indices; recorded in metrics.json and frame caches."""
        raise NotImplementedError


@SAMPLERS.register("clip4clip")
@dataclass
class Clip4ClipSampler(FrameSampler):
    """CLIP4Clip ``RawVideoExtractorCV2``: frame 0 of every second (``feature_framerate`` per second).

    For a span [start, end] in integer seconds the seconds ``start..min(end, duration)`` are visited
    *inclusively*; indices past the last frame end the list (CLIP4Clip stops at the first failed read).
    Longer lists are cut to ``max_frames`` by ``slice_framepos`` (2 = uniform ``linspace``, the recipe).
    """

    max_frames: int = 12
    feature_framerate: int = 1
    slice_framepos: int = SLICE_UNIFORM
    frame_order: int = ORDER_KEEP
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.slice_framepos not in (SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM):
            raise ValueError(f"slice_framepos must be 0 (head), 1 (tail) or 2 (uniform), got {self.slice_framepos}")
        if self.frame_order not in (ORDER_KEEP, ORDER_REVERSE, ORDER_SHUFFLE):
            raise ValueError(f"frame_order must be 0 (keep), 1 (reverse) or 2 (shuffle), got {self.frame_order}")
        self.deterministic = self.frame_order != ORDER_SHUFFLE

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


def _segment_edges(num_frames: int, fps: float, start: float | None, end: float | None, count: int):
    first, stop = 0, num_frames
    if start is not None:
        first = min(int(start * fps), num_frames - 1)
    if end is not None:
        stop = max(min(int(end * fps), num_frames), first + 1)
    length = stop - first
    k = min(count, length)
    edges = np.linspace(first, stop, k + 1).astype(int)
    return edges, k


def _repeat_last(indices: list[int], count: int) -> list[int]:
    return indices + [indices[-1]] * (count - len(indices))


@SAMPLERS.register("segment_uniform")
@dataclass
class SegmentUniformSampler(FrameSampler):
    """X-Pool ``uniform``: split into ``num_frames`` equal segments and take each segment's middle frame."""

    max_frames: int = 12
    deterministic: bool = True
    always_full = True

    def __call__(self, num_frames, fps, start=None, end=None, rng=None) -> list[int]:
        edges, k = _segment_edges(num_frames, fps, start, end, self.max_frames)
        indices = [int((edges[i] + edges[i + 1] - 1) // 2) for i in range(k)]
        return _repeat_last(indices, self.max_frames)

    def describe(self) -> dict:
        return {"sampler": "segment_uniform", "max_frames": self.max_frames}


@SAMPLERS.register("segment_random")
@dataclass
class SegmentRandomSampler(FrameSampler):
    """X-Pool ``rand``: a random frame of each segment, drawn from ``[edge_i, edge_{i+1} - 1)``.

    The reference crashes on one-frame segments (empty range); those fall back to the segment's frame.
    """

    max_frames: int = 12
    deterministic: bool = False
    always_full = True

    def __call__(self, num_frames, fps, start=None, end=None, rng=None) -> list[int]:
        rng = rng or random
        edges, k = _segment_edges(num_frames, fps, start, end, self.max_frames)
        indices = []
        for i in range(k):
            low, high = int(edges[i]), int(edges[i + 1]) - 1
            indices.append(rng.randrange(low, high) if high > low else low)
        return _repeat_last(indices, self.max_frames)

    def describe(self) -> dict:
        return {"sampler": "segment_random", "max_frames": self.max_frames}


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

    max_frames: int = 12
    video_framerate: int = 1
    fill: str = FILL_PAD
    deterministic: bool = True

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


def create_sampler(name: str, **kwargs) -> FrameSampler:
    """Options set to None are dropped, so a config can switch sampler and null the old one's options."""
    return SAMPLERS.create(name, **{key: value for key, value in kwargs.items() if value is not None})
