"""Benchmark tvr-search's two search paths on CPU: vector indexes (exact vs IVF-PQ) and two-stage X-Pool.

    python tools/bench_search.py --json bench_search.json      # 100k and 1M vectors, 100k X-Pool videos
    python tools/bench_search.py --sizes 100000 --xpool-gallery 20000 --json small.json

Data: ``--dim``-d unit vectors drawn from a Gaussian mixture (see ``Mixture``), so that neighbourhoods
exist as they do in trained embeddings: ``--clusters`` random unit centres in a random ``--latent``-d
subspace, a point is its centre plus Gaussian noise of norm ``--noise`` in that subspace plus noise of
norm ``--ambient`` in every dimension, normalised. Queries are fresh draws from the same mixture, never
gallery members. (``--latent 0`` puts the mixture in all dimensions: isotropic noise around each centre,
where the neighbours of a query inside its cluster are set by noise alone.)

1. Vector indexes, for every ``--sizes`` gallery, exact ("Flat") and every ``--factories`` entry at every
   ``--nprobe`` (and ``--refine-factor`` for factories with a refine stage): build time, memory
   (``VectorIndex.memory_bytes``, faiss's serialised size), latency of ``--single-queries`` one-query
   searches and of ``--batches`` searches of ``--batch`` queries (p50/p99; per query = batch p50 / batch),
   recall@10 against the exact index on the same queries, and the speed-up over exact search. The goal
   (reported, not asserted): an approximate index >= 10x faster per query than exact at recall@10 >= 0.9.
2. Exact search against the machine's limits: the read bandwidth of memory (best of several passes of
   a multi-threaded sum over a 1 GiB tensor, and a single-threaded numpy sum) and the float32 matrix
   product rate. One query reads the whole gallery (N x D x 4 bytes), so its limit is bytes / bandwidth;
   a batch reads the gallery once, so its queries share those bytes, but it also costs 2 x N x D
   FLOPs per query, so its limit is the larger of the two. The goal: measured within 2x of the limit.
3. Two-stage vs exhaustive X-Pool scoring on a ``--xpool-gallery`` gallery of ``--frames`` frames per
   video (CLIP B/32 geometry: D = 512, 12 frames): a video is a point of the mixture and its frames are
   scattered around it (``--frame-noise``); the first stage is a Flat index over the mean of the unit
   frame vectors, searched with the unit text vector. For each ``--rerank-k``: latency per query and
   recall@10 of the head's exhaustive top-10. Two untrained heads (``--xpool-weights``): "reference" is the
   head as built (projections at the identity, as the reference code initialises them), "random" has
   every projection drawn at random (PyTorch's default ``nn.Linear`` initialisation). The output reports
   how peaked the attention is for each, and how well the summary ranks the head's own top-10; a trained
   head's recall at a given rerank_k must be measured on its own (``tvr-search --check-recall``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench_towers import matmul_rate  # tools/ is the script's own folder, first on sys.path
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads import create_head
from tvr.models.heads.base import masked_mean_of_unit_frames, slice_repr
from tvr.search.two_stage import exhaustive_search, recall_at_k, two_stage_search
from tvr.search.vector_index import VectorIndex

K = 10
RECALL_GOAL, SPEEDUP_GOAL, LIMIT_GOAL = 0.9, 10.0, 2.0
CHUNK = 50_000  # rows generated at a time, so that no [N, D] temporary is made beside the output


class Mixture:
    """A Gaussian mixture of unit vectors: random unit centres in a random ``latent``-d subspace of the
    ``dim``-d space (all of it when ``latent`` is 0), noise of norm ``noise`` around a centre inside the
    subspace and of norm ``ambient`` in every dimension, then normalised. Every draw is seeded."""

    def __init__(self, clusters: int, dim: int, latent: int, noise: float, ambient: float, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.dim, self.latent = dim, latent or dim
        self.noise, self.ambient = noise, ambient
        self.centres = F.normalize(torch.randn(clusters, self.latent, generator=generator), dim=1)
        # Orthonormal rows [latent, dim]: a random rotation when the mixture spans every dimension.
        self.basis = torch.linalg.qr(torch.randn(dim, self.latent, generator=generator)).Q.T.contiguous()

    def labels(self, rows: int, seed: int) -> torch.Tensor:
        return torch.randint(len(self.centres), (rows,), generator=torch.Generator().manual_seed(seed))

    def scatter(self, means: torch.Tensor, norm: float, generator: torch.Generator) -> torch.Tensor:
        """Latent points around ``means`` [..., latent]: Gaussian noise of expected norm ~``norm``."""
        return means + torch.randn(means.shape, generator=generator) * (norm / math.sqrt(self.latent))

    def embed(self, latent_points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Unit ``dim``-d vectors [..., dim] from latent points, with the ambient noise added."""
        points = latent_points @ self.basis
        points += torch.randn(points.shape, generator=generator) * (self.ambient / math.sqrt(self.dim))
        return F.normalize(points, dim=-1)

    def draw(self, rows: int, seed: int) -> torch.Tensor:
        """``rows`` unit vectors [rows, dim], each around a random centre."""
        labels, generator = self.labels(rows, seed), torch.Generator().manual_seed(seed + 1)
        out = torch.empty(rows, self.dim)
        for start in range(0, rows, CHUNK):
            part = labels[start : start + CHUNK]
            out[start : start + len(part)] = self.embed(
                self.scatter(self.centres[part], self.noise, generator), generator
            )
        return out

    def describe(self) -> str:
        where = (
            f"in a random {self.latent}-d subspace, plus noise of norm {self.ambient} in all dimensions"
            if self.latent < self.dim
            else f"in all dimensions (isotropic), plus noise of norm {self.ambient}"
        )
        return (
            f"{self.dim}-d unit vectors from a Gaussian mixture: {len(self.centres)} random unit centres, "
            f"noise of norm {self.noise} {where}, normalised; queries drawn from the same mixture (not gallery members)"
        )


