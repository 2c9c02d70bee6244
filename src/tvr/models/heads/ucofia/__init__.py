"""Building blocks of UCoFiA (Wang et al., ICCV 2023, "Unified Coarse-to-Fine Alignment"), methods spec §3.

* :mod:`.selection`: the patch scorer (both ``PredictorLG`` variants) and the perturbed top-k;
* :mod:`.levels`: interactive similarity aggregation and the sentence-frame and patch-word levels;
* :mod:`.head`: the ``ucofia`` head.
"""

from tvr.models.heads.ucofia.levels import PatchWordParts, isa, patch_word, sentence_frame
from tvr.models.heads.ucofia.selection import PatchSelector, PerturbedTopK, PredictorLG, hard_topk

__all__ = [
    "PatchSelector",
    "PatchWordParts",
    "PerturbedTopK",
    "PredictorLG",
    "hard_topk",
    "isa",
    "patch_word",
    "sentence_frame",
]
