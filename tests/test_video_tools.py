"""The second decoder backend, decoding deadlines, the bad-video scan, skip lists and compression."""

import json
import time

import av
import numpy as np
import pytest

from conftest import FIXTURES
from helpers import HangingBackend
from test_video_data import frame_numbers, numbered_video
from tvr.data.clips import ClipReader
from tvr.data.compress import compress_video, output_size
from tvr.data.datamodule import load_skip_list
from tvr.data.datasets import create_dataset
from tvr.data.frame_cache import build_frame_cache
from tvr.data.records import SplitRecords, TextRef, VideoRef
from tvr.data.sampling import create_sampler
from tvr.data.transforms import ClipFrameTransform, Preprocessing
from tvr.data.video import VideoReadError, deadline
from tvr.data.video.decord_backend import DecordBackend
from tvr.data.video.pyav_backend import PyAVBackend
from tvr.data.video_check import ALL_SPLITS, VideoCheck, VideoInventory, check_videos, report_table


@pytest.mark.parametrize(
    "sampler",
    [
        create_sampler("clip4clip", max_frames=5),
        create_sampler("clip4clip", max_frames=12, slice_framepos=1),
        create_sampler("segment_uniform", max_frames=7),
    ],
    ids=["clip4clip", "clip4clip-tail", "segment_uniform"],
)
def test_pyav_and_decord_give_the_same_frames(tmp_path, sampler):
    path = numbered_video(tmp_path / "clip.mp4", num_frames=50, fps=5)
    a, b = DecordBackend().read(path, sampler), PyAVBackend().read(path, sampler)
    assert a.indices == b.indices and (a.num_frames, a.fps) == (b.num_frames, b.fps)
    assert frame_numbers(b.frames) == b.indices
    assert np.array_equal(a.frames, b.frames)


def test_pyav_reports_bad_files(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 64)
    with pytest.raises(VideoReadError, match="cannot decode"):
        PyAVBackend().read(tmp_path / "junk.mp4", create_sampler("clip4clip"))
    with pytest.raises(VideoReadError, match="missing"):
        PyAVBackend().read(tmp_path / "absent.mp4", create_sampler("clip4clip"))


def test_deadline_interrupts_slow_decoding(tmp_path):
    started = time.monotonic()
    with pytest.raises(VideoReadError, match="longer than 0.2s"):
        with deadline(0.2, tmp_path / "slow.mp4"):
            while True:
                sum(range(1000))
    assert time.monotonic() - started < 5
    with deadline(5.0, tmp_path / "fast.mp4"):  # a block that finishes in time is untouched
        pass


@pytest.mark.slow
def test_check_videos_kills_hanging_decoders_and_classifies_the_rest(tmp_path):
    good = numbered_video(tmp_path / "good.mp4", num_frames=6)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 100)
    hang = numbered_video(tmp_path / "hang.mp4", num_frames=6)
    videos = [
        VideoRef("good", good),
        VideoRef("empty", tmp_path / "empty.mp4"),
        VideoRef("junk", tmp_path / "junk.mp4"),
        VideoRef("hang", hang),
        VideoRef("gone", tmp_path / "gone.mp4"),
    ]
    started = time.monotonic()
    results = check_videos(
        videos, HangingBackend(), create_sampler("clip4clip"), workers=2, timeout_s=3.0, progress=False
    )
    assert [r.status for r in results] == ["ok", "empty", "unreadable", "timeout", "missing"]
    assert results[0].num_frames == 6 and time.monotonic() - started < 60


class MustNotOpen:
    name, timeout_s = "must-not-open", None

    def read(self, path, *args, **kwargs):
        raise AssertionError(f"{path} is on the skip list but was opened")


