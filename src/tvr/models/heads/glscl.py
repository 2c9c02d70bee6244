"""GLSCL (Zhang et al., IEEE TIP 2025): global-local semantic consistent learning (methods spec §2).

Score ``S = S_g + local_weight * S_l``:
  * S_g, the parameter-free Global Interaction Module: each video's frames (after the seqTransf temporal
    transformer) are pooled with weights ``softmax_f(<c_text, V_f> / temperature)`` over all frames, the
    padded ones then zeroed *without* renormalising (reference behaviour), and compared by cosine with
    the text's sentence feature. The cosine divides by the exact norms, as the reference does, so a
    pooled vector of tiny norm (a short padded video whose padded frames take the softmax at a low
    temperature) is still a unit vector. The one remaining difference: a pooled vector of zero norm (no
    real frame, e.g. an unreadable video; or entries so small that their squares underflow) scores 0
    where the reference gives NaN.
  * S_l, the shared Local Interaction Module: K learnable queries run through one TransformerDecoder over
    the video's frames and, with the same queries and weights, over the text's token features; concept
    k of a text is compared with concept k of a video, averaged over k.
Regularisers on the paired batch (returned by :meth:`extra_losses`): IDL pushes a modality's concepts
apart (video concepts only, as the reference), ICL pulls paired video and text concepts together.

Reference quirks kept as defaults, each behind a switch: no memory mask in the decoder
(``memory_mask``), the ICL diagonal divided by K rather than the batch (``icl_diag_norm``). As the
decoder attends to padded frames, S_l depends on their features: the reference encodes its zero-filled
padded frames with CLIP, which ``backbone.padded_frames=encoded_blank`` reproduces. (The GIM softmax sees
them too, but they only rescale the pooled vector, which the cosine's exact norm undoes.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads.base import LossContext, Repr, RetrievalHead
from tvr.models.heads.registry import register_head
from tvr.models.heads.temporal import TemporalTransformer, prefixed_renames

ICL_DIAG_NORMS = ("num_queries", "batch")


def unit_vectors(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||`` over the last dim, as the reference divides, for every norm however small
    (``F.normalize`` divides by at least 1e-12, which shrinks smaller vectors). A vector of zero norm (all
    zeros, or entries so small that their squares underflow), where the reference gives NaN or inf, is
    divided by 1 instead, so it stays finite and so does its gradient."""
    norm = x.norm(dim=-1, keepdim=True)
    return x / norm.masked_fill(norm == 0, 1.0)


def margin_ranking_loss(gram: torch.Tensor, margin: float) -> torch.Tensor:
    """``sum_{i!=j} [max(0, m + G_ij - G_ii) + max(0, m + G_ij - G_jj)] / (K (K - 1))``."""
    k = gram.shape[0]
    diagonal = gram.diagonal()
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    rows = (margin + gram - diagonal[:, None]).clamp(min=0)
    cols = (margin + gram - diagonal[None, :]).clamp(min=0)
    return (rows[off_diagonal].sum() + cols[off_diagonal].sum()) / (k * (k - 1))


@register_head("glscl")
class GLSCLHead(RetrievalHead):
    query_independent = False
    reads = {
        **RetrievalHead.reads,
        "text": frozenset({"sentence", "tokens", "mask"}),
    }  # the concepts come from the words
    reference_key_renames = (
        ("spatial_queries", "queries"),
        *prefixed_renames("temporal."),
        ("transformer_decoder_noun.", "decoder."),
    )
    reference_ignored_keys = (
        "noun_queries",
        "weight_fc.",
        "decoder_layer_noun.",
        "decoder_layer_spatial.",
        "transformer_decoder_spatial.",
    )

    def __init__(
        self,
        embed_dim: int,
        temporal_layers: int = 4,
        temporal_heads: int | None = None,
        init_from_clip: bool | str = True,
        num_queries: int = 8,
        decoder_layers: int = 3,
        decoder_heads: int = 8,
        decoder_ffn: int = 2048,
        decoder_dropout: float = 0.1,
        gim_temperature: float = 3.0,
        local_weight: float = 0.5,
        idl_alpha: float = 1e-4,
        idl_margin: float = 0.1,
        icl_beta: float = 0.005,
        icl_target: float = 0.75,
        icl_diag_norm: str = "num_queries",
        memory_mask: bool = False,
    ) -> None:
        super().__init__(embed_dim)
        if icl_diag_norm not in ICL_DIAG_NORMS:
            raise ValueError(f"glscl icl_diag_norm must be one of {', '.join(ICL_DIAG_NORMS)}, got '{icl_diag_norm}'")
        self.init_from_clip = init_from_clip
        self.temporal = TemporalTransformer(embed_dim, temporal_layers, temporal_heads)
        self.queries = nn.Parameter(torch.rand(num_queries, embed_dim))
        layer = nn.TransformerDecoderLayer(embed_dim, decoder_heads, decoder_ffn, decoder_dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_layers)
        self.gim_temperature = gim_temperature
        self.local_weight = local_weight
        self.idl_alpha, self.idl_margin = idl_alpha, idl_margin
        self.icl_beta, self.icl_target, self.icl_diag_norm = icl_beta, icl_target, icl_diag_norm
        self.memory_mask = memory_mask

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        self.temporal.init_as_configured(backbone, self.init_from_clip)

    def concepts(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The K normalised concept vectors ``[N, K, D]`` the shared queries read out of ``memory``."""
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        padding = ~mask.bool() if self.memory_mask else None
        return F.normalize(self.decoder(queries, memory, memory_key_padding_mask=padding), dim=-1)

    def encode_text(self, text: TextFeatures) -> Repr:
        return {"cls": text.sentence, "concepts": self.concepts(text.tokens, text.mask)}

    def encode_video(self, video: FrameFeatures) -> Repr:
        frames = self.temporal(video.frames, video.mask)
        return {"video": frames, "mask": video.mask.to(frames.dtype), "concepts": self.concepts(frames, video.mask)}

    def global_similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        cls, frames = text_repr["cls"], video_repr["video"]
        weights = torch.einsum("td,vfd->tvf", cls, frames).div(self.gim_temperature).softmax(dim=-1)
        weights = weights * video_repr["mask"][None]  # after the softmax, not renormalised (reference)
        pooled = torch.einsum("tvf,vfd->tvd", weights, frames)
        return torch.einsum("td,tvd->tv", unit_vectors(cls), unit_vectors(pooled))

    def local_similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        return torch.einsum("tkd,vkd->tv", text_repr["concepts"], video_repr["concepts"]) / self.queries.shape[0]

    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        return self.global_similarity(text_repr, video_repr) + self.local_weight * self.local_similarity(
            text_repr, video_repr
        )

    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        video, text = video_repr["concepts"], text_repr["concepts"]
        if video.shape[0] != text.shape[0]:
            raise ValueError("glscl's regularisers need a paired batch (text i with video i)")
        batch, k = video.shape[:2]
        gram = torch.einsum("bkd,bjd->kj", video, video) / batch
        idl = self.idl_alpha * margin_ranking_loss(gram, self.idl_margin)
        mse = F.mse_loss(video.mean(dim=0), text.mean(dim=0))
        paired = torch.einsum("bkd,bkd->k", video, text) / (k if self.icl_diag_norm == "num_queries" else batch)
        icl = mse + self.icl_beta * (paired - self.icl_target).square().sum()
        return {"idl": idl, "icl": icl}

    def pair_bytes(self) -> int:
        return (2 * self.embed_dim + 64) * 4  # pooled [t, v, D] and its normalised copy, frame weights
