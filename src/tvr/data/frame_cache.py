"""An optional store of pre-decoded, resized frames, so training epochs after the first cost no decoding.

One cache holds one split under one frame-sampling setting: a memory-mapped uint8 array
``[num_videos, max_frames, 3, S, S]`` (the output of :meth:`ClipFrameTransform.resize_crop`), the number
of real frames per video and of distinct ones among them (short videos are counted from it), and ``meta.json`` recording everything the content depends on: the sampler
settings, the backbone's resolution and resize rule (its :class:`Preprocessing` but mean/std, which are
applied when a clip is read), the ordered video ids and each source file's size and mtime.

A cache is used only when all of that matches the current run; a stale or unfinished cache, or one
built for other settings, is detected, reported with the reason and the command that builds the right
one, and ignored (decoding falls back to the video files). Only deterministic samplers can be cached: a
random sampler must see new frames every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig

from tvr.atomic import write_text
from tvr.data.parallel import process_pool
from tvr.data.records import SplitRecords
from tvr.data.transforms import Preprocessing
from tvr.data.video import VideoReadError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
META_FILE = "meta.json"
FRAMES_FILE = "frames.u8"
NO_CACHE = "no cache"


def _fingerprint(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


# The resize rule of every cache written before meta.json recorded one (tvr had no other): such a cache
# reads as one of this rule, and a cache of this rule keeps the folder name those caches have.
UNRECORDED_RESIZE = {"interpolation": "bicubic", "resize_mode": "shortest"}


def cached_geometry(preprocessing: Preprocessing) -> dict:
    """What of the backbone's preprocessing a cache's content depends on: the stored frames are resized and
    cropped, not yet normalised, so mean/std are not part of it."""
    return {
        "image_size": preprocessing.image_size,
        "interpolation": preprocessing.interpolation,
        "resize_mode": preprocessing.resize_mode,
    }


def recorded_geometry(meta: dict) -> dict:
    """The geometry a cache's meta.json records (a cache from before the resize rule was recorded: the rule then)."""
    return {
        "image_size": meta.get("image_size"),
        **{name: meta.get(name, value) for name, value in UNRECORDED_RESIZE.items()},
    }


