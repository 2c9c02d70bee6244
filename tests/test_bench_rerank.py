"""tools/bench_rerank.py at a small width: every figure is written and well formed, and the FLOPs it counts for one
denoising step follow the generators' layer shapes. Nothing here asserts a time."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool

pytestmark = pytest.mark.slow  # runs the tool in a subprocess


def test_bench_rerank_writes_both_directions_per_width(tmp_path):
    out = tmp_path / "rerank.json"
    result = run_tool(
        "tools/bench_rerank.py", "--widths", "16", "32", "--queries", "4", "--gallery", "40", "--json", str(out)
    )
    rows = json.loads(out.read_text())
    assert [row["width"] for row in rows] == [16, 32] and all(row["k"] == 32 and row["steps"] == 50 for row in rows)
    for row in rows:
        for direction in ("t2v", "v2t"):
            assert row[f"rerank_{direction}_s_per_1k_queries"] > 0 and row[f"rerank_{direction}_gflop_per_s"] > 0
    # the per-candidate projections and decoder grow as D^2: doubling the width roughly quadruples the FLOPs
    growth = rows[1]["rerank_t2v_gflop_per_1k_queries"] / max(rows[0]["rerank_t2v_gflop_per_1k_queries"], 1e-9)
    assert 3.0 < growth < 4.5
    assert all(row["matmul_gflop_per_s"] > 0 for row in rows) and "of matmul rate |" in result.stdout
