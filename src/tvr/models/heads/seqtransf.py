"""CLIP4Clip ``seqTransf``: a temporal transformer over frame embeddings, residual to the input, then
CLIP4Clip's mean pooling (methods spec §2.3). The transformer is :mod:`tvr.models.heads.temporal`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads.base import Repr, RetrievalHead, masked_mean_of_unit_frames
from tvr.models.heads.registry import register_head
from tvr.models.heads.temporal import TemporalTransformer, prefixed_renames


@register_head("seqtransf")
class SeqTransfHead(RetrievalHead):
    reference_key_renames = prefixed_renames("temporal.")

    def __init__(
        self,
        embed_dim: int,
        layers: int = 4,
        heads: int | None = None,
        max_positions: int = 77,
        init_from_clip: bool | str = True,
    ) -> None:
        super().__init__(embed_dim)
        self.init_from_clip = init_from_clip
        self.temporal = TemporalTransformer(embed_dim, layers, heads, max_positions)

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        self.temporal.init_as_configured(backbone, self.init_from_clip)

    def encode_text(self, text: TextFeatures) -> Repr:
        return {"text": F.normalize(text.sentence, dim=-1)}

    def encode_video(self, video: FrameFeatures) -> Repr:
        return {"video": masked_mean_of_unit_frames(self.temporal(video.frames, video.mask), video.mask)}

    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        return text_repr["text"] @ video_repr["video"].t()
