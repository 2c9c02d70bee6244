"""Contract every registered frame sampler must honour, parametrised over the registry.

A new sampler is covered by registering it; one that cannot meet a clause fails here (nothing is skipped).
``VARIANTS`` adds option sets that change a sampler's behaviour (each is checked like the defaults).
"""

import random

import numpy as np
import pytest
import torch

from tvr.data.clips import ClipReader
from tvr.data.records import VideoRef
from tvr.data.sampling import SAMPLERS, create_sampler
from tvr.data.video import DecodedClip

# Option sets besides the defaults: the ones that switch a sampler into another mode.
VARIANTS = {
    "clip4clip": [{"slice_framepos": 0}, {"slice_framepos": 1}, {"frame_order": 1}, {"frame_order": 2}],
    "fps_uniform_decord": [{"fill": "repeat"}, {"video_framerate": 2}],
}
CONFIGURED = [(name, options) for name in SAMPLERS.names() for options in [{}, *VARIANTS.get(name, [])]]
IDS = [name + "".join(f"-{key}={value}" for key, value in options.items()) for name, options in CONFIGURED]

# (frame count, fps, span start, span end): a long video, one shorter than max_frames, a span inside a video,
# a span reaching past its end, a one-frame video, a header without a frame rate.
VIDEOS = [
    (300, 30.0, None, None),
    (5, 3.0, None, None),
    (240, 24.0, 2.0, 7.5),
    (90, 3.0, 20.0, 40.0),
    (1, 25.0, None, None),
    (40, 0.0, None, None),
]
MAX_FRAMES = 6


def make(name: str, options: dict, max_frames: int = MAX_FRAMES):
    return create_sampler(name, max_frames=max_frames, **options)


@pytest.mark.parametrize("name, options", CONFIGURED, ids=IDS)
@pytest.mark.parametrize("num_frames, fps, start, end", VIDEOS)
def test_indices_lie_in_the_video_and_respect_max_frames(name, options, num_frames, fps, start, end):
    sampler = make(name, options)
    indices = sampler(num_frames, fps, start, end, random.Random(0))
    assert indices, "a video with frames in the span must give at least one index"
    assert all(isinstance(index, int) for index in indices), f"indices must be Python ints, got {indices}"
    assert all(0 <= index < num_frames for index in indices), f"{indices} leave [0, {num_frames})"
    assert len(indices) <= sampler.max_frames
    if sampler.always_full:
        assert len(indices) == sampler.max_frames, "always_full promises exactly max_frames indices, never padding"


@pytest.mark.parametrize("name, options", CONFIGURED, ids=IDS)
def test_max_frames_is_the_option_and_caps_a_long_video(name, options):
    # segment_passes takes whole passes over its segments (max_frames a multiple of segments, default 6)
    unit = options.get("segments", 6) if name == "segment_passes" else 1
    for max_frames in (unit, 4 * unit, 16 * unit):
        sampler = make(name, options, max_frames)
        assert sampler.max_frames == max_frames
        assert 1 <= len(sampler(3000, 30.0, rng=random.Random(0))) <= max_frames


@pytest.mark.parametrize("name, options", CONFIGURED, ids=IDS)
def test_same_rng_same_indices_and_deterministic_means_rng_free(name, options):
    sampler = make(name, options)
    draws = [sampler(300, 30.0, rng=random.Random(seed)) for seed in range(8)]
    assert sampler(300, 30.0, rng=random.Random(3)) == draws[3], "the same seed must give the same indices"
    if sampler.deterministic:
        assert all(draw == draws[0] for draw in draws), "a deterministic sampler must ignore its rng"
    else:
        assert any(draw != draws[0] for draw in draws), "a sampler that declares deterministic=False never varied"


@pytest.mark.parametrize("name, options", CONFIGURED, ids=IDS)
def test_describe_names_the_sampler_and_its_frame_count(name, options):
    described = make(name, options).describe()
    assert described["sampler"] == name and described["max_frames"] == MAX_FRAMES
    # describe() feeds create_sampler's arguments back (frame caches and checkpoints rebuild samplers so)
    rebuilt = create_sampler(
        described["sampler"], **{key: value for key, value in described.items() if key != "sampler"}
    )
    assert rebuilt.describe() == described


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_differently_sampling_options_are_described_differently(name):
    """Frame caches and metrics.json tell samplers apart by describe(): two configurations that pick other
    frames must not share a description."""
    configured = [make(name, options) for options in [{}, *VARIANTS.get(name, [])]]
    for first in range(len(configured)):
        for second in range(first + 1, len(configured)):
            a, b = configured[first], configured[second]
            picks = [(a(n, fps, s, e, random.Random(0)), b(n, fps, s, e, random.Random(0))) for n, fps, s, e in VIDEOS]
            if any(x != y for x, y in picks):
                assert a.describe() != b.describe(), f"{a.describe()} picks other frames than {b.describe()}"


class IndexBackend:
    """Stands in for a decoder: frame ``i`` is filled with ``i``, so the reader's output tells which indices it kept."""

    def __init__(self, num_frames: int, fps: float) -> None:
        self.num_frames, self.fps = num_frames, fps

    def read(self, path, sampler, start=None, end=None, rng=None):
        indices = sampler(self.num_frames, self.fps, start, end, rng)
        frames = np.stack([np.full((2, 2, 3), index, dtype=np.int32) for index in indices])
        return DecodedClip(frames, indices, self.num_frames, self.fps)


class PassThroughTransform:
    image_size = 2

    def resize_crop(self, frames):
        return torch.from_numpy(frames).permute(0, 3, 1, 2)

    def normalize(self, frames):
        return frames.float()


@pytest.mark.parametrize("name, options", CONFIGURED, ids=IDS)
@pytest.mark.parametrize("num_frames, fps, start, end", VIDEOS)
def test_the_frame_mask_marks_exactly_the_sampled_frames(name, options, num_frames, fps, start, end):
    """A sampled clip, padded to max_frames by the reader: the mask is true on the sampled frames, which come
    first and in the sampler's order; an always_full sampler's clip is never padded."""
    sampler = make(name, options)
    expected = sampler(num_frames, fps, start, end, random.Random(0))
    reader = ClipReader(IndexBackend(num_frames, fps), sampler, PassThroughTransform())
    frames, mask = reader.read(VideoRef("clip", path=None, start=start, end=end), random.Random(0))
    assert frames.shape[0] == mask.shape[0] == sampler.max_frames and mask.dtype == torch.bool
    assert mask.tolist() == [True] * len(expected) + [False] * (sampler.max_frames - len(expected))
    assert frames[mask, 0, 0, 0].long().tolist() == expected
    assert not frames[~mask].any()
    if sampler.always_full:
        assert mask.all()
