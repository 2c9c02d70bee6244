"""One parser per benchmark, registered by name."""

from tvr.data.datasets import synthetic  # noqa: F401  (registration side effect)
from tvr.data.datasets.base import DATASETS, DatasetSource, create_dataset, register_dataset

__all__ = ["DATASETS", "DatasetSource", "create_dataset", "register_dataset"]