def cache_key(sampler_description: dict, geometry: dict) -> str:
    named = {name: value for name, value in geometry.items() if UNRECORDED_RESIZE.get(name) != value}
    text = json.dumps({"sampler": sampler_description, **named}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def cache_dir_for(
    root: str | Path, split: SplitRecords, sampler_description: dict, preprocessing: Preprocessing
) -> Path:
    return Path(root) / f"{split.name}-{cache_key(sampler_description, cached_geometry(preprocessing))}"


def describe_settings(sampler_description: dict | None, geometry: dict) -> str:
    """A cache's settings as run logs and ``tools/cache_frames.py`` print them, e.g.
    ``clip4clip sampler (feature_framerate=1, slice_framepos=2, frame_order=0), up to 12 frames, 224 px``
    (with the resize rule when it is not CLIP's bicubic short side and centre crop)."""
    options = dict(sampler_description or {})
    name, frames = options.pop("sampler", "unknown"), options.pop("max_frames", "?")
    listed = f" ({', '.join(f'{key}={value}' for key, value in options.items())})" if options else ""
    resize = {key: geometry.get(key) for key in UNRECORDED_RESIZE}
    rule = "" if resize == UNRECORDED_RESIZE else f" ({resize['interpolation']}, {resize['resize_mode']} resize)"
    return f"{name} sampler{listed}, up to {frames} frames, {geometry.get('image_size')} px{rule}"


def caches_in(root: str | Path) -> list[tuple[Path, dict]]:
    """Every cache folder under ``root`` (finished or not) with its meta.json, in name order."""
    return [
        (meta_path.parent, json.loads(meta_path.read_text())) for meta_path in sorted(Path(root).glob(f"*/{META_FILE}"))
    ]


def cache_frames_command() -> str:
    """The ``tools/cache_frames.py`` line that builds this run's caches. The tool composes the train config,
    so a ``tvr-train`` run's own overrides give it the same data, samplers and backbone; other callers
    (``tvr-eval``, scripts) have no such overrides to repeat."""
    if HydraConfig.initialized() and HydraConfig.get().job.config_name == "train":
        return shlex.join(["python", "tools/cache_frames.py", *HydraConfig.get().overrides.task])
    return "python tools/cache_frames.py <the overrides of the training run>"


def unusable_cache_report(
    path: Path, split: SplitRecords, sampler_description: dict, preprocessing: Preprocessing
) -> str | None:
    """Why the caches of ``split`` cannot serve a run whose cache belongs at ``path`` (where none is
    valid): the one at ``path`` is stale or unfinished, or the split's caches were built for other
    settings. None when the split has no cache at all."""
    reason = cache_mismatch(path, split, sampler_description, preprocessing)
    if reason != NO_CACHE:
        return f"frame cache {path} not used for split '{split.name}': {reason}"
    others = [
        f"{other} was built for {describe_settings(meta.get('sampler'), recorded_geometry(meta))}"
        + ("" if meta.get("complete") else " (unfinished)")
        for other, meta in caches_in(path.parent)
        if meta.get("split") == split.name
    ]
    if not others:
        return None
    return (
        f"no frame cache for split '{split.name}' matches this run's settings "
        f"({describe_settings(sampler_description, cached_geometry(preprocessing))}): {'; '.join(others)}"
    )


@dataclass
class FrameCache:
    path: Path
    video_rows: dict[str, int]
    num_valid: np.ndarray
    num_distinct: np.ndarray
    shape: tuple[int, ...]
    failed: set[str]

    _frames: np.ndarray | None = None

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:  # opened lazily so each DataLoader worker maps the file itself
            self._frames = np.memmap(self.path / FRAMES_FILE, dtype=np.uint8, mode="r", shape=self.shape)
        return self._frames

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_frames"] = None
        return state

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.video_rows

    def read(self, video_id: str) -> tuple[torch.Tensor, int, int]:
        """uint8 ``[max_frames, 3, S, S]`` (zeros past the real frames), the number of real frames and of
        distinct ones among them."""
        if video_id in self.failed:
            raise VideoReadError(f"video {video_id} could not be decoded when the frame cache was built")
        row = self.video_rows[video_id]
        # one copy of the row out of the page cache (the tensor must own its memory to leave the worker)
        return torch.from_numpy(np.array(self.frames[row])), int(self.num_valid[row]), int(self.num_distinct[row])

    @classmethod
    def open(
        cls, path: Path, split: SplitRecords, sampler_description: dict, preprocessing: Preprocessing
    ) -> "FrameCache | None":
        """The cache at ``path`` if it is complete and matches; otherwise None (:func:`cache_mismatch` and
        :func:`unusable_cache_report` say why; the caller knows what happens instead)."""
        if cache_mismatch(path, split, sampler_description, preprocessing):
            return None
        meta = json.loads((path / META_FILE).read_text())
        return cls(
            path=path,
            video_rows={video_id: row for row, video_id in enumerate(meta["video_ids"])},
            num_valid=np.asarray(meta["num_valid"], dtype=np.int64),
            num_distinct=np.asarray(meta["num_distinct"], dtype=np.int64),
            shape=tuple(meta["shape"]),
            failed=set(meta["failed"]),
        )


def cache_mismatch(
    path: Path, split: SplitRecords, sampler_description: dict, preprocessing: Preprocessing
) -> str | None:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return NO_CACHE
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != CACHE_VERSION:
        return f"cache format {meta.get('version')} != {CACHE_VERSION}"
    if not meta.get("complete"):
        return "the cache is incomplete (its build was interrupted)"
    if "num_distinct" not in meta:  # a repeating sampler's rows are all full: only this tells a short video
        return "the cache predates the count of distinct frames per video (needed to count short videos)"
    wanted = cached_geometry(preprocessing)
    if meta.get("sampler") != sampler_description or recorded_geometry(meta) != wanted:
        return (
            f"built for {describe_settings(meta.get('sampler'), recorded_geometry(meta))}, "
            f"this run uses {describe_settings(sampler_description, wanted)}"
        )
    if meta.get("video_ids") != [video.video_id for video in split.videos]:
        return "the split's video list changed since the cache was built"
    current = [_fingerprint(video.path) for video in split.videos]
    changed = [vid for vid, old, new in zip(meta["video_ids"], meta["fingerprints"], current) if old != new]
    if changed:
        return f"{len(changed)} video files changed since the cache was built (e.g. {changed[0]})"
    frames_path = path / FRAMES_FILE
    expected_bytes = int(np.prod(meta["shape"]))
    if not frames_path.is_file() or frames_path.stat().st_size != expected_bytes:
        return "the frame array is missing or truncated"
    return None


def build_frame_cache(path: Path, split: SplitRecords, reader, workers: int = 1, progress: bool = True) -> FrameCache:
    """Decode every video of ``split`` once with ``reader`` (a ClipReader) and store the frames at ``path``."""
    return build_frame_caches([(path, split, reader)], workers, progress)[0]


def build_frame_caches(
    targets: list[tuple[Path, SplitRecords, object]], workers: int = 1, progress: bool = True
) -> list[FrameCache]:
    """Build several caches (e.g. train/val/test) with one pool of decoding processes.

    ``targets`` are ``(path, split, reader)`` triples; each reader's sampler must be deterministic.
    """
    from tqdm import tqdm

    arrays, metas = [], []
    for path, split, reader in targets:
        if not reader.sampler.deterministic:
            raise ValueError(f"sampler {reader.sampler.describe()} is random; a frame cache would freeze its frames")
        geometry = cached_geometry(reader.transform.preprocessing)
        size = geometry["image_size"]
        shape = (len(split.videos), reader.max_frames, 3, size, size)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "version": CACHE_VERSION,
            "complete": False,
            "split": split.name,
            "sampler": reader.sampler.describe(),
            **geometry,
            "shape": list(shape),
            "video_ids": [v.video_id for v in split.videos],
            "fingerprints": [_fingerprint(v.path) for v in split.videos],
            "num_valid": [0] * len(split.videos),
            "num_distinct": [0] * len(split.videos),
            "failed": [],
        }
        _write_meta(path, meta)
        metas.append(meta)
        arrays.append(np.memmap(path / FRAMES_FILE, dtype=np.uint8, mode="w+", shape=shape))
    jobs = [
        (target, row, video, reader)
        for target, (_, split, reader) in enumerate(targets)
        for row, video in enumerate(split.videos)
    ]
    names = "+".join(split.name for _, split, _ in targets)
    with tqdm(total=len(jobs), desc=f"frame cache {names}", disable=not progress) as bar:
        for target, row, clip, count, distinct, error in _map(jobs, workers):
            video_id = targets[target][1].videos[row].video_id
            if error:
                metas[target]["failed"].append(video_id)
                log.warning("frame cache: %s", error)
            else:
                arrays[target][row, :count] = clip
                metas[target]["num_valid"][row] = count
                metas[target]["num_distinct"][row] = distinct
            bar.update(1)
    caches = []
    for (path, split, reader), array, meta in zip(targets, arrays, metas):
        array.flush()
        meta["complete"] = True
        _write_meta(path, meta)
        cache = FrameCache.open(path, split, reader.sampler.describe(), reader.transform.preprocessing)
        assert cache is not None, "a freshly built cache must validate"
        caches.append(cache)
    return caches


def _decode_one(job: tuple) -> tuple[int, int, np.ndarray | None, int, int, str | None]:
    target, row, video, reader = job
    try:
        resized, count, distinct = reader.decode_clip(video)
    except VideoReadError as error:
        return target, row, None, 0, 0, str(error)
    return target, row, resized.numpy(), count, distinct, None


def _single_threaded() -> None:
    torch.set_num_threads(1)  # one decoding process per core; intra-op threads would oversubscribe


def _map(jobs: list, workers: int):
    if workers <= 1:
        yield from map(_decode_one, jobs)
        return
    with process_pool(workers, initializer=_single_threaded) as pool:
        yield from pool.imap(_decode_one, jobs, chunksize=16)


def _write_meta(path: Path, meta: dict) -> None:
    write_text(path / META_FILE, json.dumps(meta))