# --------------------------------------------------------------------------------------------- timing


def percentiles(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def time_search(index: VectorIndex, single: torch.Tensor, batches: list[torch.Tensor]) -> tuple[dict, torch.Tensor]:
    """Latencies of one-query searches and of whole batches, and the ids found for every query (the single
    queries first, then each batch's)."""
    index.search(single[:1], K)  # warm-up: lazily allocated buffers, thread pools
    index.search(batches[0][: min(64, len(batches[0]))], K)
    single_seconds, found = [], []
    for query in single:
        started = time.perf_counter()
        _, ids = index.search(query[None], K)
        single_seconds.append(time.perf_counter() - started)
        found.append(ids)
    batch_seconds = []
    for batch in batches:
        started = time.perf_counter()
        _, ids = index.search(batch, K)
        batch_seconds.append(time.perf_counter() - started)
        found.append(ids)
    batch = percentiles(batch_seconds)
    batch["per_query_ms"] = batch["p50_ms"] / len(batches[0])
    return {"single": percentiles(single_seconds), "batch": batch}, torch.cat(found)


def memory_bandwidth(gib: float, repeats: int) -> dict:
    """Read bandwidth of memory (GB/s): passes over a tensor far larger than the caches, best and median."""
    data = torch.ones(int(gib * 2**30) // 4)
    array = data.numpy()  # the same memory
    measured = {}
    for name, read in (("torch_sum", lambda: data.sum()), ("numpy_sum_1_thread", lambda: array.sum())):
        read()  # pages faulted in, code warmed
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            read()
            seconds.append(time.perf_counter() - started)
        measured[name] = {
            "best_gbs": data.numel() * 4 / min(seconds) / 1e9,
            "median_gbs": data.numel() * 4 / float(np.median(seconds)) / 1e9,
        }
    best = max(measured, key=lambda name: measured[name]["best_gbs"])
    return {
        "gbs": measured[best]["best_gbs"],
        "method": best,
        "bytes_read": data.numel() * 4,
        "repeats": repeats,
        "measurements": measured,
        "what": f"best of {repeats} passes reading a {gib:g} GiB float32 array (sum of its elements); "
        f"torch_sum uses {torch.get_num_threads()} threads, numpy's sum one",
    }


# ------------------------------------------------------------------------------------ vector indexes


def index_variants(factory: str, args) -> list[dict]:
    """The search settings to time for one built index: every nprobe of an IVF index, every refine factor
    of a refined one."""
    probes = args.nprobe if factory.upper().startswith("IVF") or ",IVF" in factory.upper() else [None]
    refines = args.refine_factor if _refined(factory) else [None]
    return [{"nprobe": p, "refine_factor": r} for p in probes for r in refines]


def _refined(factory: str) -> bool:
    last = factory.split(",")[-1]
    return last.startswith("R") and not last.startswith("RQ")


def describe_index(row: dict) -> str:
    return (
        row["factory"]
        + (f" nprobe={row['nprobe']}" if row["nprobe"] else "")
        + (f" k_factor={row['refine_factor']}" if row["refine_factor"] else "")
    )


def bench_vectors(args, mixture: Mixture, limits: dict) -> tuple[list[dict], list[dict]]:
    rows, exact_rows = [], []
    for size in args.sizes:
        gallery = mixture.draw(size, seed=args.seed + 10)
        single = mixture.draw(args.single_queries, seed=args.seed + 20)
        batches = [mixture.draw(args.batch, seed=args.seed + 30 + 2 * n) for n in range(args.batches)]
        exact_ids = None
        for factory in ["Flat", *args.factories]:
            started = time.perf_counter()
            index = VectorIndex.build(gallery, factory=factory, train_size=min(size, args.train_size), seed=args.seed)
            build_s = time.perf_counter() - started
            memory_mb = index.memory_bytes() / 1e6
            for variant in index_variants(factory, args):
                if variant["nprobe"]:
                    index.nprobe = variant["nprobe"]
                if variant["refine_factor"]:
                    index.refine_factor = variant["refine_factor"]
                latency, ids = time_search(index, single, batches)
                if exact_ids is None:
                    exact_ids = ids
                row = {
                    "size": size,
                    "factory": factory,
                    **variant,
                    "build_s": build_s,
                    "memory_mb": memory_mb,
                    **latency,
                    f"recall@{K}": recall_at_k(ids, exact_ids),
                }
                row["index"] = describe_index(row)
                rows.append(row)
                print(
                    f"  {size:,} {row['index']}: single p50 {row['single']['p50_ms']:.2f} ms, per query in batch "
                    f"{row['batch']['per_query_ms']:.3f} ms, recall@{K} {row[f'recall@{K}']:.3f}",
                    flush=True,
                )
            del index
        exact = next(r for r in rows if r["size"] == size and r["factory"] == "Flat")
        for row in rows:
            if row["size"] == size and row["factory"] != "Flat":
                row["speedup_single"] = exact["single"]["p50_ms"] / row["single"]["p50_ms"]
                row["speedup_batch"] = exact["batch"]["per_query_ms"] / row["batch"]["per_query_ms"]
        exact_rows.append(exact_against_limits(exact, gallery.shape[1], args.batch, limits))
        del gallery, single, batches
    return rows, exact_rows


def exact_against_limits(exact: dict, dim: int, batch: int, limits: dict) -> dict:
    bandwidth = limits["bandwidth"]["gbs"] * 1e9
    gallery_bytes = exact["size"] * dim * 4
    single_limit_ms = (gallery_bytes + dim * 4) / bandwidth * 1e3
    batch_bytes_per_query = gallery_bytes / batch + dim * 4  # the gallery is read once per batch
    batch_bandwidth_ms = batch_bytes_per_query / bandwidth * 1e3
    batch_compute_ms = 2 * exact["size"] * dim / (limits["matmul"]["gflops"] * 1e9) * 1e3
    batch_limit_ms = max(batch_bandwidth_ms, batch_compute_ms)
    single_ratio = exact["single"]["p50_ms"] / single_limit_ms
    batch_ratio = exact["batch"]["per_query_ms"] / batch_limit_ms
    return {
        "size": exact["size"],
        "single": {
            "bytes_per_query": gallery_bytes + dim * 4,
            "limit_ms": single_limit_ms,
            "measured_p50_ms": exact["single"]["p50_ms"],
            "measured_over_limit": single_ratio,
            "goal_met": single_ratio <= LIMIT_GOAL,
        },
        "batch": {
            "bytes_per_query": batch_bytes_per_query,
            "bandwidth_limit_ms": batch_bandwidth_ms,
            "flops_per_query": 2 * exact["size"] * dim,
            "compute_limit_ms": batch_compute_ms,
            "limit_ms": batch_limit_ms,
            "bound": "compute" if batch_compute_ms > batch_bandwidth_ms else "bandwidth",
            "measured_per_query_ms": exact["batch"]["per_query_ms"],
            "measured_over_bandwidth_limit": exact["batch"]["per_query_ms"] / batch_bandwidth_ms,
            "measured_over_limit": batch_ratio,
            "goal_met": batch_ratio <= LIMIT_GOAL,
        },
    }


def speedup_goals(rows: list[dict], sizes: list[int]) -> list[dict]:
    """Per gallery size and mode, the fastest approximate setting that keeps recall@10 >= 0.9."""
    goals = []
    for size in sizes:
        entry = {"size": size}
        for mode in ("single", "batch"):
            eligible = [
                r for r in rows if r["size"] == size and r["factory"] != "Flat" and r[f"recall@{K}"] >= RECALL_GOAL
            ]
            if not eligible:
                entry[mode] = {"index": None, "speedup": None, f"recall@{K}": None, "goal_met": False}
                continue
            best = max(eligible, key=lambda r: r[f"speedup_{mode}"])
            entry[mode] = {
                "index": best["index"],
                "speedup": best[f"speedup_{mode}"],
                f"recall@{K}": best[f"recall@{K}"],
                "goal_met": best[f"speedup_{mode}"] >= SPEEDUP_GOAL,
            }
        goals.append(entry)
    return goals


# ------------------------------------------------------------------------------------------- X-Pool


def xpool_head(weights: str, dim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    head = create_head("xpool", embed_dim=dim).eval()
    if weights == "random":
        for module in head.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()  # PyTorch's default initialisation, from the seeded generator
    return head


def xpool_gallery(args, mixture: Mixture, head) -> tuple[dict, torch.Tensor]:
    """The head's video representations and the first stage's summaries (mean of the unit frame vectors,
    normalised), built a chunk of videos at a time; a video is a mixture point, its frames lie around it."""
    labels = mixture.labels(args.xpool_gallery, seed=args.seed + 40)
    generator = torch.Generator().manual_seed(args.seed + 41)
    video_repr, summaries = {}, torch.empty(len(labels), mixture.dim)
    for start in range(0, len(labels), 5_000):
        videos = mixture.scatter(mixture.centres[labels[start : start + 5_000]], mixture.noise, generator)
        frames = mixture.embed(
            mixture.scatter(videos[:, None].expand(-1, args.frames, -1), args.frame_noise, generator), generator
        )
        mask = torch.ones(frames.shape[:2], dtype=torch.bool)
        part = head.encode_video(FrameFeatures(frames, mask))
        for key, value in part.items():  # filled in place: no second copy of the (GBs of) representations
            if key not in video_repr:
                video_repr[key] = torch.empty(len(labels), *value.shape[1:], dtype=value.dtype)
            video_repr[key][start : start + len(value)] = value
        summaries[start : start + len(frames)] = masked_mean_of_unit_frames(frames, mask)
    return video_repr, summaries


@torch.no_grad()
def bench_xpool(args, mixture: Mixture, weights: str) -> dict:
    head = xpool_head(weights, args.dim, args.seed)
    video_repr, summaries = xpool_gallery(args, mixture, head)
    texts = mixture.draw(args.xpool_queries, seed=args.seed + 50)
    text_repr = head.encode_text(TextFeatures(texts, texts[:, None], torch.ones(len(texts), 1, dtype=torch.bool)))
    index = VectorIndex.build(summaries)
    del summaries

    # How peaked is the attention? (over the first videos, for every query)
    attention = head.attention(text_repr, slice_repr(video_repr, 0, 2_000))  # [V, T, H, F]
    entropy = -(attention * attention.clamp_min(1e-12).log()).sum(-1)

    def per_query(search) -> tuple[dict, torch.Tensor]:
        search(0)  # warm-up
        seconds, found = [], []
        for query in range(len(texts)):
            started = time.perf_counter()
            found.append(search(query))
            seconds.append(time.perf_counter() - started)
        return {**percentiles(seconds), "mean_ms": float(np.mean(seconds) * 1e3)}, torch.cat(found)

    first_stage, _ = per_query(lambda q: index.search(texts[q : q + 1], K)[1])  # the summaries' Flat index alone
    exhaustive, reference = per_query(
        lambda q: exhaustive_search(head, slice_repr(text_repr, q, q + 1), video_repr, K)[1]
    )
    rows = []
    for rerank_k in sorted({min(k, args.xpool_gallery) for k in args.rerank_k if k >= K}):
        latency, found = per_query(
            lambda q, candidates=rerank_k: two_stage_search(
                head, slice_repr(text_repr, q, q + 1), texts[q : q + 1], index, video_repr, candidates, K
            )[1]
        )
        rows.append(
            {
                "rerank_k": rerank_k,
                **latency,
                f"recall@{K}": recall_at_k(found, reference),
                "speedup": exhaustive["p50_ms"] / latency["p50_ms"],
            }
        )
        print(
            f"  X-Pool ({weights}) rerank_k={rerank_k}: {latency['p50_ms']:.1f} ms, recall@{K} {rows[-1][f'recall@{K}']:.3f}",
            flush=True,
        )
    return {
        "weights": weights,
        "gallery": args.xpool_gallery,
        "queries": args.xpool_queries,
        "frames": args.frames,
        "dim": args.dim,
        "attention": {
            "mean_max_weight": attention.max(-1).values.mean().item(),
            "uniform_weight": 1 / args.frames,
            "effective_frames": entropy.exp().mean().item(),
        },
        "first_stage": first_stage,
        "exhaustive": exhaustive,
        "two_stage": rows,
    }


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vectors = parser.add_argument_group("vector indexes")
    vectors.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="gallery sizes")
    vectors.add_argument(
        "--factories",
        nargs="*",
        default=["IVF1024,PQ64", "IVF1024,PQ64,RFlat", "IVF1024,PQ64,Refine(SQ8)"],
        help="faiss factory strings of the approximate indexes (exact 'Flat' always runs)",
    )
    vectors.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32], help="inverted lists visited per query")
    vectors.add_argument(
        "--refine-factor",
        type=int,
        nargs="+",
        default=[4, 8],
        help="for a refine stage: candidates re-scored per result (faiss's k_factor)",
    )
    vectors.add_argument(
        "--train-size", type=int, default=100_000, help="vectors (a seeded subset) the IVF-PQ indexes train on"
    )
    vectors.add_argument("--single-queries", type=int, default=200, help="one-query searches timed per setting")
    vectors.add_argument("--batch", type=int, default=1000, help="queries per batched search")
    vectors.add_argument("--batches", type=int, default=3, help="batched searches timed per setting")
    vectors.add_argument(
        "--bandwidth-gib", type=float, default=1.0, help="size of the array the bandwidth is measured on"
    )
    vectors.add_argument(
        "--matmul-size", type=int, default=2048, help="side of the matrices the matmul rate is measured on"
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dim", type=int, default=512)
    data.add_argument("--clusters", type=int, default=2000)
    data.add_argument("--latent", type=int, default=32, help="dimension of the mixture's subspace (0: all of --dim)")
    data.add_argument("--noise", type=float, default=0.6, help="noise norm around a unit centre, inside the subspace")
    data.add_argument("--ambient", type=float, default=0.1, help="noise norm in every dimension")
    data.add_argument("--seed", type=int, default=0)
    xpool = parser.add_argument_group("two-stage X-Pool")
    xpool.add_argument("--xpool-gallery", type=int, default=100_000, help="videos (0: skip the section)")
    xpool.add_argument("--xpool-queries", type=int, default=20)
    xpool.add_argument("--xpool-weights", nargs="+", default=["reference", "random"], choices=["reference", "random"])
    xpool.add_argument("--frames", type=int, default=12)
    xpool.add_argument("--frame-noise", type=float, default=0.3, help="noise norm of a frame around its video's point")
    xpool.add_argument(
        "--rerank-k",
        type=int,
        nargs="+",
        default=[10, 50, 100, 500, 1000, 5000],
        help="first-stage candidates; values above the gallery size are clamped to it",
    )
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: theirs, one per core)")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


