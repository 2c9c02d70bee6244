"""tools/bench_towers.py --quick: every section is measured and written for the tiny geometry, the token
and parameter counts agree with an independently built TempMe model, merging cuts tokens and MACs, and
the tables are printed. Nothing here asserts a time: the figures only have to be well formed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from tvr.models.retriever import Retriever
from tvr.models.towers import VisionGeometry

pytestmark = pytest.mark.slow  # runs the tool in a subprocess

TOWERS = {"per_frame", "per_frame_lora", "tempme"}
TRAINING_CASES = {"per_frame/trainable", "per_frame_lora/frozen", "tempme/frozen", "tempme/trainable"}


def test_bench_towers_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "towers.json"
    result = subprocess.run(
        [sys.executable, "tools/bench_towers.py", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["baseline"] == "per-frame CLIP (meanpool) on the same geometry"
    assert results["machine"]["matmul"]["gflops"] > 0 and results["machine"]["torch_threads"] == 1
    assert list(results["geometries"]) == ["tiny"]
    tiny = results["geometries"]["tiny"]
    assert set(tiny) >= {"towers", "training", "peft_params"} and set(tiny["towers"]) == TOWERS

    geometry = tiny["geometry"]  # the backbone and TempMe options the benchmark ran: the same model, built here
    tempme = Retriever(geometry["backbone"], {"name": "tempme", "frames": geometry["frames"], **geometry["tempme"]})
    towers = tiny["towers"]

    # 1. Tokens: TempMe's plan, really held by the forward pass, shrinking block by block; unmerged towers keep them all.
    plan = tempme.head.video_tower.tokens_per_video()
    assert towers["tempme"]["tokens"]["plan"] == towers["tempme"]["tokens"]["measured"] == plan
    assert all(later < earlier for earlier, later in zip(plan, plan[1:]))
    vision = VisionGeometry.of_architecture(geometry["backbone"]["architecture"])
    unmerged = [vision.tokens_per_frame * geometry["frames"]] * vision.depth
    for name in ("per_frame", "per_frame_lora"):
        assert towers[name]["tokens"]["plan"] == towers[name]["tokens"]["measured"] == unmerged
    assert all(tower["tokens"]["forward_agrees"] for tower in towers.values())
    assert plan[-1] < unmerged[-1]

    # 2. MACs: attention counted in every tower; merging does less work than per-frame CLIP, LoRA a little more.
    macs = {name: tower["macs"]["gmac_per_video"] for name, tower in towers.items()}
    assert all(tower["macs"]["attention_gmac"] > 0 for tower in towers.values())
    assert 0 < macs["tempme"] < macs["per_frame"] < macs["per_frame_lora"]
    assert towers["tempme"]["macs"]["vs_baseline"] == macs["tempme"] / macs["per_frame"]

    # 3. Inference: well formed.
    for tower in towers.values():
        inference = tower["inference"]
        assert inference["runs"] == 1 and inference["s_per_video"] > 0 and inference["gmac_per_s"] > 0
        assert (
            inference["fraction_of_matmul_rate"] > 0
            and inference["speedup_vs_baseline"] > 0
            and inference["cpu_share"] > 0
        )

    # 4. Training: every case, well formed; PEFT trains far fewer parameters than full fine-tuning.
    training = tiny["training"]
    assert set(training) == TRAINING_CASES
    for case in training.values():
        assert case["steps"] == 1 and case["s_per_step"] > 0 and case["trainable_params"] > 0 and case["cpu_share"] > 0
        assert math.isfinite(case["peak_extra_mib"]) and case["videos"] == case["captions"] == geometry["train_videos"]
    assert training["tempme/frozen"]["trainable_params"] < training["tempme/trainable"]["trainable_params"]

    # 5. PEFT parameters: exactly the towers' own parameters.
    tower_params = sum(param.numel() for _, param in tempme.head.tower_parameters())
    assert tiny["peft_params"]["trainable"] == tiny["peft_params"]["tower_params"] == tower_params
    assert training["tempme/frozen"]["trainable_params"] == tower_params

    table = result.stdout
    for heading in (
        "### 1. Tokens",
        "### 2. Video tower multiply-accumulates",
        "### 3. Inference",
        "### 4. Training step",
        "### 5. Trainable parameters",
    ):
        assert heading in table
    assert (
        "| tiny | TempMe | 8 |" in table and "| tiny | TempMe, PEFT |" in table and "per-frame CLIP (meanpool)" in table
    )
