"""Building a video index over a folder of the user's videos (tvr.search.build, tvr.search.store).

The videos are real H.264 files written here (1-3 s, a few colours, some in sub-folders, one with an
upper-case extension) next to a corrupt ``.mp4`` and a text file; the model is the tiny test CLIP.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tvr.data.clips import ClipReader
from tvr.data.records import VideoRef
from tvr.data.sampling import create_sampler
from tvr.data.synthetic import write_mp4
from tvr.data.transforms import ClipFrameTransform, Preprocessing
from tvr.data.video import create_backend
from tvr.errors import NonFiniteScoresError, UserInputError
from tvr.models.retriever import Retriever
from tvr.search import build as build_module
from tvr.search.build import build_index, find_videos, thumbnail_strip
from tvr.search.store import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    VideoIndexStore,
)

FPS = 8
HEIGHT, WIDTH = 48, 64
MODEL = {"zero_shot": "tvr-tiny"}
# name -> (colour, seconds); relative to the videos folder
VIDEOS = {
    "red.mp4": ((220, 30, 30), 1),
    "trips/green.mp4": ((30, 200, 40), 2),
    "trips/2023/BLUE.MP4": ((40, 60, 230), 3),
}


def write_video(path: Path, colour: tuple[int, int, int], seconds: int) -> None:
    """A clip of one colour with a bar that moves, so frames differ from one another."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for index in range(seconds * FPS):
        frame = np.full((HEIGHT, WIDTH, 3), colour, dtype=np.uint8)
        column = (index * 5) % (WIDTH - 8)
        frame[:, column : column + 8] = 255 - np.array(colour, dtype=np.uint8)
        frames.append(frame)
    write_mp4(path, frames, FPS)


@pytest.fixture
def videos_dir(tmp_path) -> Path:
    folder = tmp_path / "videos"
    for name, (colour, seconds) in VIDEOS.items():
        write_video(folder / name, colour, seconds)
    (folder / "trips" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "notes.txt").write_text("not a video")
    return folder


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever({"model_name": "tvr-tiny"}, {"name": "meanpool"}).eval()


@pytest.fixture
def sampler():
    return create_sampler("clip4clip", max_frames=4)


class CountingEncoder:
    """Stands in for ``retriever.encode_videos_with_summary``: counts the videos it encodes, and raises on
    call number ``crash_on_call`` (a build killed mid-way)."""

    def __init__(self, retriever: Retriever, crash_on_call: int | None = None) -> None:
        self.encode = retriever.encode_videos_with_summary
        self.crash_on_call = crash_on_call
        self.calls = 0
        self.videos = 0

    def __call__(self, frames: torch.Tensor, frame_mask: torch.Tensor):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("simulated crash")
        self.videos += len(frames)
        return self.encode(frames, frame_mask)


def spy(monkeypatch, retriever: Retriever, crash_on_call: int | None = None) -> CountingEncoder:
    counting = CountingEncoder(retriever, crash_on_call)
    monkeypatch.setattr(retriever, "encode_videos_with_summary", counting)
    return counting


def build(retriever, videos_dir, out, sampler, **options):
    options = {"num_workers": 0, "progress": False, **options}
    return build_index(retriever, videos_dir, out, sampler=sampler, model=MODEL, **options)


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("shard-*.pt"))


def read_directly(paths: list[str], sampler, preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    reader = ClipReader(create_backend("decord"), sampler, ClipFrameTransform(preprocessing))
    clips = [reader.read(VideoRef(path, Path(path))) for path in paths]
    return torch.stack([frames for frames, _ in clips]), torch.stack([mask for _, mask in clips])


# ---------------------------------------------------------------------- one build
def test_every_video_is_indexed_once_and_the_corrupt_one_is_listed_unreadable(videos_dir, tmp_path, retriever, sampler):
    out = tmp_path / "index"
    report = build(retriever, videos_dir, out, sampler)

    expected = sorted(str((videos_dir / name).resolve()) for name in VIDEOS)
    broken = str((videos_dir / "trips" / "broken.mp4").resolve())
    contents = VideoIndexStore.open(out).load()
    assert sorted(contents.paths) == expected and len(contents.paths) == len(set(contents.paths))
    assert (report.indexed, report.new, report.unchanged, report.total_in_index) == (3, 4, 0, 3)
    assert list(report.unreadable) == [broken] and report.unreadable[broken]
    for path, duration in zip(contents.paths, contents.durations.tolist()):
        seconds = next(s for name, (_, s) in VIDEOS.items() if str((videos_dir / name).resolve()) == path)
        assert duration == pytest.approx(seconds, abs=0.15)

    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["unreadable"]) == [broken]
    assert manifest["identity"] == retriever.identity() and manifest["model"] == MODEL
    assert manifest["settings"] == {
        "sampler": sampler.describe(),
        "preprocessing": retriever.backbone.preprocessing.describe(),
        "max_words": 32,
        "summary": "exact",
    }
    assert sum(shard["videos"] for shard in manifest["shards"]) == 3
    for shard in shard_files(out):
        loaded = torch.load(shard, weights_only=True)
        assert all(value.dtype == torch.float32 for value in loaded["representation"].values())
    assert torch.allclose(contents.summary.norm(dim=-1), torch.ones(3), atol=1e-5)
    for jpeg in contents.thumbnails:
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


