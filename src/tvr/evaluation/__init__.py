"""Evaluation: retrieval metrics as the papers compute them, re-ranking, tiled scoring and reporting.

The public API the README documents, importable as ``from tvr.evaluation import retrieval_metrics``.
"""

from tvr.errors import NonFiniteScoresError
from tvr.evaluation.metrics import check_finite_scores, ground_truth_ranks, retrieval_metrics, summarize_ranks
from tvr.evaluation.report import evaluate_scores, markdown_table
from tvr.evaluation.rerank.dsl import dual_softmax
from tvr.evaluation.rerank.qbnorm import qb_norm
from tvr.models.similarity import tiled_similarity

__all__ = [
    "NonFiniteScoresError",
    "check_finite_scores",
    "dual_softmax",
    "evaluate_scores",
    "ground_truth_ranks",
    "markdown_table",
    "qb_norm",
    "retrieval_metrics",
    "summarize_ranks",
    "tiled_similarity",
]
