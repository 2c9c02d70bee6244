"""X-Pool's segment samplers: ``max_frames`` equal segments, one frame of each; Prompt Switch's segment
passes: ``segments`` equal segments visited ``max_frames / segments`` times."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from tvr.data.sampling.base import SAMPLERS, FrameSampler
from tvr.options import option


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

    always_full: ClassVar[bool] = True

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

    deterministic: ClassVar[bool] = False
    always_full: ClassVar[bool] = True

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


@SAMPLERS.register("segment_passes")
@dataclass
class SegmentPassesSampler(FrameSampler):
    """Prompt Switch's sampler (methods spec §6.2): ``segments`` equal segments, ``passes = max_frames /
    segments`` frames from each, ordered pass-major (``[pass 0: segment 0..k-1, pass 1: ...]``), so every
    run of ``segments`` consecutive frames is one pass over the whole video (one prompt-switching group).

    ``uniform``: pass ``j`` takes ``(b - 1 - a) // (passes + 1) * (j + 1) + a`` of segment ``[a, b)`` (the
    reference floors before multiplying). ``random``: a frame of ``[a, b - 1)`` per pass and segment; the
    reference crashes on one-frame segments (videos shorter than ``2 * segments``), which fall back to the
    segment's frame here. Videos with fewer frames than segments repeat the last index up to ``max_frames``.
    """

    segments: int = option(6, minimum=1, help="equal segments per pass (Prompt Switch: its group size, num_prompts)")
    mode: Literal["uniform", "random"] = "uniform"

    always_full: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.mode not in ("uniform", "random"):
            raise ValueError(f"mode must be uniform or random, got {self.mode!r}")
        if self.max_frames % self.segments:
            raise ValueError(
                f"max_frames {self.max_frames} must be a multiple of segments {self.segments} (whole passes)"
            )

    @property
    def deterministic(self) -> bool:
        return self.mode == "uniform"

    def __call__(self, num_frames, fps, start=None, end=None, rng=None) -> list[int]:
        rng = rng or random
        edges, k = _segment_edges(num_frames, fps, start, end, self.segments)
        passes = self.max_frames // self.segments
        indices = []
        for j in range(passes):
            for i in range(k):
                low, high = int(edges[i]), int(edges[i + 1]) - 1
                if self.mode == "uniform":
                    indices.append((high - low) // (passes + 1) * (j + 1) + low)
                else:
                    indices.append(rng.randrange(low, high) if high > low else low)
        return _repeat_last(indices, self.max_frames)

    def describe(self) -> dict:
        return {
            "sampler": "segment_passes",
            "max_frames": self.max_frames,
            "segments": self.segments,
            "mode": self.mode,
        }
