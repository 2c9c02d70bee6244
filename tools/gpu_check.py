"""Exercise every CUDA path of tvr in one prepared script (a few minutes on one GPU), and measure it.

    python tools/gpu_check.py --json gpu_check.json            # one GPU: ViT-B/32 geometry, 12 frames, bf16-mixed
    python tools/gpu_check.py --heads meanpool tempme          # some heads only
    python tools/gpu_check.py --device cpu --tiny              # the same script on the tiny model, on CPU (< 1 min)

Sections, each a table (Markdown) and a part of ``--json``:

1. **Training**, per registered head (TempMe twice: parameter-efficient and full fine-tuning), with random
   weights at ViT-B/32 geometry (``--tiny``: tvr-tiny) on synthetic in-memory batches of uint8 frames (what
   tvr's loaders deliver): a few real optimiser steps through tvr's own ``RetrievalModule`` and ``build_trainer``'s
   Lightning Trainer at ``bf16-mixed`` (``16-mixed`` with a note on a GPU without bf16). Clips/s (median step,
   after warm-up steps), peak device memory over the fit, model FLOPs per step and MFU (FLOPs over the median
   step time over ``--peak-tflops``), and whether every loss was finite. FLOPs are counted by
   ``torch.utils.flop_counter.FlopCounterMode`` on one training step (forward + backward) of the same module:
   matrix products, convolutions and attention. Its blind spots: element-wise work (norms, softmax, GELU,
   merging's gathers) is never counted; on the GPU the fused attention kernels (flash, memory-efficient,
   cuDNN) are; on the CPU, ``scaled_dot_product_attention``'s fused kernel
   (``_scaled_dot_product_flash_attention_for_cpu``) has no formula, so the GPU kernels' formula is given for
   it (``bench_towers.cpu_attention_flops``). Each row says whether attention FLOPs were counted.
   On a GPU, ``--compile-heads`` (default: meanpool) are measured again with ``train.compile=true``.
   The first rows of a process pay one-off costs the warm-up steps do not all absorb (lazy initialisation,
   kernel selection): on the CPU with ``--tiny`` the first head's step is several times slower than it would be
   later (the tiny run proves the paths; its times mean little), so compare rows of one head across runs.
2. **Evaluation at MSR-VTT's shape** (``--eval-size`` texts x videos, 1,000 x 1,000; ``--tiny``: 64 x 64):
   encode every video and text on the device, then score them tile by tile (``tiled_similarity`` with the
   default tile budget); time of each and peak device memory. Then the same head on the tiny model, with
   the same random weights, scored in float32 on the device and on the CPU: the largest score difference
   must be at most ``SCORE_TOLERANCE`` and every metric within ``METRIC_TOLERANCE`` points (TF32 is off for
   it). On ``--device cpu`` the reference is the run itself, so that comparison is skipped.
3. **Resume on the device**: a tiny X-Pool run (dropout draws from the device's RNG), 4 epochs of one step,
   deterministic algorithms on; a second run stopped by an exception after epoch 2 and resumed from its
   ``last.ckpt`` must end with bit-identical weights, and the checkpoint must hold the CUDA RNG states.
4. **Process group**: a 1-process NCCL group (gloo on CPU). With one process ``gather_with_grad`` and the
   evaluation gather return their input untouched, so the collectives under them are called directly: the
   gather-with-gradient autograd function in both gradient modes (float32 and bf16), the padded evaluation
   gather, and the object gather. It proves the NCCL calls work on CUDA tensors, not multi-rank semantics
   (``tests/test_distributed.py`` checks those with 2 CPU processes).
5. **Data pipeline into the device**: tvr's training loader from the frame cache (``tools/bench_loader.py``'s
   setup, at the model's input size) with pinned memory, each batch moved to the device and normalised there,
   at worker counts up to the CPU count; the best count and its clips/s.

``--device cpu --tiny`` takes every path above on tvr-tiny, made cheap where that proves nothing less: 8 frames
(TempMe's merging schedule needs them), 16-word captions (the synthetic data's; HBI's Banzhaf estimator loops
over words x frames, with 4 Monte-Carlo samples), one warm-up and one timed step per head, one CPU thread. The
run reports its CPU time (user + system, the loader's workers included), in all and per section: on a shared
machine that, not the wall time, is what it cost.

A head that runs out of device memory is reported as such in its row and the script goes on. Without a GPU
the script stops and says to run ``--device cpu --tiny``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# deterministic cuBLAS for the resume check; read when CUDA initialises, so set before anything touches it
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling tools whose pieces are shared
from bench_loader import VIT_B32, build_loader_datamodule, clips_per_second, endless, loader_overrides  # noqa: E402
from bench_towers import CAPTION_TOKENS, CPU_ATTENTION, EOT, cpu_attention_flops, random_captions  # noqa: E402
from bench_train import Stopwatch, clock, in_memory_loader, plain_scores, row, step_times  # noqa: E402

SCORE_TOLERANCE = 1e-3  # float32 scores, device against CPU
METRIC_TOLERANCE = 0.5  # recall points (0-100), device against CPU
TINY_FRAMES = 8  # TempMe's default merging schedule (clip groups 2, 2, 2) needs 8
TINY_WORDS = 16  # the synthetic data's max_words; HBI's Banzhaf estimator loops over words x frames
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16
NO_GPU = (
    "no GPU visible to torch (torch.cuda.is_available() is False). To run the same checks on this machine's CPU "
    "with the tiny model: python tools/gpu_check.py --device cpu --tiny"
)


@dataclass
class Setup:
    """What every section shares: device, precision, geometry."""

    device: torch.device
    precision: str
    tiny: bool
    batch_size: int
    frames: int
    scratch: Path
    words: int = CAPTION_TOKENS  # caption length (data.max_words): MSR-VTT's 32 unless --tiny
    notes: list[str] = field(default_factory=list)

    def autocast(self):
        dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
        if self.precision not in dtypes:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtypes[self.precision])

    def overrides(self) -> list[str]:
        """``tvr-train`` overrides of this geometry and device (the data section only sizes the samplers)."""
        backbone = ["backbone=tiny"] if self.tiny else ["backbone=vit_b32", "backbone.weights=null"]
        trainer = "trainer=gpu" if self.device.type == "cuda" else "trainer=cpu"
        return [
            *backbone,
            trainer,
            f"trainer.precision={self.precision}",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "~logger",
            f"data.batch_size={self.batch_size}",
            f"data.max_words={self.words}",  # the synthetic captions fill every position (UCoFiA checks it)
            f"data.video.train_sampler.max_frames={self.frames}",
            f"data.video.eval_sampler.max_frames={self.frames}",
        ]


@dataclass(frozen=True)
class Case:
    label: str
    overrides: tuple[str, ...]


def choose_precision(device: torch.device, requested: str) -> tuple[str, str | None]:
    """The precision to run, and a note when it is not the one asked for (a GPU without bf16)."""
    if requested == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "16-mixed", "this GPU has no bf16: fp16-mixed (16-mixed, with a gradient scaler) instead of bf16-mixed"
    return requested, None


def prompt_switch_case(frames: int, tiny: bool) -> Case:
    """Prompt Switch switches prompt rows within groups of ``num_prompts`` frames, and its samplers repeat frames
    rather than pad (the pass-major segment sampler): groups of 6 on 12 frames as the reference, of 4 on the tiny
    run's 8 (as ``experiment=synthetic_promptswitch``, whose captioner also takes tvr-tiny's text width)."""
    group = 6 if frames % 6 == 0 else 4

    overrides = ["head=prompt_switch", f"head.num_prompts={group}"]
    for role, mode in (("train_sampler", "random"), ("eval_sampler", "uniform")):
        overrides += [
            f"data.video.{role}.name=segment_passes",
            f"++data.video.{role}.segments={group}",
            f"++data.video.{role}.mode={mode}",
        ]
    if tiny:
        overrides += ["head.caption_heads=2", "head.caption_ffn=256"]
    return Case("prompt_switch", tuple(overrides))


def cases(heads: list[str], compile_heads: list[str], frames: int, tiny: bool) -> list[Case]:
    """One case per head, TempMe in both modes, the HBI estimator before HBI (HBI distils from it), then the
    compiled variants."""
    if "hbi" in heads and "hbi_estimator" not in heads:
        heads = [*heads, "hbi_estimator"]
    order = sorted(heads, key=lambda name: name == "hbi")
    found = []
    for name in order:
        if name == "tempme":
            found.append(Case("tempme PEFT", ("head=tempme", "head.clip_weights=frozen")))
            found.append(Case("tempme full FT", ("head=tempme", "head.clip_weights=trainable")))
        elif name == "prompt_switch":
            found.append(prompt_switch_case(frames, tiny))
        else:
            found.append(Case(name, (f"head={name}",)))
    found += [Case(f"{name} + compile", (f"head={name}", "train.compile=true")) for name in compile_heads]
    return found


# --------------------------------------------------------------------------------------------- inputs
def captions(count: int, words: int) -> torch.Tensor:
    """``count`` captions filling ``words`` positions: SOT, random words, EOT."""
    tokens = random_captions(count)[:, :words].clone()
    tokens[:, -1] = EOT
    return tokens


def synthetic_batches(module, setup: Setup, count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """``count`` training batches as tvr's loaders deliver them: uint8 frames, every frame real, captions."""
    size = module.backbone.preprocessing.image_size
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "frames": torch.randint(
                0, 256, (batch_size, setup.frames, 3, size, size), dtype=torch.uint8, generator=generator
            ),
            "frame_mask": torch.ones(batch_size, setup.frames, dtype=torch.bool),
            "tokens": captions(batch_size, setup.words),
            "index": torch.arange(batch_size),
            "video_index": torch.arange(batch_size),
            "replaced": torch.zeros(batch_size, dtype=torch.bool),
            "failed_videos": [],
            "short_videos": [],
        }
        for _ in range(count)
    ]


