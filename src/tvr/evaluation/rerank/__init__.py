"""Re-rankers, one module each, registered by name (see :mod:`tvr.evaluation.rerank.base`)."""

from tvr.evaluation.rerank.base import (
    DIRECTIONS,
    RERANKERS,
    QueryBankNeed,
    Reranker,
    as_levels,
    create_reranker,
    register_reranker,
)

__all__ = ["DIRECTIONS", "RERANKERS", "QueryBankNeed", "Reranker", "as_levels", "create_reranker", "register_reranker"]
