"""Scan a dataset's videos for missing, empty, unreadable and hanging files, before a long run.

    python tools/check_videos.py data=msrvtt data.source.root=/datasets/msrvtt [--timeout 30] [--workers 8]

Every video of the configured splits is decoded (its sampled frames) in a worker process that is killed
if it exceeds the timeout. Videos listed in the annotations without a file are counted too, per split and
over all splits (every count is of distinct videos: MSR-VTT's val and test are one set, counted once). The report
(default: <dataset root>/bad_videos.json) lists every bad video; pass it back as
``data.video.skip_list=<report>`` and those videos are never opened, only counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.config import compose_config
from tvr.data.video_check import VideoInventory, check_videos, report_table, status_counts
from tvr.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, as for tvr-train (data=..., data.source.root=...)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per video before its decoder is killed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", type=Path, help="where to write the JSON report")
    args = parser.parse_args(argv)

    cfg = compose_config(args.overrides)
    datamodule = build_datamodule(cfg.data, preprocessing=backbone_preprocessing(cfg.backbone))
    inventory = VideoInventory.of(datamodule.dataset, datamodule.split_names.values())
    sampler = datamodule.eval_sampler
    results = check_videos(
        list(inventory.with_file.values()), datamodule.backend, sampler, workers=args.workers, timeout_s=args.timeout
    )
    bad = {r.video_id: r.as_dict() for r in results if r.status != "ok"}
    report_path = args.report or Path(cfg.data.source.root) / "bad_videos.json"
    report = {
        "counts": status_counts(results),
        "distinct_videos": inventory.counts(),
        "sampler": sampler.describe(),
        "bad": bad,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1))
    print(report_table(inventory, results))
    print(f"\nreport: {report_path}" + (f" (use data.video.skip_list={report_path})" if bad else ""))


if __name__ == "__main__":
    main()
