"""Scan videos before a long run: which are missing, empty, unreadable — or hang the decoder.

Each video is decoded (its sampled frames, as training would) in a separate worker process. A worker
that exceeds the timeout is killed and replaced, so even a file that makes FFmpeg loop forever inside
one native call is caught. The report feeds ``data.video.skip_list``: listed videos are then never opened.

Counts are of distinct videos, however many captions a video has: a split named by several roles
(MSR-VTT's val and test are one 1k-A set) is counted once, and a video in several splits (ActivityNet's
val and test are both val_1) once in the total over all splits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import wait

from tvr.data.records import VideoRef
from tvr.data.video import VideoReadError

STATUSES = ("ok", "missing", "empty", "unreadable", "timeout")
ALL_SPLITS = "all splits"


@dataclass
class VideoCheck:
    video_id: str
    path: str
    status: str
    error: str = ""
    num_frames: int = 0
    fps: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class VideoInventory:
    """The distinct videos of a dataset's splits: per split, the ids listed in its annotations and those
    without a file (``SplitRecords.info["missing_video_ids"]``); over all splits, each video once."""

    listed: dict[str, list[str]] = field(default_factory=dict)
    without_file: dict[str, list[str]] = field(default_factory=dict)
    with_file: dict[str, VideoRef] = field(default_factory=dict)

    @classmethod
    def of(cls, dataset, split_names: Iterable[str | None]) -> VideoInventory:
        """Read each named split once (several roles may name one split, e.g. MSR-VTT's val = test)."""
        inventory = cls()
        for name in dict.fromkeys(name for name in split_names if name):
            split = dataset.load_split(name)
            missing = list(split.info.get("missing_video_ids", []))
            inventory.listed[name] = [video.video_id for video in split.videos] + missing
            inventory.without_file[name] = missing
            for video in split.videos:
                inventory.with_file.setdefault(video.video_id, video)
        return inventory

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"videos", "without_file"}}`` plus ``"all splits"``, where a video shared by splits counts once."""
        rows = {
            name: {"videos": len(ids), "without_file": len(self.without_file[name])}
            for name, ids in self.listed.items()
        }
        every = {video for ids in self.listed.values() for video in ids}
        absent = {video for ids in self.without_file.values() for video in ids}
        rows[ALL_SPLITS] = {"videos": len(every), "without_file": len(absent)}
        return rows


def report_table(inventory: VideoInventory, results: list[VideoCheck]) -> str:
    """The Markdown tables ``tools/check_videos.py`` prints: distinct videos per split and in total, and
    the check of every distinct video that has a file."""
    lines = ["| split | videos in the annotations | without a file |", "|---|---|---|"]
    lines += [f"| {name} | {row['videos']} | {row['without_file']} |" for name, row in inventory.counts().items()]
    lines += ["", f"| status of the {len(results)} distinct videos with a file | videos |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in status_counts(results).items()]
    return "\n".join(lines)


def status_counts(results: list[VideoCheck]) -> dict[str, int]:
    return {status: sum(result.status == status for result in results) for status in STATUSES}


def check_one(video: VideoRef, backend, sampler) -> VideoCheck:
    path = video.path
    if not path.exists():
        return VideoCheck(video.video_id, str(path), "missing", "no such file")
    if path.stat().st_size == 0:
        return VideoCheck(video.video_id, str(path), "empty", "zero bytes")
    try:
        clip = backend.read(path, sampler, video.start, video.end)
    except VideoReadError as error:
        return VideoCheck(video.video_id, str(path), "unreadable", str(error))
    return VideoCheck(video.video_id, str(path), "ok", "", clip.num_frames, clip.fps)


def _serve(connection, backend, sampler) -> None:
    backend.timeout_s = None  # the parent enforces a hard timeout instead
    connection.send("ready")  # start-up (imports) does not count against the first video's time
    while True:
        video = connection.recv()
        if video is None:
            return
        connection.send(check_one(video, backend, sampler))


class _Worker:
    def __init__(self, context, backend, sampler) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, backend, sampler), daemon=True)
        self.process.start()
        self.task: tuple[int, VideoRef] | None = None
        self.started = 0.0
        self.ready = False

    def submit(self, index: int, video: VideoRef) -> None:
        self.task, self.started = (index, video), time.monotonic()
        self.connection.send(video)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()


def check_videos(
    videos: list[VideoRef], backend, sampler, workers: int = 2, timeout_s: float = 30.0, progress: bool = True
) -> list[VideoCheck]:
    """Check every video; results in input order."""
    from tqdm import tqdm

    context = get_context("spawn")
    pending = list(enumerate(videos))[::-1]
    results: list[VideoCheck | None] = [None] * len(videos)
    pool = [_Worker(context, backend, sampler) for _ in range(max(1, min(workers, len(videos))))]
    bar = tqdm(total=len(videos), desc="checking videos", disable=not progress)
    try:
        while pending or any(worker.task for worker in pool):
            for worker in pool:
                if worker.ready and worker.task is None and pending:
                    worker.submit(*pending.pop())
            ready = wait([w.connection for w in pool if w.task or not w.ready], timeout=0.2)
            for worker in pool:
                if worker.connection not in ready:
                    continue
                message = worker.connection.recv()
                if message == "ready":
                    worker.ready = True
                else:
                    results[worker.task[0]] = message
                    worker.task = None
                    bar.update(1)
            for slot, worker in enumerate(pool):
                if not worker.process.is_alive() and worker.connection not in ready:
                    if not worker.ready:
                        raise RuntimeError(
                            f"video checker process failed to start (exit code {worker.process.exitcode})"
                        )
                    if worker.task:  # the decoder crashed the process (e.g. a segfault in FFmpeg)
                        index, video = worker.task
                        results[index] = VideoCheck(
                            video.video_id,
                            str(video.path),
                            "unreadable",
                            f"decoder crashed (exit code {worker.process.exitcode})",
                        )
                        bar.update(1)
                    pool[slot] = _Worker(context, backend, sampler)
                elif worker.task and time.monotonic() - worker.started > timeout_s:
                    index, video = worker.task
                    results[index] = VideoCheck(
                        video.video_id, str(video.path), "timeout", f"no result after {timeout_s:g}s; decoder killed"
                    )
                    worker.stop()
                    pool[slot] = _Worker(context, backend, sampler)
                    bar.update(1)
    finally:
        bar.close()
        for worker in pool:
            if worker.ready and worker.task is None and worker.process.is_alive():
                worker.connection.send(None)
            worker.stop()
    return results
