"""HBI's token-wise interaction (methods spec §3.3): the shared module :mod:`tvr.models.heads.token_wise`
with HBI's rules: weight MLPs ``D -> 2D -> 1``, padded tokens' weight logit ``-9e15`` (finite, so a fully
padded item gets uniform weights), padded cells at 0 inside the maxima. Only the entity level has padding.
"""

from __future__ import annotations

from tvr.models.heads.token_wise import (
    HBI_MASK_VALUE,
    TokenWiseInteraction,
    WeightMLP,
    pair_cell_mask,
    positive_pair_maps,
    token_similarity_maps,
)

HBI_WTI = TokenWiseInteraction(mask_value=HBI_MASK_VALUE, padded_cells="zero_in_max")
MASKED_LOGIT = HBI_MASK_VALUE  # also the reference's logit for players outside a Banzhaf coalition
token_weights = HBI_WTI.weights
wti_scores = HBI_WTI.scores
wti_similarity = HBI_WTI.similarity


def hbi_weight_mlp(dim: int) -> WeightMLP:
    """HBI's weight MLP, ``Linear(D, 2D) -> ReLU -> Linear(2D, 1)``."""
    return WeightMLP(dim, hidden=(2 * dim,))


__all__ = [
    "HBI_WTI",
    "MASKED_LOGIT",
    "hbi_weight_mlp",
    "pair_cell_mask",
    "positive_pair_maps",
    "token_similarity_maps",
    "token_weights",
    "wti_scores",
    "wti_similarity",
]
