"""One parser per benchmark, registered by name."""

from tvr.data.datasets import activitynet, didemo, lsmdc, msrvtt, msvd, synthetic  # noqa: F401  (registration)
from tvr.data.datasets.base import DATASETS, DatasetSource, FileDataset, create_dataset, register_dataset

__all__ = ["DATASETS", "DatasetSource", "FileDataset", "create_dataset", "register_dataset"]
