"""Benchmark clip loading: 12 sampled frames resized to 224, per backend, in one run.

    python tools/bench_decode.py                        # generate MSR-VTT-like videos in a temp folder
    python tools/bench_decode.py --videos DIR           # or use your own folder of videos
    python tools/bench_decode.py --json bench_decode.json

Backends: decord and PyAV (decode only what the CLIP4Clip sampler asks for), the frame cache (memory
mapped, pre-decoded), and the baseline of the seed repos' extractors: OpenCV decodes the whole video,
then the sampled frames are picked. Every backend produces the same thing — uint8 [12, 3, 224, 224] —
in one process with one thread. Generated videos are 10-30 s of 320x240 at 30 fps (like MSR-VTT's raw
files) plus their 3 fps / short-side-224 versions made by tools/compress_videos.py's code; the table
reports both. Needs opencv-python-headless for the baseline (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tvr.data.compress import compress_video
from tvr.data.frame_cache import build_frame_cache, cache_dir_for
from tvr.data.records import SplitRecords, TextRef, VideoRef
from tvr.data.sampling import create_sampler
from tvr.data.transforms import ClipFrameTransform
from tvr.data.video.decord_backend import DecordBackend
from tvr.data.video.pyav_backend import PyAVBackend
from tvr.models.backbone import resolve_preprocessing

FRAMES = 12
PREPROCESSING = resolve_preprocessing("ViT-B-32-quickgelu")  # the frames of a ViT-B/32 run
SIZE = PREPROCESSING.image_size


def generate_videos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """MSR-VTT-like clips: 10-30 s of 320x240 at 30 fps, smooth backgrounds with moving objects and
    sensor-like noise (a few hundred kb/s, as web video), H.264 with x264's default settings."""
    import av

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    paths = []
    for index in range(count):
        seconds = int(rng.integers(10, 31))
        tint = rng.uniform(0.5, 1.0, size=3)
        background = np.stack([xx / 320 * 200, yy / 240 * 180, (xx + yy) / 560 * 150], axis=-1) * tint
        path = folder / f"video{index}.mp4"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            for t in range(seconds * 30):
                frame = background.copy()
                for k in range(3):
                    cx = 160 + 120 * np.sin(t / 50 + k * 2 + index)
                    cy = 120 + 90 * np.cos(t / 70 + k)
                    frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (30 + 10 * k) ** 2] = (60 * k, 200 - 50 * k, 120)
                frame += rng.normal(0, 3, frame.shape)
                image = np.clip(frame, 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def opencv_whole_video(path: Path, sampler, transform) -> torch.Tensor:
    """The seed repos' way: read every frame with OpenCV, then pick the sampled ones."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    indices = sampler(len(frames), fps)
    return transform.resize_crop(np.stack([frames[i] for i in indices]))


def timed(videos: list[Path], load, min_seconds: float) -> float:
    """Clips per second over whole passes of ``videos`` (at least ``min_seconds`` of work)."""
    for path in videos[:2]:
        load(path)  # warm-up: imports, codec initialisation
    clips, started = 0, time.perf_counter()
    while True:
        for path in videos:
            out = load(path)
            assert out.shape[1:] == (3, SIZE, SIZE)
            clips += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return clips / elapsed


def bench(videos: list[Path], cache_root: Path, min_seconds: float) -> dict:
    sampler = create_sampler("clip4clip", max_frames=FRAMES)
    transform = ClipFrameTransform(PREPROCESSING)
    decord, pyav = DecordBackend(timeout_s=None), PyAVBackend(timeout_s=None)
    split = SplitRecords(
        "bench", [VideoRef(p.stem, p) for p in videos], [TextRef(i, p.stem, "") for i, p in enumerate(videos)]
    )
    from tvr.data.clips import ClipReader

    cache = build_frame_cache(
        cache_dir_for(cache_root, split, sampler.describe(), PREPROCESSING),
        split,
        ClipReader(decord, sampler, transform),
        workers=1,
        progress=False,
    )
    by_path = {p: p.stem for p in videos}

    def via(backend):
        return lambda path: transform.resize_crop(backend.read(path, sampler).frames)

    loaders = {
        "opencv_whole_video (baseline)": lambda path: opencv_whole_video(path, sampler, transform),
        "decord": via(decord),
        "pyav": via(pyav),
        "frame_cache": lambda path: cache.read(by_path[path])[0],
    }
    rates = {name: timed(videos, load, min_seconds) for name, load in loaders.items()}
    baseline = rates["opencv_whole_video (baseline)"]
    return {
        name: {"clips_per_s": round(rate, 2), "ratio_to_baseline": round(rate / baseline, 2)}
        for name, rate in rates.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, help="folder of videos (default: generate MSR-VTT-like ones)")
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--min-seconds", type=float, default=5.0, help="minimum timed work per backend")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    random.seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.videos:
            raw = sorted(p for p in args.videos.iterdir() if p.is_file())
        else:
            raw = generate_videos(scratch / "raw", args.num_videos)
        compressed = []
        for path in raw:
            result = compress_video(path, scratch / "compressed" / path.name)
            if result.status != "failed":
                compressed.append(result.target)
        results = {
            "3fps_224": bench(compressed, scratch / "cache_3fps", args.min_seconds),
            "raw": bench(raw, scratch / "cache_raw", args.min_seconds),
        }
    print(f"\n{len(raw)} videos, {FRAMES} frames per clip at {SIZE}px, 1 process, 1 thread\n")
    for version, figures in results.items():
        print(f"### {version} videos\n\n| backend | clips/s | ratio to baseline |\n|---|---|---|")
        for name, row in figures.items():
            print(f"| {name} | {row['clips_per_s']:.1f} | {row['ratio_to_baseline']:.1f}x |")
        print()
    if args.json:
        flat = {name: row for name, row in results["3fps_224"].items()}
        args.json.write_text(json.dumps({**flat, "by_video_version": results}, indent=2))


if __name__ == "__main__":
    main()
