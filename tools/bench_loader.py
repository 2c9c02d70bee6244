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


# ------------------------------------------------------------------------------------- where the time goes
def breakdown(data_dir: Path, scratch: Path, args) -> dict[str, float]:
    """Milliseconds per clip of each stage a worker runs, measured here with one thread over the first videos."""
    import numpy as np

    from tvr.data.frame_cache import FrameCache
    from tvr.data.transforms import ClipFrameTransform, normalize_frames

    torch.set_num_threads(1)  # as in a DataLoader worker
    overrides = loader_overrides(data_dir, "cache", "none", args.batch_size, args.train_videos, workers=0)
    datamodule = build_loader_datamodule(overrides, scratch / "run")
    _, split, sampler, path = next(target for target in datamodule.cache_targets() if target[0] == "train")
    prep = datamodule.preprocessing
    cache = FrameCache.open(path, split, sampler.describe(), prep)
    videos = split.videos[:16]
    decoded = [datamodule.backend.read(video.path, sampler, video.start, video.end).frames for video in videos]
    cached = [cache.read(video.video_id)[0] for video in videos]
    as_decoded = [clip.permute(0, 2, 3, 1).numpy() for clip in cached]  # cached 224 px frames, as [T, H, W, 3]
    transforms = {augment: ClipFrameTransform(prep, augment) for augment in ("none", "xpool", "drl_randaugment")}
    stages = {
        "read a clip from the frame cache": lambda i: cache.read(videos[i].video_id),
        "normalise to float32 (the worker did it before; now the device)": lambda i: normalize_frames(
            cached[i], prep.mean, prep.std
        ),
        "decode the sampled frames (video)": lambda i: datamodule.backend.read(
            videos[i].path, sampler, videos[i].start, videos[i].end
        ),
        "resize + centre crop of decoded frames": lambda i: transforms["none"].resize_crop(decoded[i]),
        "X-Pool crop/flip of decoded frames": lambda i: transforms["xpool"].resize_crop(decoded[i]),
        "X-Pool crop/flip of cached 224 px frames (not what tvr does)": lambda i: transforms["xpool"].resize_crop(
            np.ascontiguousarray(as_decoded[i])
        ),
        "DRL RandAugment + resize/crop of decoded frames": lambda i: transforms["drl_randaugment"].resize_crop(
            decoded[i]
        ),
        f"collate {args.batch_size} uint8 clips": lambda i: torch.stack(cached[: args.batch_size]),
        f"collate {args.batch_size} float32 clips (before)": lambda i: torch.stack(
            [normalize_frames(clip, prep.mean, prep.std) for clip in cached[: args.batch_size]]
        ),
    }
    timings = {}
    for name, stage in stages.items():
        stage(0)  # warm-up
        started = time.perf_counter()
        for index in range(len(videos)):
            stage(index)
        timings[name] = round((time.perf_counter() - started) / len(videos) * 1000, 2)
    return timings


# ------------------------------------------------------------------------------------------------ start-up
STARTUP_FRACTIONS = (0.25, 0.5, 1.0)
CAPTIONS_PER_VIDEO = 20  # MSR-VTT's


