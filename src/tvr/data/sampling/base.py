"""Frame samplers: which frame indices of a video a clip is made of (datasets spec §1.2-§1.3).

A sampler maps (frame count, fps, optional time span) to a list of frame indices. Indices are computed
before decoding so the reader decodes only those frames. ``clip4clip`` may return fewer than
``max_frames`` indices (the dataset zero-pads and masks); the segment samplers always return exactly
``max_frames`` (repeating the last frame, as X-Pool does); ``fps_uniform_decord`` does either, by its
``fill`` option (GLSCL/HBI pad, TempMe repeats).

Each sampler is a module of this package registered with ``@SAMPLERS.register(name)``; its dataclass
fields are its options (validated at start-up from the class itself).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tvr.options import option
from tvr.registry import Registry

SAMPLERS: Registry["FrameSampler"] = Registry("frame sampler", package="tvr.data.sampling")


@dataclass
class FrameSampler:
    max_frames: int = option(12, minimum=1, help="frames per clip; every sampler takes it")

    deterministic: ClassVar[bool] = True  # the same indices every call (a frame cache can hold them)
    always_full: ClassVar[bool] = (
        False  # every clip has exactly max_frames frames, never padded (TempMe's merging needs it)
    )

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


def create_sampler(name: str, **kwargs) -> FrameSampler:
    """Options set to None are dropped, so a config can switch sampler and null the old one's options."""
    return SAMPLERS.create(name, **{key: value for key, value in kwargs.items() if value is not None})
