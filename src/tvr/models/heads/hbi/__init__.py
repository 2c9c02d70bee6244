"""Building blocks of HBI (Jin et al., CVPR 2023, "Hierarchical Banzhaf Interaction"), methods spec §3.

* :mod:`.wti`: weighted token-wise interaction, the similarity at every level;
* :mod:`.token_merge`: CTM (DPC-KNN clustering) + TCBlock, entity -> action -> event tokens;
* :mod:`.banzhaf`: the Banzhaf estimator network and its Monte-Carlo target;
* :mod:`.losses`: Banzhaf distillation and self-distillation;
* :mod:`.blocks`: every trainable block in one container, with the reference's key names.
"""

from tvr.models.heads.hbi.banzhaf import BanzhafModule, banzhaf_interaction
from tvr.models.heads.hbi.blocks import LEVELS, HBIBlocks, reference_key_renames
from tvr.models.heads.hbi.losses import BI_TRANSPOSES, banzhaf_distillation, banzhaf_kl, kl_mean, self_distillation
from tvr.models.heads.hbi.token_merge import CTM, ClusteredTokens, TCBlock, TokenMerge, dpc_knn_clusters, merge_clusters
from tvr.models.heads.hbi.wti import (
    hbi_weight_mlp,
    pair_cell_mask,
    positive_pair_maps,
    token_similarity_maps,
    token_weights,
    wti_scores,
    wti_similarity,
)

__all__ = [
    "BI_TRANSPOSES",
    "CTM",
    "LEVELS",
    "BanzhafModule",
    "ClusteredTokens",
    "HBIBlocks",
    "TCBlock",
    "TokenMerge",
    "hbi_weight_mlp",
    "banzhaf_distillation",
    "banzhaf_interaction",
    "banzhaf_kl",
    "dpc_knn_clusters",
    "kl_mean",
    "merge_clusters",
    "pair_cell_mask",
    "positive_pair_maps",
    "reference_key_renames",
    "self_distillation",
    "token_similarity_maps",
    "token_weights",
    "wti_scores",
    "wti_similarity",
]
