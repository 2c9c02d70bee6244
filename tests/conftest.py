"""Shared fixtures: a small generated synthetic dataset and composed Hydra configs."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

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


def run_tool(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root, as the tools' docstrings run them; the test fails with the tail
    of stderr unless it exits 0."""
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


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


# Settings under which the tiny model's scores depend on the text on the small synthetic set. The default
# 2-epoch run (lr 3e-3) collapses: every query's top hit is the same video, so equal metrics of two code
# paths prove nothing. Tests that compare two paths compare their per-query scores on such a model.
RANKING_OVERRIDES = ["trainer.max_epochs=2", "optim.backbone_lr=1e-4", "optim.head_lr=1e-4"]


@contextmanager
def recorded_scores():
    """Records every ``(scores [Nt, Nv], text_to_video)`` the evaluation ranks while the block runs (the
    similarity matrices tvr-train's validation/test and tvr-eval turn into metrics), in call order."""
    from tvr.evaluation import engine

    calls = []
    original = engine.evaluate_scores

    def recording(scores, text_to_video, *args, **kwargs):
        calls.append((scores.detach().clone().float(), torch.as_tensor(text_to_video).clone()))
        return original(scores, text_to_video, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "evaluate_scores", recording)
        yield calls


def assert_ranks_by_text(scores: torch.Tensor) -> None:
    """Guard: the model did not collapse onto one video; queries reach different top hits and top-5 lists."""
    top1, top5 = scores.argmax(1), scores.topk(min(5, scores.shape[1]), dim=1).indices
    assert len(set(top1.tolist())) >= 3, f"collapsed model: top hits {top1.tolist()}"
    assert len({tuple(row) for row in top5.tolist()}) >= scores.shape[0] // 2, f"collapsed model: top-5 {top5.tolist()}"


@pytest.fixture(scope="session")
def ranking_meanpool(tmp_path_factory, data_dir):
    """A meanpool run whose scores depend on the text: (run dir, its metrics, its test-split scores and
    text_to_video as the training run's final evaluation ranked them)."""
    from tvr.train import train  # imported here: most test modules never train

    run_dir = tmp_path_factory.mktemp("ranking_meanpool")
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    with recorded_scores() as calls:
        results = train(compose_train(RANKING_OVERRIDES + SMALL_OVERRIDES + quiet, data_dir, run_dir))
    scores, text_to_video = calls[-1]  # the test split is evaluated last
    assert scores.shape == (SMALL_SYNTHETIC["num_test"], SMALL_SYNTHETIC["num_test"])
    assert_ranks_by_text(scores)
    return run_dir, results, scores, text_to_video
