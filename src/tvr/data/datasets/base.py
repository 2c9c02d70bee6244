"""What every benchmark parser provides: split records from annotation files, and a start-up check."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from tvr.data.datasets.common import MISSING_VIDEO_POLICIES, DatasetFileError, SplitBuilder, VideoIndex, require_file
from tvr.data.records import SplitRecords
from tvr.errors import ConfigError
from tvr.registry import Registry

DATASETS: Registry["DatasetSource"] = Registry("dataset", package="tvr.data.datasets")


class DatasetSource:
    """A benchmark on disk. ``prepare`` runs once per node before training (download-free set-up or
    validation of the expected files); ``load_split`` parses one split into :class:`SplitRecords`."""

    name: str

    def prepare(self, splits: tuple[str, ...] = ()) -> None:
        """Check (or build) what ``load_split`` needs for ``splits``; raise with the expected layout if it is missing."""

    def load_split(self, split: str) -> SplitRecords:
        raise NotImplementedError

    def describe(self) -> dict:
        """Run facts recorded next to every result (dataset variant switches, file names)."""
        return {"dataset": self.name}


def register_dataset(name: str):
    def decorator(cls):
        cls.name = name
        return DATASETS.register(name)(cls)

    return decorator


def create_dataset(name: str, **kwargs) -> DatasetSource:
    return DATASETS.create(name, **kwargs)


class FileDataset(DatasetSource):
    """A benchmark read from annotation files in ``anno_dir`` (default: ``root``) and videos under
    ``video_dir`` (default: ``root/videos``). Subclasses list each split's files and parse one split;
    a split needs (and is checked for) only its own files, so evaluating the test split works on a
    folder that holds nothing else."""

    layout: str = ""
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(
        self,
        root: str | Path,
        anno_dir: str | Path | None = None,
        video_dir: str | Path | None = None,
        check_videos: bool = True,
        missing_video: str = "drop",
    ) -> None:
        self.root = Path(root)
        self.anno_dir = Path(anno_dir) if anno_dir else self.root
        self.video_dir = Path(video_dir) if video_dir else self.root / "videos"
        self.check_videos = check_videos
        if missing_video not in MISSING_VIDEO_POLICIES:
            raise ValueError(f"missing_video must be one of {', '.join(MISSING_VIDEO_POLICIES)}, got '{missing_video}'")
        self.missing_video = missing_video

    def required_files(self, split: str) -> list[str]:
        """Annotation files (in ``anno_dir``) that ``split`` is parsed from."""
        raise NotImplementedError

    def parse_split(self, split: str) -> SplitRecords:
        """Parse one split whose files :meth:`require_annotations` has found."""
        raise NotImplementedError

    def load_split(self, split: str) -> SplitRecords:
        self.require_annotations((split,))
        return self.parse_split(split)

    def annotation(self, name: str) -> Path:
        return require_file(self.anno_dir / name, self.name, self.layout)

    def require_annotations(self, splits: tuple[str, ...]) -> None:
        """Raise, naming every absent file and the split that needs it, unless all files of ``splits`` exist."""
        unknown = [split for split in splits if split not in self.splits]
        if unknown:
            raise ConfigError(
                "data.splits",
                f"{self.name} has no split {', '.join(map(repr, unknown))}",
                f"its splits are {', '.join(self.splits)}",
            )
        absent = {
            split: [name for name in self.required_files(split) if not (self.anno_dir / name).is_file()]
            for split in splits
        }
        needs = [f"  split '{split}' needs {', '.join(names)}" for split, names in absent.items() if names]
        if needs:
            raise DatasetFileError(
                f"{self.name}: annotation files not found in {self.anno_dir}:\n"
                + "\n".join(needs)
                + f"\nexpected layout (set data.source.root=<folder>):\n{self.layout}"
            )

    def prepare(self, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        if not self.root.is_dir():
            raise DatasetFileError(
                f"{self.name}: dataset folder not found: {self.root}\nexpected layout:\n{self.layout}"
            )
        self.require_annotations(tuple(splits))
        if self.check_videos and not self.video_dir.is_dir():
            raise DatasetFileError(
                f"{self.name}: video folder not found: {self.video_dir}\nexpected layout:\n{self.layout}"
            )

    default_extension = ".mp4"

    @cached_property
    def index(self) -> VideoIndex:
        return VideoIndex(self.video_dir, check_files=self.check_videos, default_extension=self.default_extension)

    def builder(self, split: str, **options) -> SplitBuilder:
        return SplitBuilder(self.name, split, self.index, self.missing_video, **options)

    def describe(self) -> dict:
        return {"dataset": self.name, "missing_video": self.missing_video, **self.variant()}

    def variant(self) -> dict:
        """The switches that change which pairs a split holds (recorded with every result)."""
        return {}
