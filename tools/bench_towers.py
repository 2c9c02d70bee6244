"""The video towers' cost, measured: TempMe's and Prompt Switch's towers against plain per-frame CLIP on CPU (fp32,
random weights).

    python tools/bench_towers.py --json docs/bench_towers.json      # ViT-B/32 and ViT-B/16 geometry
    python tools/bench_towers.py --geometries b32                   # one geometry
    python tools/bench_towers.py --quick --json /tmp/towers.json    # a tiny 6-block ViT, seconds (the test)

Every ratio is against **per-frame CLIP (meanpool) on the same geometry**: CLIP's image encoder run on each
frame on its own, CLIP weights untouched by any tower. Four video towers are measured on each geometry:

- ``per-frame CLIP``: the ``meanpool`` head (``per_frame`` tower, open_clip's own blocks);
- ``per-frame CLIP + LoRA``: the ``tempme`` head with merging switched off (``tome_r=0``, no clip layers):
  LoRA through tvr's block functions, so it separates merging from the cost of the adapters and of
  running the blocks outside open_clip;
- ``TempMe``: the ``tempme`` head with its defaults (spec §1.4: ``tome_r=2``, clip layers 8-9-10 joining
  2-2-3 clips, 30 % cross-clip and 10 % intra-clip merging);
- ``Prompt Switch``: the ``prompt_switch`` head and tower as a recipe sets them (composed from ``conf/``:
  ``promptswitch_msrvtt`` for the ViT-B geometries, ``synthetic_promptswitch`` for the tiny one), on the
  geometry's frames: ``num_prompts`` prompts appended to every frame, switched within groups of ``num_prompts``
  frames, and the aggregation attention of each frame's CLS over its group's prompts. The frames must be a
  multiple of the group (12 = 2 groups of 6 at ViT-B, as the recipe tests; the recipe trains on 6 frames,
  one group, but the training step here takes the geometry's 12 like the other towers). The tiny geometry's
  8 frames are no multiple of the reference's 6: it takes the built-in recipe's groups of 4.

Sections (all per 12-frame video unless said otherwise):

1. Tokens after every vision block: the plan (``TempMeTower.tokens_per_video()``; for the other towers,
   the tower's ``tokens_per_frame`` (Prompt Switch: CLS + patches + prompts) or the ViT's x frames) and the tokens really present in a forward pass, read by a forward hook on
   every block's ``ln_2`` (which every block calls on its tokens after any merging, before its MLP).
2. Multiply-accumulates of the video tower (``Retriever.frame_features``), one forward of one video,
   counted by ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2). It counts matrix products
   (linear layers, ``mm``/``bmm``), the patch-embedding convolution and attention (QK^T and AV); it does
   not count element-wise work (layer norms, softmax, GELU, merging's gathers and scatter-adds, the prompt
   switch's transposition), as fvcore
   does not. Two things the counter misses on CPU are dealt with: it has no formula for CPU's fused
   attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``), so one is given (the same
   formula it uses for the GPU kernels); and under ``no_grad``, ``nn.MultiheadAttention`` (per-frame CLIP)
   takes PyTorch's fused inference kernel (``_native_multi_head_attention``), which the counter does not see
   at all (it would drop the QKV and output projections and attention), so the count runs with autograd on.
   The count stops with an error if no attention was counted. Prompt Switch's aggregation attention is an
   ``nn.MultiheadAttention`` too: its projections and attention are counted the same way. The spec's figures
   (TempMe: the reference code measured with fvcore, spec §1.4; Prompt Switch: the spec's analytic count,
   methods-promptswitch §2.7) are printed beside ours as "spec" columns.
3. Inference time of the video tower: eval mode, ``torch.no_grad``, a small batch of videos, warm-up runs,
   then the median of the timed runs, per video; the towers take turns run by run, so that a busy spell on
   a shared machine slows them alike. Per-frame CLIP then runs open_clip's blocks through
   PyTorch's fused inference attention; the LoRA and TempMe towers run tvr's block functions (``F.linear``
   + ``scaled_dot_product_attention``). Achieved GMAC/s (section 2's count over the time) is compared with
   the machine's float32 matrix-product rate, measured once (best of several 2048 x 2048 products): the
   physical limit of this work.
4. Training step: forward (both towers) and the training loss of ``tvr.lit_module.training_objective`` (the
   head's similarity, scaled, InfoNCE via ``create_loss("infonce")``, plus the head's extra losses: Prompt
   Switch's captioning loss) and backward, no optimiser step, on a batch of videos and as many 32-token
   captions; a warm-up step, then the median of the timed steps. Parameter-efficient cases freeze CLIP
   (``clip_weights: frozen`` + ``freeze_for_training()``); full fine-tuning trains CLIP too. Prompt Switch
   trains as its recipe does (``clip_weights`` of the recipe: CLIP trainable). Each case runs
   in a fresh process (forked from a server process that has only imported tvr, rather than spawned, which
   would import it again for every case); its memory is the peak resident set size (VmHWM, reset once the
   model and inputs are built) minus the resident size at that moment: activations kept for backward,
   gradients and temporaries; not the weights or inputs, and not an optimiser's state (AdamW would add two
   floats per trainable parameter).
   Sections 3 and 4 give each row's CPU share: the process's CPU time over wall time x threads while
   timed. Well below 100 %, other processes took the cores and the row's time is inflated.
5. Parameters of each method in the mode it trains: the trainable ones, those its video tower adds (every
   ``head.tower_parameters``, at whichever learning rate) and those its head adds (Prompt Switch's captioner,
   used in training only), against the spec's (TempMe PEFT: 507,648 at ViT-B/32, spec §1.2; Prompt Switch:
   2,390,016 added to the tower and 33,756,416 to the head, methods-promptswitch §5).

Not comparable: the paper's headline (spec §1.9: -95 % tokens, -51 % GFLOPs, 1.8x speed-up) is against
earlier parameter-efficient TVR methods, most likely on ViT-B/16 with a B/16-specific merge schedule, not
against plain per-frame CLIP with the reference's default (B/32) schedule, which is what is measured here.
Times depend on the machine and on whatever else runs on it (the load average is recorded); the token and
MAC counts do not.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch

BASELINE = "per_frame"
BASELINE_WORDS = "per-frame CLIP (meanpool) on the same geometry"
VARIANT_NAMES = {
    "per_frame": "per-frame CLIP",
    "per_frame_lora": "per-frame CLIP + LoRA",
    "tempme": "TempMe",
    "prompt_switch": "Prompt Switch",
}
CAPTION_TOKENS = 32
SOT, EOT = 49406, 49407  # CLIP's BPE start/end tokens; EOT is the largest id, which the text tower's argmax relies on
CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# The spec's measurements of the reference code (TempMe's methods spec §1.4 and §1.2), the targets we compare with.
# Its "CLIP baseline (no merging)" does not say whether the reference's LoRA adapters were on, so it stands beside
# both of our unmerged towers. Prompt Switch's figures are its spec's analytic counts (methods-promptswitch §2.7:
# 56 tokens per frame, 59.2 GMAC per 12-frame video; §5: parameters added to the tower / to the head), not
# measurements; its spec gives them for ViT-B/32 only.
SPEC = {
    "b32": {
        "gmac": {"per_frame": 53.1, "per_frame_lora": 53.1, "tempme": 34.8, "prompt_switch": 59.2},
        "final_tokens": {"per_frame": 600, "per_frame_lora": 600, "tempme": 97, "prompt_switch": 672},
        "tower_params": {"tempme": 507_648, "prompt_switch": 2_390_016},
        "head_params": {"tempme": 0, "prompt_switch": 33_756_416},
    },
    "b16": {
        "gmac": {"per_frame": 211.5, "per_frame_lora": 211.5, "tempme": 162.1},
        "final_tokens": {"per_frame": 2364, "per_frame_lora": 2364, "tempme": 493},
    },
}

TINY_ARCHITECTURE = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 6, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Geometry:
    name: str
    backbone: dict
    frames: int
    prompt_switch_recipe: str  # the conf/experiment recipe whose Prompt Switch head is measured
    tempme: dict = field(default_factory=dict)  # TempMe options besides ``frames`` (empty: the reference defaults)
    forward_videos: int = 2
    train_videos: int = 2
    #: The recipe's head config and sampler frame counts (:func:`with_recipes` fills them in before measuring).
    prompt_switch: dict = field(default_factory=dict)

    def heads(self) -> dict[str, dict]:
        """The head config of each video tower measured."""
        if not self.prompt_switch:
            raise RuntimeError("the Prompt Switch recipe is not read yet: measure with_recipes(geometry)")
        return {
            "per_frame": {"name": "meanpool"},
            "per_frame_lora": {
                "name": "tempme",
                "frames": self.frames,
                "tome_r": 0,
                "clip_layers": [],
                "clip_groups": [],
            },
            "tempme": {"name": "tempme", "frames": self.frames, **self.tempme},
            "prompt_switch": dict(self.prompt_switch["head"]),
        }


def with_recipes(geometry: Geometry) -> Geometry:
    """``geometry`` with its Prompt Switch recipe composed from ``conf/`` (head, and the samplers' frame counts
    for the report); its frames must split into the recipe's switching groups."""
    from omegaconf import OmegaConf

    from tvr.config import compose_config
    from tvr.models.towers.prompt_switch import PromptSwitchTower

    config = compose_config([f"experiment={geometry.prompt_switch_recipe}"])
    head = OmegaConf.to_container(config.head, resolve=True)
    group = PromptSwitchTower.frames_multiple_of(**head)
    if geometry.frames % group:
        raise ValueError(
            f"geometry {geometry.name}: {geometry.frames} frames do not split into recipe "
            f"{geometry.prompt_switch_recipe}'s switching groups of {group} frames (head.num_prompts); "
            "choose a recipe whose num_prompts divides the frames"
        )
    samplers = config.data.video
    return replace(
        geometry,
        prompt_switch={
            "head": head,
            "group": group,
            "recipe_train_frames": samplers.train_sampler.max_frames,
            "recipe_test_frames": samplers.eval_sampler.max_frames,
        },
    )


