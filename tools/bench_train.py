"""Measure the framework's own cost: tvr's Lightning training step and test pass against a plain PyTorch
loop over the same model, batches and optimiser, in one process (goal: tvr at most 5 % slower).

    python tools/bench_train.py                                   # tiny CLIP, meanpool, batch 8, CPU
    python tools/bench_train.py --head seqtransf --steps 50 --json bench_train.json
    python tools/bench_train.py --device cuda --backbone vit_b32 --batch-size 128   # clips/s and MFU
    python tools/bench_train.py --data-dir data data=msrvtt       # trailing args are Hydra overrides

Both sides read the same batches, taken once from tvr's own loaders and kept in memory, so video
decoding is not measured. The tvr side is ``build_trainer``'s Trainer (logger, checkpointing, progress
bar, gradient clipping, precision as configured) fitting ``build_module``'s RetrievalModule. The plain
side is a copy of that module taken before fitting, trained by a hand-written loop: forward under the
same autocast, backward, the same gradient-norm clipping, the optimiser and LambdaLR schedule that
``configure_optimizers`` builds, and the logit-scale clamp; no logging. A timed training step runs from
the end of one step to the end of the next (so it includes fetching the batch and every hook); the
warm-up steps, Lightning's start-up and the checkpoint written at the end of the epoch are outside it
(checkpoints every ``train.checkpoint_every_n_steps`` steps, when set, are inside). The table gives the
median step: other processes sharing a CPU stall single steps now and then.

Where the difference goes: both sides also stamp the same points inside every step (batch start, before
and after backward, before the optimiser step, step end), and a second table gives each segment's median
on both sides, so tvr's extra milliseconds are attributed to the Lightning loop, tvr's training_step
bookkeeping (logging, the finite-loss check), or the clipping/guard/optimiser segment.

Evaluation: tvr's ``trainer.test`` (encode every video and text, ``tiled_similarity`` through the head,
``evaluate_scores``), timed from the test epoch's start to the end of the metrics, against a plain
``torch.no_grad`` loop calling the same encoders, ``tiled_similarity`` and ``retrieval_metrics`` on the
same trained module. Each side gets one untimed pass first.

With no ``--data-dir`` the built-in synthetic set is generated, small, into a scratch folder.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

# Batches kept in memory and cycled: enough variety for timing, bounded memory (a ViT-B/32 batch of
# 128 clips of 12 frames is ~0.9 GB in fp32).
DISTINCT_BATCHES = 8


class InMemoryBatches(Dataset):
    """``length`` ready-made batches, cycling through ``batches``."""

    def __init__(self, batches: list[dict], length: int | None = None) -> None:
        self.batches, self.length = batches, length or len(batches)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.batches[index % len(self.batches)]


def in_memory_loader(batches: list[dict], length: int | None = None) -> DataLoader:
    # batch_size=None hands each item out as it is; the identity collate skips default_convert's walk. Its own
    # generator: starting an epoch must not draw from the global torch RNG (dropout's), as tvr's loaders do not
    return DataLoader(
        InMemoryBatches(batches, length),
        batch_size=None,
        collate_fn=lambda batch: batch,
        generator=torch.Generator().manual_seed(0),
    )


def preload(loader: DataLoader, count: int) -> list[dict]:
    """The first ``count`` batches of ``loader``, reading it again while it is shorter."""
    batches: list[dict] = []
    while len(batches) < count:
        before = len(batches)
        batches.extend(itertools.islice(loader, count - len(batches)))
        if len(batches) == before:
            raise ValueError("the data loader yields no batches")
    return batches


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # only at the edges of the timed steps: a sync inside would stall the queue
    return time.perf_counter()


# The points both sides stamp inside a training step, in order; a segment runs from one to the next (the
# first from the previous step's end). Host clock only: on a GPU the queue makes the inner segments
# approximate, while the step total is synchronised at its edges.
MARKS = ("batch_start", "before_backward", "after_backward", "before_optimizer_step", "step_end")
SEGMENTS = {
    "batch_start": "fetch the batch (tvr: and the loop's bookkeeping, the LR schedule)",
    "before_backward": "forward + loss (tvr: training_step with logging and the finite check, zero_grad)",
    "after_backward": "backward",
    "before_optimizer_step": "after backward until the optimiser step (tvr: Lightning's closure bookkeeping)",
    "step_end": "clip + optimiser step + logit-scale clamp (tvr: + non-finite guard, hooks; plain: + LR step)",
}


class StepMarks:
    """Per-step time stamps at :data:`MARKS`."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def mark(self, name: str, at: float | None = None) -> None:
        if name == MARKS[0]:
            self.steps.append({})
        self.steps[-1][name] = time.perf_counter() if at is None else at

    def segments(self, warmup: int) -> dict[str, list[float]]:
        """Each segment's durations over the timed steps (those after ``warmup``)."""
        out: dict[str, list[float]] = {name: [] for name in MARKS}
        for previous, step in zip(self.steps[warmup - 1 :], self.steps[warmup:]):
            start = previous["step_end"]
            for name in MARKS:
                out[name].append(step[name] - start)
                start = step[name]
        return out


