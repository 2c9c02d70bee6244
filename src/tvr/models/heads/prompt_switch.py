"""Prompt Switch (Deng et al., ICCV 2023; methods spec §1, §4): meanP over the ``prompt_switch`` video tower.

The method lives in its video tower (the switched prompt cube and the aggregation attention); the video
vector is the mean of unit frame embeddings, query-independent, so a gallery can be served from a vector
index. A preset: ``head=meanpool head.video_tower=prompt_switch`` with the same options is the same
retrieval model under another name.
"""

from __future__ import annotations

import torch

from tvr.models.heads.meanpool import MeanPoolHead
from tvr.models.heads.registry import register_head
from tvr.models.towers.prompt_switch import PromptSwitchTower

# The reference keeps the tower's weights inside its HF CLIP modules (spec §5).
_REFERENCE_TOWER_KEYS = (
    ("clip.vision_model.encoder.prompt_embedding", "video_tower.prompts"),
    ("clip.vision_model.attn.", "video_tower.aggregate."),
)


@register_head("prompt_switch")
class PromptSwitchHead(MeanPoolHead):
    reference_clip_keys = ("vision_model.encoder.prompt_embedding", "vision_model.attn.")

    def __init__(
        self,
        embed_dim: int,
        num_prompts: int = 6,
        test_aggregation: str = "per_group",
        aggregation_lr_group: str = "clip",
        clip_weights: str = "trainable",
    ) -> None:
        """The options are the prompt_switch tower's (its signature documents them and holds the reference's
        defaults)."""
        super().__init__(embed_dim)
        self.video_options = {
            "num_prompts": num_prompts,
            "test_aggregation": test_aggregation,
            "aggregation_lr_group": aggregation_lr_group,
            "clip_weights": clip_weights,
        }
        PromptSwitchTower.check_options(**self.video_options)

    def default_towers(self) -> dict[str, dict]:
        return {"video": {"name": "prompt_switch", **self.video_options}, "text": {"name": "clip_text"}}

    @classmethod
    def map_reference_keys(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's added weights (cube, aggregation) -> this head's tower keys."""
        out = {}
        for key, value in state_dict.items():
            for old, new in _REFERENCE_TOWER_KEYS:
                if key.startswith(old):
                    out[new + key[len(old) :]] = value
                    break
            else:
                raise KeyError(
                    f"'{key}' is not one of Prompt Switch's reference weights "
                    "(clip.vision_model.encoder.prompt_embedding, clip.vision_model.attn.*, caption_*)"
                )
        return out
