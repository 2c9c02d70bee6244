"""Benchmark tvr-search's two search paths on CPU: vector indexes (exact vs IVF-PQ) and two-stage X-Pool.

    python tools/bench_search.py --json bench_search.json          # 100k and 1M vectors, 100k X-Pool gallery
    python tools/bench_search.py --sizes 20000 --xpool-gallery 5000 --single-queries 20

Data: 512-d unit vectors from a Gaussian mixture (``--clusters`` random unit centres) in a random
``--latent``-d subspace plus a little noise in all dimensions (see ``Mixture``), so that neighbourhoods
exist, as they do in trained embeddings; queries are fresh draws from the same mixture, never gallery
members. Uniform random vectors have no neighbourhoods, and an inverted file would have nothing to exploit.

1. Vector indexes, for every ``--sizes`` gallery: build time, memory (faiss's serialised size), latency of
   single queries and of batches of ``--batch`` queries (p50/p99), recall@10 against exact search.
2. The physical limit of exact search: one query reads the whole gallery (N x D x 4 bytes); the limit is
   that size divided by the machine's memory read bandwidth, measured here as the best of several
   multi-threaded sums over a 1 GiB tensor.
3. Two-stage vs exhaustive X-Pool scoring on a ``--xpool-gallery`` gallery (random X-Pool weights at CLIP
   B/32 width, 12 frames per video around the video's mixture centre): per-query latency and recall@10
   of the head's exhaustive top-10, for each ``--rerank-k``. With random weights X-Pool's attention is
   close to uniform, so the mean-pooled summary is a good proxy of its scores; a trained head is more
   selective, and its recall at a given rerank_k is lower (tvr-search --check-recall measures it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads import create_head
from tvr.models.heads.base import cat_reprs, masked_mean_of_unit_frames
from tvr.search.two_stage import exhaustive_search, recall_at_k, two_stage_search
from tvr.search.vector_index import VectorIndex

K = 10


class Mixture:
    """Unit vectors from a Gaussian mixture in a ``latent``-dimensional subspace of the ``dim``-d space,
    plus a little isotropic noise in every dimension: ``clusters`` random unit centres; a point is its
    centre plus noise of norm ~``noise`` (in the subspace), mapped by a fixed random orthonormal basis.
    Trained embeddings have such a low intrinsic dimension; an isotropic mixture in all 512 dimensions
    has none (every point of a cluster is nearly equidistant from every other), so nearest neighbours
    inside a cluster would be noise that no compressed index, nor any model, could be asked to find."""

    def __init__(self, clusters: int, dim: int, latent: int, noise: float, ambient: float, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.centres = F.normalize(torch.randn(clusters, latent, generator=generator), dim=1)
        self.basis = torch.linalg.qr(torch.randn(dim, latent, generator=generator)).Q.T.contiguous()  # [latent, dim]
        self.noise, self.ambient = noise, ambient

    def labels(self, rows: int, seed: int) -> torch.Tensor:
        return torch.randint(len(self.centres), (rows,), generator=torch.Generator().manual_seed(seed))

    def around(self, labels: torch.Tensor, seed: int, chunk: int = 100_000) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        latent, dim = self.basis.shape
        out = torch.empty(len(labels), dim)
        for start in range(0, len(labels), chunk):
            part = labels[start : start + chunk]
            points = self.centres[part] + torch.randn(len(part), latent, generator=generator) * self.noise / latent ** 0.5
            ambient = torch.randn(len(part), dim, generator=generator) * self.ambient / dim ** 0.5
            out[start : start + len(part)] = F.normalize(points @ self.basis + ambient, dim=1)
        return out

    def draw(self, rows: int, seed: int) -> torch.Tensor:
        return self.around(self.labels(rows, seed), seed + 1)


def percentiles(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def time_search(index: VectorIndex, single: torch.Tensor, batches: list[torch.Tensor]) -> tuple[dict, torch.Tensor]:
    """Latency of one query at a time and of whole batches; the ids found for every query (single first)."""
    single_times, found = [], []
    for query in single:
        started = time.perf_counter()
        _, ids = index.search(query[None], K)
        single_times.append(time.perf_counter() - started)
        found.append(ids)
    batch_times = []
    for batch in batches:
        started = time.perf_counter()
        _, ids = index.search(batch, K)
        batch_times.append(time.perf_counter() - started)
        found.append(ids)
    batch = percentiles(batch_times)
    return {"single": percentiles(single_times), "batch": {**batch, "per_query_ms": batch["p50_ms"] / len(batches[0])}}, torch.cat(found)


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Best read bandwidth of a multi-threaded sum over a tensor far larger than the caches (GB/s)."""
    data = torch.ones(int(gib * 2**30 / 4))
    data.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def bench_vectors(args, mixture: Mixture, bandwidth: float) -> list[dict]:
    rows = []
    for size in args.sizes:
        gallery = mixture.draw(size, seed=10)
        single = mixture.draw(args.single_queries, seed=20)
        batches = [mixture.draw(args.batch, seed=30 + n) for n in range(args.batches)]
        exact_ids = None
        for factory in ["Flat", *args.factories]:
            started = time.perf_counter()
            index = VectorIndex.build(gallery, factory=factory, nprobe=args.nprobe, train_size=min(size, args.train_size),
                                      refine_factor=args.refine_factor)
            build_s = time.perf_counter() - started
            latency, ids = time_search(index, single, batches)
            if exact_ids is None:
                exact_ids = ids
            row = {"size": size, "factory": factory, "nprobe": args.nprobe if factory != "Flat" else None,
                   "refine_factor": args.refine_factor if "R" in factory.split(",")[-1] else None,
                   "build_s": build_s, "memory_mb": index.memory_bytes() / 1e6, **latency,
                   f"recall@{K}": recall_at_k(ids, exact_ids)}
            if factory == "Flat":
                bytes_per_query = size * gallery.shape[1] * 4
                limit_ms = bytes_per_query / (bandwidth * 1e9) * 1e3
                row["bandwidth_limit"] = {"bytes_per_query": bytes_per_query, "limit_ms": limit_ms,
                                          "single_over_limit": row["single"]["p50_ms"] / limit_ms,
                                          "batch_per_query_over_limit": row["batch"]["per_query_ms"] / (limit_ms / args.batch)}
            rows.append(row)
            del index
        for row in rows:
            if row["size"] == size and row["factory"] != "Flat":
                exact = next(r for r in rows if r["size"] == size and r["factory"] == "Flat")
                row["speedup_single"] = exact["single"]["p50_ms"] / row["single"]["p50_ms"]
                row["speedup_batch"] = exact["batch"]["per_query_ms"] / row["batch"]["per_query_ms"]
        del gallery
    return rows


