"""Benchmark DiffusionRet's learned second stage: re-ranking time per 1k queries per direction, against the WTI
scoring it re-ranks (CPU).

    python tools/bench_rerank.py                                   # tiny (D = 64) and ViT-B (D = 512) widths
    python tools/bench_rerank.py --widths 512 --queries 64 --json bench_rerank.json

The head is ``diffusionret`` at its reference settings (K = 32 candidates, T = 50 DDIM steps, chunks of 32
queries) with random weights over random features (12 frames, 32 text positions of which 12 real). Per width:
the stage-1 WTI scores of ``--queries`` texts against a gallery of ``--gallery`` videos (what re-ranking starts
from; per 1k queries, so against a 1k gallery it is MSR-VTT 1k-A's scoring), then ``rerank_queries`` for those
texts (t2v) and for as many videos against ``--gallery`` texts (v2t). The FLOPs of one denoising step are
counted by torch's FLOP counter, so the table also gives the achieved GFLOP/s of the re-ranking, and its share of
the CPU's float32 matrix-product rate (the practical limit, measured as tools/bench_towers.py does); the methods
spec (§5.1) measured the reference's own loop on one CPU thread at 9.2 s (D = 64) and 206 s (D = 512) per 1k
queries per direction.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bench_towers import matmul_rate  # tools/ is the script's own folder, first on sys.path

FRAMES, WORDS, REAL_WORDS = 12, 32, 12


def representations(head, texts: int, videos: int, width: int, seed: int = 0):
    from tvr.models.backbone import FrameFeatures, TextFeatures

    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(texts, WORDS, dtype=torch.bool)
    mask[:, :REAL_WORDS] = True
    tokens = torch.randn(texts, WORDS, width, generator=generator)
    text = TextFeatures(tokens[:, REAL_WORDS - 1].clone(), tokens, mask)
    video = FrameFeatures(
        torch.randn(videos, FRAMES, width, generator=generator), torch.ones(videos, FRAMES, dtype=torch.bool)
    )
    return head.encode_text(text), head.encode_video(video)


def step_flops(head, text_repr, video_repr) -> dict[str, float]:
    """FLOPs of one DDIM step of one chunk, per direction (torch's counter, one generator call)."""
    from torch.utils.flop_counter import FlopCounterMode

    k, chunk = head.k["t2v"], head.rerank_chunk
    candidates = torch.arange(k).expand(chunk, k)
    x, t = torch.zeros(chunk, k), torch.zeros(chunk, dtype=torch.long)
    counts = {}
    calls = {
        "t2v": lambda: head.t2v_generator(
            x, t, text_repr["eot"][:chunk], video_repr["frames"][candidates], video_repr["mask"][candidates]
        ),
        "v2t": lambda: head.v2t_generator(
            x, t, text_repr["eot"][candidates], video_repr["frames"][:chunk], video_repr["mask"][:chunk]
        ),
    }
    for direction, call in calls.items():
        with FlopCounterMode(display=False) as counter:
            call()
        counts[direction] = counter.get_total_flops() / chunk  # per query and step
    return counts


def measure(width: int, queries: int, gallery: int) -> dict:
    from tvr.models.heads import create_head
    from tvr.models.heads.base import slice_repr
    from tvr.models.similarity import tiled_similarity

    torch.manual_seed(0)
    head = create_head("diffusionret", embed_dim=width, stage="generation", init_from_clip=False).eval()
    with torch.no_grad():
        texts, videos = representations(head, max(queries, gallery), max(queries, gallery), width)
        query_texts, query_videos = slice_repr(texts, 0, queries), slice_repr(videos, 0, queries)
        gallery_texts, gallery_videos = slice_repr(texts, 0, gallery), slice_repr(videos, 0, gallery)
        tiled_similarity(head, query_texts, gallery_videos)  # warm-up: allocator, thread pool
        started = time.perf_counter()
        t2v_rows = tiled_similarity(head, query_texts, gallery_videos)  # as evaluation scores, tile by tile
        wti_s = time.perf_counter() - started
        v2t_rows = tiled_similarity(head, gallery_texts, query_videos).t()
        index = torch.arange(queries)
        head.rerank_queries("t2v", t2v_rows[:1], slice_repr(query_texts, 0, 1), gallery_videos, index[:1])  # warm-up
        timings = {}
        for direction, rows, query, items in (
            ("t2v", t2v_rows, query_texts, gallery_videos),
            ("v2t", v2t_rows, query_videos, gallery_texts),
        ):
            started = time.perf_counter()
            head.rerank_queries(direction, rows, query, items, index)
            timings[direction] = time.perf_counter() - started
        flops = step_flops(head, texts, videos)
    per_1k = 1000 / queries
    return {
        "width": width,
        "queries": queries,
        "gallery": gallery,
        "k": head.k["t2v"],
        "steps": head.schedule.steps,
        "wti_s_per_1k_queries": round(wti_s * per_1k, 3),
        **{f"rerank_{d}_s_per_1k_queries": round(timings[d] * per_1k, 2) for d in timings},
        **{f"rerank_{d}_gflop_per_1k_queries": round(flops[d] * head.schedule.steps * 1000 / 1e9, 1) for d in flops},
        **{
            f"rerank_{d}_gflop_per_s": round(flops[d] * head.schedule.steps * queries / timings[d] / 1e9, 2)
            for d in flops
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="*", type=int, default=[64, 512], help="D: 64 (tiny), 512 (ViT-B)")
    parser.add_argument("--queries", type=int, default=128, help="queries re-ranked per direction")
    parser.add_argument("--gallery", type=int, default=1000, help="items each query is scored against")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the spec's reference timing used 1)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_rate()["gflops"]  # the CPU's practical float32 rate (bench_towers' measure)
    rows = [
        {**measure(width, args.queries, args.gallery), "matmul_gflop_per_s": round(peak, 1)} for width in args.widths
    ]
    print(
        f"\nCPU, {args.threads} thread(s), float32 matmul {peak:.1f} GFLOP/s, load average {os.getloadavg()[0]:.1f}; "
        f"K = {rows[0]['k']} candidates, T = {rows[0]['steps']} DDIM steps, {args.queries} queries per direction "
        f"against {args.gallery} items, timings per 1k queries\n"
    )
    header = (
        "| D | WTI scoring s | t2v re-rank s | v2t re-rank s | re-rank / WTI (t2v) | t2v GFLOP | v2t GFLOP "
        "| t2v GFLOP/s | v2t GFLOP/s | of matmul rate |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        ratio = row["rerank_t2v_s_per_1k_queries"] / max(row["wti_s_per_1k_queries"], 1e-9)
        print(
            f"| {row['width']} | {row['wti_s_per_1k_queries']:.2f} | {row['rerank_t2v_s_per_1k_queries']:.1f} "
            f"| {row['rerank_v2t_s_per_1k_queries']:.1f} | {ratio:.0f}x | {row['rerank_t2v_gflop_per_1k_queries']:.0f} "
            f"| {row['rerank_v2t_gflop_per_1k_queries']:.0f} | {row['rerank_t2v_gflop_per_s']:.1f} "
            f"| {row['rerank_v2t_gflop_per_s']:.1f} | {row['rerank_t2v_gflop_per_s'] / peak:.0%} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
