"""tools/bench_towers.py --quick: every section is measured and written for the tiny geometry, the token
and parameter counts agree with an independently built TempMe model, merging cuts tokens and MACs, Prompt
Switch runs at its recipe's settings with its prompt tokens and aggregation attention counted (checked
against counts derived here from the ViT's shape), and the tables are printed. Nothing here asserts a time:
the figures only have to be well formed."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import REPO_ROOT, run_tool
from tvr.models.retriever import Retriever
from tvr.models.towers import VisionGeometry

pytestmark = pytest.mark.slow  # runs the tool in a subprocess

TOWERS = {"per_frame", "per_frame_lora", "tempme", "prompt_switch"}
TRAINING_CASES = {
    "per_frame/trainable",
    "per_frame_lora/frozen",
    "tempme/frozen",
    "tempme/trainable",
    "prompt_switch/trainable",
}
MLP_RATIO = 4  # open_clip's default, which the tiny architecture keeps


def prompt_switch_extra_macs(frames: int, depth: int, width: int, tokens: int, prompts: int, group: int) -> int:
    """What Prompt Switch adds to per-frame CLIP's MACs per video: every block's projections and MLP on the
    ``prompts`` extra tokens of each frame, its attention over ``tokens + prompts`` instead of ``tokens``, and
    the aggregation attention (each frame's CLS, query-projected, over its group's ``group x prompts`` keys and
    values, projected from the prompts; output projection)."""
    per_token = 4 * width * width + 2 * width * MLP_RATIO * width  # QKV + output projection, MLP
    attention = 2 * width * ((tokens + prompts) ** 2 - tokens**2)  # QK^T and AV, per frame
    blocks = frames * depth * (prompts * per_token + attention)
    aggregation = frames * (2 * width * width + prompts * 2 * width * width + group * prompts * 2 * width)
    return blocks + aggregation


def test_bench_towers_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "towers.json"
    result = run_tool("tools/bench_towers.py", "--quick", "--json", str(out))
    results = json.loads(out.read_text())
    assert results["baseline"] == "per-frame CLIP (meanpool) on the same geometry"
    assert results["machine"]["matmul"]["gflops"] > 0 and results["machine"]["torch_threads"] == 1
    assert list(results["geometries"]) == ["tiny"]
    tiny = results["geometries"]["tiny"]
    assert set(tiny) >= {"towers", "training", "params"} and set(tiny["towers"]) == TOWERS

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

    # Prompt Switch: the recipe's head (read here from the recipe file), the geometry's frames in its groups, and
    # every frame carrying its prompts through every block.
    recipe = geometry["prompt_switch_recipe"]
    assert recipe == "synthetic_promptswitch"  # the tiny geometry's 8 frames take the built-in recipe's groups of 4
    recipe_head = yaml.safe_load((REPO_ROOT / "conf" / "experiment" / f"{recipe}.yaml").read_text())["head"]
    prompt_switch = geometry["prompt_switch"]
    assert {key: prompt_switch["head"][key] for key in recipe_head} == recipe_head
    assert prompt_switch["head"]["name"] == "prompt_switch" and prompt_switch["head"]["clip_weights"] == "trainable"
    prompts = group = recipe_head["num_prompts"]
    assert prompt_switch["group"] == group and geometry["frames"] % group == 0
    switched = [geometry["frames"] * (vision.tokens_per_frame + prompts)] * vision.depth
    assert towers["prompt_switch"]["tokens"]["plan"] == towers["prompt_switch"]["tokens"]["measured"] == switched

    # 2. MACs: attention counted in every tower; merging does less work than per-frame CLIP, LoRA a little more;
    # Prompt Switch exactly per-frame CLIP plus its prompt tokens and its aggregation attention.
    macs = {name: tower["macs"]["gmac_per_video"] for name, tower in towers.items()}
    assert all(tower["macs"]["attention_gmac"] > 0 for tower in towers.values())
    assert 0 < macs["tempme"] < macs["per_frame"] < macs["per_frame_lora"]
    assert towers["tempme"]["macs"]["vs_baseline"] == macs["tempme"] / macs["per_frame"]
    extra = prompt_switch_extra_macs(
        geometry["frames"], vision.depth, vision.width, vision.tokens_per_frame, prompts, group
    )
    assert macs["prompt_switch"] * 1e9 - macs["per_frame"] * 1e9 == pytest.approx(extra, rel=1e-6)
    assert towers["prompt_switch"]["macs"]["vs_baseline"] == macs["prompt_switch"] / macs["per_frame"]

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
    # Prompt Switch trains as its recipe does: with its captioning loss; the other heads have no extra loss.
    assert {name: case["extra_losses"] for name, case in training.items()} == {
        name: ["caption"] if name.startswith("prompt_switch/") else [] for name in TRAINING_CASES
    }

    # 5. Parameters: TempMe PEFT trains exactly its tower's own; Prompt Switch trains all of CLIP, its tower adds the
    # cube and the aggregation attention, its head the captioner.
    params = tiny["params"]
    assert set(params) == {"tempme/frozen", "prompt_switch/trainable"}
    tower_params = sum(param.numel() for _, param in tempme.head.tower_parameters())
    assert params["tempme/frozen"]["trainable"] == params["tempme/frozen"]["tower_params"] == tower_params
    assert training["tempme/frozen"]["trainable_params"] == tower_params
    width = vision.width
    cube_and_aggregation = prompts * prompts * width + 4 * width * width + 4 * width
    assert params["prompt_switch/trainable"]["tower_params"] == cube_and_aggregation
    switch = Retriever(geometry["backbone"], prompt_switch["head"])
    clip = sum(param.numel() for param in switch.backbone.parameters())
    captioner = sum(param.numel() for name, param in switch.head.named_parameters() if name.startswith("caption_"))
    assert params["prompt_switch/trainable"]["head_params"] == captioner > 0
    assert params["prompt_switch/trainable"]["trainable"] == clip + cube_and_aggregation + captioner

    table = result.stdout
    for heading in (
        "### 1. Tokens",
        "### 2. Video tower multiply-accumulates",
        "### 3. Inference",
        "### 4. Training step",
        "### 5. Parameters of each method",
    ):
        assert heading in table
    assert (
        "| tiny | TempMe | 8 |" in table and "| tiny | TempMe, PEFT |" in table and "per-frame CLIP (meanpool)" in table
    )
    assert "| tiny | Prompt Switch | 8 = 2 x 4 |" in table and "| tiny | Prompt Switch, full FT |" in table
    assert "tiny: 8 frames = 2 groups of 4 (recipe synthetic_promptswitch" in table
