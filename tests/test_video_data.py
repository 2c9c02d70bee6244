"""Decoding real mp4 files with decord, the synthetic generator, the frame cache and bad videos."""

import hashlib
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tvr.data.clips import ClipReader, EvalVideos, TrainPairs, collate
from tvr.data.frame_cache import FrameCache, build_frame_cache, cache_dir_for, unusable_cache_report
from tvr.data.records import SplitRecords, TextRef, VideoRef
from tvr.data.sampling import create_sampler
from tvr.data.synthetic import Event, SyntheticConfig, ensure_synthetic_dataset, plan_split, write_mp4
from tvr.data.tokenizer import CaptionTokenizer
from tvr.data.transforms import ClipFrameTransform, Preprocessing
from tvr.data.video import VideoReadError
from tvr.data.video.decord_backend import DecordBackend


def numbered_video(path, num_frames: int, fps: int = 3, size=(48, 64)):
    """Frame i is a flat grey of level 4 * i, so a decoded frame tells which index it was."""
    frames = [np.full((*size, 3), 4 * i, dtype=np.uint8) for i in range(num_frames)]
    write_mp4(path, frames, fps)
    return path


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [int(round(frame.mean() / 4)) for frame in frames]


def test_decord_reads_exactly_the_sampled_frames(tmp_path, monkeypatch):
    path = numbered_video(tmp_path / "video9770.mp4", num_frames=60)  # 20 s at 3 fps
    requested = []
    import decord

    original = decord.VideoReader.get_batch
    monkeypatch.setattr(
        decord.VideoReader, "get_batch", lambda self, idx: requested.append(list(idx)) or original(self, idx)
    )
    clip = DecordBackend().read(path, create_sampler("clip4clip", max_frames=5))
    expected = [0, 12, 27, 42, 57]  # seconds 0..19, linspace(0, 19, 5) -> 0, 4, 9, 14, 19 -> x3 frames
    assert clip.indices == expected and clip.num_frames == 60 and clip.fps == 3.0
    assert requested == [expected]  # only the sampled frames were asked of the decoder
    assert frame_numbers(clip.frames) == expected
    assert clip.frames.shape == (5, 48, 64, 3)


def test_repeated_and_reversed_indices_come_back_in_sampler_order(tmp_path):
    path = numbered_video(tmp_path / "clip.mp4", num_frames=6)
    clip = DecordBackend().read(path, create_sampler("segment_uniform", max_frames=8))
    assert frame_numbers(clip.frames) == clip.indices == [0, 1, 2, 3, 4, 5, 5, 5]
    reverse = DecordBackend().read(path, create_sampler("clip4clip", max_frames=4, frame_order=1))
    assert frame_numbers(reverse.frames) == reverse.indices == [3, 0]


@pytest.mark.parametrize("content, message", [(None, "missing"), (b"", "empty"), (b"\x00garbage" * 100, "cannot open")])
def test_bad_files_raise_video_read_error(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoReadError, match=message):
        DecordBackend().read(path, create_sampler("clip4clip"))


def test_transform_resizes_short_side_and_centre_crops():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 30:50] = 255  # a white band in the middle survives the centre crop
    out = ClipFrameTransform(Preprocessing(20))(frames)
    assert out.shape == (2, 3, 20, 20)
    centre, corner = out[0, :, 10, 10], out[0, :, 10, 0]
    assert (centre > corner).all()


def test_transform_follows_the_backbones_resize_rule_and_normalisation():
    frames = np.zeros((1, 20, 40, 3), dtype=np.uint8)
    frames[:, :, :8] = 255  # a white band at the left edge: outside the centre crop, inside a squashed frame
    shortest = ClipFrameTransform(Preprocessing(10)).resize_crop(frames)
    squashed = ClipFrameTransform(Preprocessing(10, resize_mode="squash")).resize_crop(frames)
    assert shortest.shape == squashed.shape == (1, 3, 10, 10)
    assert shortest.max() == 0 and squashed[..., 0].min() == 255 and squashed[..., 3:].max() == 0
    bilinear = ClipFrameTransform(Preprocessing(10, resize_mode="squash", interpolation="bilinear")).resize_crop(frames)
    assert bilinear[..., 0].min() == 255 and not torch.equal(
        bilinear, squashed
    )  # the band's edge is interpolated otherwise
    half = ClipFrameTransform(Preprocessing(10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))(frames)
    assert torch.equal(half.unique(), torch.tensor([-1.0]))  # (0 - 0.5) / 0.5 everywhere in the centre crop
    with pytest.raises(ValueError, match="resize mode 'longest' is not implemented"):
        Preprocessing(10, resize_mode="longest")


