"""Pre-decode the sampled frames of a dataset's splits into frame caches (memory-mapped uint8).

    python tools/cache_frames.py data=msrvtt data.source.root=/datasets/msrvtt [--workers 8] [--force]

Caches are written to ``data.frame_cache.dir`` (default ``<root>/frame_cache``), one per split and
sampler setting. A run uses them when ``data.frame_cache.mode`` is ``auto`` or ``build`` and they match
the run's sampler, resolution and video files; random samplers (``segment_random``, shuffled order)
are never cached.
"""

from __future__ import annotations

import argparse
import shutil

from tvr.builders import build_datamodule
from tvr.config import compose_config
from tvr.data.frame_cache import FrameCache, build_frame_caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for tvr-train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="rebuild caches that are already valid")
    args = parser.parse_args()

    cfg = compose_config(args.overrides)
    datamodule = build_datamodule(cfg.data)
    datamodule.dataset.prepare(tuple(name for name in datamodule.split_names.values() if name))
    if datamodule.cache_root is None:
        raise SystemExit("data.frame_cache.dir is not set")
    rows = [(role, name, "-", "not cached: random frames (sampler or augmentation)")
            for role, name in datamodule.split_names.items() if name and not datamodule.frames_are_fixed(role)]
    targets = []
    for role, split, sampler, path in datamodule.cache_targets():
        if not args.force and FrameCache.open(path, split, sampler.describe(), datamodule.image_size) is not None:
            rows.append((role, split.name, str(path), "valid, kept"))
            continue
        shutil.rmtree(path, ignore_errors=True)
        targets.append((path, split, datamodule._reader(sampler)))
        rows.append((role, split.name, str(path), "built"))
    caches = build_frame_caches(targets, workers=args.workers) if targets else []
    failed = sum(len(cache.failed) for cache in caches)
    print("| role | split | cache | state |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if failed:
        print(f"\n{failed} videos could not be decoded; runs count them as decode failures")


if __name__ == "__main__":
    main()