class Stopwatch(pl.Callback):
    """Time marks inside the Trainer: at the end of every training step (before the module's own
    on_train_batch_end, which the next interval then includes), at the :data:`MARKS` inside it, and
    around each test epoch (from its start to ``on_test_end``, which follows the metrics of
    ``on_test_epoch_end``)."""

    def __init__(self, device: torch.device, warmup: int, total: int) -> None:
        self.device, self.synced_steps = device, {warmup - 1, total - 1}
        self.step_ends: list[float] = []
        self.marks = StepMarks()
        self.losses: list[torch.Tensor] = []
        self.test_times: list[float] = []
        self.test_started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.marks.mark("batch_start")

    def on_before_backward(self, trainer, module, loss) -> None:
        self.marks.mark("before_backward")

    def on_after_backward(self, trainer, module) -> None:
        self.marks.mark("after_backward")

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.marks.mark("before_optimizer_step")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())
        self.step_ends.append(clock(self.device) if batch_idx in self.synced_steps else time.perf_counter())
        self.marks.mark("step_end", self.step_ends[-1])

    def on_test_epoch_start(self, trainer, module) -> None:
        self.test_started = clock(self.device)

    def on_test_end(self, trainer, module) -> None:
        self.test_times.append(clock(self.device) - self.test_started)


def training_loss(model, batch: dict) -> torch.Tensor:
    """RetrievalModule.training_step without Lightning: one process, so the all-gather is the identity,
    and nothing is logged."""
    text = model.encode_texts(batch["tokens"])
    video = model.encode_videos(batch["frames"], batch["frame_mask"])
    loss = model.loss(model.scaled(model.head.similarity(text, video)))
    return loss + sum(model.head.extra_losses(text, video, model.backbone.logit_scale).values())


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


def plain_fit(model, loader: DataLoader, optimizer, scheduler, clip: float | None, autocast, device, warmup: int):
    params = [param for group in optimizer.param_groups for param in group["params"]]
    step_ends, losses, marks = [], [], StepMarks()
    model.train()
    for index, batch in enumerate(loader):
        batch = to_device(batch, device)
        marks.mark("batch_start")
        with autocast():
            loss = training_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        marks.mark("before_backward")
        loss.backward()
        marks.mark("after_backward")
        marks.mark("before_optimizer_step")
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.backbone.logit_scale.clamp_(max=model.max_log_logit_scale)
        losses.append(loss.detach())
        step_ends.append(clock(device) if index in (warmup - 1, len(loader) - 1) else time.perf_counter())
        marks.mark("step_end", step_ends[-1])
    return step_ends, losses, marks


def plain_evaluate(
    model, video_batches: list[dict], text_batches: list[dict], autocast, device, tiles: dict, median: str
) -> dict:
    from tvr.evaluation import retrieval_metrics

    scores, text_to_video = plain_scores(model, video_batches, text_batches, autocast, device, tiles)
    return retrieval_metrics(scores, text_to_video, median=median)


