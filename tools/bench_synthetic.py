"""Benchmark the built-in synthetic run: wall time and retrieval metrics per head, in one run.

    python tools/bench_synthetic.py                      # default run (meanpool) + seqtransf, fresh data
    python tools/bench_synthetic.py --reuse-data data    # skip generation: reuse an existing data folder
    python tools/bench_synthetic.py --json bench.json
    python tools/bench_synthetic.py --configs "hbi estimator stage" hbi --runs-dir runs   # HBI's two commands, kept

Each configuration runs ``tvr-train`` in a subprocess, exactly as a user would. The first run on a fresh
data folder includes generating the videos and building the frame cache; the table says which did.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "meanpool (default run)": [],
    "seqtransf": ["experiment=synthetic_seqtransf"],
    "xpool": ["experiment=synthetic_xpool"],
    "glscl": ["experiment=synthetic_glscl"],
    "tempme": ["head=tempme"],
    "tempme (PEFT, frozen random CLIP)": ["head=tempme", "head.clip_weights=frozen"],
    # HBI's two commands: the estimator stage, then HBI with that estimator as its teacher ({runs}: this run's folders)
    "hbi estimator stage": ["experiment=hbi_estimator_synthetic"],
    "hbi": ["head=hbi", "head.estimator_ckpt={runs}/hbi_estimator_stage/estimator.pt"],
    # DRL: the paper's interaction ablation without CDCR, then the recipe's head (WTI + CDCR 3)
    "drl dp": ["experiment=synthetic_drl", "head.interaction=dp", "head.cdcr=0"],
    "drl ti": ["experiment=synthetic_drl", "head.interaction=ti", "head.cdcr=0"],
    "drl wti": ["experiment=synthetic_drl", "head.cdcr=0"],
    "drl wti + cdcr 3": ["experiment=synthetic_drl"],
    "ucofia (+ sknorm)": ["experiment=synthetic_ucofia"],
    "prompt switch": ["experiment=synthetic_promptswitch"],
    # DiffusionRet's two commands: WTI (stage 1), then the generators over its best checkpoint (both stages ranked)
    "diffusionret stage 1": ["experiment=synthetic_diffusionret_stage1"],
    "diffusionret stage 2": [
        "experiment=synthetic_diffusionret_gen",
        "head.stage1_ckpt={runs}/diffusionret_stage_1/checkpoints/best.ckpt",
    ],
}


def run(name: str, overrides: list[str], data_dir: Path, out_dir: Path) -> dict:
    run_dir = out_dir / re.sub(r"\W+", "_", name).strip("_")  # one folder per row (two rows may share a head)
    overrides = [override.replace("{runs}", str(out_dir)) for override in overrides]
    command = [
        str(Path(sys.executable).with_name("tvr-train")),
        *overrides,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "TVR_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-4000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures = {
        "wall_s": round(wall, 1),
        "t2v": metrics["t2v"],
        "v2t": metrics["v2t"],
        "num_videos": metrics["num_videos"],
    }
    if "reranked" in metrics:  # a re-ranker's figures are their own row, labelled as metrics.json labels them
        figures["reranked"] = metrics["reranked"]
    if "first_stage" in metrics:  # a learned second stage ranked the row; its first stage alone, beside it
        figures["first_stage"] = {direction: metrics["first_stage"][direction] for direction in ("t2v", "v2t")}
    return figures


def metric_cells(figures: dict) -> list[str]:
    """R@1/5/10, MdR, MnR of both directions; a direction a re-ranker leaves alone says so."""
    cells = []
    for direction in ("t2v", "v2t"):
        values = figures[direction]
        if isinstance(values, dict):
            cells += [f"{values[k]:.1f}" for k in ("R1", "R5", "R10", "MdR", "MnR")]
        else:
            cells += [str(values)] + [""] * 4
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse-data", type=Path, help="existing data folder (skips generation and caching)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--configs",
        nargs="*",
        default=list(CONFIGS),
        choices=list(CONFIGS),
        help="rows to run, in order (the hbi row needs the hbi estimator stage row before it, diffusionret stage 2 its stage 1)",
    )
    parser.add_argument("--runs-dir", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.reuse_data.resolve() if args.reuse_data else Path(scratch) / "data"
        results = {}
        for index, name in enumerate(args.configs):
            results[name] = run(name, CONFIGS[name], data_dir, (args.runs_dir or Path(scratch) / "runs").resolve())
            results[name]["includes_data_generation"] = index == 0 and not args.reuse_data
    chance = 100.0 / next(iter(results.values()))["num_videos"]
    header = "| config | wall (s) | t2v R@1 | R@5 | R@10 | MdR | MnR | v2t R@1 | R@5 | R@10 | MdR | MnR |"
    print(f"\nsynthetic test split, chance R@1 = {chance:.1f}%; {os.cpu_count()} CPU cores\n")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, r in results.items():
        label = name + (" *" if r["includes_data_generation"] else "")
        print(f"| {label} | {r['wall_s']:.0f} | " + " | ".join(metric_cells(r)) + " |")
        if "first_stage" in r:
            print(f"| {name}, first stage alone | | " + " | ".join(metric_cells(r["first_stage"])) + " |")
        if "reranked" in r:
            reranked = r["reranked"]
            label = f"{name}, re-ranked by {reranked['method']} (transductive)"
            print(f"| {label} | | " + " | ".join(metric_cells(reranked)) + " |")
    if any(r["includes_data_generation"] for r in results.values()):
        print("\n* wall time includes generating the videos and building the frame cache")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