@torch.no_grad()
def bench_two_stage(args, mixture: Mixture) -> dict:
    torch.manual_seed(0)
    head = create_head("xpool", embed_dim=args.dim).eval()
    labels = mixture.labels(args.xpool_gallery, seed=40)
    parts, summaries = [], []
    for start in range(0, len(labels), 10_000):
        part = labels[start : start + 10_000]
        frames = torch.stack([mixture.around(part, seed=41 + start + frame) for frame in range(args.frames)], dim=1)
        mask = torch.ones(len(part), args.frames, dtype=torch.bool)
        parts.append(head.encode_video(FrameFeatures(frames, mask)))
        summaries.append(masked_mean_of_unit_frames(frames, mask))
    video_repr, video_summary = cat_reprs(parts), torch.cat(summaries)
    sentences = mixture.draw(args.xpool_queries, seed=50)
    tokens = sentences[:, None].expand(-1, 4, -1)
    text_repr = head.encode_text(TextFeatures(sentences, tokens, torch.ones(len(sentences), 4, dtype=torch.bool)))
    index = VectorIndex.build(video_summary)

    def per_query(search) -> tuple[float, torch.Tensor]:
        found, seconds = [], []
        for query in range(len(sentences)):
            started = time.perf_counter()
            found.append(search(query))
            seconds.append(time.perf_counter() - started)
        return float(np.median(seconds) * 1e3), torch.cat(found)

    one = lambda query: {key: value[query : query + 1] for key, value in text_repr.items()}  # noqa: E731
    exhaustive_ms, reference = per_query(lambda q: exhaustive_search(head, one(q), video_repr, K)[1])
    rows = []
    for rerank_k in args.rerank_k:
        if rerank_k > args.xpool_gallery:
            continue
        ms, found = per_query(lambda q: two_stage_search(head, one(q), sentences[q : q + 1], index, video_repr, rerank_k, K)[1])
        rows.append({"rerank_k": rerank_k, "latency_ms": ms, f"recall@{K}": recall_at_k(found, reference),
                     "speedup": exhaustive_ms / ms})
    return {"gallery": args.xpool_gallery, "queries": args.xpool_queries, "frames": args.frames,
            "exhaustive_latency_ms": exhaustive_ms, "two_stage": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--factories", nargs="*", default=["IVF1024,PQ64", "IVF1024,PQ64x4fs,RFlat"])
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--refine-factor", type=int, default=4, help="candidates per result a refine stage re-scores")
    parser.add_argument("--train-size", type=int, default=100_000, help="vectors the IVF-PQ index is trained on")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--latent", type=int, default=32, help="dimension of the subspace the mixture lives in")
    parser.add_argument("--noise", type=float, default=0.6, help="noise norm around a (unit) centre, in the subspace")
    parser.add_argument("--ambient", type=float, default=0.1, help="noise norm in all dimensions")
    parser.add_argument("--single-queries", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--xpool-gallery", type=int, default=100_000)
    parser.add_argument("--xpool-queries", type=int, default=10)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rerank-k", type=int, nargs="*", default=[10, 50, 100, 500, 1000, 5000])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    mixture = Mixture(args.clusters, args.dim, args.latent, args.noise, args.ambient)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "faiss": faiss.__version__,
               "data": f"{args.dim}-d unit vectors: a mixture of {args.clusters} Gaussians (noise norm {args.noise}) in a random "
                       f"{args.latent}-d subspace, plus noise of norm {args.ambient} in all dimensions"}
    bandwidth = memory_bandwidth_gbs()
    results = {"machine": {**machine, "memory_bandwidth_gbs": bandwidth}, "vectors": bench_vectors(args, mixture, bandwidth)}
    results["xpool"] = bench_two_stage(args, mixture) if args.xpool_gallery else None
    print_tables(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


def print_tables(results: dict) -> None:
    machine = results["machine"]
    print(f"\n{machine['cpus']} CPUs, {machine['torch_threads']} torch threads, faiss {machine['faiss']}; {machine['data']}; "
          f"measured memory read bandwidth {machine['memory_bandwidth_gbs']:.1f} GB/s\n")
    print(f"| gallery | index | build s | memory MB | single p50 / p99 ms | batch-1000 p50 / p99 ms | per query in batch ms | "
          f"recall@{K} | speed-up single / batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results["vectors"]:
        speedup = f"{row['speedup_single']:.1f}x / {row['speedup_batch']:.1f}x" if "speedup_single" in row else "baseline"
        name = row["factory"] + (f" nprobe={row['nprobe']}" if row["nprobe"] else "") + (
            f" k_factor={row['refine_factor']}" if row["refine_factor"] else "")
        print(f"| {row['size']:,} | {name} | {row['build_s']:.1f} | {row['memory_mb']:.0f} | {row['single']['p50_ms']:.2f} / "
              f"{row['single']['p99_ms']:.2f} | {row['batch']['p50_ms']:.0f} / {row['batch']['p99_ms']:.0f} | "
              f"{row['batch']['per_query_ms']:.3f} | {row[f'recall@{K}']:.3f} | {speedup} |")
    print("\n| exact gallery | bytes per query | bandwidth limit ms | single query / limit | batched query / its share of the limit |")
    print("|---|---|---|---|---|")
    for row in results["vectors"]:
        if "bandwidth_limit" in row:
            limit = row["bandwidth_limit"]
            print(f"| {row['size']:,} | {limit['bytes_per_query'] / 1e6:.0f} MB | {limit['limit_ms']:.1f} | "
                  f"{limit['single_over_limit']:.2f}x | {limit['batch_per_query_over_limit']:.2f}x |")
    xpool = results["xpool"]
    if xpool:
        print(f"\nX-Pool (random weights), {xpool['gallery']:,} videos x {xpool['frames']} frames, {xpool['queries']} queries: "
              f"exhaustive {xpool['exhaustive_latency_ms']:.0f} ms per query\n")
        print(f"| rerank_k | two-stage ms per query | speed-up | recall@{K} of exhaustive top-{K} |")
        print("|---|---|---|---|")
        for row in xpool["two_stage"]:
            print(f"| {row['rerank_k']} | {row['latency_ms']:.1f} | {row['speedup']:.0f}x | {row[f'recall@{K}']:.3f} |")


if __name__ == "__main__":
    main()
