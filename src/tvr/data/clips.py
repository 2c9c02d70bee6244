"""Torch datasets over split records: training pairs, evaluation videos and evaluation texts.

Short videos are counted, never hidden: a clip whose sampler picked fewer distinct frames than ``max_frames``
(padded by a padding sampler, repeated by a repeating one) is flagged ``short`` so training and evaluation
report how many there were.

Bad videos never stop a run. In training, a pair whose video cannot be read is replaced by another
pair (deterministically chosen) and the failure travels with the batch so the training module can
count and log it. In evaluation the video stays in the gallery as an all-padded clip, flagged ``unreadable``
so the metrics count it as a miss (never a hit), and is reported; dropping it would silently change the
benchmark.
"""

from __future__ import annotations

import logging
import random
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, get_worker_info

from tvr.data.frame_cache import FrameCache
from tvr.data.order import item_randomness
from tvr.data.records import SplitRecords, VideoRef
from tvr.data.sampling import FrameSampler
from tvr.data.tokenizer import CaptionTokenizer
from tvr.data.transforms import ClipFrameTransform
from tvr.data.video import VideoBackend, VideoReadError

log = logging.getLogger(__name__)

# What an evaluation batch holds (``batch["role"]``): evaluation tells batches apart by it, not by loader order.
VIDEOS, TEXTS, QUERY_BANK, VIDEO_BANK = "videos", "texts", "query_bank", "video_bank"

# Stride used to pick a substitute pair; a large prime so retries spread over the split.
_SUBSTITUTE_STRIDE = 7919


class DecodedFrames(NamedTuple):
    frames: torch.Tensor  # uint8 [count, 3, S, S], resized and cropped
    count: int  # frames in the clip (at most max_frames)
    distinct: int  # distinct frame indices among them: fewer than max_frames is a short video


class ReadClip(NamedTuple):
    frames: torch.Tensor  # [max_frames, 3, S, S], padded with zeros
    mask: torch.Tensor  # bool [max_frames]
    distinct: int  # distinct frames the sampler picked (see DecodedFrames)