@pytest.mark.parametrize("head", ["meanpool", "xpool"])
def test_stored_representation_is_the_models_encoding_of_the_sampled_frames(videos_dir, tmp_path, sampler, head):
    model = Retriever({"model_name": "tvr-tiny"}, {"name": head}).eval()
    out = tmp_path / "index"
    build(model, videos_dir, out, sampler)

    contents = VideoIndexStore.open(out).load()
    frames, mask = read_directly(contents.paths, sampler, model.backbone.preprocessing)
    with torch.no_grad():
        expected = model.encode_videos(frames, mask)
        _, expected_summary = model.encode_videos_with_summary(frames, mask)
    assert contents.representation.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(contents.representation[key], value.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(contents.summary, expected_summary, atol=1e-6, rtol=0)
    assert VideoIndexStore.open(out).settings["summary"] == ("exact" if head == "meanpool" else "mean_pooled_frames")


def test_parallel_decoding_builds_the_same_index(videos_dir, tmp_path, retriever, sampler, monkeypatch):
    serial = build(retriever, videos_dir, tmp_path / "serial", sampler, num_workers=0)
    decoders = tmp_path / "decoder-pids"
    make_strip = build_module.thumbnail_strip

    def strip_noting_the_process(frames):
        with open(decoders, "a") as log:  # appends of a few bytes from several processes do not interleave
            log.write(f"{os.getpid()}\n")
        return make_strip(frames)

    monkeypatch.setattr(build_module, "thumbnail_strip", strip_noting_the_process)
    parallel = build(retriever, videos_dir, tmp_path / "parallel", sampler, num_workers=2, batch_size=2)

    assert str(os.getpid()) not in decoders.read_text().split()  # decoded in worker processes, not here
    assert parallel.unreadable.keys() == serial.unreadable.keys()
    one, other = VideoIndexStore.open(tmp_path / "serial").load(), VideoIndexStore.open(tmp_path / "parallel").load()
    assert other.paths == one.paths
    torch.testing.assert_close(other.representation, one.representation, atol=1e-6, rtol=0)
    assert other.thumbnails == one.thumbnails


# ---------------------------------------------------------------------- growing and resuming
def test_rebuilding_encodes_only_videos_the_index_has_not_seen(videos_dir, tmp_path, retriever, sampler, monkeypatch):
    out = tmp_path / "index"
    build(retriever, videos_dir, out, sampler)

    counting = spy(monkeypatch, retriever)
    again = build(retriever, videos_dir, out, sampler)
    assert (counting.videos, again.indexed, again.new, again.unchanged, again.total_in_index) == (0, 0, 0, 3, 3)
    assert again.unreadable_skipped == 1 and again.retried == 0
    assert again.unreadable == {}  # the corrupt file was recorded last time and is not retried

    write_video(videos_dir / "trips" / "new.mp4", (200, 200, 0), 1)
    grown = build(retriever, videos_dir, out, sampler)
    assert (counting.videos, grown.indexed, grown.new, grown.unchanged, grown.total_in_index) == (1, 1, 1, 3, 4)
    paths = VideoIndexStore.open(out).load().paths
    assert len(paths) == len(set(paths)) == 4 and str((videos_dir / "trips" / "new.mp4").resolve()) in paths


def test_a_replaced_video_is_encoded_again_and_unreadable_ones_are_retried_on_request(
    videos_dir, tmp_path, retriever, sampler, monkeypatch
):
    out = tmp_path / "index"
    build(retriever, videos_dir, out, sampler)
    red, broken = (str((videos_dir / name).resolve()) for name in ("red.mp4", "trips/broken.mp4"))
    write_video(Path(red), (250, 250, 0), 2)  # another video at the same path
    build(retriever, videos_dir, tmp_path / "fresh", sampler)
    counting = spy(monkeypatch, retriever)
    report = build(retriever, videos_dir, out, sampler, shard_size=2)
    assert (counting.videos, report.indexed, report.new, report.changed, report.unchanged) == (1, 1, 0, 1, 2)
    assert report.unreadable_skipped == 1 and report.total_in_index == 3
    contents = VideoIndexStore.open(out).load()
    fresh = VideoIndexStore.open(tmp_path / "fresh").load()
    assert sorted(contents.paths) == fresh.paths and contents.paths.count(red) == 1
    row, fresh_row = contents.paths.index(red), fresh.paths.index(red)
    torch.testing.assert_close(contents.summary[row], fresh.summary[fresh_row], atol=1e-6, rtol=0)
    assert contents.durations[row] == pytest.approx(2.0, abs=0.15)
    listed = [shard["file"] for shard in json.loads((out / "manifest.json").read_text())["shards"]]
    assert [path.name for path in shard_files(out)] == sorted(listed)  # the replaced shard file is gone

    write_video(Path(broken), (0, 90, 90), 1)  # the unreadable file, repaired
    assert build(retriever, videos_dir, out, sampler).unreadable_skipped == 1 and counting.videos == 1
    retried = build(retriever, videos_dir, out, sampler, retry_unreadable=True)
    assert (counting.videos, retried.retried, retried.indexed, retried.unreadable) == (2, 1, 1, {})
    assert retried.total_in_index == 4 and VideoIndexStore.open(out).unreadable == {}


def test_an_interrupted_build_resumes_without_duplicates(videos_dir, tmp_path, retriever, sampler, monkeypatch):
    for index in range(3):
        write_video(videos_dir / f"extra{index}.mp4", (60 * index, 100, 100), 1)
    out = tmp_path / "index"
    crashing = spy(monkeypatch, retriever, crash_on_call=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(retriever, videos_dir, out, sampler, batch_size=2, shard_size=2)
    assert len(VideoIndexStore.open(out)) == 2 and crashing.videos == 2
    # what a crash between writing a shard and listing it in the manifest leaves behind
    (out / "shard-00001.pt").write_bytes(b"half a shard")
    (out / ".shard-00001.pt.abc123.tmp").write_bytes(b"partial")

    resumed = spy(monkeypatch, retriever)
    # batches of 3 into shards of 2: a batch's videos are split across shards
    report = build(retriever, videos_dir, out, sampler, batch_size=3, shard_size=2)
    assert not (out / ".shard-00001.pt.abc123.tmp").exists()
    contents = VideoIndexStore.open(out).load()
    assert len(contents.paths) == len(set(contents.paths)) == report.total_in_index == 6
    assert resumed.videos == report.indexed == 4 and report.unchanged == 2
    listed = [shard["file"] for shard in json.loads((out / "manifest.json").read_text())["shards"]]
    assert [path.name for path in shard_files(out)] == listed
    for shard in shard_files(out):
        torch.load(shard, weights_only=True)

    uninterrupted = build(retriever, videos_dir, tmp_path / "uninterrupted", sampler)
    reference = VideoIndexStore.open(tmp_path / "uninterrupted").load()
    assert contents.paths == reference.paths and uninterrupted.total_in_index == 6
    torch.testing.assert_close(contents.representation, reference.representation, atol=1e-6, rtol=0)
    torch.testing.assert_close(contents.durations, reference.durations)
    assert contents.thumbnails == reference.thumbnails


# ---------------------------------------------------------------------- refusals and clear errors
def test_another_model_is_refused_naming_both_identities(videos_dir, tmp_path, retriever, sampler, monkeypatch):
    out = tmp_path / "index"
    build(retriever, videos_dir, out, sampler)
    other = Retriever({"model_name": "tvr-tiny"}, {"name": "meanpool"}).eval()
    with torch.no_grad():
        next(other.parameters()).add_(0.5)  # another checkpoint of the same architecture

    counting = spy(monkeypatch, other)
    with pytest.raises(IndexMismatchError) as refused:
        build(other, videos_dir, out, sampler)
    message = str(refused.value)
    assert retriever.identity()["weights_sha256"] in message and other.identity()["weights_sha256"] in message
    assert "another index folder" in message and "checkpoint" in message
    assert counting.calls == 0 and len(VideoIndexStore.open(out)) == 3


def test_other_frame_sampling_is_refused(videos_dir, tmp_path, retriever, sampler):
    out = tmp_path / "index"
    build(retriever, videos_dir, out, sampler)
    with pytest.raises(IndexMismatchError, match="settings"):
        build(retriever, videos_dir, out, create_sampler("clip4clip", max_frames=3))


def test_other_preprocessing_is_refused_and_an_index_from_before_it_was_recorded_grows(
    videos_dir, tmp_path, retriever, sampler, monkeypatch
):
    out = tmp_path / "index"
    build(retriever, videos_dir, out, sampler)
    manifest = json.loads((out / "manifest.json").read_text())
    # the same weights fed with another mean/std would give vectors not comparable with the stored ones
    other = Preprocessing(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    monkeypatch.setattr(retriever.backbone, "preprocessing", other)
    with pytest.raises(IndexMismatchError, match="settings"):
        build(retriever, videos_dir, out, sampler)
    monkeypatch.undo()
    # an index's settings once recorded the image size alone; tvr then always used open_clip's default rule
    settings = {key: value for key, value in manifest["settings"].items() if key != "preprocessing"}
    (out / "manifest.json").write_text(json.dumps(manifest | {"settings": settings | {"image_size": 32}}))
    write_video(videos_dir / "later.mp4", (0, 200, 200), 1)
    grown = build(retriever, videos_dir, out, sampler)
    assert (grown.indexed, grown.total_in_index) == (1, 4)
    assert VideoIndexStore.open(out).settings == manifest["settings"]


def test_the_store_refuses_a_video_twice_and_shards_of_uneven_parts(tmp_path, retriever, sampler):
    store = VideoIndexStore.create_or_open(
        tmp_path / "index", retriever.identity(), MODEL, {"sampler": sampler.describe()}
    )
    parts = {
        "durations": torch.ones(1),
        "representation": {"video": torch.ones(1, 4, dtype=torch.float16)},
        "summary": torch.ones(1, 4),
        "thumbnails": [b"\xff\xd8"],
    }
    store.append_shard(["/videos/a.mp4"], **parts)
    with pytest.raises(ValueError, match="already in the index"):
        VideoIndexStore.create_or_open(
            tmp_path / "index", retriever.identity(), MODEL, {"sampler": sampler.describe()}
        ).append_shard(["/videos/a.mp4"], **parts)
    with pytest.raises(ValueError, match="summary"):
        store.append_shard(["/videos/b.mp4"], **{**parts, "summary": torch.ones(2, 4)})
    contents = VideoIndexStore.open(tmp_path / "index").load()
    assert contents.paths == ["/videos/a.mp4"] and contents.thumbnails == [b"\xff\xd8"]
    assert contents.representation["video"].dtype == torch.float32  # half precision is not stored


def test_searching_a_missing_index_says_how_to_build_it(tmp_path):
    with pytest.raises(IndexNotFoundError, match=r"tvr-index VIDEOS_DIR .* index=") as missing:
        VideoIndexStore.open(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing.value)


def test_a_folder_of_other_files_is_not_turned_into_an_index(tmp_path, retriever, sampler):
    (tmp_path / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(IndexNotFoundError, match="not a tvr index"):
        VideoIndexStore.create_or_open(tmp_path, retriever.identity(), MODEL, {"sampler": sampler.describe()})
    assert sorted(os.listdir(tmp_path)) == ["holiday.jpg"]


def test_folders_without_videos_give_clear_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        find_videos(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match=r"no video files \(.*\.mp4.*\) under .*empty$"):
        find_videos(empty)
    documents = tmp_path / "documents"
    documents.mkdir()
    for index in range(12):
        (documents / f"page{index}.pdf").write_bytes(b"%PDF")
    with pytest.raises(UserInputError, match="12 files, none with a video extension"):
        find_videos(documents)


def test_find_videos_is_recursive_case_insensitive_and_skips_hidden_and_duplicate_links(tmp_path):
    folder = tmp_path / "videos"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / ".cache").mkdir()
    for name in ["a/b/deep.mkv", "UPPER.MOV", ".hidden.mp4", ".cache/thumb.mp4", "readme.md"]:
        (folder / name).write_bytes(b"x")
    (folder / "a" / "link.mkv").symlink_to(folder / "a" / "b" / "deep.mkv")
    (folder / "a" / "b" / "loop").symlink_to(folder, target_is_directory=True)

    found = find_videos(folder)
    assert found == sorted([(folder / "a" / "b" / "deep.mkv").resolve(), (folder / "UPPER.MOV").resolve()])


# ---------------------------------------------------------------------- thumbnails
@pytest.mark.parametrize("count, shown", [(3, 3), (12, 8)])
def test_thumbnail_strip_is_a_jpeg_of_evenly_chosen_frames_side_by_side(count, shown):
    frames = np.stack([np.full((HEIGHT, WIDTH, 3), 20 * index, dtype=np.uint8) for index in range(count)])
    image = Image.open(io.BytesIO(thumbnail_strip(frames, height=72, max_frames=8)))
    tile_width = WIDTH * 72 // HEIGHT  # 96: the aspect ratio is kept
    assert image.format == "JPEG" and image.size == (shown * tile_width, 72)
    # first and last frames are both shown (brightness of the first and last tile's centre)
    pixels = np.asarray(image.convert("L"))
    first, last = pixels[36, tile_width // 2], pixels[36, -tile_width // 2]
    assert abs(int(first) - 0) <= 3 and abs(int(last) - 20 * (count - 1)) <= 3


# ---------------------------------------------------------------------- two builds at once
HOLD_THE_LOCK = """
import sys
from tvr.search.store import build_lock
with build_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_a_second_build_is_refused_naming_the_first_while_it_runs(videos_dir, tmp_path, retriever, sampler):
    out = tmp_path / "index"
    build(retriever, videos_dir, out, sampler)
    before = (out / "manifest.json").read_text()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        write_video(videos_dir / "late.mp4", (200, 200, 30), 1)
        with pytest.raises(IndexBusyError, match=rf"another tvr-index build .* \(pid {holder.pid} on "):
            build(retriever, videos_dir, out, sampler)
        assert (out / "manifest.json").read_text() == before  # the refused build wrote nothing
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    report = build(retriever, videos_dir, out, sampler)  # once the first has finished, the second runs
    assert report.indexed == 1 and report.total_in_index == len(VIDEOS) + 1


# ---------------------------------------------------------------------- damaged shards
def small_store(folder: Path, retriever, sampler) -> VideoIndexStore:
    return VideoIndexStore.create_or_open(folder, retriever.identity(), MODEL, {"sampler": sampler.describe()})


def one_video(summary: torch.Tensor, thumbnail: bytes = b"\xff\xd8thumbnail\xff\xd9") -> dict:
    return {
        "durations": torch.ones(1),
        "representation": {"video": summary.clone()},
        "summary": summary,
        "thumbnails": [thumbnail],
    }


@pytest.mark.parametrize("damage", ["summary", "thumbnail"])
def test_a_damaged_shard_is_refused_naming_it(tmp_path, retriever, sampler, damage):
    store = small_store(tmp_path / "index", retriever, sampler)
    summary = torch.nn.functional.normalize(torch.arange(1.0, 33.0).reshape(1, 32), dim=-1)
    thumbnail = bytes(range(1, 200))
    store.append_shard(["/videos/a.mp4"], **one_video(summary, thumbnail))
    shard = shard_files(tmp_path / "index")[0]
    data = bytearray(shard.read_bytes())
    if damage == "summary":  # 64 bytes of the stored vector overwritten (stays finite: only the checksum sees it)
        start = data.find(summary.numpy().tobytes())
        data[start : start + 64] = np.full(16, 0.5, dtype=np.float32).tobytes()
    else:
        start = data.find(thumbnail)
        data[start : start + len(thumbnail)] = bytes(len(thumbnail))
    assert start > 0
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=rf"{shard.name} is damaged: its sha256 .* rebuild the index"):
        VideoIndexStore.open(tmp_path / "index").load()


def test_non_finite_vectors_are_refused_when_written_and_when_loaded(tmp_path, retriever, sampler):
    store = small_store(tmp_path / "index", retriever, sampler)
    with pytest.raises(NonFiniteScoresError, match="summary"):
        store.append_shard(["/videos/a.mp4"], **one_video(torch.tensor([[float("nan"), 1.0]])))
    assert len(VideoIndexStore.open(tmp_path / "index")) == 0 and not shard_files(tmp_path / "index")
    # a shard written before the checks (no checksum in its manifest entry) is still checked for NaN/inf
    store.append_shard(["/videos/b.mp4"], **one_video(torch.tensor([[0.0, 1.0]])))
    shard = shard_files(tmp_path / "index")[0]
    stored = torch.load(shard, weights_only=True)
    stored["summary"][0, 0] = float("inf")
    torch.save(stored, shard)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    del manifest["shards"][0]["sha256"]
    (tmp_path / "index" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match=rf"{shard.name} holds NaN or infinite values in summary"):
        VideoIndexStore.open(tmp_path / "index").load()
