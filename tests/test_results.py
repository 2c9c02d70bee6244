"""``tvr-results``: fabricated sweep folders in, results.md / results.csv / results.png out."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tvr.errors import UserInputError
from tvr.results import collect_runs, configurations, differing_keys, main

SRC = Path(__file__).resolve().parents[1] / "src"

# t2v R1 per seed: meanpool 10, 20, 30 -> 20.0 ± 10.0; seqtransf 40, 42, 44 -> 42.0 ± 2.0.
R1 = {"meanpool": [10.0, 20.0, 30.0], "seqtransf": [40.0, 42.0, 44.0]}


def write_job(sweep: Path, overrides: list[str], name: str | None = None) -> Path:
    job = sweep / (name or ",".join(item.lstrip("+") for item in overrides))
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return job


def metrics(r1: float, seed: int, head: str, texts: int = 12, videos: int = 12) -> dict:
    t2v = {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "MdR": 3.0, "MnR": 5.5, "RSum": 3 * r1 + 30}
    v2t = {"R1": r1 / 2, "R5": r1, "R10": r1 + 5, "MdR": 4.0, "MnR": 6.0, "RSum": 2.5 * r1 + 5}
    return {
        "split": "test",
        "t2v": t2v,
        "v2t": v2t,
        "measured": {"split": "test", "texts": texts, "videos": videos},
        "run": {"seed": seed, "head": head, "wall_time_s": 12.3},
    }


def write_finished(sweep: Path, head: str, seed: int, r1: float, extra: list[str] = ()) -> Path:
    job = write_job(sweep, [f"head={head}", f"seed={seed}", "data.batch_size=8", *extra])
    (job / "metrics.json").write_text(json.dumps(metrics(r1, seed, head)))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    """2 heads x 3 seeds, all finished; a constant override (data.batch_size=8) in every run."""
    folder = tmp_path / "multirun" / "12-00-00"
    for head, values in R1.items():
        for seed, r1 in enumerate(values):
            write_finished(folder, head, seed, r1)
    (folder / "multirun.yaml").write_text("hydra: {}\n")
    return folder


def table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows if not row.startswith("|---")]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_heads_three_seeds_mean_and_sample_std(sweep, capsys):
    main([str(sweep)])
    text = (sweep / "results.md").read_text()
    assert capsys.readouterr().out == text
    assert text.splitlines()[0] == (
        "Collected 6 runs in 1 folder: 6 finished, 0 failed, 0 unfinished. Split evaluated: test. 12 texts × 12 videos."
    )
    header, *rows = table_rows(text)
    assert header == [
        "head",
        "runs",
        "t2v R@1",
        "t2v R@5",
        "t2v R@10",
        "t2v MdR",
        "t2v MnR",
        "t2v RSum",
        "v2t R@1",
        "v2t RSum",
    ]
    # Computed by hand: meanpool R1 10/20/30 -> 20 ± 10; RSum 60/90/120 -> 90 ± 30; v2t R1 5/10/15 -> 10 ± 5;
    # v2t RSum 30/55/80 -> 55 ± 25. seqtransf R1 40/42/44 -> 42 ± 2; RSum 150/156/162 -> 156 ± 6;
    # v2t R1 20/21/22 -> 21 ± 1; v2t RSum 105/110/115 -> 110 ± 5.
    assert rows == [
        [
            "meanpool",
            "3",
            "20.0 ± 10.0",
            "30.0 ± 10.0",
            "40.0 ± 10.0",
            "3.0 ± 0.0",
            "5.5 ± 0.0",
            "90.0 ± 30.0",
            "10.0 ± 5.0",
            "55.0 ± 25.0",
        ],
        [
            "seqtransf",
            "3",
            "42.0 ± 2.0",
            "52.0 ± 2.0",
            "62.0 ± 2.0",
            "3.0 ± 0.0",
            "5.5 ± 0.0",
            "156.0 ± 6.0",
            "21.0 ± 1.0",
            "110.0 ± 5.0",
        ],
    ]
    assert "Failed and unfinished" not in text

    rows = read_csv(sweep / "results.csv")
    assert [row["head"] for row in rows] == ["meanpool", "seqtransf"]
    assert "data.batch_size" not in rows[0] and "seed" not in rows[0]
    assert rows[0]["seeds"] == "0;1;2" and rows[0]["runs"] == "3" and rows[0]["status"] == "finished"
    assert float(rows[0]["t2v_R1_mean"]) == 20.0 and float(rows[0]["t2v_R1_std"]) == 10.0
    assert float(rows[1]["v2t_RSum_mean"]) == 110.0 and float(rows[1]["v2t_RSum_std"]) == 5.0


def test_only_differing_settings_are_columns_and_absent_keys_show_default(tmp_path):
    sweep = tmp_path / "sweep"
    write_finished(sweep, "meanpool", 0, 10.0, extra=["optim.lr=1e-4"])
    write_finished(sweep, "meanpool", 1, 20.0, extra=["optim.lr=3e-5"])
    write_finished(sweep, "meanpool", 2, 30.0)
    runs = collect_runs([sweep])
    keys = differing_keys(runs)
    assert keys == ["optim.lr"]  # head and data.batch_size are the same everywhere, seed is never a setting
    assert [group.values for group in configurations(runs, keys)] == [("(default)",), ("3e-5",), ("1e-4",)]

    main([str(sweep)])
    header, *rows = table_rows((sweep / "results.md").read_text())
    assert header[:2] == ["optim.lr", "runs"]
    assert [row[:3] for row in rows] == [["(default)", "1", "30.0"], ["3e-5", "1", "20.0"], ["1e-4", "1", "10.0"]]
    assert read_csv(sweep / "results.csv")[0]["t2v_R1_std"] == ""  # a single run has no std


def test_failed_and_unfinished_runs_are_listed(sweep, capsys):
    failed = write_job(sweep, ["head=xpool", "seed=0", "data.batch_size=8"])
    (failed / "error.json").write_text(
        json.dumps({"type": "ConfigError", "message": "head.heads: must divide the width\nsecond line", "step": 12})
    )
    killed = write_job(sweep, ["head=xpool", "seed=1", "data.batch_size=8"])
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"not loaded")
    write_job(sweep, ["head=xpool", "seed=2", "data.batch_size=8"])  # killed before its first checkpoint
    resumed = write_finished(sweep, "xpool", 3, 50.0)  # failed once, then resumed to the end: metrics.json wins
    (resumed / "error.json").write_text(json.dumps({"type": "RuntimeError", "message": "boom", "step": None}))

    assert main([str(sweep)]) is None
    text = (sweep / "results.md").read_text()
    assert text.startswith("Collected 10 runs in 1 folder: 7 finished, 1 failed, 2 unfinished.")
    assert [row[:3] for row in table_rows(text)[1:]] == [
        ["meanpool", "3", "20.0 ± 10.0"],
        ["seqtransf", "3", "42.0 ± 2.0"],
        ["xpool", "1", "50.0"],
    ]
    assert "Failed and unfinished runs:" in text
    assert (
        "- `head=xpool,seed=0,data.batch_size=8`: failed: ConfigError: head.heads: must divide the width "
        "(at step 12)" in text
    )
    assert "second line" not in text and "boom" not in text
    resume_line = next(line for line in text.splitlines() if "seed=1" in line and "xpool" in line)
    assert "unfinished: no metrics.json (running or killed); resumable: tvr-train head=xpool seed=1" in resume_line
    assert resume_line.rstrip().endswith("ckpt_path=last")
    never_saved = next(line for line in text.splitlines() if "xpool,seed=2" in line)
    assert "no checkpoints/last.ckpt" in never_saved and "resumable" not in never_saved

    rows = read_csv(sweep / "results.csv")
    problems = {row["folder"]: row for row in rows if row["status"] != "finished"}
    assert set(problems) == {
        "head=xpool,seed=0,data.batch_size=8",
        "head=xpool,seed=1,data.batch_size=8",
        "head=xpool,seed=2,data.batch_size=8",
    }
    failed_row = problems["head=xpool,seed=0,data.batch_size=8"]
    assert failed_row["status"] == "failed" and failed_row["head"] == "xpool" and failed_row["seeds"] == "0"
    assert failed_row["error"].startswith("ConfigError: head.heads: must divide the width")
    assert "ckpt_path=last" in problems["head=xpool,seed=1,data.batch_size=8"]["error"]


def test_long_error_message_is_cut(tmp_path):
    sweep = tmp_path / "sweep"
    job = write_job(sweep, ["head=meanpool", "seed=0"])
    (job / "error.json").write_text(json.dumps({"type": "ValueError", "message": "x" * 500, "step": None}))
    main([str(sweep)])
    line = next(line for line in (sweep / "results.md").read_text().splitlines() if "ValueError" in line)
    assert "x" * 199 in line and "x" * 200 not in line


def test_no_run_finished_still_writes_the_failures(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    job = write_job(sweep, ["head=meanpool", "seed=0"])
    (job / "error.json").write_text(json.dumps({"type": "ConfigError", "message": "bad", "step": None}))
    write_job(sweep, ["head=meanpool", "seed=1"])
    main([str(sweep)])
    captured = capsys.readouterr()
    assert "no run finished" in captured.err
    text = (sweep / "results.md").read_text()
    assert "0 finished, 1 failed, 1 unfinished. No run finished" in text
    assert "ConfigError: bad" in text and not table_rows(text)
    assert not (sweep / "results.png").exists()
    assert [row["status"] for row in read_csv(sweep / "results.csv")] == ["failed", "unfinished"]


def test_two_sweep_folders_are_combined(tmp_path):
    first, second = tmp_path / "sweep_a", tmp_path / "sweep_b"
    write_finished(first, "meanpool", 0, 10.0)
    write_finished(first, "meanpool", 1, 20.0)
    write_finished(second, "meanpool", 2, 30.0)
    write_finished(second, "seqtransf", 0, 40.0)
    job = write_job(second, ["head=seqtransf", "seed=1", "data.batch_size=8"])
    (job / "error.json").write_text(json.dumps({"type": "OOM", "message": "out of memory", "step": 3}))
    out = tmp_path / "report"
    main([str(first), str(second), "--out", str(out)])
    assert not (first / "results.md").exists()
    text = (out / "results.md").read_text()
    assert text.startswith("Collected 5 runs in 2 folders: 4 finished, 1 failed, 0 unfinished.")
    assert [row[:3] for row in table_rows(text)[1:]] == [["meanpool", "3", "20.0 ± 10.0"], ["seqtransf", "1", "40.0"]]
    assert f"`{second / 'head=seqtransf,seed=1,data.batch_size=8'}`: failed: OOM: out of memory" in text
    assert read_csv(out / "results.csv")[0]["seeds"] == "0;1;2"


def test_runs_that_measured_different_galleries_are_flagged(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, (texts, videos) in enumerate([(12, 12), (1000, 1000)]):
        job = write_job(sweep, ["head=meanpool", f"seed={seed}"])
        (job / "metrics.json").write_text(json.dumps(metrics(10.0, seed, "meanpool", texts, videos)))
    main([str(sweep)])
    assert "Texts × videos differ between runs: 1000 × 1000, 12 × 12." in (sweep / "results.md").read_text()


def test_a_single_run_folder_is_a_sweep_of_one(tmp_path):
    job = write_finished(tmp_path / "sweep", "meanpool", 0, 10.0)
    main([str(job)])
    # written beside the run's own records (test_run_records checks those stay)
    assert table_rows((job / "tvr-results" / "results.md").read_text())[1][:2] == ["1", "10.0"]


def test_png_is_written_and_readable(sweep):
    import matplotlib.image

    main([str(sweep)])
    png = sweep / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 400 and image.shape[1] >= 400  # two stacked panels of a readable size
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_empty_folder_exits_2_with_the_message(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "not_a_run").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(empty)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"error: no runs found under {empty}: expected job folders with .hydra/overrides.yaml "
        "(written by `tvr-train -m ...`)" in err
    )
    assert not (empty / "results.md").exists()


def test_missing_folder_is_named(tmp_path, capsys):
    missing = tmp_path / "multirun" / "nope"
    with pytest.raises(UserInputError, match="sweep folder not found: .*nope"):
        collect_runs([missing])
    with pytest.raises(SystemExit) as exit_info:
        main([str(missing)])
    assert exit_info.value.code == 2
    assert str(missing) in capsys.readouterr().err


def test_command_line_exit_codes(sweep, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    ok = subprocess.run(
        [sys.executable, "-m", "tvr.results", str(sweep)], capture_output=True, text=True, env=env, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "| meanpool | 3 | 20.0 ± 10.0 |" in ok.stdout and "wrote results.md" in ok.stderr
    (tmp_path / "empty").mkdir()
    bad = subprocess.run(
        [sys.executable, "-m", "tvr.results", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "error: no runs found under" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("sweep_name", ["12-00-00", "it's here"])
def test_resume_command_is_one_valid_hydra_override_per_shell_word(tmp_path, sweep_name):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tvr.results import load_run, resume_command

    job = write_job(tmp_path / sweep_name, ["head=seqtransf", "seed=1", "+train.tag=a b", "~logger"])
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    words = shlex.split(resume_command(load_run(job, job.name)))
    assert words[0] == "tvr-train" and words[-1] == "ckpt_path=last"
    parsed = {item.key_or_group: item for item in OverridesParser.create().parse_overrides(words[1:])}
    # The job folder is named "head=seqtransf,seed=1,...": unquoted, Hydra would reject it or read a sweep.
    assert parsed["hydra.run.dir"].value() == str(job.resolve())
    assert not parsed["hydra.run.dir"].is_sweep_override()
    assert parsed["head"].value() == "seqtransf" and parsed["logger"].is_delete()


def test_runs_of_two_datasets_with_equal_overrides_are_never_averaged(tmp_path):
    # the same command run against two data folders (TVR_DATA_DIR changed): equal overrides, other datasets
    first = write_finished(tmp_path / "a", "meanpool", 0, 10.0)
    second = write_finished(tmp_path / "b", "meanpool", 1, 30.0)
    for folder, dataset in ((first, "msrvtt"), (second, "synthetic")):
        recorded = json.loads((folder / "metrics.json").read_text())
        recorded["run"]["dataset"] = dataset
        (folder / "metrics.json").write_text(json.dumps(recorded))
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "report")])
    rows = table_rows((tmp_path / "report" / "results.md").read_text())
    assert rows[0][:2] == ["run.dataset", "runs"]
    assert [row[:3] for row in rows[1:]] == [["msrvtt", "1", "10.0"], ["synthetic", "1", "30.0"]]


def test_the_sweep_column_already_separating_heads_gets_no_duplicate(sweep):
    assert differing_keys(collect_runs([sweep])) == ["head"]
