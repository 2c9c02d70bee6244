"""The ``hbi_estimator`` head: HBI's Banzhaf-estimator pre-training stage (methods spec §3.6) as a run of its own.

Everything but the estimator is frozen (CLIP through its towers, the temporal transformer, the WTI
weights): the estimator learns to map the entity-level word x frame interaction of each positive pair
to its Monte-Carlo Banzhaf interaction (MSE; the target is on the reference's x1000 scale). It trains
no contrastive level; evaluation ranks by entity-level WTI. At the end of the run the estimator alone is
written to ``<run dir>/estimator.pt``, which ``head=hbi head.estimator_ckpt=...`` loads as its teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tvr.atomic import atomic_torch_save
from tvr.models.heads.base import LossContext, Repr
from tvr.models.heads.hbi.banzhaf import banzhaf_interaction
from tvr.models.heads.hbi.head import ESTIMATOR_FORMAT, HBIHead, repr_rows
from tvr.models.heads.hbi.wti import pair_cell_mask
from tvr.models.heads.registry import register_head

ESTIMATOR_FILE = "estimator.pt"


@register_head("hbi_estimator")
class HBIEstimatorHead(HBIHead):
    trained_levels = ()

    def __init__(self, embed_dim: int, num_samples: int = 100, **hbi_options) -> None:
        super().__init__(embed_dim, **{**hbi_options, "level_weights": [1.0, 0.0, 0.0]})
        if num_samples < 1:
            raise ValueError(f"hbi_estimator num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.requires_grad_(False)  # the features are an untrained HBI's, as the reference's stage
        self.blocks.teacher.requires_grad_(True)
        self.blocks.teacher.bn.requires_grad_(False)

    def default_towers(self) -> dict[str, dict]:
        return {
            "video": {"name": "per_frame", "clip_weights": "frozen"},
            "text": {"name": "clip_text", "clip_weights": "frozen"},
        }

    def _levels_needed(self) -> int:
        return 1  # the estimator learns from the entity level alone

    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        if repr_rows(text_repr) != repr_rows(video_repr):
            raise ValueError("the Banzhaf estimator learns from paired batches (text i with video i)")
        maps = self.positive_pair_maps(text_repr, video_repr, 0).detach()
        target = banzhaf_interaction(
            maps,
            text_repr["mask"],
            video_repr["mask"],
            text_repr["weights0"],
            video_repr["weights0"],
            self.num_samples,
            self.noise,
        )
        predicted = self.blocks.teacher(maps.unsqueeze(1)).squeeze(1) * pair_cell_mask(
            text_repr["mask"], video_repr["mask"]
        )
        return {"banzhaf_mse": F.mse_loss(predicted, target)}

    def check_pretrained(self) -> None:
        """Nothing to read: the estimator is what this run trains."""

    def load_pretrained(self) -> None:
        """Nothing to read: the estimator is what this run trains."""

    def write_artifacts(self, run_dir: Path) -> list[Path]:
        path = Path(run_dir) / ESTIMATOR_FILE
        atomic_torch_save({"format": ESTIMATOR_FORMAT, "state_dict": self.blocks.teacher.state_dict()}, path)
        return [path]
