"""DSL and QB-Norm re-ranking: hand-computed values, direction handling, and labelling."""

import math

import numpy as np
import pytest
import torch

from tvr.evaluation.report import evaluate_scores, markdown_table
from tvr.evaluation.rerank import create_reranker
from tvr.evaluation.rerank.dsl import dual_softmax
from tvr.evaluation.rerank.qbnorm import qb_norm


def test_dual_softmax_by_hand():
    cos = torch.tensor([[0.5, 0.1], [0.3, 0.4]])
    out = dual_softmax(cos, temperature=10.0, over="texts")
    # column 0: softmax over texts of (5, 3); column 1: of (1, 4)
    p00 = math.exp(5) / (math.exp(5) + math.exp(3))
    p01 = math.exp(1) / (math.exp(1) + math.exp(4))
    assert out[0, 0].item() == pytest.approx(0.5 * p00, rel=1e-6)
    assert out[0, 1].item() == pytest.approx(0.1 * p01, rel=1e-6)
    over_videos = dual_softmax(cos, temperature=10.0, over="videos")
    q00 = math.exp(5) / (math.exp(5) + math.exp(1))
    assert over_videos[0, 0].item() == pytest.approx(0.5 * q00, rel=1e-6)


def test_dual_softmax_can_fix_a_hub_video():
    # Video 0 is a "hub": it scores highest for every text. DSL divides that popularity out.
    cos = torch.tensor([[0.70, 0.60, 0.10], [0.72, 0.68, 0.10], [0.71, 0.10, 0.69]])
    plain = evaluate_scores(cos, None)
    assert plain["t2v"]["R1"] == pytest.approx(100 / 3)
    reranked = evaluate_scores(cos, None, create_reranker("dsl", temperature=100.0))
    assert reranked["t2v"]["R1"] == pytest.approx(100 / 3)  # plain numbers stay as they were
    assert reranked["reranked"]["t2v"]["R1"] == 100.0
    assert reranked["reranked"]["method"] == "dsl"


def test_qb_norm_by_hand():
    cos = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.2, 0.8]])
    bank = torch.tensor([[0.7, 0.1, 0.0], [0.6, 0.3, 0.1]])  # both bank queries activate video 0 only
    beta = 2.0
    out = qb_norm(cos, bank, k=1, beta=beta)
    normaliser = np.exp(beta * bank.numpy().astype(np.float64)).sum(axis=0)
    expected_row0 = np.exp(beta * np.array([0.9, 0.2, 0.1])) / normaliser  # the paper's formula
    assert np.exp(out[0].numpy()) == pytest.approx(expected_row0, rel=1e-6)
    assert out[1].tolist() == pytest.approx([0.1, 0.2, 0.8])  # top video 2 not activated: unchanged


def test_qb_norm_does_not_overflow_on_large_scores():
    cos = torch.tensor([[90.0, 10.0], [5.0, 80.0]])  # logit-scaled inputs: exp(20 * 90) overflows fp64
    bank = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    out = qb_norm(cos, bank)
    assert torch.isfinite(out).all()
    assert out.argmax(dim=1).tolist() == [0, 1]


def test_rerank_is_labelled_and_never_replaces_plain_results():
    cos = torch.tensor([[0.60, 0.55], [0.62, 0.50]])
    result = evaluate_scores(cos, None, create_reranker("qbnorm"), query_bank=torch.tensor([[0.9, 0.1]]))
    assert set(result) >= {"t2v", "v2t", "reranked"}
    assert result["reranked"]["method"] == "qbnorm"
    assert "not re-ranked" in result["reranked"]["v2t"]
    table = markdown_table({"test": result})
    assert "test (QBNORM re-ranked) | t2v" in table and "(QBNORM re-ranked) | v2t" not in table
    with pytest.raises(ValueError, match="query bank"):
        evaluate_scores(cos, None, create_reranker("qbnorm"))
    with pytest.raises(KeyError, match="valid choices: dsl, qbnorm"):
        create_reranker("magic")