def plain_scores(model, video_batches, text_batches: list[dict], autocast, device, tiles: dict):
    """The ``[Nt, Nv]`` scores (``video_batches`` is read once: a generator will do) and each text's video."""
    from tvr.evaluation import tiled_similarity
    from tvr.models.heads.base import cat_reprs

    model.eval()
    with torch.no_grad():
        with autocast():
            videos = cat_reprs(
                [model.encode_videos(b["frames"].to(device), b["frame_mask"].to(device)) for b in video_batches]
            )
            texts = cat_reprs([model.encode_texts(b["tokens"].to(device)) for b in text_batches])
        scores = tiled_similarity(model.head, texts, videos, **tiles)  # outside autocast, as in on_test_epoch_end
    return scores, torch.cat([b["video_index"] for b in text_batches]).numpy()


def step_flops(model, batch: dict, autocast) -> int:
    """Model FLOPs of one training step (forward + backward), counted once by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with autocast():
            loss = training_loss(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def compose(args, data_dir: Path, run_dir: Path):
    from tvr.config import compose_config

    base = ["trainer=gpu"] if args.device == "cuda" else []
    base += [
        f"backbone={args.backbone}",
        f"head={args.head}",
        f"paths.data_dir={args.data_dir or data_dir}",
        f"data.batch_size={args.batch_size}",
        "trainer.max_epochs=1",
    ]
    if args.precision:
        base.append(f"trainer.precision={args.precision}")
    cfg = compose_config([*base, *args.overrides], "train", output_dir=run_dir)
    if cfg.data.name == "synthetic":  # generated for the benchmark: only as large as it reads
        small = [
            f"data.source.num_train={DISTINCT_BATCHES * args.batch_size}",
            "data.source.num_val=8",
            "data.source.num_test=256",
        ]
        cfg = compose_config([*base, *small, *args.overrides], "train", output_dir=run_dir)
    mirrored = {
        "precision": ("32-true", "bf16-mixed"),
        "gradient_clip_algorithm": ("norm",),
        "accumulate_grad_batches": (1,),
    }
    for key, values in mirrored.items():
        if cfg.trainer.get(key, values[0]) not in values:
            raise SystemExit(
                f"trainer.{key}={cfg.trainer[key]}: the plain loop mirrors {' or '.join(map(str, values))} only"
            )
    return cfg


def row(side: str, times: list[float], clips: int, flops: int | None = None, peak_tflops: float | None = None) -> dict:
    """One side's figures from its step times: the median, and the mean beside it."""
    median = statistics.median(times)
    figures = {
        "side": side,
        "steps": len(times),
        "s_per_step": median,
        "mean_s_per_step": statistics.mean(times),
        "clips_per_s": clips / median,
    }
    if peak_tflops:
        figures["mfu"] = flops / median / (peak_tflops * 1e12)
    return figures


def step_times(step_ends: list[float], warmup: int) -> list[float]:
    return [end - start for start, end in zip(step_ends[warmup - 1 :], step_ends[warmup:])]