GEOMETRIES = {
    "b32": Geometry("b32", {"model_name": "ViT-B-32-quickgelu"}, frames=12, prompt_switch_recipe="promptswitch_msrvtt"),
    # B/16 is ~4x B/32's compute: one video per batch keeps the default run within minutes on a small CPU
    "b16": Geometry(
        "b16",
        {"model_name": "ViT-B-16-quickgelu"},
        frames=12,
        prompt_switch_recipe="promptswitch_msrvtt",
        forward_videos=1,
        train_videos=1,
    ),
    # 8 frames are no multiple of the reference's 6: the built-in set's recipe switches groups of 4
    "tiny": Geometry(
        "tiny",
        {"model_name": None, "architecture": TINY_ARCHITECTURE},
        frames=8,
        prompt_switch_recipe="synthetic_promptswitch",
        tempme={"clip_layers": [3, 4, 5], "clip_groups": [2, 2, 2]},
    ),
}

# (variant, clip_weights): per-frame CLIP fully fine-tuned is the baseline of this section too.
TRAINING_CASES = [
    ("per_frame", "trainable"),
    ("per_frame_lora", "frozen"),
    ("tempme", "frozen"),
    ("tempme", "trainable"),
    ("prompt_switch", "trainable"),  # as its recipes train it (head.clip_weights: trainable)
]
# The methods' own parameter counts (section 5), each in the mode it trains.
PARAMETER_CASES = ["tempme/frozen", "prompt_switch/trainable"]
MODES = {"trainable": "full FT", "frozen": "PEFT"}


