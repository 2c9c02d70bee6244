"""Building a video index (``tvr-index``): find the user's videos, decode them in worker processes,
encode them with a :class:`~tvr.models.retriever.Retriever` and append them to a
:class:`~tvr.search.store.VideoIndexStore`.

A build only encodes what the index has not seen yet, so re-running it on a folder that gained videos
encodes the new ones only, and a build that was interrupted resumes where its last shard ended. A video
replaced at the same path (another size or modification time) is encoded again and its old entry
dropped. A video that cannot be decoded never stops a build: it is recorded in the index as unreadable,
with the reason, and skipped by later builds unless they are asked to retry it (``retry_unreadable``).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tvr.data.clips import ClipReader, collate
from tvr.data.records import VideoRef
from tvr.data.sampling import FrameSampler
from tvr.data.transforms import ClipFrameTransform, Preprocessing
from tvr.data.video import DecodedClip, VideoBackend, create_backend
from tvr.errors import UserInputError
from tvr.models.heads.base import Repr, cat_reprs, slice_repr
from tvr.models.retriever import Retriever
from tvr.search.store import VideoIndexStore, build_lock, file_fingerprint

log = logging.getLogger(__name__)

# Containers FFmpeg (decord's and PyAV's decoder) commonly reads; matched case-insensitively.
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".avi",
    ".mkv",
    ".webm",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ts",
    ".mts",
    ".m2ts",
    ".ogv",
    ".vob",
    ".asf",
    ".f4v",
)


@dataclass
class BuildReport:
    """What a build did with each video found; ``new + changed + retried`` were decoded."""

    indexed: int  # videos encoded and added by this build (new, changed or retried)
    new: int  # videos the index had not seen
    changed: int  # indexed videos whose file changed since: encoded again, old entry dropped
    unchanged: int  # indexed videos whose file is as it was: skipped
    unreadable_skipped: int  # videos an earlier build could not read: skipped (not retried)
    retried: int  # videos an earlier build could not read, decoded again (retry_unreadable)
    unreadable: dict[str, str]  # videos this build could not decode: path -> reason
    total_in_index: int  # indexed videos after this build
    seconds: float


# ---------------------------------------------------------------------- finding videos
def find_videos(folder: str | Path) -> list[Path]:
    """Every video file under ``folder`` (recursively, following symlinks), as sorted, resolved, unique
    paths; hidden files and folders are skipped. No video at all is an error that says what was found."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a folder"
        raise UserInputError(f"videos folder {folder} {problem}; pass the folder that holds your videos")
    videos: set[Path] = set()
    other_files = 0
    visited: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a symlink back up the tree (or a second link to one folder): walk it once
            dirs.clear()
            continue
        visited.add(real)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(VIDEO_EXTENSIONS):
                videos.add(Path(root, name).resolve())
            else:
                other_files += 1
    if not videos:
        found = f": it holds {other_files} files, none with a video extension" if other_files else ""
        raise UserInputError(f"no video files ({' '.join(VIDEO_EXTENSIONS)}) under {folder}{found}")
    return sorted(videos)


