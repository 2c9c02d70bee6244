"""One parser per benchmark, registered by name."""

from tvr.data.datasets.base import DATASETS, DatasetSource, FileDataset, create_dataset, register_dataset

__all__ = ["DATASETS", "DatasetSource", "FileDataset", "create_dataset", "register_dataset"]
