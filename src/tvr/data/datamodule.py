"""LightningDataModule: split records -> torch datasets -> loaders.

Evaluation uses two loaders per split, videos first and texts second, so each item is encoded exactly
once; the training module gathers them across ranks and scores every text against every video.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from tvr.data.clips import (
    BankVideos,
    ClipReader,
    EvalTexts,
    EvalVideos,
    QueryBankTexts,
    TrainPairs,
    collate,
    collate_distinct_videos,
)
from tvr.data.datasets import create_dataset
from tvr.data.datasets.common import json_field, read_id_list, read_json
from tvr.data.frame_cache import (
    FrameCache,
    build_frame_caches,
    cache_dir_for,
    cache_frames_command,
    unusable_cache_report,
)
from tvr.data.order import TrainOrderSampler
from tvr.data.records import SplitRecords, gc_paused
from tvr.data.sampling import create_sampler
from tvr.data.tokenizer import CaptionTokenizer
from tvr.data.transforms import Augmentation, ClipFrameTransform, Preprocessing
from tvr.data.video import create_backend
from tvr.options import limits

log = logging.getLogger(__name__)


def load_skip_list(path: str | None) -> frozenset[str]:
    """Video ids from a ``tools/check_videos.py`` report (``{"bad": {video_id: ...}}``) or a text file."""
    if not path:
        return frozenset()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.video.skip_list: {path} not found (write one with tools/check_videos.py)")
    if path.suffix == ".json":
        report = read_json(path, "object", 'a tools/check_videos.py report ({"bad": {video_id: reason}})')
        return frozenset(json_field(path, "the top level", report, "bad", "object"))
    return frozenset(read_id_list(path))


CACHE_MODES = ("off", "auto", "build")


class RetrievalDataModule(pl.LightningDataModule):
    """``preprocessing`` is set by tvr from the backbone the clips are for (the model owns its input
    geometry; the data config has no say in it), as ``query_bank`` is from the evaluation's re-ranker."""

    def __init__(
        self,
        name: str,
        source: dict,
        preprocessing: Preprocessing,
        max_words: int,
        video: dict,
        splits: dict,
        batch_size: Annotated[int, limits(minimum=1)],
        eval_batch_size: Annotated[int, limits(minimum=1)],
        num_workers: Annotated[int, limits(minimum=0)] = 2,
        pin_memory: bool | None = None,
        frame_cache: dict | None = None,
        query_bank: dict | None = None,
        video_bank: dict | None = None,
        shuffle_train: bool = True,
        select_on: str | None = None,
        train_augment: Augmentation = "none",
        dedup_batch_videos: bool = False,
    ) -> None:
        super().__init__()
        self.dataset = create_dataset(name, **source)
        self.preprocessing = preprocessing
        self.tokenizer = CaptionTokenizer(max_words)
        self.backend = create_backend(video["backend"], **(video.get("backend_options") or {}))
        self.skip_videos = load_skip_list(video.get("skip_list"))
        self.train_sampler = create_sampler(**video["train_sampler"])
        self.eval_sampler = create_sampler(**video["eval_sampler"])
        self.split_names = {stage: splits.get(stage) for stage in ("train", "val", "test")}
        self.select_on = select_on or self.split_names["val"]  # recorded; splits.val already follows it
        self.batch_size = batch_size
        self.dedup_batch_videos = dedup_batch_videos  # Prompt Switch's reference keeps each video's first pair
        self.train_batch: int | None = None  # the batch each process really trains on, known with its loader
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # None: pinned when the trainer runs on a GPU (non-blocking copies to it)
        self.records: dict[str, SplitRecords] = {}
        self._parsed_splits: dict[str, SplitRecords] = {}
        cache_cfg = frame_cache or {}
        self.cache_mode = cache_cfg.get("mode", "off")
        if self.cache_mode not in CACHE_MODES:
            raise ValueError(f"data.frame_cache.mode must be one of {', '.join(CACHE_MODES)}, got '{self.cache_mode}'")
        self.cache_root = Path(cache_cfg["dir"]) if cache_cfg.get("dir") else None
        self.cache_workers = int(cache_cfg.get("workers", 2))
        self.caches_used: dict[str, bool] = {}
        self._reported_missing_caches: set[Path] = set()  # Lightning prepares data again for the test stage
        self.shuffle_train = shuffle_train
        self.train_transform = ClipFrameTransform(preprocessing, augment=train_augment)
        self.query_bank = query_bank  # {"split", "size", "fraction"}: captions a re-ranker normalises against
        self.video_bank = video_bank  # the same for videos (SK-norm's video-to-text bank)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by tvr-train's seed_everything
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def prepare_data(self) -> None:
        wanted = [name for name in self.split_names.values() if name]
        for bank in (self.query_bank, self.video_bank):
            if bank and bank.get("split"):
                wanted.append(bank["split"])
        self.dataset.prepare(tuple(dict.fromkeys(wanted)))
        if self.cache_mode == "off" or self.cache_root is None:
            return
        # checked here, once per node, rather than in _cache_for, which every rank calls for every loader
        missing = []
        for _, split, sampler, path in self.cache_targets():
            if FrameCache.open(path, split, sampler.describe(), self.preprocessing) is None:
                self._report_missing_cache(path, split, sampler)
                missing.append((path, split, self._reader(sampler)))
        if missing and self.cache_mode == "build":
            build_frame_caches(missing, workers=self.cache_workers)

    def _report_missing_cache(self, path: Path, split: SplitRecords, sampler) -> None:
        """Say what the run does without a valid cache for ``split``, and warn about any cache of the split
        that does not fit (stale, unfinished, or built for another sampler or image size, e.g. by
        tools/cache_frames.py with another backbone): such a cache would otherwise be ignored silently."""
        if path in self._reported_missing_caches:
            return
        self._reported_missing_caches.add(path)
        if self.cache_mode == "build":
            consequence = f"building the cache for this run's settings at {path}"
        else:
            consequence = (
                f"decoding from the video files instead; `{cache_frames_command()}` builds the cache "
                "for this run's settings (or set data.frame_cache.mode=build)"
            )
        unusable = unusable_cache_report(path, split, sampler.describe(), self.preprocessing)
        if unusable:
            log.warning("%s; %s", unusable, consequence)
        else:
            log.info("no frame cache for split '%s' in %s; %s", split.name, self.cache_root, consequence)

    def _sampler_for(self, role: str):
        return self.train_sampler if role == "train" else self.eval_sampler

    def frames_are_fixed(self, role: str) -> bool:
        """Whether a role's clips are the same every epoch (deterministic sampler and, for training, no
        augmentation): only those can come from a frame cache."""
        augmented = role == "train" and not self.train_transform.deterministic
        return self._sampler_for(role).deterministic and not augmented

    def cache_targets(self) -> Iterator[tuple[str, SplitRecords, Any, Path]]:
        """``(role, split, sampler, cache path)`` of each distinct cache the configured splits can use;
        val and test may be one split, which is then listed once."""
        seen: set[Path] = set()
        for role, name in self.split_names.items():
            if not name or not self.frames_are_fixed(role):
                continue
            sampler = self._sampler_for(role)
            split = self._split(name)
            path = cache_dir_for(self.cache_root, split, sampler.describe(), self.preprocessing)
            if path not in seen:
                seen.add(path)
                yield role, split, sampler, path

    def _cache_for(self, role: str) -> FrameCache | None:
        if self.cache_mode == "off" or self.cache_root is None:
            return None
        if not self.frames_are_fixed(role):
            log.info("frame cache not used for %s: its frames are random (sampler or augmentation)", role)
            return None
        sampler = self._sampler_for(role)
        split = self.records[role]
        path = cache_dir_for(self.cache_root, split, sampler.describe(), self.preprocessing)
        cache = FrameCache.open(path, split, sampler.describe(), self.preprocessing)
        self.caches_used[role] = cache is not None
        return cache

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "fit", ()
        )
        for role in wanted:
            split = self.split_names.get(role)
            if split and role not in self.records:
                self.records[role] = self._split(split)

    def _split(self, name: str) -> SplitRecords:
        """A split's records, parsed once: prepare_data's cache checks, setup's roles (val and test may be one
        split) and the query bank share them."""
        if name not in self._parsed_splits:
            with gc_paused():
                self._parsed_splits[name] = self.dataset.load_split(name)
        return self._parsed_splits[name]

    @property
    def has_val(self) -> bool:
        return bool(self.split_names.get("val"))

    def _reader(
        self, sampler, cache: FrameCache | None = None, transform: ClipFrameTransform | None = None
    ) -> ClipReader:
        # uint8 clips: the model normalises them on its device (Retriever.frame_features)
        return ClipReader(
            self.backend,
            sampler,
            transform or ClipFrameTransform(self.preprocessing),
            cache,
            self.skip_videos,
            normalize=False,
        )

    def pinned(self) -> bool:
        """Whether the loaders pin their batches: ``data.pin_memory``, or when unset, whether the trainer
        feeds a GPU."""
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(
        self,
        dataset,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        sampler=None,
        persistent: bool = False,
        collate_fn=collate,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=self.pinned(),
            collate_fn=collate_fn,
            # a loader's own generator seeds its workers: creating an iterator must not draw from the global
            # torch RNG, or a resumed run's dropout stream would differ from the uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        reader = self._reader(self.train_sampler, self._cache_for("train"), self.train_transform)
        with gc_paused():
            pairs = TrainPairs(self.records["train"], reader, self.tokenizer, seed=self.seed)
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # a DistributedSampler subclass, so Lightning does not inject its own: the order is a function of
        # (seed, epoch) and a checkpoint can restart it mid-epoch (state_dict / load_state_dict below)
        order = TrainOrderSampler(pairs, num_replicas=world_size, rank=rank, shuffle=self.shuffle_train, seed=self.seed)
        if self._resume_position is not None:
            epoch, batches_done = self._resume_position
            order.resume_at(epoch, batches_done * self.batch_size)
            self._resume_position = None
        self.train_batch = min(self.batch_size, len(order))
        if self.train_batch < self.batch_size and rank == 0:
            log.warning(
                "data.batch_size=%d is larger than the %d training items each of the %d processes trains on: "
                "each epoch trains on one batch of %d, the batch the run records; set data.batch_size<=%d",
                self.batch_size,
                len(order),
                world_size,
                self.train_batch,
                self.train_batch,
            )
        drop_last = len(order) > self.batch_size
        return self._loader(
            pairs,
            self.batch_size,
            shuffle=False,
            drop_last=drop_last,
            sampler=order,
            persistent=True,
            collate_fn=collate_distinct_videos if self.dedup_batch_videos else collate,
        )

    def state_dict(self) -> dict:
        """Where training stands in the data order, saved in every checkpoint: the next epoch and how many
        of its batches are done (Lightning counts batches consumed, whatever the workers prefetched)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        batches_done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = trainer.current_epoch
        if batches_done >= trainer.num_training_batches:  # saved at the end of an epoch: the next one starts
            epoch, batches_done = epoch + 1, 0
        return {
            "train_order": {
                "epoch": epoch,
                "batches_done": batches_done,
                "batch_size": self.batch_size,
                "world_size": trainer.world_size,
                "seed": self.seed,
            }
        }

    def load_state_dict(self, state: dict) -> None:
        order = state.get("train_order")
        if not order:
            return
        world_size = self.trainer.world_size if self.trainer is not None else 1
        saved = (order["batch_size"], order["world_size"], order["seed"])
        if saved != (self.batch_size, world_size, self.seed):
            log.warning(
                "resuming with batch size %d, %d processes and seed %d where the checkpoint had %d, %d and %d: "
                "epoch %d continues in a new data order (some of its samples are seen twice, some not at all) "
                "and the run is not the one the interrupted run would have been",
                self.batch_size,
                world_size,
                self.seed,
                *saved,
                order["epoch"],
            )
            self._resume_position = (order["epoch"], 0)
            return
        self._resume_position = (order["epoch"], order["batches_done"])

    def _eval_loaders(self, role: str) -> list[DataLoader]:
        split = self.records[role]
        loaders = [
            self._loader(
                EvalVideos(split, self._reader(self.eval_sampler, self._cache_for(role))),
                self.eval_batch_size,
                shuffle=False,
            ),
            self._loader(EvalTexts(split, self.tokenizer), self.eval_batch_size, shuffle=False),
        ]
        if self.query_bank:
            bank = self.query_bank
            texts = QueryBankTexts(self._bank_split(bank), self.tokenizer, bank.get("size"), bank.get("fraction", 1.0))
            loaders.append(self._loader(texts, self.eval_batch_size, shuffle=False))
        if self.video_bank:
            bank = self.video_bank
            split = self._bank_split(bank)
            # decoded with the evaluation sampler: a frame cache of the split was built for its training sampler
            videos = BankVideos(split, self._reader(self.eval_sampler), bank.get("size"), bank.get("fraction", 1.0))
            loaders.append(self._loader(videos, self.eval_batch_size, shuffle=False))
        return loaders

    def _bank_split(self, bank: dict) -> SplitRecords:
        if "bank" not in self.records:
            self.records["bank"] = self._split(bank.get("split") or self.split_names["train"])
        return self.records["bank"]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val") if self.has_val else []

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def describe(self) -> dict:
        return {
            **self.dataset.describe(),
            "splits": {role: name for role, name in self.split_names.items() if name},
            "select_on": self.select_on,
            "train_sampler": self.train_sampler.describe(),
            "eval_sampler": self.eval_sampler.describe(),
            "max_words": self.tokenizer.max_words,
            "train_augment": self.train_transform.describe(),
            "video_backend": self.backend.name,
            "skip_list": len(self.skip_videos),
            "frame_cache": {"mode": self.cache_mode, "used": dict(self.caches_used)},
            "missing_videos": {role: records.info.get("missing_videos", 0) for role, records in self.records.items()},
        }
