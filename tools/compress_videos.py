"""Compress videos the way the CLIP4Clip family prepares them: 3 fps, short side 224, video only.

    python tools/compress_videos.py RAW_DIR OUT_DIR [--workers 8] [--keep-tree] [--portrait-quirk]

Parallel (one process per worker), resumable (finished outputs are skipped; outputs are written under a
temporary name and renamed when complete), and honest about failures: a file that cannot be transcoded
is logged and listed in OUT_DIR/compress_failures.json — never silently replaced by a copy of the raw
file, as the reference script does. The output tree is flat by default (CLIP4Clip's behaviour).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from tvr.data.compress import compress_video
from tvr.data.datasets.common import VIDEO_EXTENSIONS

log = logging.getLogger("compress_videos")


def find_videos(root: Path, extensions: set[str]) -> list[Path]:
    found = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in extensions or "." not in name or name.endswith("."):
                found.append(path)
    return sorted(found)


def _job(args):
    source, target, fps, short_side, quirk = args
    return compress_video(source, target, fps, short_side, quirk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--fps", type=int, default=3)
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--keep-tree", action="store_true", help="mirror sub-folders instead of a flat output folder")
    parser.add_argument(
        "--portrait-quirk",
        action="store_true",
        help="reproduce CLIP4Clip's scale formula, which squashes portrait videos below the short side",
    )
    parser.add_argument("--extensions", nargs="*", default=list(VIDEO_EXTENSIONS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    sources = find_videos(args.input_dir, {e.lower() for e in args.extensions})
    targets = [args.output_dir / (s.relative_to(args.input_dir) if args.keep_tree else s.name) for s in sources]
    duplicates = len(targets) - len(set(targets))
    if duplicates:
        raise SystemExit(f"{duplicates} input files share a name; use --keep-tree to keep sub-folders apart")
    jobs = [(s, t, args.fps, args.short_side, args.portrait_quirk) for s, t in zip(sources, targets)]
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures = []
    with get_context("spawn").Pool(max(1, args.workers)) as pool:
        for result in tqdm(pool.imap_unordered(_job, jobs, chunksize=4), total=len(jobs), desc="compressing"):
            counts[result.status] += 1
            if result.status == "failed":
                log.warning("failed: %s: %s", result.source, result.error)
                failures.append({"source": str(result.source), "error": result.error})
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "compress_failures.json").write_text(json.dumps(failures, indent=1))
    print(
        f"{len(jobs)} videos: {counts['done']} compressed, {counts['skipped']} already done, {counts['failed']} failed"
        + (f" (listed in {args.output_dir / 'compress_failures.json'})" if failures else "")
    )


if __name__ == "__main__":
    main()
