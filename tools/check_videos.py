"""Scan a dataset's videos for missing, empty, unreadable and hanging files, before a long run.

    python tools/check_videos.py data=msrvtt data.source.root=/datasets/msrvtt [--timeout 30] [--workers 8]

Every video of the configured splits is decoded (its sampled frames) in a worker process that is killed
if it exceeds the timeout. Annotation rows whose video file is absent are counted too. The report
(default: <dataset root>/bad_videos.json) lists every bad video; pass it back as
``data.video.skip_list=<report>`` and those videos are never opened, only counted.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from tvr.builders import build_datamodule
from tvr.config import compose_config
from tvr.data.video_check import STATUSES, check_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for tvr-train (data=..., data.source.root=...)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per video before its decoder is killed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", type=Path, help="where to write the JSON report")
    args = parser.parse_args()

    cfg = compose_config(args.overrides)
    datamodule = build_datamodule(cfg.data)
    missing_rows, videos = 0, {}
    for role, split_name in datamodule.split_names.items():
        if not split_name:
            continue
        split = datamodule.dataset.load_split(split_name)
        missing_rows += split.info.get("missing_videos", 0)
        for video in split.videos:
            videos.setdefault(video.video_id, video)
    sampler = datamodule.eval_sampler
    results = check_videos(list(videos.values()), datamodule.backend, sampler, workers=args.workers, timeout_s=args.timeout)
    counts = Counter(result.status for result in results)
    bad = {r.video_id: r.as_dict() for r in results if r.status != "ok"}
    report_path = args.report or Path(cfg.data.source.root) / "bad_videos.json"
    report = {"counts": {s: counts.get(s, 0) for s in STATUSES}, "annotation_rows_without_file": missing_rows,
              "sampler": sampler.describe(), "bad": bad}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1))
    print("| status | videos |\n|---|---|")
    for status in STATUSES:
        print(f"| {status} | {counts.get(status, 0)} |")
    print(f"| listed in annotations, no file | {missing_rows} |")
    print(f"\nreport: {report_path}" + (f" (use data.video.skip_list={report_path})" if bad else ""))


if __name__ == "__main__":
    main()