def test_skip_list_videos_are_never_opened(tmp_path):
    report = tmp_path / "bad_videos.json"
    report.write_text(json.dumps({"bad": {"v1": {"status": "timeout"}}}))
    skip = load_skip_list(str(report))
    reader = ClipReader(HangingBackend(), create_sampler("clip4clip"), ClipFrameTransform(Preprocessing(16)), skip=skip)
    with pytest.raises(VideoReadError, match="skip list"):
        reader.read(VideoRef("v1", tmp_path / "hang.mp4"))  # would hang forever if it were opened
    split = SplitRecords("test", [VideoRef("v1", tmp_path / "hang.mp4")], [TextRef(0, "v1", "a clip")])
    opening_fails = ClipReader(
        MustNotOpen(), create_sampler("clip4clip"), ClipFrameTransform(Preprocessing(16)), skip=skip
    )
    cache = build_frame_cache(tmp_path / "cache", split, opening_fails, workers=1, progress=False)  # nor when caching
    assert cache.failed == {"v1"}
    (tmp_path / "ids.txt").write_text("a\n\nb\n")
    assert load_skip_list(str(tmp_path / "ids.txt")) == {"a", "b"}
    with pytest.raises(FileNotFoundError, match="check_videos"):
        load_skip_list(str(tmp_path / "nope.json"))


@pytest.mark.parametrize(
    "size, quirk, expected",
    [
        ((320, 240), False, (298, 224)),
        ((1080, 1920), False, (224, 398)),
        ((1080, 1920), True, (224, 126)),
        ((64, 64), False, (224, 224)),
    ],
)
def test_output_size_follows_the_reference_formula(size, quirk, expected):
    assert output_size(*size, portrait_quirk=quirk) == expected


def test_compression_gives_3fps_short_side_224_and_is_resumable(tmp_path):
    (tmp_path / "raw").mkdir()
    source = numbered_video(tmp_path / "raw" / "clip.mp4", num_frames=50, fps=25, size=(120, 160))  # 2 s
    target = tmp_path / "out" / "clip.mp4"
    assert compress_video(source, target).status == "done"
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, int(stream.average_rate)) == (298, 224, 3)
        assert sum(1 for _ in container.decode(stream)) == 6
    modified = target.stat().st_mtime_ns
    assert compress_video(source, target).status == "skipped" and target.stat().st_mtime_ns == modified
    (tmp_path / "raw" / "broken.mp4").write_bytes(b"not a video")
    failed = compress_video(tmp_path / "raw" / "broken.mp4", tmp_path / "out" / "broken.mp4")
    assert failed.status == "failed" and "Invalid data" in failed.error
    assert not (tmp_path / "out" / "broken.mp4").exists()  # no silent copy of the raw file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize(
    "dataset, files, present, split_names, expected",
    [
        # MSR-VTT: val and test are both the 1k-A split, read and counted once
        (
            "msrvtt",
            {"MSRVTT_JSFUSION_test.csv": "msrvtt", "MSRVTT_train.9k.csv": "msrvtt", "MSRVTT_data.json": "synthesized"},
            ["video0.mp4", "video1.mp4", "video9770.mp4", "video7020.mp4"],
            ["train", "test", "test"],
            {"train": (6, 4), "test": (1000, 998), ALL_SPLITS: (1006, 1002)},
        ),
        # ActivityNet: val and test are two splits of the same videos (val_1), each video once in the total
        (
            "activitynet",
            {"val_1.json": "activitynet", "val_ids.json": "activitynet"},
            ["JDg--pjY5gg.mp4"],
            [None, "val", "test"],
            {"val": (4917, 4916), "test": (4917, 4916), ALL_SPLITS: (4917, 4916)},
        ),
    ],
)
def test_video_counts_are_of_distinct_videos(tmp_path, dataset, files, present, split_names, expected):
    (tmp_path / "videos").mkdir()
    for name, folder in files.items():
        source = FIXTURES / "synthesized" if folder == "synthesized" else FIXTURES / "annotations" / folder
        (tmp_path / name).write_bytes((source / name).read_bytes())
    for name in present:
        (tmp_path / "videos" / name).write_bytes(b"")
    inventory = VideoInventory.of(create_dataset(dataset, root=tmp_path), split_names)
    assert {split: (row["videos"], row["without_file"]) for split, row in inventory.counts().items()} == expected
    assert sorted(inventory.with_file) == sorted(name.rsplit(".", 1)[0] for name in present)  # each checked once

    checks = [VideoCheck(video, str(ref.path), "empty") for video, ref in inventory.with_file.items()]
    table = report_table(inventory, checks)
    videos, without = expected[ALL_SPLITS]
    assert (
        f"| {ALL_SPLITS} | {videos} | {without} |" in table
        and "| split | videos in the annotations | without a file |" in table
    )
    assert (
        f"| status of the {len(present)} distinct videos with a file | videos |" in table
        and f"| empty | {len(present)} |" in table
    )
    assert "row" not in table
