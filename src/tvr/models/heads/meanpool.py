"""CLIP4Clip ``meanP``: the parameter-free mean of per-frame CLIP embeddings (methods spec §2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads.base import Repr, RetrievalHead, masked_mean_of_unit_frames
from tvr.models.heads.registry import register_head


@register_head("meanpool")
class MeanPoolHead(RetrievalHead):
    def encode_text(self, text: TextFeatures) -> Repr:
        return {"text": F.normalize(text.sentence, dim=-1)}

    def encode_video(self, video: FrameFeatures) -> Repr:
        return {"video": masked_mean_of_unit_frames(video.frames, video.mask)}

    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        return text_repr["text"] @ video_repr["video"].t()