class ClipReader:
    """Decode (or fetch from a frame cache), transform and pad one clip to ``[max_frames, 3, S, S]``
    with a frame mask: normalised float frames, or with ``normalize=False`` the uint8 frames the model
    normalises itself on its device (what the training and evaluation loaders deliver)."""

    def __init__(
        self,
        backend: VideoBackend,
        sampler: FrameSampler,
        transform: ClipFrameTransform,
        cache: FrameCache | None = None,
        skip: frozenset[str] = frozenset(),
        normalize: bool = True,
    ) -> None:
        self.backend = backend
        self.sampler = sampler
        self.transform = transform
        self.cache = cache
        self.skip = skip  # ids listed as bad by tools/check_videos.py: never opened, always counted
        self.normalize = normalize

    @property
    def max_frames(self) -> int:
        return self.sampler.max_frames

    def empty(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.transform.image_size
        dtype = torch.float32 if self.normalize else torch.uint8
        return torch.zeros(self.max_frames, 3, size, size, dtype=dtype), torch.zeros(self.max_frames, dtype=torch.bool)

    def decode(self, video: VideoRef, rng: random.Random | None = None) -> tuple[torch.Tensor, int]:
        """The sampled frames, resized and cropped (uint8), and how many there are, from the file itself."""
        decoded = self.decode_clip(video, rng)
        return decoded.frames, decoded.count

    def decode_clip(self, video: VideoRef, rng: random.Random | None = None) -> DecodedFrames:
        """The sampled frames, resized and cropped (uint8), how many there are and how many distinct, from
        the file itself."""
        if video.video_id in self.skip:
            raise VideoReadError(f"video {video.video_id} is on the skip list of bad videos")
        clip = self.backend.read(video.path, self.sampler, video.start, video.end, rng)
        count = min(len(clip.indices), self.max_frames)
        return DecodedFrames(self.transform.resize_crop(clip.frames[:count]), count, len(set(clip.indices[:count])))

    def is_short(self, clip: ReadClip) -> bool:
        """Fewer distinct frames than ``max_frames``: the sampler padded or repeated frames of a short video."""
        return clip.distinct < self.max_frames

    def read(self, video: VideoRef, rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded clip and its frame mask."""
        clip = self.read_clip(video, rng)
        return clip.frames, clip.mask

    def read_clip(self, video: VideoRef, rng: random.Random | None = None) -> ReadClip:
        """The padded clip, its frame mask and how many distinct frames it holds (from the cache when it has them)."""
        if self.cache is not None and video.video_id in self.cache and video.video_id not in self.skip:
            padded, count, distinct = self.cache.read(video.video_id)  # the cache's row: already padded with zeros
            if not self.normalize:
                mask = torch.zeros(self.max_frames, dtype=torch.bool)
                mask[:count] = True
                return ReadClip(padded, mask, distinct)
            resized = padded[:count]
        else:
            resized, count, distinct = self.decode_clip(video, rng)
        frames, mask = self.empty()
        frames[:count] = self.transform.normalize(resized) if self.normalize else resized
        mask[:count] = True
        return ReadClip(frames, mask, distinct)


class TrainPairs(Dataset):
    """One item per (caption, video) pair of the split — or, when the split's ``train_unit`` is
    ``video`` (MSR-VTT without sentence expansion), one item per video with a caption drawn at random
    from that video's captions every time it is read."""

    def __init__(
        self,
        split: SplitRecords,
        reader: ClipReader,
        tokenizer: CaptionTokenizer,
        max_substitutions: int = 20,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.seed = seed  # with the epoch and the index, fixes the sample's random draws (tvr.data.order)
        self.reader = reader
        self.tokenizer = tokenizer
        self.max_substitutions = max_substitutions
        if split.info.get("train_unit", "pair") == "video":
            captions: dict[int, list[str]] = {}
            for text in split.texts:
                captions.setdefault(split.video_index(text.video_id), []).append(text.caption)
            self.items = sorted(captions.items())
        else:
            self.items = [(split.video_index(text.video_id), [text.caption]) for text in split.texts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: an index, or ``(index, epoch)`` as :class:`tvr.data.order.TrainOrderSampler` yields."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        with item_randomness(self.seed, epoch, index):
            return self._load(index)

    def _load(self, index: int) -> dict:
        failed: list[str] = []
        candidate = index
        for _ in range(self.max_substitutions + 1):
            video_index, captions = self.items[candidate]
            video = self.split.videos[video_index]
            try:
                clip = self.reader.read_clip(video)
            except VideoReadError as error:
                log.warning("training video replaced: %s", error)
                failed.append(video.video_id)
                candidate = (candidate + _SUBSTITUTE_STRIDE) % len(self)
                continue
            caption = captions[0] if len(captions) == 1 else random.choice(captions)
            # ``replaced`` counts this sample once however many substitutes it took; ``failed_videos``
            # names every unreadable video met on the way; ``short_videos`` is a list (not a flag) so that the
            # training module counts them without reading a tensor back from the device
            return {
                "tokens": self.tokenizer(caption),
                "frames": clip.frames,
                "frame_mask": clip.mask,
                "index": candidate,
                "video_index": video_index,
                "replaced": bool(failed),
                "failed_videos": failed,
                "short_videos": [video_index] if self.reader.is_short(clip) else [],
            }
        raise RuntimeError(
            f"{len(failed)} consecutive unreadable training videos ({', '.join(failed[:5])}, ...); "
            "check data.source.root and run tools/check_videos.py"
        )


class EvalVideos(Dataset):
    def __init__(self, split: SplitRecords, reader: ClipReader) -> None:
        self.split = split
        self.reader = reader

    def __len__(self) -> int:
        return len(self.split.videos)

    def __getitem__(self, index: int) -> dict:
        video = self.split.videos[index]
        failed: list[str] = []
        try:
            clip = self.reader.read_clip(video)
            frames, mask, short = clip.frames, clip.mask, self.reader.is_short(clip)
        except VideoReadError as error:
            log.warning("evaluation video unreadable, scored as empty: %s", error)
            frames, mask = self.reader.empty()
            failed.append(video.video_id)
            short = False  # counted as unreadable instead
        return {
            "role": VIDEOS,
            "frames": frames,
            "frame_mask": mask,
            "index": index,
            "unreadable": bool(failed),
            "short": short,
            "failed_videos": failed,
        }


class EvalTexts(Dataset):
    def __init__(self, split: SplitRecords, tokenizer: CaptionTokenizer) -> None:
        self.split = split
        self.tokenizer = tokenizer
        self.text_to_video = split.text_to_video

    def __len__(self) -> int:
        return len(self.split.texts)

    def __getitem__(self, index: int) -> dict:
        return {
            "role": TEXTS,
            "tokens": self.tokenizer(self.split.texts[index].caption),
            "index": index,
            "video_index": self.text_to_video[index],
        }


def bank_rows(split: SplitRecords, size: int | None = None, fraction: float = 1.0) -> list[int]:
    """Evenly spaced caption rows of ``split``: its ``fraction`` of them, at most ``size``; deterministic and
    spanning the whole split."""
    count = len(split.texts)
    if count == 0:
        return []
    keep = max(1, round(count * fraction))
    if size:
        keep = min(keep, size)
    step = count / keep
    return [int(i * step) for i in range(keep)]


class QueryBankTexts(Dataset):
    """Captions of another split (by default train), scored against the gallery for QB-Norm and SK-norm
    (:func:`bank_rows` keeps ``size`` of them or a ``fraction``)."""

    def __init__(
        self, split: SplitRecords, tokenizer: CaptionTokenizer, size: int | None = None, fraction: float = 1.0
    ) -> None:
        self.captions = [split.texts[row].caption for row in bank_rows(split, size, fraction)]
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"role": QUERY_BANK, "tokens": self.tokenizer(self.captions[index]), "index": index}


class BankVideos(Dataset):
    """The videos of another split's caption rows (:func:`bank_rows`), scored against the evaluated texts for
    SK-norm's video-to-text prior: one item per caption row, so a video with several captions appears
    several times, as in UCoFiA's caption-level bank loader. An unreadable video is an all-padded clip."""

    def __init__(self, split: SplitRecords, reader: ClipReader, size: int | None = None, fraction: float = 1.0) -> None:
        self.videos = [split.videos[split.text_to_video[row]] for row in bank_rows(split, size, fraction)]
        self.reader = reader

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        try:
            frames, mask = self.reader.read(self.videos[index])
        except VideoReadError as error:
            log.warning("bank video unreadable, scored as empty: %s", error)
            frames, mask = self.reader.empty()
        return {"role": VIDEO_BANK, "frames": frames, "frame_mask": mask, "index": index}


def collate(items: list[dict]) -> dict:
    """Stack tensors, tensorise ints, and concatenate the per-item lists of failed video ids. In a loader's
    worker process the tensors are stacked straight into shared memory, as torch's default collate does:
    the batch then crosses to the main process without another copy."""
    batch: dict = {}
    in_worker = get_worker_info() is not None
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values, out=_shared_like(values) if in_worker else None)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(values[0], list):
            batch[key] = [entry for value in values for entry in value]
        else:
            batch[key] = values
    return batch


def collate_distinct_videos(items: list[dict]) -> dict:
    """:func:`collate` of each video's first pair only (Prompt Switch's reference, quirk Q6): the batch then never
    holds one video twice, so no caption has its own video as a negative; the batch shrinks by the repeats."""
    seen: set[int] = set()
    kept = [item for item in items if not (item["video_index"] in seen or seen.add(item["video_index"]))]
    return collate(kept)


def _shared_like(values: list[torch.Tensor]) -> torch.Tensor:
    """An uninitialised tensor in shared memory that ``torch.stack(values)`` fills."""
    first = values[0]
    storage = first._typed_storage()._new_shared(len(values) * first.numel(), device=first.device)
    return first.new(storage).resize_(len(values), *first.shape)
