"""What every benchmark parser provides: split records from annotation files, and a start-up check."""

from __future__ import annotations

from tvr.data.records import SplitRecords
from tvr.registry import Registry

DATASETS: Registry["DatasetSource"] = Registry("dataset")


class DatasetSource:
    """A benchmark on disk. ``prepare`` runs once per node before training (download-free set-up or
    validation of the expected files); ``load_split`` parses one split into :class:`SplitRecords`."""

    name: str

    def prepare(self) -> None:
        """Check (or build) what ``load_split`` needs; raise with the expected layout if it is missing."""

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
