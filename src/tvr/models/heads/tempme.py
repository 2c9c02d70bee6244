"""TempMe (Shen et al., ICLR 2025): temporal token merging inside CLIP's ViT, LoRA in both towers (methods spec §1).

The method lives in its towers: the ``tempme`` video tower (ImgMe/ClipMe merging, temporal embeddings,
LoRA) and the ``lora_text`` text tower, so this head is a preset: meanP over those towers, its options
theirs (``head=meanpool head.video_tower=tempme head.text_tower=lora_text`` with the same options is
the same model, under another head name; any other head can read these towers too). What reaches the head are the 12 protected CLS tokens, one per
frame, so the head itself is CLIP4Clip's mean pooling: the masked mean of unit frame vectors against the
unit EOT feature (the reference does not re-normalise the mean before its cosine; the cosine is the same).
With ``clip_weights: frozen`` (the reference, parameter-efficient) only the LoRA adapters and temporal
embeddings train, in the tower learning-rate group; ``trainable`` fine-tunes CLIP as well.
"""

from __future__ import annotations

import re

import torch

from tvr.models.heads.base import TowerChoice
from tvr.models.heads.meanpool import MeanPoolHead
from tvr.models.heads.registry import register_head
from tvr.models.towers.tempme import TempMeTower

# The reference's own weights live inside its CLIP modules, under these names (spec §1.2).
_REFERENCE_LORA = re.compile(
    r"^(clip\.)?(?P<tower>visual\.)?transformer\.resblocks\.(?P<block>\d+)\.attn\.TVPt_LoRA_(?P<part>[ab])$"
)
_REFERENCE_PE = re.compile(
    r"^(clip\.)?visual\.transformer\.resblocks\.(?P<block>\d+)\.TVPt_Video_Positional_embedding$"
)


@register_head("tempme")
class TempMeHead(MeanPoolHead):
    reference_clip_keys = ("TVPt_",)

    def __init__(self, embed_dim: int, lora_rank: int = 8, clip_weights: str = "frozen", **video_tower) -> None:
        """``lora_rank`` and ``clip_weights`` apply to both towers; the other options (``frames``, ``tome_r``,
        ``clip_layers``, ``clip_groups``, ratios, ``temporal_pe``, ``prop_attn``) are the tempme tower's, whose
        signature holds their defaults (the reference's)."""
        super().__init__(embed_dim)
        TempMeTower.check_options(lora_rank=lora_rank, clip_weights=clip_weights)
        TempMeTower.with_defaults(**video_tower)  # an unknown option fails here, naming it
        self.video_options = {**video_tower, "lora_rank": lora_rank, "clip_weights": clip_weights}
        self.text_options = {"lora_rank": lora_rank, "clip_weights": clip_weights}

    def default_towers(self) -> dict[str, dict]:
        return {"video": {"name": "tempme", **self.video_options}, "text": {"name": "lora_text", **self.text_options}}

    def tower_specs(self, choice: dict[str, TowerChoice] | None = None) -> dict[str, dict]:
        """As any head's, except that LoRA of rank 0 on the text side is CLIP's own text tower (no adapters), as
        TempMe has always built it, so its checkpoints load as saved."""
        specs = super().tower_specs(choice)
        if specs["text"]["name"] == "lora_text" and not specs["text"]["lora_rank"]:
            specs["text"] = {"name": "clip_text", "clip_weights": specs["text"]["clip_weights"]}
        return specs

    @classmethod
    def map_reference_keys(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """TempMe's ``TVPt_*`` weights (with or without the ``clip.`` prefix) -> this head's tower keys."""
        out = {}
        for key, value in state_dict.items():
            if lora := _REFERENCE_LORA.match(key):
                tower = "video_tower" if lora["tower"] else "text_tower"
                out[f"{tower}.lora.{lora['block']}.{'down' if lora['part'] == 'a' else 'up'}"] = value
            elif pe := _REFERENCE_PE.match(key):
                out[f"video_tower.temporal_embeddings.{pe['block']}"] = value.reshape(value.shape[1], value.shape[-1])
            else:
                raise KeyError(
                    f"'{key}' is not one of TempMe's reference weights (TVPt_LoRA_a/b, TVPt_Video_Positional_embedding)"
                )
        return out