def eval_batches(module, setup: Setup, num_videos: int, num_texts: int, batch_size: int, device: torch.device):
    """Video batches (a generator: made on the fly on ``device``) and text batches of an evaluation set."""
    size = module.backbone.preprocessing.image_size

    def videos():
        generator = torch.Generator(device=device).manual_seed(1)
        for start in range(0, num_videos, batch_size):
            count = min(batch_size, num_videos - start)
            shape = (count, setup.frames, 3, size, size)
            frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator, device=device)
            yield {"frames": frames, "frame_mask": torch.ones(count, setup.frames, dtype=torch.bool, device=device)}

    tokens = captions(num_texts, setup.words)
    texts = [
        {"tokens": tokens[start : start + batch_size], "video_index": indices % num_videos}
        for start in range(0, num_texts, batch_size)
        for indices in [torch.arange(start, min(start + batch_size, num_texts))]
    ]
    return videos, texts


# ------------------------------------------------------------------------------------------ device memory
def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        from bench_towers import reset_peak_resident

        reset_peak_resident()


def peak_gib(device: torch.device) -> float:
    """Peak allocated device memory since :func:`reset_peak` (CPU: the process's peak resident size)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    from bench_towers import resident_bytes

    return resident_bytes("VmHWM") / 2**30


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the loader's workers): on a loaded
    machine the wall time says little, this is what the run itself cost."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def cpu_time(spent: dict, section: str):
    """Adds the CPU seconds of the block to ``spent[section]``."""
    started = cpu_seconds()
    try:
        yield
    finally:
        spent[section] = spent.get(section, 0.0) + cpu_seconds() - started


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ build
def compose(setup: Setup, case_overrides, run_dir: Path, extra: tuple[str, ...] = ()):
    from tvr.config import compose_config
    from tvr.validation import validate_train_config

    cfg = compose_config([*setup.overrides(), *case_overrides, *extra], "train", output_dir=run_dir)
    validate_train_config(cfg)
    return cfg


def trainer_for(cfg, run_dir: Path, steps: int, **options):
    from tvr.builders import build_trainer

    trainer_cfg = {**cfg.trainer, "max_epochs": 1, "max_steps": steps, "num_sanity_val_steps": 0, **options}
    return build_trainer(trainer_cfg, run_dir, None, monitor=None)


# --------------------------------------------------------------------------------------------- training
def step_flops(module, batch: dict, setup: Setup, counter) -> int:
    """FLOPs of one training step (forward + backward) of ``module`` itself (``training_step``: towers, gathers,
    head, loss and the head's extra losses), before the Trainer has it (its logging is then a no-op)."""
    batch = {key: value.to(setup.device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    with warnings.catch_warnings(), counter:
        warnings.filterwarnings("ignore", message="You are trying to `self.log")
        with setup.autocast():
            loss = module.training_step(batch, 0)
        loss.backward()
    module.zero_grad(set_to_none=True)
    module._losses_finite = None  # the counted step is no optimiser step: its loss check is not the first step's
    return counter.get_total_flops()


def attention_flops(counter) -> int:
    return sum(count for op, count in counter.get_flop_counts()["Global"].items() if "attention" in str(op).lower())


def train_case(case: Case, setup: Setup, args, artifacts: dict) -> dict:
    """A few optimiser steps of one head through the Trainer; the figures of its row."""
    import pytorch_lightning as pl
    from torch.utils.flop_counter import FlopCounterMode

    from tvr.builders import build_module

    run_dir = setup.scratch / case.label.replace(" ", "_")
    extra = (f"head.estimator_ckpt={artifacts['estimator']}",) if case.overrides == ("head=hbi",) else ()
    if setup.tiny and case.overrides == ("head=hbi_estimator",):
        extra = ("head.num_samples=4",)  # the estimator's Monte-Carlo sampling is its cost: few samples, same paths
    cfg = compose(setup, case.overrides, run_dir, extra)
    pl.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    total = args.warmup_steps + args.steps
    batches = synthetic_batches(module, setup, min(total, 4), setup.batch_size)

    module.to(setup.device)
    counter = FlopCounterMode(display=False, custom_mapping={CPU_ATTENTION: cpu_attention_flops})
    flops = step_flops(module, batches[0], setup, counter)

    trainer = trainer_for(cfg, run_dir, total)
    stopwatch = Stopwatch(setup.device, args.warmup_steps, total)
    trainer.callbacks.append(stopwatch)
    reset_peak(setup.device)
    trainer.fit(module, train_dataloaders=in_memory_loader(batches, total))
    peak = peak_gib(setup.device)
    losses = [float(loss) for loss in stopwatch.losses]
    figures = row("tvr", step_times(stopwatch.step_ends, args.warmup_steps), setup.batch_size, flops, args.peak_tflops)
    artifacts.update({Path(path).stem: path for path in module.head.write_artifacts(run_dir)})  # HBI's estimator
    artifacts.setdefault("modules", {})[case.label] = (cfg, module)
    return {
        "case": case.label,
        "status": "ok" if all(math.isfinite(loss) for loss in losses) else "NON-FINITE LOSS",
        "precision": str(trainer.precision),
        "batch": setup.batch_size,
        "clips_per_s": figures["clips_per_s"],
        "s_per_step": figures["s_per_step"],
        "peak_gib": peak,
        "gflop_per_clip": flops / setup.batch_size / 1e9,
        "mfu": figures.get("mfu"),
        "attention_flops_counted": attention_flops(counter) > 0,
        "losses": losses,
    }


# ------------------------------------------------------------------------------------------- evaluation
def evaluate(module, setup: Setup, device: torch.device, size: int, autocast) -> tuple[dict, torch.Tensor]:
    from tvr.evaluation import retrieval_metrics
    from tvr.evaluation.options import evaluation_options

    options = evaluation_options(module.eval_cfg)
    tiles = {
        "text_chunk": options.text_chunk,
        "video_chunk": options.video_chunk,
        "memory_budget_bytes": int(options.memory_budget_gb * 2**30),
    }
    module.to(device).eval()
    videos, texts = eval_batches(module, setup, size, size, 64, device)
    torch.manual_seed(0)
    reset_peak(device)
    started = clock(device)
    scores, text_to_video = plain_scores(module, videos(), texts, autocast, device, tiles)
    seconds = clock(device) - started
    figures = {"seconds": seconds, "peak_gib": peak_gib(device), "shape": list(scores.shape)}
    return {**figures, **retrieval_metrics(scores, text_to_video, median=options.median)}, scores


def eval_case(case: Case, setup: Setup, args, artifacts: dict) -> dict:
    cfg, module = artifacts["modules"][case.label]
    figures, _ = evaluate(module, setup, setup.device, args.eval_size, setup.autocast)
    row_ = {"case": case.label, "status": "ok", **{k: figures[k] for k in ("seconds", "peak_gib", "shape")}}
    row_["videos_per_s"] = figures["shape"][1] / figures["seconds"]
    if setup.device.type == "cpu":
        row_["vs_cpu_fp32"] = "this run is the CPU run"
        return row_
    row_["vs_cpu_fp32"] = compare_with_cpu(case, setup, args, artifacts)
    return row_


def compare_with_cpu(case: Case, setup: Setup, args, artifacts: dict) -> dict:
    """The case's head on the tiny model, float32: on the device and on the CPU, same weights and inputs."""
    import pytorch_lightning as pl

    from tvr.builders import build_module

    tiny = Setup(torch.device("cpu"), "32-true", True, setup.batch_size, 8, setup.scratch)
    extra = (f"head.estimator_ckpt={artifacts['estimator_tiny']}",) if case.overrides == ("head=hbi",) else ()
    cfg = compose(tiny, case.overrides, setup.scratch / "tiny", extra)
    pl.seed_everything(cfg.seed)
    module = build_module(cfg)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        on_device, device_scores = evaluate(module, tiny, setup.device, 200, contextlib.nullcontext)
        on_cpu, cpu_scores = evaluate(module, tiny, torch.device("cpu"), 200, contextlib.nullcontext)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    difference = (device_scores.float().cpu() - cpu_scores.float()).abs().max().item()
    metric_gap = max(
        abs(on_device[d][k] - on_cpu[d][k]) for d in ("t2v", "v2t") for k in on_cpu[d] if k.startswith("R")
    )
    same = difference <= SCORE_TOLERANCE and metric_gap <= METRIC_TOLERANCE
    return {"max_score_diff": difference, "max_recall_diff": metric_gap, "within_tolerance": same}


# ------------------------------------------------------------------------------------------ the checks
class Stop(Exception):
    """Raised by :class:`StopAfterEpoch`: the run 'dies' there, its last.ckpt written."""


def resume_check(setup: Setup) -> dict:
    """A run killed after epoch 2 and resumed ends with the uninterrupted run's weights, bit for bit."""
    import pytorch_lightning as pl

    from tvr.builders import build_module
    from tvr.checkpoint import load_checkpoint_file

    class StopAfterEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 2:
                raise Stop

    tiny = Setup(setup.device, setup.precision, True, 8, 8, setup.scratch, setup.words)

    def fit(name: str, callbacks=(), ckpt_path=None):
        run_dir = setup.scratch / name
        cfg = compose(tiny, ("head=xpool",), run_dir)
        pl.seed_everything(cfg.seed, workers=True)
        module = build_module(cfg)
        batches = synthetic_batches(module, tiny, 1, tiny.batch_size)
        trainer = trainer_for(cfg, run_dir, -1, max_epochs=4, deterministic=True)
        trainer.callbacks.extend(callbacks)
        try:
            trainer.fit(module, train_dataloaders=in_memory_loader(batches), ckpt_path=ckpt_path)
        except Stop:
            pass
        return module, run_dir / "checkpoints" / "last.ckpt"

    reference, _ = fit("resume_reference")
    _, last = fit("resume_killed", [StopAfterEpoch()])
    checkpoint = load_checkpoint_file(last)
    rng = next(state["rng"] for key, state in checkpoint["callbacks"].items() if "LastCheckpoint" in key)
    resumed, _ = fit("resume_killed", ckpt_path=str(last))
    different = [
        name
        for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items())
        if not torch.equal(a.cpu(), b.cpu())
    ]
    cuda_rng = bool(rng[0]["cuda"])
    ok = not different and (cuda_rng or setup.device.type != "cuda")
    detail = f"stopped at step {checkpoint['global_step']}, resumed to 4; " + (
        "weights bit-identical" if not different else f"{len(different)} tensors differ, e.g. {different[:3]}"
    )
    detail += f"; CUDA RNG states in the checkpoint: {len(rng[0]['cuda'])}"
    return {"check": "resume", "ok": ok, "detail": detail}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_group_check(setup: Setup) -> dict:
    import torch.distributed as dist

    from tvr import distributed

    backend = "nccl" if setup.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    problems = []
    try:
        for dtype in (torch.float32, torch.bfloat16):
            for mode in distributed.GATHER_GRAD_MODES:
                local = torch.randn(5, 16, device=setup.device, dtype=dtype, requires_grad=True)
                weights = torch.randn(5, 16, device=setup.device, dtype=dtype)
                gathered = distributed._GatherWithGrad.apply(local, mode)
                (gathered * weights).sum().backward()
                if not (torch.equal(gathered, local) and torch.equal(local.grad, weights)):
                    problems.append(f"gather with gradient ({mode}, {dtype})")
        for value in (torch.randn(7, 3, device=setup.device), torch.arange(7, device=setup.device)):
            if not torch.equal(distributed._gather_padded(value)[0], value):
                problems.append(f"evaluation gather ({value.dtype})")
        if distributed.gather_objects({"rank": 0}) != [{"rank": 0}]:
            problems.append("object gather")
    finally:
        dist.destroy_process_group()
    detail = f"1-process {backend} group: " + ("; ".join(problems) + " wrong" if problems else "every collective right")
    return {"check": "process group", "ok": not problems, "detail": detail}


def onto_device(device: torch.device, preprocessing):
    """What a training step does with a batch first: copy its frames to the device, normalise them there."""
    from tvr.data.transforms import normalize_frames

    def deliver(batch: dict) -> None:
        frames = batch["frames"].to(device, non_blocking=True)
        mask = batch["frame_mask"].to(device, non_blocking=True)
        normalize_frames(frames, preprocessing.mean, preprocessing.std, mask)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return deliver


def pipeline_check(setup: Setup, args) -> dict:
    """tvr's training loader from the frame cache into the device: clips/s per worker count, the best."""
    from bench_loader import VIDEO
    from tvr.data.synthetic import SyntheticConfig, ensure_synthetic_dataset

    data_dir = setup.scratch / "pipeline_data"
    videos = 8 if setup.tiny else 64
    video = {**VIDEO, "frame_size": 64} if setup.tiny else VIDEO  # the tiny model reads 32 px
    ensure_synthetic_dataset(
        data_dir / "synthetic", SyntheticConfig(num_train=videos, num_val=0, num_test=4, **video), 1
    )
    backbone = ("backbone=tiny",) if setup.tiny else VIT_B32
    batch = 8 if setup.tiny else 32
    rates = {}
    for workers in args.pipeline_workers:
        overrides = loader_overrides(data_dir, "cache", "none", batch, videos, workers, backbone, setup.frames, video)
        overrides.append(f"++data.pin_memory={setup.device.type == 'cuda'}")
        datamodule = build_loader_datamodule(overrides, setup.scratch / "pipeline_run")
        loader = datamodule.train_dataloader()
        deliver = onto_device(setup.device, datamodule.preprocessing)
        rates[workers] = clips_per_second(endless(loader), args.pipeline_clips, deliver=deliver)
        del loader
    best = max(rates, key=rates.get)
    detail = (
        f"best: {best} workers, {rates[best]:.0f} clips/s ("
        + ", ".join(f"{w}: {r:.0f}" for w, r in rates.items())
        + ")"
    )
    return {"check": "data pipeline", "ok": True, "detail": detail, "clips_per_s": rates, "best_workers": best}


# ------------------------------------------------------------------------------------------------- run
def guarded(work, case: Case, setup: Setup, *args) -> dict:
    """``work(case, setup, *args)``'s row, or a row saying it ran out of device memory or that its loss went
    non-finite (tvr-train's guard stopped it); either way the script goes on to the next case."""
    from tvr.errors import NonFiniteLossError

    try:
        return work(case, setup, *args)
    except torch.OutOfMemoryError as error:
        release(setup.device)
        return {"case": case.label, "status": "out of memory", "error": str(error).splitlines()[0][:200]}
    except NonFiniteLossError as error:
        return {"case": case.label, "status": "non-finite loss", "error": str(error).splitlines()[0][:200]}


def run(args) -> dict:
    from tvr.models.heads import list_heads

    device = torch.device(args.device)
    precision, note = choose_precision(device, args.precision)
    results: dict = {"device": device_name(device), "precision": precision, "torch": torch.__version__, "notes": []}
    if note:
        results["notes"].append(note)
    with tempfile.TemporaryDirectory(prefix="tvr-gpu-check-") as scratch:
        frames, words = (TINY_FRAMES, TINY_WORDS) if args.tiny else (12, CAPTION_TOKENS)
        setup = Setup(device, precision, args.tiny, args.batch_size, frames, Path(scratch), words)
        heads = args.heads or list_heads()
        compile_heads = args.compile_heads if device.type == "cuda" else []
        artifacts: dict = {}
        if "hbi" in heads and device.type == "cuda":  # the tiny model's estimator, for HBI's CPU comparison
            artifacts["estimator_tiny"] = tiny_estimator(setup)
        results["train"], results["eval"] = [], []
        spent = results["cpu_s_by_section"] = {}
        for case in cases(heads, compile_heads, frames, args.tiny):
            with cpu_time(spent, "train"):
                trained = guarded(train_case, case, setup, args, artifacts)
            results["train"].append(trained)
            if "eval" in args.sections and trained["status"] == "ok" and "compile" not in case.label:
                with cpu_time(spent, "eval"):
                    results["eval"].append(guarded(eval_case, case, setup, args, artifacts))
            artifacts.get("modules", {}).pop(case.label, None)
            release(device)
        checks = {
            "resume": lambda: resume_check(setup),
            "process_group": lambda: process_group_check(setup),
            "pipeline": lambda: pipeline_check(setup, args),
        }
        results["checks"] = []
        for name in (name for name in checks if name in args.sections):
            with cpu_time(spent, name):
                results["checks"].append(checks[name]())
    return results


def tiny_estimator(setup: Setup) -> str:
    """A Banzhaf estimator of the tiny model (one CPU step of the estimator stage), for HBI's comparison."""
    import pytorch_lightning as pl

    from tvr.builders import build_module

    tiny = Setup(torch.device("cpu"), "32-true", True, 8, 8, setup.scratch)
    cfg = compose(tiny, ("head=hbi_estimator",), setup.scratch / "tiny_estimator")
    pl.seed_everything(cfg.seed)
    [path] = build_module(cfg).head.write_artifacts(setup.scratch / "tiny_estimator")
    return str(path)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def default_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------------------------- report
def cell(value, fmt: str = "{:.1f}") -> str:
    return "" if value is None else fmt.format(value)


def report(results: dict) -> str:
    lines = [f"# gpu_check: {results['device']}, {results['precision']}, torch {results['torch']}", ""]
    lines += [f"Note: {note}" for note in results["notes"]]
    lines += [
        "",
        "| case | status | precision | batch | clips/s | s/step | peak GiB | GFLOP/clip | MFU | attention counted |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["train"]:
        if r["status"] != "ok":  # out of memory, or a non-finite loss: the row says which (the JSON has the error)
            lines.append(f"| {r['case']} | {r['status']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['status']} | {r['precision']} | {r['batch']} | {r['clips_per_s']:.1f} | "
            f"{r['s_per_step']:.3f} | {r['peak_gib']:.2f} | {r['gflop_per_clip']:.2f} | {cell(r['mfu'], '{:.1%}')} | "
            f"{'yes' if r['attention_flops_counted'] else 'NO'} |"
        )
    if results["eval"]:
        lines += [
            "",
            "| case (evaluation) | status | texts x videos | encode + score s | videos/s | peak GiB | vs CPU float32 |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for r in results["eval"]:
            if r["status"] != "ok":
                lines.append(f"| {r['case']} | {r['status']} | | | | | |")
                continue
            versus = r["vs_cpu_fp32"]
            if isinstance(versus, dict):
                versus = (
                    f"{'within' if versus['within_tolerance'] else 'OUTSIDE'} tolerance: max score diff "
                    f"{versus['max_score_diff']:.1e}, max recall diff {versus['max_recall_diff']:.2f}"
                )
            shape = " x ".join(map(str, r["shape"]))
            lines.append(
                f"| {r['case']} | ok | {shape} | {r['seconds']:.2f} | {r['videos_per_s']:.0f} | {r['peak_gib']:.2f} | {versus} |"
            )
    if results["checks"]:
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c['check']} | {'ok' if c['ok'] else 'FAILED'} | {c['detail']} |" for c in results["checks"]]
    spent = results.get("cpu_s_by_section")
    if spent:
        lines += [
            "",
            "CPU seconds by section: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent.items()),
        ]
    lines += [
        "",
        f"Tolerances against the CPU: scores {SCORE_TOLERANCE:g}, recalls {METRIC_TOLERANCE:g} points (float32, TF32 off). "
        "Peak memory: device memory allocated (CPU: the process's peak resident size). FLOPs: FlopCounterMode "
        "(matmuls, convolutions, attention; not element-wise work).",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    from tvr.models.heads import list_heads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help=f"tvr-tiny instead of ViT-B/32 geometry ({TINY_FRAMES} frames)"
    )
    parser.add_argument("--heads", nargs="*", choices=list_heads(), help="default: every registered head")
    parser.add_argument(
        "--compile-heads", nargs="*", default=["meanpool"], help="measured again with train.compile (GPU)"
    )
    parser.add_argument(
        "--precision",
        choices=("bf16-mixed", "16-mixed", "32-true"),
        help="default: bf16-mixed on the GPU, 32-true on the CPU (where bf16 autocast is many times slower)",
    )
    parser.add_argument("--batch-size", type=int, help="clips per training step (default 128; --tiny: 8)")
    parser.add_argument("--steps", type=int, help="timed training steps per head (default 5; --tiny: 1)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps before them (default 2; --tiny: 1)")
    parser.add_argument("--eval-size", type=int, help="texts = videos of the evaluation (default 1000; --tiny: 64)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default: from the GPU's name)")
    parser.add_argument(
        "--pipeline-workers",
        type=int,
        nargs="*",
        help="worker counts tried (default: 1, 2, 4, ... up to the cores; --tiny: 0 and 1)",
    )
    parser.add_argument("--pipeline-clips", type=int, default=256)
    sections = ("eval", "resume", "process_group", "pipeline")
    parser.add_argument("--sections", nargs="*", default=list(sections), choices=sections, help="besides training")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(NO_GPU)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    args.batch_size = args.batch_size or (8 if args.tiny else 128)
    args.eval_size = args.eval_size or (64 if args.tiny else 1000)
    args.steps = args.steps or (1 if args.tiny else 5)
    args.warmup_steps = args.warmup_steps or (1 if args.tiny else 2)
    args.peak_tflops = args.peak_tflops or default_peak_tflops(device)
    if args.pipeline_workers is None:
        cores = os.cpu_count() or 1
        doubling = (2**i for i in range(int(math.log2(cores)) + 1))
        args.pipeline_workers = [0, 1] if args.tiny else sorted(set(doubling))
    if args.tiny:
        args.pipeline_clips = min(args.pipeline_clips, 16)
    return args


def quiet() -> None:
    """Lightning's start-up chatter (seed, accelerator, tips) and known warnings would bury the tables."""
    import logging

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (
        "You defined a `validation_step`",
        ".*isinstance\\(treespec, LeafSpec\\)",
        "The number of training batches",
    ):
        warnings.filterwarnings("ignore", message=message)


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet()
    if args.tiny and args.device == "cpu":
        # the tiny model's ops are too small to split: a second thread mostly spins waiting for work (on this
        # loaded 2-core machine the --tiny run cost 88 s of CPU time with two threads, 17 s with one)
        torch.set_num_threads(1)
    started = time.perf_counter()
    results = run(args)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["cpu_s"] = round(cpu_seconds(), 1)  # since the process started: imports and start-up included
    print(report(results))
    print(f"\n{results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} s CPU (user + system, workers included) in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