def msrvtt_folder(folder: Path, annotations: Path, fraction: float) -> int:
    """An MSR-VTT folder holding ``fraction`` of the 9k training videos (the real csv's first rows), the real
    1k-A test csv, an ``MSRVTT_data.json`` with 20 captions per video (the real file is not in ``annotations``:
    the captions are made up, the sizes are MSR-VTT's) and an empty file per video. Returns the training pairs."""
    from tvr.data.datasets.msrvtt import read_csv_column

    source = annotations / "msrvtt"
    train = read_csv_column(source / "MSRVTT_train.9k.csv", "video_id")
    train = train[: round(len(train) * fraction)]
    test = read_csv_column(source / "MSRVTT_JSFUSION_test.csv", "video_id")
    (folder / "videos").mkdir(parents=True)
    (folder / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{video}\n" for video in train))
    (folder / "MSRVTT_JSFUSION_test.csv").write_bytes((source / "MSRVTT_JSFUSION_test.csv").read_bytes())
    sentences = [
        {"video_id": video, "caption": f"a person shows thing {k} in video {video}", "sen_id": k}
        for video in train + test
        for k in range(CAPTIONS_PER_VIDEO)
    ]
    (folder / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    for video in train + test:
        (folder / "videos" / f"{video}.mp4").touch()
    return len(train) * CAPTIONS_PER_VIDEO


def activitynet_folder(folder: Path, annotations: Path, fraction: float) -> int:
    """An ActivityNet Captions folder: ``fraction`` of the real training paragraphs (ids and captions), the real
    val_1 set, an empty file per video. Returns the training paragraphs."""
    source = annotations / "activitynet"
    ids = json.loads((source / "train_ids.json").read_text())
    ids = ids[: round(len(ids) * fraction)]
    captions = json.loads((source / "train.json").read_text())
    (folder / "videos").mkdir(parents=True)
    (folder / "train_ids.json").write_text(json.dumps(ids))
    (folder / "train.json").write_text(json.dumps({key: captions[key] for key in ids if key in captions}))
    for name in ("val_1.json", "val_ids.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    for video in ids + json.loads((source / "val_ids.json").read_text()):
        (folder / "videos" / f"{video.removeprefix('v_')}.mp4").touch()
    return sum(key in captions for key in ids)


FOLDERS = {"msrvtt": msrvtt_folder, "activitynet": activitynet_folder}


class OpenCounter:
    """Counts the files opened under ``root`` while active (``open``, ``io.open``, ``Path.open``/``read_text``)."""

    def __init__(self, root: Path) -> None:
        self.root, self.counts = str(root), {}

    def __enter__(self) -> dict[str, int]:
        import builtins
        import io

        self.original = builtins.open

        def counting_open(file, *args, **kwargs):
            name = str(file)
            if name.startswith(self.root):
                self.counts[name] = self.counts.get(name, 0) + 1
            return self.original(file, *args, **kwargs)

        builtins.open = io.open = counting_open
        return self.counts

    def __exit__(self, *exc) -> None:
        import builtins
        import io

        builtins.open = io.open = self.original


def startup(dataset: str, folder: Path, run_dir: Path) -> dict:
    """Seconds of each start-up step of a training run's data module on ``folder``, and the files it opened."""
    overrides = [
        f"data={dataset}",
        f"data.source.root={folder}",
        "data.frame_cache.mode=off",
        "data.num_workers=0",
        "backbone=tiny",
    ]
    steps, marks = {}, [time.perf_counter()]
    with OpenCounter(folder) as opens:
        from tvr.builders import backbone_preprocessing, build_datamodule
        from tvr.config import compose_config

        cfg = compose_config(overrides, "train", output_dir=run_dir)
        datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
        for name, step in (
            ("prepare_data", datamodule.prepare_data),
            ("setup fit (parse + records)", lambda: datamodule.setup("fit")),
            ("setup test", lambda: datamodule.setup("test")),
            ("train loader (pairs + order)", datamodule.train_dataloader),
        ):
            marks.append(time.perf_counter())
            step()
            steps[name] = time.perf_counter() - marks[-1]
    return {
        "steps_s": steps,
        "pairs": len(datamodule.train_dataloader().dataset),
        "opens": {Path(name).name: count for name, count in sorted(opens.items())},
    }


def measure_startup(annotations: Path, scratch: Path, repeats: int = 3) -> dict:
    """Each dataset at each fraction of its size, the fastest of ``repeats`` start-ups per step (a shared machine
    stalls single runs)."""
    results = {}
    for dataset, make_folder in FOLDERS.items():
        rows = []
        for fraction in STARTUP_FRACTIONS:
            folder = scratch / f"{dataset}-{fraction}"
            size = make_folder(folder, annotations, fraction)
            runs = [startup(dataset, folder, scratch / "run") for _ in range(repeats)]
            fastest = {step: min(run["steps_s"][step] for run in runs) for step in runs[0]["steps_s"]}
            rows.append({"fraction": fraction, "train_items": size, **runs[0], "steps_s": fastest})
        full, quarter = rows[-1], rows[0]
        growth = {
            step: math.log(max(full["steps_s"][step], 1e-4) / max(quarter["steps_s"][step], 1e-4))
            / math.log(full["train_items"] / quarter["train_items"])
            for step in full["steps_s"]
        }
        results[dataset] = {"rows": rows, "growth_exponent": growth}
    return results


def report_startup(results: dict) -> None:
    for dataset, figures in results.items():
        steps = list(figures["rows"][0]["steps_s"])
        print(f"\nstart-up of a training run's data module, {dataset} (seconds per step, fastest of 3)\n")
        print("| training items | " + " | ".join(steps) + " | files opened (most opens of one) |")
        print("|---|" + "---|" * (len(steps) + 1))
        for r in figures["rows"]:
            cells = [f"{r['steps_s'][step]:.2f}" for step in steps]
            print(f"| {r['pairs']:,} | " + " | ".join(cells) + f" | {len(r['opens'])} ({max(r['opens'].values())}) |")
        exponents = ", ".join(f"{step}: {value:.2f}" for step, value in figures["growth_exponent"].items())
        print(f"\ngrowth exponent from 1/4 to all of the data (1 = linear): {exponents}")


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
    parser.add_argument("--breakdown", action="store_true", help="also time each stage of a worker's clip")
    parser.add_argument("--startup", action="store_true", help="time start-up at real scale instead")
    parser.add_argument("--annotations", type=Path, default=Path("../shared/data/annotations"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.startup:
        with tempfile.TemporaryDirectory(prefix="tvr-bench-startup-") as scratch:
            results = measure_startup(args.annotations, Path(scratch))
        report_startup(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
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
                results["per_worker_clips_per_s"].setdefault(source, {})[augment] = rate
                results["workers_for_gpu"].setdefault(source, {})[augment] = math.ceil(args.gpu_clips_per_s / rate)
                print(f"{source} {augment}: {rate:.1f} clips/s per worker", file=sys.stderr, flush=True)
        if args.breakdown:
            results["ms_per_clip"] = breakdown(data_dir, Path(scratch), args)
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
    if "ms_per_clip" in results:
        print("\nwhere a worker's time goes, ms per clip (one thread, in this process)\n\n| stage | ms |\n|---|---|")
        for stage, ms in results["ms_per_clip"].items():
            print(f"| {stage} | {ms:.1f} |")


if __name__ == "__main__":
    main()
