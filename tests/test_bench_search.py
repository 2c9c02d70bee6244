"""tools/bench_search.py at toy sizes: every section is measured and written, exact search is its own
reference, and two-stage search that re-scores the whole gallery finds the exhaustive top-10. Nothing
here asserts a speed: the figures only have to be well formed and sane."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool

pytestmark = pytest.mark.slow  # runs the tool in a subprocess

SIZE, DIM, VIDEOS, FRAMES = 2000, 32, 300, 4
FACTORIES = ["IVF4,PQ8x4", "IVF4,PQ8x4,RFlat", "IVF4,PQ8x4,Refine(SQ8)"]


def test_bench_search_tiny_run_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        "tools/bench_search.py",
        "--threads",
        "1",
        "--json",
        str(out),
        "--sizes",
        str(SIZE),
        "--factories",
        *FACTORIES,
        "--nprobe",
        "1",
        "4",
        "--refine-factor",
        "4",
        "--train-size",
        str(SIZE),
        "--dim",
        str(DIM),
        "--latent",
        "8",
        "--clusters",
        "20",
        "--single-queries",
        "5",
        "--batch",
        "50",
        "--batches",
        "2",
        "--bandwidth-gib",
        "0.0625",
        "--matmul-size",
        "256",
        "--xpool-gallery",
        str(VIDEOS),
        "--xpool-queries",
        "3",
        "--frames",
        str(FRAMES),
        "--rerank-k",
        "10",
        str(VIDEOS),
        "5000",
    ]
    result = run_tool(*command)
    results = json.loads(out.read_text())
    assert set(results) >= {
        "machine",
        "data",
        "limits",
        "settings",
        "vectors",
        "speedup_goals",
        "exact_vs_limit",
        "xpool",
    }
    assert results["machine"]["cpus"] >= 1 and results["machine"]["torch_threads"] == 1 and results["machine"]["faiss"]
    assert "Gaussian mixture" in results["data"]["description"] and results["data"]["dim"] == DIM
    assert results["limits"]["bandwidth"]["gbs"] > 0 and results["limits"]["matmul"]["gflops"] > 0

    # 1. Exact first, then every factory at every nprobe (and refine factor where it has a refine stage).
    rows = results["vectors"]
    assert [row["index"] for row in rows] == [
        "Flat",
        "IVF4,PQ8x4 nprobe=1",
        "IVF4,PQ8x4 nprobe=4",
        "IVF4,PQ8x4,RFlat nprobe=1 k_factor=4",
        "IVF4,PQ8x4,RFlat nprobe=4 k_factor=4",
        "IVF4,PQ8x4,Refine(SQ8) nprobe=1 k_factor=4",
        "IVF4,PQ8x4,Refine(SQ8) nprobe=4 k_factor=4",
    ]
    for row in rows:
        assert row["size"] == SIZE and row["build_s"] >= 0 and row["memory_mb"] > 0
        assert 0.0 <= row["recall@10"] <= 1.0
        for mode in ("single", "batch"):
            assert 0 < row[mode]["p50_ms"] <= row[mode]["p99_ms"]
        assert 0 < row["batch"]["per_query_ms"] == row["batch"]["p50_ms"] / 50
    exact, plain, refined, sq8 = rows[0], rows[2], rows[4], rows[6]
    assert exact["recall@10"] == 1.0 and "speedup_single" not in exact
    assert all(row["speedup_single"] > 0 and row["speedup_batch"] > 0 for row in rows[1:])
    # 4-byte codes; plus 1 byte per dimension for the SQ8 refine stage; plus the full vectors for RFlat
    assert plain["memory_mb"] < sq8["memory_mb"] < exact["memory_mb"] < refined["memory_mb"]
    assert (
        refined["recall@10"] >= plain["recall@10"]
    )  # its 40 candidates hold the 10 of the plain index: exact re-scoring only adds hits
    (goal,) = results["speedup_goals"]
    assert goal["size"] == SIZE
    for mode in ("single", "batch"):
        assert isinstance(goal[mode]["goal_met"], bool)
        if goal[mode]["index"] is not None:
            assert goal[mode]["recall@10"] >= 0.9 and goal[mode]["speedup"] > 0

    # 2. Exact search against the bandwidth (and, batched, the compute) limit.
    (limit,) = results["exact_vs_limit"]
    assert limit["size"] == SIZE
    assert limit["single"]["bytes_per_query"] == (SIZE + 1) * DIM * 4
    assert limit["batch"]["bytes_per_query"] == SIZE * DIM * 4 / 50 + DIM * 4
    for mode in ("single", "batch"):
        assert limit[mode]["limit_ms"] > 0 and limit[mode]["measured_over_limit"] > 0
        assert isinstance(limit[mode]["goal_met"], bool)
    assert limit["batch"]["limit_ms"] == max(limit["batch"]["bandwidth_limit_ms"], limit["batch"]["compute_limit_ms"])

    # 3. Two-stage X-Pool, both untrained heads; rerank_k above the gallery is clamped to it (and deduplicated).
    assert [xpool["weights"] for xpool in results["xpool"]] == ["reference", "random"]
    for xpool in results["xpool"]:
        assert (xpool["gallery"], xpool["frames"], xpool["queries"]) == (VIDEOS, FRAMES, 3)
        assert 1 / FRAMES - 1e-6 <= xpool["attention"]["mean_max_weight"] <= 1.0
        assert 1.0 <= xpool["attention"]["effective_frames"] <= FRAMES + 1e-4
        for stage in ("first_stage", "exhaustive"):
            assert 0 < xpool[stage]["p50_ms"] <= xpool[stage]["p99_ms"]
        assert [row["rerank_k"] for row in xpool["two_stage"]] == [10, VIDEOS]
        for row in xpool["two_stage"]:
            assert 0.0 <= row["recall@10"] <= 1.0 and row["p50_ms"] > 0 and row["speedup"] > 0
        assert xpool["two_stage"][-1]["recall@10"] == 1.0  # every video re-scored: the exhaustive top-10

    table = result.stdout
    assert "Gaussian mixture" in table and "faiss" in table and "torch threads" in table
    assert (
        "| gallery | index | build s | memory MB |" in table
        and "| 2,000 | IVF4,PQ8x4,RFlat nprobe=4 k_factor=4 |" in table
    )
    assert (
        "| gallery | mode | bytes read per query |" in table and "| 2,000 | single query (bandwidth-bound) |" in table
    )
    assert table.count("| rerank_k |") == 2 and "random weights" in table and "reference weights" in table
