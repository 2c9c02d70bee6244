"""How many clips per second one data-loader worker process delivers, and how many workers a GPU needs.

    python tools/bench_loader.py                                  # cache and video, every augmentation
    python tools/bench_loader.py --json bench_loader.json --clips 96
    python tools/bench_loader.py --sources cache --augments none  # one row
    python tools/bench_loader.py --startup --annotations ../shared/data/annotations   # start-up at real scale

The loader measured is tvr's own training loader (``RetrievalDataModule.train_dataloader``: TrainPairs,
ClipReader, the frame cache, the augmentation, ``collate``) with **one worker process**, at ViT-B/32's input
(224 px) and 12 frames per clip, from two sources:

- ``cache``: the memory-mapped frame cache (``data.frame_cache``), built once before timing;
- ``video``: 3 fps, 224 px H.264 files (the CLIP4Clip family's compressed videos; here the built-in synthetic
  set rendered at that rate and size), decoded by the configured backend (decord by default).

and each training augmentation (``none``, X-Pool's crop/flip ``xpool``, DRL's ``drl_randaugment``). tvr never
caches augmented clips (their frames differ every epoch), so the cache rows with an augmentation are the
loader's real behaviour: it decodes. A clip counts when the main process holds its batch, so the figure
includes the worker's hand-over (the batch's bytes through shared memory). The worker runs one torch thread,
as DataLoader workers do; the first batches (worker start-up, file opening) are not timed.

From the per-worker rate, the workers one GPU needs at ``--gpu-clips-per-s`` (default 1,250 clips/s: one H100
at 40 % of its bf16 peak on a ViT-B/32 training step, ``tools/gpu_check.py`` measures it) are printed. On a
shared machine timings are noisy: run the configurations you compare in one invocation.

``--breakdown`` adds where one clip's time goes inside a worker, stage by stage (read from the cache, crop/flip
on 224 px frames, normalisation, decoding), in this process with one thread.

``--startup`` times start-up at real scale instead: parsing the real annotation files and building the
split records of MSR-VTT (180k training pairs) and ActivityNet (paragraphs), at the full size and at fractions
of it (so a step that grows faster than the data shows), and how often each annotation file was opened.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

SOURCES = ("cache", "video")
FRAMES, IMAGE_SIZE = 12, 224
GPU_BUDGET_CLIPS_PER_S = 1250.0  # issue 22's budget: one H100 at 40 % of 989 TFLOP/s, 320 GFLOP per clip
# 3 fps video long enough for CLIP4Clip's 1 fps sampling to find 12 frames
VIDEO = {"fps": 3, "seconds": 16, "frame_size": IMAGE_SIZE}


VIT_B32 = ("backbone=vit_b32", "backbone.weights=null")


def loader_overrides(
    data_dir: Path,
    source: str,
    augment: str,
    batch_size: int,
    train_videos: int,
    workers: int = 1,
    backbone: tuple[str, ...] = VIT_B32,
    frames: int = FRAMES,
    video: dict = VIDEO,
) -> list[str]:
    """``tvr-train`` overrides of the loader measured: the backbone's input (ViT-B/32's by default), ``frames``
    per clip, one source, one augmentation."""
    cache_mode = "build" if source == "cache" else "off"
    return [
        *backbone,
        f"paths.data_dir={data_dir}",
        *(f"data.source.{key}={value}" for key, value in video.items()),
        f"data.source.num_train={train_videos}",
        "data.source.num_val=0",
        "data.source.num_test=4",
        f"data.video.train_sampler.max_frames={frames}",
        f"data.video.eval_sampler.max_frames={frames}",
        f"data.train_augment={augment}",
        f"data.frame_cache.mode={cache_mode}",
        "data.frame_cache.workers=1",
        f"data.batch_size={batch_size}",
        f"data.num_workers={workers}",
        "data.splits.val=null",
    ]


def build_loader_datamodule(overrides: list[str], run_dir: Path):
    """The datamodule of a ``tvr-train`` run with these overrides, prepared (data generated, caches built)."""
    from tvr.builders import backbone_preprocessing, build_datamodule
    from tvr.config import compose_config

    cfg = compose_config(overrides, "train", output_dir=run_dir)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def clips_per_second(batches, clips: int, warmup_batches: int = 2, deliver=None) -> float:
    """Clips per second ``batches`` (an iterable of collated batches) yields once ``warmup_batches`` are out,
    over at least ``clips`` clips; ``deliver(batch)``, when given, runs on every batch inside the timing (e.g.
    the transfer to the GPU)."""
    counted, started = 0, 0.0
    for index, batch in enumerate(batches):
        if deliver is not None:
            deliver(batch)
        if index == warmup_batches - 1:
            started = time.perf_counter()
        elif index >= warmup_batches:
            counted += batch["frames"].shape[0]
            if counted >= clips:
                break
    return counted / (time.perf_counter() - started)


def endless(loader):
    """The loader's batches epoch after epoch (persistent workers: one start-up)."""
    while True:
        yield from loader


def measure(data_dir: Path, scratch: Path, source: str, augment: str, args) -> float:
    overrides = loader_overrides(data_dir, source, augment, args.batch_size, args.train_videos)
    datamodule = build_loader_datamodule(overrides, scratch / "run")
    loader = datamodule.train_dataloader()
    if source == "cache" and augment == "none" and not datamodule.caches_used.get("train"):
        raise SystemExit("the frame cache was not used for the cache row")
    return clips_per_second(endless(loader), args.clips)


def main() -> None:
    from tvr.data.transforms import AUGMENTATIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="*", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--augments", nargs="*", default=list(AUGMENTATIONS), choices=AUGMENTATIONS)
    parser.add_argument("--clips", type=int, default=64, help="timed clips per row (after 2 untimed batches)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-videos", type=int, default=48, help="videos of the generated set")
    parser.add_argument("--gpu-clips-per-s", type=float, default=GPU_BUDGET_CLIPS_PER_S)
    parser.add_argument("--data-dir", type=Path, help="where the generated videos go (kept); default: a scratch folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tvr-bench-loader-") as scratch:
        data_dir = args.data_dir or Path(scratch) / "data"
        from tvr.data.synthetic import SyntheticConfig, ensure_synthetic_dataset

        ensure_synthetic_dataset(
            data_dir / "synthetic", SyntheticConfig(num_train=args.train_videos, num_val=0, num_test=4, **VIDEO)
        )
        results = {"per_worker_clips_per_s": {}, "workers_for_gpu": {}}
        for source in args.sources:
            for augment in args.augments:
                rate = measure(data_dir, Path(scratch), source, augment, args)
                results["per_worker_clips_per_s"].setdefault(source, {})[augment] = round(rate, 2)
                results["workers_for_gpu"].setdefault(source, {})[augment] = math.ceil(args.gpu_clips_per_s / rate)
                print(f"{source} {augment}: {rate:.1f} clips/s per worker", file=sys.stderr, flush=True)
    report(results, args.gpu_clips_per_s)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict, gpu_rate: float) -> None:
    print(
        f"\nclips/s per worker process, {FRAMES} frames x {IMAGE_SIZE}² (ViT-B/32 input), training loader, "
        f"{torch.__version__}; workers one GPU needs at {gpu_rate:g} clips/s\n"
    )
    print("| source | augmentation | clips/s per worker | workers for the GPU |\n|---|---|---|---|")
    for source, rates in results["per_worker_clips_per_s"].items():
        for augment, rate in rates.items():
            print(f"| {source} | {augment} | {rate:.1f} | {results['workers_for_gpu'][source][augment]} |")


if __name__ == "__main__":
    main()
