"""tools/bench_search.py at toy sizes: every section is measured and written, exact search is its own
reference, and two-stage search that re-scores the whole gallery finds the exhaustive top-10."""

import json
import sys

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
import bench_search  # noqa: E402


def test_bench_search_writes_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_search.main([
        "--sizes", "3000", "--factories", "IVF8,PQ16", "--train-size", "3000", "--dim", "64", "--latent", "8",
        "--clusters", "20", "--single-queries", "5", "--batch", "50", "--batches", "2",
        "--xpool-gallery", "400", "--xpool-queries", "3", "--frames", "4", "--rerank-k", "10", "400", "5000",
        "--json", str(out),
    ])
    results = json.loads(out.read_text())
    assert results["machine"]["memory_bandwidth_gbs"] > 0
    exact, approximate = results["vectors"]
    assert (exact["factory"], approximate["factory"]) == ("Flat", "IVF8,PQ16")
    assert exact["recall@10"] == 1.0 and 0.0 <= approximate["recall@10"] <= 1.0
    assert approximate["memory_mb"] < exact["memory_mb"]  # 16-byte codes instead of 256-byte vectors
    for row in (exact, approximate):
        assert 0 < row["single"]["p50_ms"] <= row["single"]["p99_ms"] and row["batch"]["per_query_ms"] > 0
    limit = exact["bandwidth_limit"]
    assert limit["bytes_per_query"] == 3000 * 64 * 4 and limit["single_over_limit"] > 0
    assert approximate["speedup_single"] > 0 and "speedup_single" not in exact
    xpool = results["xpool"]
    assert [row["rerank_k"] for row in xpool["two_stage"]] == [10, 400]  # 5000 > gallery: skipped
    assert xpool["two_stage"][-1]["recall@10"] == 1.0  # every video re-scored: the exhaustive ranking
    assert 0.0 <= xpool["two_stage"][0]["recall@10"] <= 1.0 and xpool["exhaustive_latency_ms"] > 0
    table = capsys.readouterr().out
    assert "| 3,000 | IVF8,PQ16 nprobe=16 |" in table and "| rerank_k |" in table and "bandwidth limit ms" in table
