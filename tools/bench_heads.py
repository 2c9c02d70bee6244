"""Benchmark every registered head's evaluation: similarity time, peak memory and FLOPs per pair (CPU).

    python tools/bench_heads.py                       # 1k x 1k and the MSVD shape (27,763 x 670), all heads
    python tools/bench_heads.py --shapes 1k --heads xpool glscl --json bench_heads.json

Heads are built at the papers' sizes (D = 512, 12 frames, ViT-B text length 32) with random weights; the
inputs are random CLIP features, so the figures measure the head alone, not the backbone. Each case runs
in a fresh process: ``encode_text``/``encode_video`` once per item, then the [Nt, Nv] matrix through
``tiled_similarity`` under the default 0.5 GiB tile budget. Peak memory is the process's peak resident
size minus its size after the inputs were built (so it counts the representations, the tiles and the
output matrix). FLOPs per pair count the pairwise ``similarity`` only (torch's FLOP counter on a tile),
with the per-item encoding cost reported separately.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

import torch

D, FRAMES, WORDS = 512, 12, 32
PATCHES = 49  # ViT-B/32 at 224 px: 7 x 7 patch tokens per frame, for heads that read them (UCoFiA)
SHAPES = {"1k": (1000, 1000), "msvd": (27763, 670)}
HEAD_OPTIONS = {
    "seqtransf": {"init_from_clip": False},
    "glscl": {"init_from_clip": False},
    "hbi": {"init_from_clip": False},
}
# training stages whose evaluation is another head's (hbi_estimator scores as hbi does)
NOT_BENCHED = ("hbi_estimator",)


def build(name: str):
    from tvr.models.heads import create_head

    torch.manual_seed(0)
    head = create_head(name, embed_dim=D, **HEAD_OPTIONS.get(name, {})).eval()
    if hasattr(head, "bind_logit_scale"):  # a head scoring with CLIP's logit scale (UCoFiA): CLIP's initial 1/0.07
        head.bind_logit_scale(torch.nn.Parameter(torch.tensor(1 / 0.07).log()))
    return head


def features(num_texts: int, num_videos: int, with_patches: bool = False):
    from tvr.models.backbone import FrameFeatures, TextFeatures

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(num_texts, WORDS, dtype=torch.bool)
    mask[:, :12] = True
    tokens = torch.randn(num_texts, WORDS, D, generator=generator)
    text = TextFeatures(tokens[:, 11].clone(), tokens, mask)
    patches = torch.randn(num_videos, FRAMES, PATCHES, D, generator=generator) if with_patches else None
    video = FrameFeatures(
        torch.randn(num_videos, FRAMES, D, generator=generator),
        torch.ones(num_videos, FRAMES, dtype=torch.bool),
        patches=patches,
    )
    return text, video


def reads_patches(head) -> bool:
    return "patches" in getattr(head, "reads", {}).get("video", ())


def encode(head, text, video, chunk: int = 2048):
    from tvr.models.backbone import FrameFeatures, TextFeatures
    from tvr.models.heads.base import cat_reprs

    texts = [
        head.encode_text(
            TextFeatures(text.sentence[i : i + chunk], text.tokens[i : i + chunk], text.mask[i : i + chunk])
        )
        for i in range(0, text.sentence.shape[0], chunk)
    ]
    videos = [
        head.encode_video(
            FrameFeatures(
                video.frames[i : i + chunk],
                video.mask[i : i + chunk],
                patches=None if video.patches is None else video.patches[i : i + chunk],
            )
        )
        for i in range(0, video.frames.shape[0], chunk)
    ]
    return cat_reprs(texts), cat_reprs(videos)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def run_case(name: str, shape: str, queue) -> None:
    from tvr.models.similarity import tiled_similarity

    head = build(name)
    text, video = features(*SHAPES[shape], with_patches=reads_patches(head))
    baseline = current_rss_bytes()
    with torch.no_grad():
        started = time.perf_counter()
        text_repr, video_repr = encode(head, text, video)
        encoded = time.perf_counter()
        del text, video
        sims = tiled_similarity(head, text_repr, video_repr)
        finished = time.perf_counter()
    queue.put(
        {
            "encode_s": round(encoded - started, 2),
            "similarity_s": round(finished - encoded, 2),
            "peak_extra_gib": round((peak_rss_bytes() - baseline) / 2**30, 3),
            "shape": list(sims.shape),
        }
    )


def flops(name: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    head = build(name)
    text, video = features(
        16, 16, with_patches=reads_patches(head)
    )  # counted with autograd on: the counter's module hooks need it
    with FlopCounterMode(display=False) as counter:
        text_repr = head.encode_text(text)
    text_flops = counter.get_total_flops() / 16
    with FlopCounterMode(display=False) as counter:
        video_repr = head.encode_video(video)
    video_flops = counter.get_total_flops() / 16
    with FlopCounterMode(display=False) as counter:
        head.similarity(text_repr, video_repr)
    pair_flops = counter.get_total_flops() / 256
    return {"flops_per_pair": pair_flops, "flops_per_text": text_flops, "flops_per_video": video_flops}


def main() -> None:
    from tvr.models.heads import list_heads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="*", default=[name for name in list_heads() if name not in NOT_BENCHED])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = {}
    for name in args.heads:
        results[name] = flops(name)
        for shape in args.shapes:
            queue = context.Queue()
            process = context.Process(target=run_case, args=(name, shape, queue))
            process.start()
            results[name][shape] = queue.get()
            process.join()
    header = "| head | kFLOP/pair | MFLOP/text | MFLOP/video |" + "".join(
        f" {s}: sim s | {s}: peak GiB |" for s in args.shapes
    )
    print(
        f"\nCPU, {torch.get_num_threads()} threads, D={D}, {FRAMES} frames, {WORDS} text tokens; shapes: "
        + ", ".join(f"{s} = {SHAPES[s][0]} texts x {SHAPES[s][1]} videos" for s in args.shapes)
        + "\n"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, row in results.items():
        cells = [
            f"{row['flops_per_pair'] / 1e3:.1f}",
            f"{row['flops_per_text'] / 1e6:.1f}",
            f"{row['flops_per_video'] / 1e6:.1f}",
        ]
        for shape in args.shapes:
            cells += [f"{row[shape]['similarity_s']:.1f}", f"{row[shape]['peak_extra_gib']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
