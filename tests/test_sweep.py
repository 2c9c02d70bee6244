"""A local sweep writes one folder, every job named by what it sweeps; a failing job does not stop the
others; ``tvr-results`` tabulates the finished runs (mean ± std over seeds) and lists the failed ones."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import SMALL_OVERRIDES
from test_cli import QUIET, run_cli
from tvr.sweep import MAX_NAME, job_folder_name, swept_keys


def test_swept_keys_are_read_from_the_sweeps_overrides():
    overrides = [
        "head=meanpool,seqtransf",
        "seed=range(3)",
        "trainer.max_epochs=1",
        "optim.head_lr=choice(1e-4,1e-3)",
        "x=1",
    ]
    assert swept_keys(overrides) == {"head", "seed", "optim.head_lr"}


def test_a_job_folder_is_named_by_its_swept_overrides(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "overrides": {
                        "task": ["head=meanpool,seqtransf", "seed=0,1", "trainer.max_epochs=1", "ckpt_path=last"]
                    }
                }
            }
        )
    )
    job = ["head=seqtransf", "seed=1", "trainer.max_epochs=1", "ckpt_path=last"]
    assert job_folder_name(job, ["ckpt_path"], str(tmp_path)) == "head=seqtransf,seed=1"
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": ["backbone.weights=a.pt,b.pt"]}}})
    )
    assert (
        job_folder_name(["backbone.weights=b.pt"], ["backbone.weights"], str(tmp_path)) == "backbone.weights=b.pt"
    )  # swept: kept


def test_without_the_sweeps_record_every_override_names_the_job_within_the_length_limit(tmp_path):
    assert (
        job_folder_name(["seed=1", "train.select_metric=val/t2v_R5"], [], str(tmp_path))
        == "seed=1,train.select_metric=val-t2v_R5"
    )
    many = [f"data.source.option_{index}=value_{index}" for index in range(20)]
    name = job_folder_name(many, [], str(tmp_path))
    assert len(name.encode()) <= MAX_NAME and name != job_folder_name(
        many[:-1], [], str(tmp_path)
    )  # one folder per job


@pytest.mark.slow
def test_a_sweep_with_a_failing_configuration_completes_and_summarises_itself(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    # seed=-1 is refused at start-up: one failing job per head among the finished ones
    args = (
        ["-m", "head=meanpool,seqtransf", "seed=0,1,-1", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
        + SMALL_OVERRIDES
        + QUIET
    )
    result = run_cli("tvr-train", args, data_dir, tmp_path)
    assert result.returncode != 0  # Hydra reports the failures after every job has run
    jobs = sorted(path.name for path in sweep.iterdir() if (path / ".hydra").is_dir())
    assert jobs == sorted(f"head={head},seed={seed}" for head in ("meanpool", "seqtransf") for seed in (-1, 0, 1))
    for head in ("meanpool", "seqtransf"):
        for seed in (0, 1):
            assert json.loads((sweep / f"head={head},seed={seed}" / "metrics.json").read_text())["run"]["seed"] == seed
        failure = json.loads((sweep / f"head={head},seed=-1" / "error.json").read_text())
        assert failure["type"] == "ConfigError" and failure["message"].startswith("seed: got -1")

    summary = run_cli("tvr-results", [str(sweep)], data_dir, tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    table = (sweep / "results.md").read_text()
    assert summary.stdout.strip() == table.strip()
    rows = [line for line in table.splitlines() if line.startswith("| meanpool") or line.startswith("| seqtransf")]
    assert len(rows) == 2 and all(row.split("|")[2].strip() == "2" for row in rows)  # two finished seeds each
    assert "head=meanpool,seed=-1" in table and "ConfigError: seed: got -1" in table
    assert (sweep / "results.csv").is_file() and (sweep / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