def run(args, scratch: Path) -> dict:
    from tvr.builders import backbone_preprocessing, build_datamodule, build_module, build_trainer
    from tvr.validation import validate_train_config

    cfg = compose(args, scratch / "data", scratch / "run")
    validate_train_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    module = build_module(cfg)
    plain = copy.deepcopy(module)  # same initial weights, before Lightning touches the module
    device = torch.device(args.device)
    mixed = cfg.trainer.precision == "bf16-mixed"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if mixed else nullcontext()

    total = args.warmup_steps + args.steps
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_batches = preload(datamodule.train_dataloader(), min(total, DISTINCT_BATCHES))
    datamodule.setup("test")
    video_batches, text_batches = (list(loader) for loader in datamodule.test_dataloader()[:2])

    # tvr: the Trainer tvr-train builds, with a stopwatch callback added
    trainer = build_trainer(
        cfg.trainer,
        scratch / "run",
        cfg.get("logger"),
        monitor=None,
        callbacks_cfg=cfg.get("callbacks"),
        checkpoint_every_n_steps=cfg.train.get("checkpoint_every_n_steps", 0),
    )
    stopwatch = Stopwatch(device, args.warmup_steps, total)
    trainer.callbacks.append(stopwatch)
    torch.manual_seed(cfg.seed)  # both sides start from one RNG state (dropout in some heads)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=in_memory_loader(train_batches, total))
    fit_s = time.perf_counter() - started

    # plain: the optimiser and schedule configure_optimizers builds, on the copy's parameters
    plain.to(device)
    plain.trainer = trainer  # it reads the precision and the schedule length (total steps) from the trainer
    optimisers = plain.configure_optimizers()
    plain.trainer = None
    flops = step_flops(plain, to_device(train_batches[0], device), autocast)
    torch.manual_seed(cfg.seed)
    plain_ends, plain_losses, plain_marks = plain_fit(
        plain,
        in_memory_loader(train_batches, total),
        optimisers["optimizer"],
        optimisers["lr_scheduler"]["scheduler"],
        cfg.trainer.get("gradient_clip_val"),
        autocast,
        device,
        args.warmup_steps,
    )
    weight_diff = max((a - b).abs().max().item() for a, b in zip(module.parameters(), plain.parameters()))

    # evaluation: both sides score the tvr-trained module, passes alternating so that a busy spell hits both
    eval_loaders = [in_memory_loader(video_batches), in_memory_loader(text_batches)]
    tiles = {
        "text_chunk": cfg.evaluation.text_chunk,
        "video_chunk": cfg.evaluation.video_chunk,
        "memory_budget_bytes": int(cfg.evaluation.memory_budget_gb * 2**30),
    }
    plain_eval_times = []
    for _ in range(1 + args.eval_passes):
        trainer.test(module, dataloaders=eval_loaders, verbose=False)
        started = clock(device)
        plain_metrics = plain_evaluate(
            module, video_batches, text_batches, autocast, device, tiles, cfg.evaluation.median
        )
        plain_eval_times.append(clock(device) - started)

    clips = train_batches[0]["frames"].shape[0]
    num_videos = sum(b["frames"].shape[0] for b in video_batches)
    peak = args.peak_tflops if device.type == "cuda" else None
    train_rows = [
        row("tvr", step_times(stopwatch.step_ends, args.warmup_steps), clips, flops, peak),
        row("plain", step_times(plain_ends, args.warmup_steps), clips, flops, peak),
    ]
    eval_rows = [row("tvr", stopwatch.test_times[1:], num_videos), row("plain", plain_eval_times[1:], num_videos)]
    tvr_metrics = module.eval_results["test"]
    segments = {
        side: {name: statistics.median(times) for name, times in marks.segments(args.warmup_steps).items()}
        for side, marks in (("tvr", stopwatch.marks), ("plain", plain_marks))
    }
    return {
        "config": {
            "head": cfg.head.name,
            "backbone": module.backbone.model_name,
            "batch_size": clips,
            "frames": datamodule.train_sampler.max_frames,
            "device": args.device,
            "precision": cfg.trainer.precision,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "eval_texts": sum(b["tokens"].shape[0] for b in text_batches),
            "eval_videos": num_videos,
            "flops_per_step": flops,
            "peak_tflops": peak,
        },
        "train": {
            "tvr": {**train_rows[0], "losses": [loss.item() for loss in stopwatch.losses], "fit_call_s": fit_s},
            "plain": {**train_rows[1], "losses": [loss.item() for loss in plain_losses]},
            "ratio": train_rows[0]["s_per_step"] / train_rows[1]["s_per_step"],
            "max_weight_diff": weight_diff,
            "segments_s": segments,
        },
        "eval": {
            "tvr": {**eval_rows[0], "t2v": tvr_metrics["t2v"], "v2t": tvr_metrics["v2t"]},
            "plain": {**eval_rows[1], "t2v": plain_metrics["t2v"], "v2t": plain_metrics["v2t"]},
            "ratio": eval_rows[0]["s_per_step"] / eval_rows[1]["s_per_step"],
        },
    }


