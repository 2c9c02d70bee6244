"""Scan videos before a long run: which are missing, empty, unreadable — or hang the decoder.

Each video is decoded (its sampled frames, as training would) in a separate worker process. A worker
that exceeds the timeout is killed and replaced, so even a file that makes FFmpeg loop forever inside
one native call is caught. The report feeds ``data.video.skip_list``: listed videos are then never opened.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait

from tvr.data.records import VideoRef
from tvr.data.video import VideoReadError

STATUSES = ("ok", "missing", "empty", "unreadable", "timeout")


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


def check_videos(videos: list[VideoRef], backend, sampler, workers: int = 2, timeout_s: float = 30.0, progress: bool = True) -> list[VideoCheck]:
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
                        raise RuntimeError(f"video checker process failed to start (exit code {worker.process.exitcode})")
                    if worker.task:  # the decoder crashed the process (e.g. a segfault in FFmpeg)
                        index, video = worker.task
                        results[index] = VideoCheck(video.video_id, str(video.path), "unreadable",
                                                    f"decoder crashed (exit code {worker.process.exitcode})")
                        bar.update(1)
                    pool[slot] = _Worker(context, backend, sampler)
                elif worker.task and time.monotonic() - worker.started > timeout_s:
                    index, video = worker.task
                    results[index] = VideoCheck(video.video_id, str(video.path), "timeout", f"no result after {timeout_s:g}s; decoder killed")
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
