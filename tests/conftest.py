"""Shared fixtures: a small generated synthetic dataset and composed Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tvr.config import compose_config
from tvr.data.synthetic import SyntheticConfig, ensure_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = REPO_ROOT.parent / "shared"

# A synthetic set small enough to train a few steps on in seconds.
SMALL_SYNTHETIC = {"num_train": 32, "num_val": 8, "num_test": 12, "seconds": 6, "fps": 3}
SMALL_OVERRIDES = [f"data.source.{key}={value}" for key, value in SMALL_SYNTHETIC.items()] + [
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding the small synthetic dataset (generated once per test session)."""
    root = tmp_path_factory.mktemp("data")
    ensure_synthetic_dataset(root / "synthetic", SyntheticConfig(**SMALL_SYNTHETIC), workers=1)
    return root


def compose_train(overrides: list[str], data_dir: Path, run_dir: Path, config_name: str = "train"):
    """Compose through Hydra's compose API (``${hydra:...}`` resolvable), data under ``data_dir``."""
    return compose_config([*overrides, f"paths.data_dir={data_dir}"], config_name, output_dir=run_dir, cwd=REPO_ROOT)


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