# ---------------------------------------------------------------------- thumbnails
def thumbnail_strip(frames: np.ndarray, height: int = 72, max_frames: int = 8) -> bytes:
    """uint8 ``[T, H, W, 3]`` frames -> one JPEG of up to ``max_frames`` evenly chosen frames side by side,
    each ``height`` pixels tall with its aspect ratio kept."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] with T >= 1, got shape {frames.shape}")
    count = min(len(frames), max_frames)
    # count <= T, so the rounded positions are at least one apart: no frame is shown twice
    picks = np.linspace(0, len(frames) - 1, num=count).round().astype(int)
    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    strip = Image.new("RGB", (width * count, height))
    for slot, index in enumerate(picks):
        tile = Image.fromarray(np.ascontiguousarray(frames[index])).resize((width, height), Image.Resampling.BILINEAR)
        strip.paste(tile, (slot * width, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# ---------------------------------------------------------------------- decoding (in worker processes)
class _KeepLastClip(VideoBackend):
    """A backend that keeps the clip it decoded last. :class:`ClipReader` turns a clip into padded model
    input but drops what the index also wants from it: the raw frames (thumbnail) and the frame count and
    fps (duration)."""

    def __init__(self, inner: VideoBackend) -> None:
        self.inner = inner
        self.last: DecodedClip | None = None

    def read(self, path, sampler, start=None, end=None, rng=None) -> DecodedClip:
        self.last = self.inner.read(path, sampler, start, end, rng)
        return self.last


class VideoFiles(Dataset):
    """One item per video file: padded frames and mask, duration and thumbnail, or why it is unreadable
    (``error``, empty for a readable video)."""

    def __init__(
        self, paths: list[str], backend: VideoBackend, sampler: FrameSampler, preprocessing: Preprocessing
    ) -> None:
        self.paths = paths
        self.decoded = _KeepLastClip(backend)
        self.reader = ClipReader(self.decoded, sampler, ClipFrameTransform(preprocessing))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            frames, mask = self.reader.read(VideoRef(video_id=path, path=Path(path)))
            clip = self.decoded.last
            thumbnail = thumbnail_strip(clip.frames[: int(mask.sum())])
            return {
                "path": path,
                "frames": frames,
                "frame_mask": mask,
                "duration": clip.num_frames / clip.fps,
                "thumbnail": thumbnail,
                "error": "",
            }
        except Exception as error:  # the user's files can fail in ways no decoder promises; one must not stop the build
            frames, mask = self.reader.empty()
            return {
                "path": path,
                "frames": frames,
                "frame_mask": mask,
                "duration": 0.0,
                "thumbnail": b"",
                "error": str(error) or type(error).__name__,
            }


# ---------------------------------------------------------------------- collecting encoded videos into shards
@dataclass
class _Pending:
    """Encoded videos not yet written to a shard."""

    paths: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    representations: list[Repr] = field(default_factory=list)
    summaries: list[torch.Tensor] = field(default_factory=list)
    thumbnails: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def add(
        self,
        paths: list[str],
        durations: list[float],
        representation: Repr,
        summary: torch.Tensor,
        thumbnails: list[bytes],
    ) -> None:
        self.paths += paths
        self.durations += durations
        self.representations.append(representation)
        self.summaries.append(summary)
        self.thumbnails += thumbnails

    def write_shard(self, store: VideoIndexStore, count: int, fingerprints: dict[str, str]) -> None:
        """Append the first ``count`` pending videos to ``store`` as one shard and keep the rest;
        ``fingerprints`` (path -> file fingerprint) were taken before the files were decoded."""
        representation, summary = cat_reprs(self.representations), torch.cat(self.summaries)
        store.append_shard(
            self.paths[:count],
            torch.tensor(self.durations[:count]),
            slice_repr(representation, 0, count),
            summary[:count],
            self.thumbnails[:count],
            [fingerprints[path] for path in self.paths[:count]],
        )
        total = len(self)
        self.representations = [slice_repr(representation, count, total)]
        self.summaries = [summary[count:]]
        del self.paths[:count], self.durations[:count], self.thumbnails[:count]


# ---------------------------------------------------------------------- the build
def summary_kind(retriever: Retriever) -> str:
    """What the indexed vectors are: the head's scores, one of its levels, or CLIP's mean-pooled frames."""
    if retriever.summary_is_exact:
        return "exact"
    if retriever.head.indexable_level:
        return f"level {retriever.head.indexable_level}"
    return "mean_pooled_frames"


def index_settings(retriever: Retriever, sampler: FrameSampler, max_words: int) -> dict:
    """What, besides the model's weights, makes two indexes' vectors comparable; and how queries are cut
    (``max_words``, the tokenizer limit the model was trained with)."""
    return {
        "sampler": sampler.describe(),
        "preprocessing": retriever.backbone.preprocessing.describe(),
        "max_words": max_words,
        "summary": summary_kind(retriever),
    }


def build_index(
    retriever: Retriever,
    videos_dir: str | Path,
    out: str | Path,
    *,
    sampler: FrameSampler,
    model: dict,
    max_words: int = 32,
    backend: str = "decord",
    num_workers: int = 2,
    batch_size: int = 16,
    shard_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    retry_unreadable: bool = False,
) -> BuildReport:
    """Index every video under ``videos_dir`` that the index at ``out`` does not hold as it is now (new
    files, and files changed since they were encoded); ``retry_unreadable``: also decode again the videos
    earlier builds could not read.

    ``model`` says how to rebuild ``retriever`` for searching (stored in the manifest as given). The
    retriever is moved to ``device`` and put in eval mode."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    started = time.perf_counter()
    videos = find_videos(videos_dir)
    with build_lock(out):  # held until the last shard is listed: two builds never mix their shards
        # before any decoding: a mismatching index is refused at once, not after an hour of work
        store = VideoIndexStore.create_or_open(
            out, retriever.identity(), model, index_settings(retriever, sampler, max_words)
        )
        # taken before decoding: a file replaced while it is decoded counts as changed on the next build
        fingerprints = {str(path): file_fingerprint(path) for path in videos}
        indexed, unreadable_before = store.fingerprints(), store.unreadable
        new, changed, unchanged, skipped, retried = [], [], [], [], []
        for path, fingerprint in fingerprints.items():
            if path in unreadable_before:
                (retried if retry_unreadable else skipped).append(path)
            elif path not in indexed:
                new.append(path)
            elif indexed[path] and indexed[path] != fingerprint:  # "": encoded before fingerprints were kept
                changed.append(path)
            else:
                unchanged.append(path)
        store.remove_videos(set(changed))
        store.forget_unreadable(retried)
        todo = sorted(new + changed + retried)
        log.info(
            "%d videos under %s for the index %s: %d new, %d changed, %d unchanged, %d unreadable skipped, "
            "%d unreadable retried; %d to decode",
            len(videos),
            videos_dir,
            store.folder,
            len(new),
            len(changed),
            len(unchanged),
            len(skipped),
            len(retried),
            len(todo),
        )
        retriever.to(device).eval()
        dataset = VideoFiles(todo, create_backend(backend), sampler, retriever.backbone.preprocessing)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
        pending, unreadable = _Pending(), {}
        with tqdm(total=len(todo), desc="indexing", unit="video", file=sys.stderr, disable=not progress) as bar:
            for batch in loader:
                failed = {path: error for path, error in zip(batch["path"], batch["error"]) if error}
                store.add_unreadable(failed)  # recorded at once: an interrupted build does not retry them
                unreadable.update(failed)
                _encode_batch(retriever, batch, device, pending)
                while len(pending) >= shard_size:
                    pending.write_shard(store, shard_size, fingerprints)
                bar.update(len(batch["path"]))
        if len(pending):
            pending.write_shard(store, len(pending), fingerprints)
        if unreadable:
            examples = "; ".join(f"{path}: {reason}" for path, reason in list(unreadable.items())[:3])
            log.warning(
                "%d videos could not be read and are not indexed (listed in %s/manifest.json), e.g. %s",
                len(unreadable),
                store.folder,
                examples,
            )
        return BuildReport(
            indexed=len(todo) - len(unreadable),
            new=len(new),
            changed=len(changed),
            unchanged=len(unchanged),
            unreadable_skipped=len(skipped),
            retried=len(retried),
            unreadable=unreadable,
            total_in_index=len(store),
            seconds=time.perf_counter() - started,
        )


def _encode_batch(retriever: Retriever, batch: dict, device: str | torch.device, pending: _Pending) -> None:
    """Encode the readable videos of a decoded batch and add them to ``pending``."""
    readable = [row for row, error in enumerate(batch["error"]) if not error]
    if not readable:
        return
    frames = batch["frames"][readable].to(device, non_blocking=True)
    mask = batch["frame_mask"][readable].to(device, non_blocking=True)
    with torch.no_grad():
        representation, summary = retriever.encode_videos_with_summary(frames, mask)
    pending.add(
        [batch["path"][row] for row in readable],
        [batch["duration"][row] for row in readable],
        {key: value.cpu() for key, value in representation.items()},
        summary.cpu(),
        [batch["thumbnail"][row] for row in readable],
    )