def machine_info() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mixture = Mixture(args.clusters, args.dim, args.latent, args.noise, args.ambient, args.seed)
    limits = {"bandwidth": memory_bandwidth(args.bandwidth_gib, repeats=5), "matmul": matmul_rate(args.matmul_size)}
    results = {
        "machine": machine_info(),
        "data": {
            "description": mixture.describe(),
            "dim": args.dim,
            "clusters": args.clusters,
            "latent": mixture.latent,
            "noise": args.noise,
            "ambient": args.ambient,
            "seed": args.seed,
        },
        "limits": limits,
        "settings": {
            "k": K,
            "single_queries": args.single_queries,
            "batch": args.batch,
            "batches": args.batches,
            "train_size": args.train_size,
        },
    }
    rows, exact_rows = bench_vectors(args, mixture, limits)
    results.update(vectors=rows, speedup_goals=speedup_goals(rows, args.sizes), exact_vs_limit=exact_rows)
    results["xpool"] = (
        [bench_xpool(args, mixture, weights) for weights in args.xpool_weights] if args.xpool_gallery else []
    )
    print_tables(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


def _met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def print_tables(results: dict) -> None:
    machine, limits, settings = results["machine"], results["limits"], results["settings"]
    print(
        f"\n{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['torch_threads']} torch threads, "
        f"{machine['faiss_threads']} faiss threads, faiss {machine['faiss']}, torch {machine['torch']}"
    )
    print(f"Data: {results['data']['description']}.")
    print(
        f"Memory read bandwidth {limits['bandwidth']['gbs']:.1f} GB/s ({limits['bandwidth']['what']}); "
        f"float32 matmul {limits['matmul']['gflops']:.0f} GFLOP/s ({limits['matmul']['what']})\n"
    )

    print(
        f"### 1. Exact vs approximate indexes ({settings['single_queries']} single queries; "
        f"{settings['batches']} batches of {settings['batch']}; recall@{K} against exact on the same queries)\n"
    )
    print(
        f"| gallery | index | build s | memory MB | single p50 / p99 ms | batch p50 / p99 ms | per query in batch ms | "
        f"recall@{K} | speed-up single / batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results["vectors"]:
        speedup = f"{row['speedup_single']:.1f}x / {row['speedup_batch']:.1f}x" if "speedup_single" in row else "exact"
        print(
            f"| {row['size']:,} | {row['index']} | {row['build_s']:.1f} | {row['memory_mb']:.1f} | "
            f"{row['single']['p50_ms']:.3f} / {row['single']['p99_ms']:.3f} | {row['batch']['p50_ms']:.1f} / "
            f"{row['batch']['p99_ms']:.1f} | {row['batch']['per_query_ms']:.4f} | {row[f'recall@{K}']:.3f} | {speedup} |"
        )
    print(
        f"\nGoal: an approximate index >= {SPEEDUP_GOAL:g}x faster per query than exact at recall@{K} >= {RECALL_GOAL} "
        f"(fastest such setting per size)\n"
    )
    for goal in results["speedup_goals"]:
        for mode in ("single", "batch"):
            entry = goal[mode]
            if entry["index"] is None:
                print(
                    f"- {goal['size']:,}, {mode} queries: no approximate setting reached recall@{K} >= {RECALL_GOAL}: NOT met"
                )
            else:
                print(
                    f"- {goal['size']:,}, {mode} queries: {entry['index']}: {entry['speedup']:.1f}x at recall@{K} "
                    f"{entry[f'recall@{K}']:.3f}: {_met(entry['goal_met'])}"
                )

    print(f"\n### 2. Exact search against the machine's limits (goal: measured within {LIMIT_GOAL:g}x of the limit)\n")
    print(
        "| gallery | mode | bytes read per query | limit ms per query | measured ms per query | measured / limit | goal |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in results["exact_vs_limit"]:
        single, batch = row["single"], row["batch"]
        print(
            f"| {row['size']:,} | single query (bandwidth-bound) | {single['bytes_per_query'] / 1e6:.1f} MB | "
            f"{single['limit_ms']:.3f} | {single['measured_p50_ms']:.3f} | {single['measured_over_limit']:.2f}x | "
            f"{_met(single['goal_met'])} |"
        )
        print(
            f"| {row['size']:,} | batch of {settings['batch']} ({batch['bound']}-bound: bandwidth {batch['bandwidth_limit_ms']:.4f} ms, "
            f"compute {batch['compute_limit_ms']:.4f} ms) | {batch['bytes_per_query'] / 1e6:.3f} MB | {batch['limit_ms']:.4f} | "
            f"{batch['measured_per_query_ms']:.4f} | {batch['measured_over_limit']:.2f}x "
            f"({batch['measured_over_bandwidth_limit']:.0f}x the bandwidth limit) | {_met(batch['goal_met'])} |"
        )

    for xpool in results["xpool"]:
        attention = xpool["attention"]
        print(
            f"\n### 3. Two-stage vs exhaustive X-Pool, {xpool['weights']} weights: {xpool['gallery']:,} videos x "
            f"{xpool['frames']} frames, D={xpool['dim']}, {xpool['queries']} queries one at a time\n"
        )
        print(
            f"Attention: mean largest frame weight {attention['mean_max_weight']:.3f} (uniform: {attention['uniform_weight']:.3f}), "
            f"effective frames {attention['effective_frames']:.1f} of {xpool['frames']}. "
            f"Exhaustive: {xpool['exhaustive']['p50_ms']:.1f} ms per query (p50; p99 {xpool['exhaustive']['p99_ms']:.1f}). "
            f"The first stage alone (exact search of the summaries): {xpool['first_stage']['p50_ms']:.1f} ms.\n"
        )
        print(f"| rerank_k | two-stage p50 / p99 ms per query | speed-up | recall@{K} of exhaustive top-{K} |")
        print("|---|---|---|---|")
        for row in xpool["two_stage"]:
            print(
                f"| {row['rerank_k']:,} | {row['p50_ms']:.2f} / {row['p99_ms']:.2f} | {row['speedup']:.1f}x | "
                f"{row[f'recall@{K}']:.3f} |"
            )
        print("\n" + XPOOL_NOTES[xpool["weights"]])


XPOOL_NOTES = {
    "reference": "Reference initialisation (projections at the identity): the attention is not uniform, but the pooled "
    "vector stays a weighted mean of the frames, so the mean-of-frames summary ranks the head's top-10 well. "
    "A trained head is more selective; measure its recall with tvr-search --check-recall.",
    "random": "Random projections: the attention is close to uniform, yet the score is cos(text, random map of the "
    "pooled frames), which the mean-of-frames summary does not predict, so the first stage is no proxy and "
    "recall grows only like rerank_k / gallery. Neither untrained head stands for a trained one.",
}


if __name__ == "__main__":
    main()
