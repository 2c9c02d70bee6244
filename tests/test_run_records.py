"""A run folder's records belong to the run that made them: refused or unrelated commands leave them as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tvr.results import main as results_main

TESTS = Path(__file__).resolve().parent
RECORDS = [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "metrics.json", "results.md"]


def run_cli(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TVR_DATA_DIR": str(cwd / "no-data"), "PYTHONUNBUFFERED": "1"}
    executable = Path(sys.executable).with_name(script)
    return subprocess.run([str(executable), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def finished_run(folder: Path, head: str = "meanpool") -> Path:
    """A training run folder as tvr-train leaves it (the checkpoint's content is never read by these tests)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"head": {"name": head}}))
    (folder / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"head={head}"]))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    run = {"seed": 42, "head": head, "dataset": "synthetic"}
    t2v = {"R1": 50.0, "R5": 60.0, "R10": 70.0, "MdR": 1.0, "MnR": 2.0, "RSum": 180.0}
    (folder / "metrics.json").write_text(json.dumps({"split": "test", "t2v": t2v, "v2t": t2v, "run": run}))
    (folder / "results.md").write_text("| test | the run's own table |\n")
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RECORDS}


@pytest.mark.parametrize(
    "resume, refusal",
    [([], "already holds last.ckpt"), (["ckpt_path=last"], "last.ckpt")],  # the second: refused after Hydra wrote
)
def test_refused_train_leaves_the_finished_runs_records(tmp_path, resume, refusal):
    run = finished_run(tmp_path / "run")
    before = contents(run)
    result = run_cli("tvr-train", ["head=seqtransf", *resume, f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert refusal in result.stderr
    assert contents(run) == before  # Hydra's record of the refused command put back
    assert not (run / "error.json").exists()  # the refusal is not the earlier run's failure


def test_eval_into_a_training_run_folder_is_refused_before_writing(tmp_path):
    run = finished_run(tmp_path / "run")
    before = contents(run)
    result = run_cli(
        "tvr-eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val", f"hydra.run.dir={run}"], tmp_path
    )
    assert result.returncode == 2
    assert "hydra.run.dir" in result.stderr and "earlier run" in result.stderr
    assert "Traceback" not in result.stderr
    assert contents(run) == before


def test_results_of_one_run_folder_are_written_beside_its_own(tmp_path, capsys):
    run = finished_run(tmp_path / "run")
    before = contents(run)
    results_main([str(run)])
    assert contents(run) == before
    assert "seqtransf" not in capsys.readouterr().out
    assert (run / "tvr-results" / "results.md").is_file()


def test_a_run_folder_inside_the_data_root_is_refused_before_hydra_writes(tmp_path):
    inside = tmp_path / "no-data" / "synthetic" / "runs" / "mine"
    result = run_cli("tvr-train", [f"hydra.run.dir={inside}"], tmp_path)
    assert result.returncode == 2
    assert f"lies inside the data root data.source.root={tmp_path / 'no-data' / 'synthetic'}" in result.stderr
    assert not inside.exists()
