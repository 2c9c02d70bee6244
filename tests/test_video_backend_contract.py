"""Contract every registered video decode backend must honour, parametrised over the registry.

Backends are interchangeable by config, so each must give the same frames for the same sampler: the
sampler's indices on the file's own frame count and rate, decoded to uint8 ``[T, H, W, 3]`` in sampled
order; and every unreadable file must surface as :class:`VideoReadError`, which datasets catch and count.
A new backend is covered by registering it; one that cannot meet a clause fails here (nothing is skipped).
"""

import random

import numpy as np
import pytest

from test_video_data import frame_numbers, numbered_video
from tvr.data.sampling import create_sampler
from tvr.data.video import VIDEO_BACKENDS, VideoReadError, create_backend

BACKENDS = VIDEO_BACKENDS.names()
NUM_FRAMES, FPS, HEIGHT, WIDTH = 30, 3, 48, 64
# (sampler, options, span start, span end): a uniform cut, repeated last frames, reversed order, a time span
READS = [
    ("clip4clip", {"max_frames": 4}, None, None),
    ("segment_uniform", {"max_frames": 36}, None, None),
    ("clip4clip", {"max_frames": 5, "frame_order": 1}, None, None),
    ("fps_uniform_decord", {"max_frames": 12}, 2.0, 6.0),
]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return numbered_video(tmp_path_factory.mktemp("videos") / "numbered.mp4", NUM_FRAMES, FPS, (HEIGHT, WIDTH))


@pytest.mark.parametrize("sampler, options, start, end", READS)
@pytest.mark.parametrize("name", BACKENDS)
def test_decodes_the_sampled_frames_as_uint8_rgb(video, name, sampler, options, start, end):
    sampling = create_sampler(sampler, **options)
    clip = create_backend(name).read(video, sampling, start, end, random.Random(0))
    expected = sampling(NUM_FRAMES, float(FPS), start, end, random.Random(0))
    assert (clip.num_frames, clip.fps) == (NUM_FRAMES, FPS)
    assert clip.indices == expected, "every backend must give the sampler's indices for the same file"
    assert isinstance(clip.frames, np.ndarray) and clip.frames.dtype == np.uint8
    assert clip.frames.shape == (len(expected), HEIGHT, WIDTH, 3)
    assert frame_numbers(clip.frames) == expected, "frames must be the sampled ones, in the sampler's order"


@pytest.mark.parametrize("name", BACKENDS)
def test_frames_are_rgb_in_that_channel_order(tmp_path, name):
    from tvr.data.synthetic import write_mp4

    red = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    red[..., 0] = 255
    path = tmp_path / "red.mp4"
    write_mp4(path, [red] * 3, FPS)
    frame = create_backend(name).read(path, create_sampler("segment_uniform", max_frames=1)).frames[0]
    assert frame[..., 0].mean() > 200 and frame[..., 1:].mean() < 50


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "damage, message", [("missing", "missing"), ("empty", "empty"), ("garbage", None), ("truncated", None)]
)
def test_an_unreadable_file_raises_video_read_error(video, tmp_path, name, damage, message):
    path = tmp_path / "bad.mp4"
    content = {"missing": None, "empty": b"", "garbage": b"\x00garbage" * 100, "truncated": video.read_bytes()[:2000]}[
        damage
    ]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoReadError, match=message):
        create_backend(name).read(path, create_sampler("clip4clip"))


@pytest.mark.parametrize("name", BACKENDS)
def test_a_span_past_the_end_raises_video_read_error(video, name):
    """A sampler that selects nothing (a span starting after the video) is the backend's error to report."""
    with pytest.raises(VideoReadError, match="selected no frames"):
        create_backend(name).read(video, create_sampler("fps_uniform_decord"), start=60.0, end=70.0)


@pytest.mark.parametrize("name", BACKENDS)
def test_the_video_checker_runs_the_backend_in_its_worker_processes(video, tmp_path, name):
    """tools/check_videos.py hands the backend to spawned processes (pickled), which classify each file."""
    from tvr.data.records import VideoRef
    from tvr.data.video_check import check_videos

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00garbage" * 100)
    videos = [VideoRef(path.stem, path) for path in (video, tmp_path / "missing.mp4", garbage)]
    results = check_videos(
        videos, create_backend(name), create_sampler("clip4clip"), workers=1, timeout_s=120, progress=False
    )
    assert [result.status for result in results] == ["ok", "missing", "unreadable"]
    assert (results[0].num_frames, results[0].fps) == (NUM_FRAMES, FPS)