# ------------------------------------------------------------------------------------------------ inputs
def build_retriever(geometry: Geometry, head: dict):
    from tvr.models.retriever import Retriever

    torch.manual_seed(0)
    return Retriever(geometry.backbone, head)


def random_videos(retriever, videos: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = retriever.backbone.preprocessing.image_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(videos, frames, 3, size, size, generator=generator), torch.ones(videos, frames, dtype=torch.bool)


def random_captions(count: int) -> torch.Tensor:
    """``count`` captions filling all 32 positions: SOT, random words, EOT."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, SOT, (count, CAPTION_TOKENS), generator=generator)
    tokens[:, 0], tokens[:, -1] = SOT, EOT
    return tokens


# ------------------------------------------------------------------------------------- tokens and MACs
def planned_tokens(retriever, frames: int) -> list[int]:
    tower = retriever.head.video_tower
    if hasattr(tower, "tokens_per_video"):  # a merging tower: its own block-by-block plan
        return tower.tokens_per_video()
    from tvr.models.towers import VisionGeometry

    geometry = VisionGeometry.of_model(retriever.backbone.clip.visual)
    return [getattr(tower, "tokens_per_frame", geometry.tokens_per_frame) * frames] * geometry.depth


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and AV of CPU's fused attention kernel: the formula the counter applies to the GPU kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_one_video(retriever, frames: int) -> tuple[list[int], dict[str, float]]:
    """One forward of one video: the tokens present after every block (hooks on ``ln_2``) and the MACs by op."""
    from torch.utils.flop_counter import FlopCounterMode

    video, mask = random_videos(retriever, 1, frames)
    blocks = retriever.backbone.clip.visual.transformer.resblocks
    width = blocks[0].ln_2.normalized_shape[0]
    seen: list[int] = []
    hooks = [
        block.ln_2.register_forward_hook(lambda module, inputs, output: seen.append(output.numel() // width))
        for block in blocks
    ]
    counter = FlopCounterMode(display=False, custom_mapping={CPU_ATTENTION: cpu_attention_flops})
    try:
        with (
            torch.enable_grad(),
            counter,
        ):  # autograd on: see the module docstring (fused MHA is invisible to the counter)
            retriever.frame_features(video, mask)
    finally:
        for hook in hooks:
            hook.remove()
    by_op = {str(op): flops / 2 for op, flops in counter.get_flop_counts()["Global"].items()}
    if str(CPU_ATTENTION) not in by_op:
        raise RuntimeError(f"no attention was counted (ops counted: {sorted(by_op)}): the MAC count would miss it")
    return seen, by_op


# ------------------------------------------------------------------------------------------------ timing
def matmul_rate(size: int = 2048, repeats: int = 5) -> dict:
    """float32 matrix-product rate of torch's BLAS (GFLOP/s), best of ``repeats``: the CPU's practical peak."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    a @ b  # warm-up: thread pool, packing buffers
    best = min(seconds(lambda: a @ b) for _ in range(repeats))
    return {
        "gflops": 2 * size**3 / best / 1e9,
        "what": f"best of {repeats} products of two {size}x{size} float32 matrices",
    }


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


@dataclass
class Clock:
    """Wall time of timed work, and the CPU time the process got meanwhile (every thread)."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def time(self, work) -> None:
        cpu = time.process_time()
        self.wall_s.append(seconds(work))
        self.cpu_s += time.process_time() - cpu

    def cpu_share(self) -> float:
        """CPU time over wall time x threads: near 1 when the process had its cores, lower when other processes
        took them (the time is then inflated)."""
        return self.cpu_s / (sum(self.wall_s) * torch.get_num_threads())


def time_inference(retrievers: dict, frames: int, videos: int, warmup: int, runs: int) -> dict[str, dict]:
    """Runs take turns across the towers, so that a busy spell on the machine slows every tower alike."""
    batch, mask = random_videos(next(iter(retrievers.values())), videos, frames)
    clocks = {name: Clock() for name in retrievers}
    with torch.no_grad():
        for run in range(warmup + runs):
            for name, retriever in retrievers.items():
                retriever.eval()
                if run < warmup:
                    retriever.frame_features(batch, mask)
                else:
                    clocks[name].time(lambda timed=retriever: timed.frame_features(batch, mask))
    return {
        name: {
            "videos": videos,
            "warmup_runs": warmup,
            "runs": runs,
            "s_per_video": statistics.median(clock.wall_s) / videos,
            "run_s": clock.wall_s,
            "cpu_share": clock.cpu_share(),
        }
        for name, clock in clocks.items()
    }


# ---------------------------------------------------------------------------------------------- training
def resident_bytes(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"{field_name}:\s+(\d+) kB", handle.read()).group(1)) * 1024


def reset_peak_resident() -> None:
    """Set VmHWM back to the current RSS (Linux: clear_refs 5), so the peak counts from here on only."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def training_step(retriever, loss, frames: torch.Tensor, mask: torch.Tensor, captions: torch.Tensor) -> list[str]:
    """The training loss as tvr's training loop computes it (contrastive + the head's extra losses), backward.
    Returns the names of the head's extra losses."""
    from tvr.lit_module import training_objective

    retriever.zero_grad(set_to_none=True)
    total, _, terms = training_objective(
        retriever.head,
        loss,
        retriever.backbone.logit_scale,
        retriever.encode_texts(captions),
        retriever.encode_videos(frames, mask),
        local_token_ids=captions,
        backbone=retriever.backbone,
    )
    total.backward()
    return sorted(terms)


def run_training_case(
    geometry: Geometry, variant: str, clip_weights: str, warmup: int, steps: int, threads: int, queue
) -> None:
    """One case in its own process, so that its peak memory is its own."""
    from tvr.models.losses import create_loss

    torch.set_num_threads(threads)

    head = dict(geometry.heads()[variant])
    if head["name"] != "meanpool":
        head["clip_weights"] = clip_weights
    retriever = build_retriever(geometry, head)
    retriever.freeze_for_training()
    retriever.train()
    frames, mask = random_videos(retriever, geometry.train_videos, geometry.frames)
    captions = random_captions(geometry.train_videos)
    loss = create_loss("infonce")
    reset_peak_resident()
    before = resident_bytes("VmRSS")
    extra_losses: set[str] = set()
    for _ in range(warmup):
        extra_losses.update(training_step(retriever, loss, frames, mask, captions))
    clock = Clock()
    for _ in range(steps):
        clock.time(lambda: extra_losses.update(training_step(retriever, loss, frames, mask, captions)))
    queue.put(
        {
            "variant": variant,
            "clip_weights": clip_weights,
            "videos": geometry.train_videos,
            "captions": geometry.train_videos,
            "warmup_steps": warmup,
            "steps": steps,
            "s_per_step": statistics.median(clock.wall_s),
            "step_s": clock.wall_s,
            "cpu_share": clock.cpu_share(),
            "peak_extra_mib": (resident_bytes("VmHWM") - before) / 2**20,
            "trainable_params": sum(p.numel() for p in retriever.parameters() if p.requires_grad),
            "tower_params": sum(p.numel() for _, p in retriever.head.tower_parameters(every=True)),
            "head_params": sum(p.numel() for _, p in retriever.head.new_parameters()),
            "extra_losses": sorted(extra_losses),
        }
    )


def in_fresh_process(target, *args) -> dict:
    """``target(*args, queue)`` in a new process, forked from a server process that has imported tvr once
    (importing it takes seconds, spawning would pay that for every case); the server runs no torch work,
    so every case starts clean, and its peak memory is its own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tvr.models.retriever", "tvr.models.losses", "tvr.lit_module"])
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


# ------------------------------------------------------------------------------------------- a geometry
def count_tower(retriever, frames: int) -> dict:
    plan = planned_tokens(retriever, frames)
    seen, by_op = count_one_video(retriever, frames)
    return {
        "tokens": {"plan": plan, "measured": seen, "forward_agrees": seen == plan},
        "macs": {
            "gmac_per_video": sum(by_op.values()) / 1e9,
            "attention_gmac": by_op[str(CPU_ATTENTION)] / 1e9,
            "by_op_gmac": {op: value / 1e9 for op, value in by_op.items()},
        },
    }


def measure_towers(geometry: Geometry, warmup: int, runs: int) -> dict[str, dict]:
    retrievers = {variant: build_retriever(geometry, head) for variant, head in geometry.heads().items()}
    towers = {variant: count_tower(retriever, geometry.frames) for variant, retriever in retrievers.items()}
    timings = time_inference(retrievers, geometry.frames, geometry.forward_videos, warmup, runs)
    for variant, tower in towers.items():
        tower["inference"] = {
            **timings[variant],
            "gmac_per_s": tower["macs"]["gmac_per_video"] / timings[variant]["s_per_video"],
        }
    return towers


def measure_geometry(geometry: Geometry, args, matmul_gflops: float) -> dict:
    geometry = with_recipes(geometry)
    towers = measure_towers(geometry, args.warmup_runs, args.timed_runs)
    base = towers[BASELINE]
    for tower in towers.values():
        tower["tokens"]["final_vs_baseline"] = tower["tokens"]["plan"][-1] / base["tokens"]["plan"][-1]
        tower["macs"]["vs_baseline"] = tower["macs"]["gmac_per_video"] / base["macs"]["gmac_per_video"]
        tower["inference"]["speedup_vs_baseline"] = base["inference"]["s_per_video"] / tower["inference"]["s_per_video"]
        tower["inference"]["fraction_of_matmul_rate"] = 2 * tower["inference"]["gmac_per_s"] / matmul_gflops
    training = {
        f"{variant}/{clip_weights}": in_fresh_process(
            run_training_case,
            geometry,
            variant,
            clip_weights,
            args.warmup_steps,
            args.train_steps,
            torch.get_num_threads(),
        )
        for variant, clip_weights in TRAINING_CASES
    }
    base_step = training[f"{BASELINE}/trainable"]
    for case in training.values():
        case["time_vs_baseline"] = case["s_per_step"] / base_step["s_per_step"]
        case["memory_vs_baseline"] = case["peak_extra_mib"] / base_step["peak_extra_mib"]
    spec = SPEC.get(geometry.name) or {}
    return {
        "geometry": asdict(geometry),
        "towers": towers,
        "training": training,
        "params": {
            case: {
                "trainable": training[case]["trainable_params"],
                "tower_params": training[case]["tower_params"],
                "head_params": training[case]["head_params"],
                "spec_tower": spec.get("tower_params", {}).get(case.split("/")[0]),
                "spec_head": spec.get("head_params", {}).get(case.split("/")[0]),
            }
            for case in PARAMETER_CASES
        },
        "spec": spec or None,
    }


# ------------------------------------------------------------------------------------------------ report
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def spec_cell(spec: dict | None, key: str, variant: str, fmt: str) -> str:
    value = (spec or {}).get(key, {}).get(variant)
    return format(value, fmt) if value is not None else "–"


def report(results: dict) -> None:
    machine = results["machine"]
    print(
        f"\nCPU: {machine['cpus']} cores, {machine['torch_threads']} torch threads, torch {machine['torch']}, fp32, random weights; "
        f"float32 matmul {machine['matmul']['gflops']:.1f} GFLOP/s ({machine['matmul']['what']}); load average "
        f"{machine['load_average_start'][0]:.1f} at the start, {machine['load_average_end'][0]:.1f} at the end."
    )
    print(
        f"Every ratio ('vs base') is against {BASELINE_WORDS}. 'spec' columns: the spec's measurements of the reference code "
        "(TempMe, methods spec §1.4, §1.2) and the spec's analytic counts (Prompt Switch, methods-promptswitch §2.7, §5)."
    )
    geometries = results["geometries"]
    print(
        "\n### 1. Tokens per video after every vision block (plan; 'forward' = the tokens a forward pass really held)\n"
    )
    print(
        table(
            ["geometry", "video tower", "frames", "after block 0, 1, ...", "final", "vs base", "spec final", "forward"],
            [
                [
                    g,
                    VARIANT_NAMES[v],
                    frames_cell(r["geometry"], v),
                    ", ".join(map(str, t["tokens"]["plan"])),
                    str(t["tokens"]["plan"][-1]),
                    f"{t['tokens']['final_vs_baseline']:.3f}",
                    spec_cell(r["spec"], "final_tokens", v, "d"),
                    "agrees" if t["tokens"]["forward_agrees"] else "DIFFERS",
                ]
                for g, r in geometries.items()
                for v, t in r["towers"].items()
            ],
        )
    )
    print(
        "\nPrompt Switch runs as its recipe sets it (head composed from conf/experiment/<recipe>), its frames in "
        "switching groups of num_prompts: "
        + "; ".join(
            f"{g}: {prompt_switch_setting(r['geometry'])}"
            for g, r in geometries.items()
            if "prompt_switch" in r["towers"]
        )
        + "."
    )
    print("\n### 2. Video tower multiply-accumulates per video (FlopCounterMode, FLOPs / 2; attention = QK^T + AV)\n")
    print(
        table(
            ["geometry", "video tower", "GMAC", "of which attention", "vs base", "spec GMAC", "spec vs base"],
            [
                [
                    g,
                    VARIANT_NAMES[v],
                    f"{t['macs']['gmac_per_video']:.4g}",
                    f"{t['macs']['attention_gmac']:.3g}",
                    f"{t['macs']['vs_baseline']:.3f}",
                    spec_cell(r["spec"], "gmac", v, ".1f"),
                    spec_ratio(r["spec"], v),
                ]
                for g, r in geometries.items()
                for v, t in r["towers"].items()
            ],
        )
    )
    print("\n### 3. Inference: video tower forward (eval, no_grad), median of the timed runs, per video\n")
    print(
        table(
            [
                "geometry",
                "video tower",
                "videos per batch",
                "warm-up + timed runs",
                "s per video",
                "speed-up vs base",
                "GMAC/s",
                "of matmul rate",
                "CPU share",
            ],
            [
                [
                    g,
                    VARIANT_NAMES[v],
                    str(i["videos"]),
                    f"{i['warmup_runs']} + {i['runs']}",
                    f"{i['s_per_video']:.3f}",
                    f"{i['speedup_vs_baseline']:.2f}x",
                    f"{i['gmac_per_s']:.3g}",
                    f"{i['fraction_of_matmul_rate']:.1%}",
                    f"{i['cpu_share']:.0%}",
                ]
                for g, r in geometries.items()
                for v, i in ((v, t["inference"]) for v, t in r["towers"].items())
            ],
        )
    )
    print(
        "\n### 4. Training step: forward + backward (InfoNCE + the head's extra losses), no optimiser step; memory = peak RSS "
        "above the built model and inputs\n"
    )
    print(
        table(
            [
                "geometry",
                "case",
                "videos + captions",
                "trainable params",
                "warm-up + timed steps",
                "s per step",
                "vs base",
                "peak extra MiB",
                "vs base",
                "CPU share",
            ],
            [
                [
                    g,
                    f"{VARIANT_NAMES[c['variant']]}, {MODES[c['clip_weights']]}",
                    f"{c['videos']} + {c['captions']}",
                    f"{c['trainable_params']:,}",
                    f"{c['warmup_steps']} + {c['steps']}",
                    f"{c['s_per_step']:.2f}",
                    f"{c['time_vs_baseline']:.2f}",
                    f"{c['peak_extra_mib']:.0f}",
                    f"{c['memory_vs_baseline']:.2f}",
                    f"{c['cpu_share']:.0%}",
                ]
                for g, r in geometries.items()
                for c in r["training"].values()
            ],
        )
    )
    print(
        "\nPrompt Switch's step includes its captioning loss (a 2-layer decoder over the frame vectors and a "
        "vocabulary-wide output layer), as its recipes train it; its video tower alone is sections 2 and 3."
    )
    print(
        "\nCPU share: the process's CPU time over wall time x threads while timed; well below 100 % means other "
        "processes took the cores and that row's time is inflated."
    )
    one_video = [g for g, r in geometries.items() if r["geometry"]["train_videos"] == 1]
    if one_video:
        print(
            f"\n{', '.join(one_video)}: one video and one caption per training batch, to keep the run short on a small CPU; "
            "InfoNCE on a 1x1 matrix is zero with zero gradients, but every forward and backward kernel still runs, "
            "so the time and memory are those of a real step of that size."
        )
    print("\n### 5. Parameters of each method in the mode it trains\n")
    print(
        table(
            [
                "geometry",
                "case",
                "trainable",
                "added by the video tower",
                "spec",
                "added by the head (training only)",
                "spec",
            ],
            [
                [
                    g,
                    f"{VARIANT_NAMES[case.split('/')[0]]}, {MODES[case.split('/')[1]]}",
                    f"{p['trainable']:,}",
                    f"{p['tower_params']:,}",
                    count_cell(p["spec_tower"]),
                    f"{p['head_params']:,}",
                    count_cell(p["spec_head"]),
                ]
                for g, r in geometries.items()
                for case, p in r["params"].items()
            ],
        )
    )
    print(
        "\nNot comparable with these ratios: the paper's -95 % tokens, -51 % GFLOPs and 1.8x speed-up (spec §1.9) are "
        "against earlier parameter-efficient methods (most likely ViT-B/16 with its own merge schedule), not against "
        "per-frame CLIP with the reference's default schedule."
    )


def count_cell(count: int | None) -> str:
    return f"{count:,}" if count is not None else "–"


def prompt_switch_setting(geometry: dict) -> str:
    """How the geometry's frames split into Prompt Switch's groups, and what its recipe samples."""
    setting = geometry["prompt_switch"]
    groups = geometry["frames"] // setting["group"]
    return (
        f"{geometry['frames']} frames = {groups} group{'s' if groups > 1 else ''} of {setting['group']} "
        f"(recipe {geometry['prompt_switch_recipe']}, which trains on {setting['recipe_train_frames']} frames and tests "
        f"on {setting['recipe_test_frames']})"
    )


def frames_cell(geometry: dict, variant: str) -> str:
    if variant != "prompt_switch":
        return str(geometry["frames"])
    return f"{geometry['frames']} = {geometry['frames'] // geometry['prompt_switch']['group']} x {geometry['prompt_switch']['group']}"


def spec_ratio(spec: dict | None, variant: str) -> str:
    gmac = (spec or {}).get("gmac", {})
    return f"{gmac[variant] / gmac[BASELINE]:.3f}" if variant in gmac else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometries", nargs="+", default=["b32", "b16"], choices=["b32", "b16"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the tiny 6-block ViT (8 frames) only, one timed run, one thread (unless --threads): seconds",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads, in every process (default: torch's)")
    parser.add_argument("--warmup-runs", type=int, default=1, help="untimed inference runs before the timed ones")
    parser.add_argument("--timed-runs", type=int, default=3, help="timed inference runs (the median is reported)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed training steps before the timed ones")
    parser.add_argument(
        "--train-steps", type=int, default=2, help="timed training steps per case (the median is reported)"
    )
    parser.add_argument("--forward-videos", type=int, help="videos per inference batch (default: 2 for b32, 1 for b16)")
    parser.add_argument(
        "--train-videos", type=int, help="videos (and captions) per training batch (default: 2 for b32, 1 for b16)"
    )
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    if args.quick:
        # one thread: on a busy machine, tiny kernels on several threads wait on each other far longer than they compute
        args.timed_runs, args.train_steps, args.threads = 1, 1, args.threads or 1
    if min(args.timed_runs, args.train_steps) < 1 or min(args.warmup_runs, args.warmup_steps) < 0:
        parser.error("--timed-runs and --train-steps must be at least 1, the warm-ups at least 0")
    overrides = {
        key: value
        for key, value in (("forward_videos", args.forward_videos), ("train_videos", args.train_videos))
        if value
    }
    if args.threads:
        torch.set_num_threads(args.threads)
    geometries = [replace(GEOMETRIES[name], **overrides) for name in (["tiny"] if args.quick else args.geometries)]
    started = time.perf_counter()
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
        "matmul": matmul_rate(),
    }
    results = {
        "baseline": BASELINE_WORDS,
        "machine": machine,
        "geometries": {g.name: measure_geometry(g, args, machine["matmul"]["gflops"]) for g in geometries},
    }
    machine["load_average_end"] = os.getloadavg()
    results["runtime_s"] = time.perf_counter() - started
    report(results)
    print(f"\nRun time: {results['runtime_s']:.0f} s.")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