def small_config(**overrides) -> SyntheticConfig:
    return SyntheticConfig(**({"num_train": 6, "num_val": 4, "num_test": 6, "seconds": 4, "fps": 2} | overrides))


def test_synthetic_generation_is_deterministic_and_real_h264(tmp_path):
    a = ensure_synthetic_dataset(tmp_path / "a", small_config(), workers=1)
    b = ensure_synthetic_dataset(tmp_path / "b", small_config(), workers=1)
    assert a.read_text() == b.read_text()

    def digest(root):
        return hashlib.sha1((root / "videos" / "test_00003.mp4").read_bytes()).hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    with av.open(str(tmp_path / "a" / "videos" / "test_00003.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    other_seed = ensure_synthetic_dataset(tmp_path / "c", small_config(seed=1), workers=1)
    assert other_seed.read_text() != a.read_text()
    mtime = (tmp_path / "a" / "videos" / "train_00000.mp4").stat().st_mtime_ns
    ensure_synthetic_dataset(tmp_path / "a", small_config(), workers=1)  # second call: nothing regenerated
    assert (tmp_path / "a" / "videos" / "train_00000.mp4").stat().st_mtime_ns == mtime


def decoded_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_two_generations_of_the_set_decode_to_the_same_frames(tmp_path):
    # Hundreds of clips: x264's nondeterminism (mbtree) touched about one clip in twenty, so a handful
    # would hide it. Two workers, as the default run generates.
    config = small_config(num_train=300, num_val=10, num_test=10, seconds=8)
    for root in ("a", "b"):
        ensure_synthetic_dataset(tmp_path / root, config, workers=2)
    names = sorted(path.name for path in (tmp_path / "a" / "videos").glob("*.mp4"))
    assert len(names) == 320
    differing = [
        name
        for name in names
        if not np.array_equal(
            decoded_frames(tmp_path / "a" / "videos" / name), decoded_frames(tmp_path / "b" / "videos" / name)
        )
    ]
    assert differing == []
    assert all(
        (tmp_path / "a" / "videos" / name).read_bytes() == (tmp_path / "b" / "videos" / name).read_bytes()
        for name in names
    )


def test_videos_of_another_generation_are_rendered_again(tmp_path):
    root = tmp_path / "syn"
    ensure_synthetic_dataset(root, small_config(), workers=1)
    video = root / "videos" / "test_00001.mp4"
    original = video.read_bytes()
    write_mp4(video, [np.zeros((64, 64, 3), np.uint8)] * 4, 2)  # stands in for an older format's file
    annotation = root / "annotations.json"
    record = json.loads(annotation.read_text())
    annotation.write_text(json.dumps(record | {"version": record["version"] - 1}))
    ensure_synthetic_dataset(root, small_config(), workers=1)
    assert video.read_bytes() == original
    assert not (root / ".generating.json").exists()


def test_an_interrupted_generation_keeps_its_own_videos(tmp_path, monkeypatch):
    import tvr.data.synthetic as synthetic

    root = tmp_path / "syn"
    real_write = synthetic.write_mp4
    calls = []  # lives in the (forked) worker: one worker runs every job

    def write_then_fail(path, frames, fps):
        calls.append(path)
        if len(calls) > 3:
            raise OSError("interrupted")
        real_write(path, frames, fps)

    monkeypatch.setattr(synthetic, "write_mp4", write_then_fail)
    with pytest.raises(OSError, match="interrupted"):
        ensure_synthetic_dataset(root, small_config(), workers=1)
    assert not (root / "annotations.json").exists() and (root / ".generating.json").is_file()
    mtimes = {path.name: path.stat().st_mtime_ns for path in (root / "videos").glob("*.mp4")}
    assert len(mtimes) == 3
    monkeypatch.setattr(synthetic, "write_mp4", real_write)
    ensure_synthetic_dataset(root, small_config(), workers=1)
    assert {name: (root / "videos" / name).stat().st_mtime_ns for name in mtimes} == mtimes
    assert (root / "annotations.json").is_file() and not (root / ".generating.json").exists()


def test_synthetic_eval_splits_have_unique_captions_and_order_twins():
    config = SyntheticConfig()
    test = plan_split("test", 100, config)
    captions = [spec.event.caption for spec in test]
    assert len(set(captions)) == 100
    twins = [(a, b) for a, b in zip(test[0::2], test[1::2]) if a.event.reversed() == b.event]
    assert len(twins) == 25  # twin_fraction 0.5 of 100 videos
    kinds = {a.event.kind for a, _ in twins}
    assert {"moves", "turns"} <= kinds
    for a, b in twins:
        assert a.keyframes == b.keyframes[::-1]  # the same frames in reverse order


def test_twin_clips_decode_to_the_same_frames_in_reverse(tmp_path):
    config = small_config(num_test=4, twin_fraction=1.0)
    root = tmp_path / "syn"
    ensure_synthetic_dataset(root, config, workers=1)
    annotations = json.loads((root / "annotations.json").read_text())["splits"]["test"]
    first, second = annotations[0], annotations[1]
    assert Event(**first["event"]).reversed() == Event(**second["event"])
    sampler = create_sampler("clip4clip", max_frames=8)

    def blurred(video):  # 8x8 block means: the per-frame noise averages out, the shapes stay
        frames = DecordBackend().read(root / video, sampler).frames.astype(float)
        return frames.reshape(len(frames), 8, 8, 8, 8, 3).mean(axis=(2, 4))

    a, b = blurred(first["video"]), blurred(second["video"])
    reversed_gap, forward_gap = np.abs(a - b[::-1]).mean(), np.abs(a - b).mean()
    assert reversed_gap < 2.0  # equal up to noise and compression
    assert forward_gap > 2 * reversed_gap


def test_caption_kinds_cover_order_dependent_events():
    events = {Event("turns", "square", "red", "small", color2="blue"), Event("appears", "circle", "green", "large")}
    assert {e.reversed().caption for e in events} == {
        "a small square turns from blue to red",
        "a large green circle disappears",
    }


def make_split(tmp_path, broken: dict[str, bytes | None]) -> SplitRecords:
    videos, texts = [], []
    for i in range(4):
        path = tmp_path / f"v{i}.mp4"
        numbered_video(path, num_frames=9)
        if f"v{i}" in broken:
            if broken[f"v{i}"] is None:
                path.unlink()
            else:
                path.write_bytes(broken[f"v{i}"])
        videos.append(VideoRef(f"v{i}", path))
        texts.append(TextRef(i, f"v{i}", f"caption {i}"))
    return SplitRecords("test", videos, texts)


def reader(cache=None) -> ClipReader:
    return ClipReader(
        DecordBackend(), create_sampler("clip4clip", max_frames=4), ClipFrameTransform(Preprocessing(16)), cache
    )


def test_training_replaces_unreadable_videos_and_reports_them(tmp_path):
    split = make_split(tmp_path, {"v1": b"", "v2": None})
    pairs = TrainPairs(split, reader(), CaptionTokenizer(8))
    items = [pairs[i] for i in range(4)]
    batch = collate(items)
    assert batch["frames"].shape == (4, 4, 3, 16, 16)
    # item 1 (v1) is replaced by pair 0; item 2 (v2) first tries pair 1 (v1, broken too), then pair 0
    assert [item["failed_videos"] for item in items] == [[], ["v1"], ["v2", "v1"], []]
    assert batch["failed_videos"] == ["v1", "v2", "v1"]
    # two samples were replaced (the training module sums these flags), though three reads failed
    assert batch["replaced"].tolist() == [0, 1, 1, 0]
    assert batch["index"].tolist() == [0, 0, 0, 3]
    assert batch["frame_mask"].sum(dim=1).tolist() == [3, 3, 3, 3]


def test_evaluation_keeps_unreadable_videos_as_empty_and_flags_them(tmp_path):
    split = make_split(tmp_path, {"v2": b"junk" * 50})
    videos = EvalVideos(split, reader())
    broken, fine = videos[2], videos[0]
    assert broken["failed_videos"] == ["v2"] and not broken["frame_mask"].any() and broken["unreadable"]
    assert fine["failed_videos"] == [] and fine["frame_mask"].sum() == 3 and not fine["unreadable"]


def test_short_videos_are_flagged_whether_the_sampler_pads_or_repeats(tmp_path):
    """9 frames at 3 fps; v1 has 2. clip4clip (1 fps) pads v1 to 4 slots; segment_uniform repeats its last
    frame; both are short, from the file and from a frame cache alike, and so is every training pair of v1."""
    split = make_split(tmp_path, {})
    numbered_video(split.videos[1].path, num_frames=2)
    padding = reader()
    repeating = ClipReader(
        DecordBackend(), create_sampler("segment_uniform", max_frames=4), ClipFrameTransform(Preprocessing(16))
    )
    assert [padding.read_clip(video).distinct for video in split.videos] == [3, 1, 3, 3]
    assert [repeating.read_clip(video).distinct for video in split.videos] == [4, 2, 4, 4]
    assert repeating.read_clip(split.videos[1]).mask.all()  # repeated, not padded: only the count tells
    for clip_reader, short in ((padding, [True] * 4), (repeating, [False, True, False, False])):
        assert [EvalVideos(split, clip_reader)[i]["short"] for i in range(4)] == short
        pairs = TrainPairs(split, clip_reader, CaptionTokenizer(8))
        assert collate([pairs[i] for i in range(4)])["short_videos"] == [i for i in range(4) if short[i]]
    sampler = create_sampler("segment_uniform", max_frames=4)
    path = cache_dir_for(tmp_path / "cache", split, sampler.describe(), Preprocessing(16))
    cache = build_frame_cache(path, split, repeating, workers=1, progress=False)
    cached = ClipReader(DecordBackend(), sampler, ClipFrameTransform(Preprocessing(16)), cache)
    assert [EvalVideos(split, cached)[i]["short"] for i in range(4)] == [False, True, False, False]
    # a cache from before the distinct counts were recorded cannot tell a repeated clip from a full one
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({key: value for key, value in meta.items() if key != "num_distinct"}))
    assert FrameCache.open(path, split, sampler.describe(), Preprocessing(16)) is None
    assert "count short videos" in unusable_cache_report(path, split, sampler.describe(), Preprocessing(16))


def test_frame_cache_matches_decoding_and_detects_staleness(tmp_path):
    split = make_split(tmp_path, {"v3": b""})
    sampler = create_sampler("clip4clip", max_frames=4)
    path = cache_dir_for(tmp_path / "cache", split, sampler.describe(), Preprocessing(16))
    cache = build_frame_cache(path, split, reader(), workers=1, progress=False)
    assert cache.failed == {"v3"}
    cached_reader = reader(cache)
    for video in split.videos[:3]:
        frames, mask = cached_reader.read(video)
        expected_frames, expected_mask = reader().read(video)
        torch.testing.assert_close(frames, expected_frames)
        assert torch.equal(mask, expected_mask)
    with pytest.raises(VideoReadError, match="frame cache"):
        cached_reader.read(split.videos[3])
    # a different sampler setting does not match this cache
    assert FrameCache.open(path, split, create_sampler("clip4clip", max_frames=5).describe(), Preprocessing(16)) is None
    # a video file that changed after the build makes the cache stale
    numbered_video(split.videos[0].path, num_frames=12)
    os.utime(split.videos[0].path, ns=(1, 1))
    assert FrameCache.open(path, split, sampler.describe(), Preprocessing(16)) is None
    assert "1 video files changed since the cache was built (e.g. v0)" in unusable_cache_report(
        path, split, sampler.describe(), Preprocessing(16)
    )


def test_a_frame_cache_serves_its_own_resize_rule_whatever_the_mean_and_std(tmp_path):
    split = make_split(tmp_path, {})
    sampler = create_sampler("clip4clip", max_frames=4).describe()
    clip_rule = Preprocessing(16)
    path = cache_dir_for(tmp_path / "cache", split, sampler, clip_rule)
    build_frame_cache(path, split, reader(), workers=1, progress=False)
    # the cache holds resized frames before normalisation: another mean/std reads the same cache
    other_normalisation = Preprocessing(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert cache_dir_for(tmp_path / "cache", split, sampler, other_normalisation) == path
    assert FrameCache.open(path, split, sampler, other_normalisation) is not None
    for other in (
        Preprocessing(16, resize_mode="squash"),
        Preprocessing(16, interpolation="bilinear"),
        Preprocessing(20),
    ):
        assert cache_dir_for(tmp_path / "cache", split, sampler, other) != path
        assert FrameCache.open(path, split, sampler, other) is None
    assert "16 px (bicubic, squash resize)" in unusable_cache_report(
        cache_dir_for(tmp_path / "cache", split, sampler, Preprocessing(16, resize_mode="squash")),
        split,
        sampler,
        Preprocessing(16, resize_mode="squash"),
    )

    # a cache written before meta.json recorded the resize rule (tvr's only rule then) keeps its folder and serves
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(
        json.dumps({key: value for key, value in meta.items() if key not in ("interpolation", "resize_mode")})
    )
    folder_then = hashlib.sha1(json.dumps({"sampler": sampler, "image_size": 16}, sort_keys=True).encode()).hexdigest()[
        :10
    ]
    assert path.name == f"{split.name}-{folder_then}"
    assert FrameCache.open(path, split, sampler, clip_rule) is not None
    assert FrameCache.open(path, split, sampler, Preprocessing(16, resize_mode="squash")) is None


def test_frame_cache_rejects_incomplete_builds_and_random_samplers(tmp_path):
    split = make_split(tmp_path, {})
    sampler = create_sampler("clip4clip", max_frames=4)
    path = cache_dir_for(tmp_path / "cache", split, sampler.describe(), Preprocessing(16))
    build_frame_cache(path, split, reader(), workers=1, progress=False)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | {"complete": False}))
    assert FrameCache.open(path, split, sampler.describe(), Preprocessing(16)) is None
    (path / "meta.json").write_text(json.dumps(meta))
    with open(path / "frames.u8", "r+b") as handle:
        handle.truncate(100)
    assert FrameCache.open(path, split, sampler.describe(), Preprocessing(16)) is None
    random_reader = ClipReader(
        DecordBackend(), create_sampler("segment_random", max_frames=4), ClipFrameTransform(Preprocessing(16))
    )
    with pytest.raises(ValueError, match="random"):
        build_frame_cache(tmp_path / "rand", split, random_reader, workers=1, progress=False)


def test_xpool_augmentation_crops_every_frame_alike():
    import random as python_random

    frames = np.zeros((3, 40, 60, 3), dtype=np.uint8)
    frames[:, :, :30] = 200  # left half bright
    transform = ClipFrameTransform(Preprocessing(16), augment="xpool")
    assert not transform.deterministic
    python_random.seed(0)
    torch.manual_seed(0)
    outputs = [transform.resize_crop(frames) for _ in range(12)]
    assert all(out.shape == (3, 3, 16, 16) and torch.equal(out[0], out[2]) for out in outputs)  # one crop per clip
    assert len({out.float().mean().round().item() for out in outputs}) > 1  # crops and flips vary
    assert ClipFrameTransform(Preprocessing(16)).deterministic
    with pytest.raises(ValueError, match="none, xpool"):
        ClipFrameTransform(Preprocessing(16), augment="randaugment")