def report(results: dict) -> None:
    c = results["config"]
    print(
        f"\ntvr vs a plain PyTorch loop: head {c['head']}, backbone {c['backbone']}, batch {c['batch_size']}, "
        f"{c['frames']} frames, {c['device']}, {c['precision']}, {c['threads']} threads, torch {c['torch']}, "
        f"lightning {c['lightning']}; {c['flops_per_step'] / 1e9:.2f} GFLOP per training step (forward + backward, "
        "torch's FlopCounterMode: matmuls, convolutions, attention)"
    )
    if c["peak_tflops"]:
        print(f"MFU assumes a peak of {c['peak_tflops']:g} dense bf16 TFLOP/s")
    mfu = c["peak_tflops"] is not None
    header = "| phase | side | steps | s/step | clips/s |" + (" MFU |" if mfu else "") + " tvr/plain |"
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    for phase in ("train", "eval"):
        for side in ("plain", "tvr"):
            r = results[phase][side]
            cells = [phase, side, str(r["steps"]), f"{r['s_per_step']:.4f}", f"{r['clips_per_s']:.1f}"]
            if mfu:
                cells.append(f"{r['mfu']:.1%}" if "mfu" in r else "")
            cells.append(f"{results[phase]['ratio']:.3f}" if side == "tvr" else "")
            print("| " + " | ".join(cells) + " |")
    train, evaluation = results["train"], results["eval"]
    print(
        f"\ns/step is the median over the timed steps (the JSON has the mean too).\n"
        f"train: tvr slower by {(train['ratio'] - 1) * 100:.1f} % (goal: at most 5 %). A step runs from the end of one "
        "to the end of the next: batch fetch, forward, backward, clipping, optimiser and LR step, logit-scale clamp, "
        f"and on the tvr side every hook, logging and the progress bar. tvr's fit() call took {train['tvr']['fit_call_s']:.1f} s "
        "in all (start-up, warm-up steps, checkpoint at the epoch end and teardown are outside the timed steps)."
    )
    print(
        f"eval: tvr slower by {(evaluation['ratio'] - 1) * 100:.1f} %. A step is one whole pass over "
        f"{c['eval_texts']} texts x {c['eval_videos']} videos (encode, tiled_similarity, metrics); clips/s counts videos."
    )
    segments = train["segments_s"]
    print("\nwhere a training step's time goes (median per segment, ms; the medians need not add up to the step's):")
    print("| segment | plain | tvr | tvr - plain |\n|---|---|---|---|")
    for name, what in SEGMENTS.items():
        plain_ms, tvr_ms = segments["plain"][name] * 1e3, segments["tvr"][name] * 1e3
        print(f"| {what} | {plain_ms:.2f} | {tvr_ms:.2f} | {tvr_ms - plain_ms:+.2f} |")
    same_loss = math.isclose(train["tvr"]["losses"][0], train["plain"]["losses"][0], rel_tol=1e-6)
    same_metrics = all(evaluation["tvr"][d] == evaluation["plain"][d] for d in ("t2v", "v2t"))
    print(
        f"like with like: first-step loss tvr {train['tvr']['losses'][0]:.6f}, plain {train['plain']['losses'][0]:.6f} "
        f"({'equal' if same_loss else 'DIFFERENT'}); largest weight difference after training {train['max_weight_diff']:.2e}; "
        f"test metrics {'equal' if same_metrics else 'DIFFERENT'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="meanpool")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per side")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed training steps before them (at least 1)")
    parser.add_argument("--eval-passes", type=int, default=3, help="timed test passes per side, after one untimed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads for both sides (default: torch's); 1 on a shared machine"
    )
    parser.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed"),
        help="default: the trainer config's (cpu 32-true, gpu bf16-mixed)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the device's dense bf16 peak, for MFU on cuda (H100/H200: 989)",
    )
    parser.add_argument("--data-dir", type=Path, help="data root (paths.data_dir); default: a scratch folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as tvr-train takes them")
    args = parser.parse_args()
    if args.warmup_steps < 1 or args.steps < 1 or args.eval_passes < 1:
        parser.error("--steps, --warmup-steps and --eval-passes must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tvr-bench-train-") as scratch:
        results = run(args, Path(scratch))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
