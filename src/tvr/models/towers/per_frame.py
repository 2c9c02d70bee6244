"""The default towers: CLIP as it is, each frame an independent image, each caption through CLIP's text tower."""

from __future__ import annotations

import torch

from tvr.models.towers.base import TextTower, VideoTower, register_tower


@register_tower("per_frame")
class PerFrameTower(VideoTower):
    """Every real frame through CLIP's image encoder (:meth:`CLIPBackbone.encode_frames`); with
    ``with_tokens``, the per-frame patch tokens too (``FrameFeatures.patches``)."""

    outputs = VideoTower.outputs | {"patches"}

    def __init__(self, backbone=None, clip_weights: str = "trainable") -> None:
        super().__init__(clip_weights)

    def forward(self, backbone, frames: torch.Tensor, mask: torch.Tensor | None = None, with_tokens: bool = False):
        return backbone.encode_frames(frames, mask, with_patches=with_tokens)


@register_tower("clip_text")
class ClipTextTower(TextTower):
    def __init__(self, backbone=None, clip_weights: str = "trainable") -> None:
        super().__init__(clip_weights)

    def forward(self, backbone, token_ids: torch.Tensor):
        return backbone.encode_text(token_ids)
