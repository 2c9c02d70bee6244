"""The ``drl`` head (Wang et al. 2022, "Disentangled Representation Learning for Text-Video Retrieval"; methods
spec DRL §1): token-wise interaction between every CLIP token of a caption and every frame after the seqTransf
temporal transformer, plus channel decorrelation regularisation (CDCR) as an extra loss.

``interaction`` is the paper's ablation axis (one per model, as the reference builds only that one's weights):

* ``wti``: weighted token-wise interaction, the weights from a small MLP on the raw tokens
  (:mod:`tvr.models.heads.token_wise`, the module HBI and DiffusionRet share; ``wti_arch`` 1-3);
* ``ti``: the same with uniform weights over the real tokens and frames;
* ``dp``: the unit EOT feature against the unit mean of the unit frames (a vector index can serve it);
* ``xti``: a cross transformer over ``[EOT; frames]`` per (text, video) pair, then a pooler and a Linear score.

CDCR (§1.5) standardises text and video channels (unbiased std over the rows), correlates them into a D x D
matrix ``C`` and adds ``cdcr_lambda * (alpha1 * sum_d (C_dd - 1)^2 + alpha2 * sum_{d!=e} C_de^2)``. ``cdcr``
chooses the rows: 1, one random real token per text and frame per video (dp: the global vectors); 2, every
real token with its best frame in its own video and every real frame with its best token; 3 (wti only), as
2 with each row weighted by its WTI weight. The random picks of CDCR 1 come from the head's own generator
(``cdcr_seed``), whose state checkpoints carry, so resumed runs draw what the uninterrupted run would.

Reference quirks kept as defaults behind switches: padded cells take part in the maxima and argmaxes
(``wti_padded_cells``, Q3), padded tokens' weight logits are ``-inf`` (``wti_mask_value``, Q4). An item with no
real token or frame scores 0 against everything (the reference gives NaN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, QuickGELU
from torch import nn

from tvr.errors import ConfigError
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads.base import LossContext, Repr, RetrievalHead, masked_mean_of_unit_frames
from tvr.models.heads.registry import register_head
from tvr.models.heads.temporal import TF_LAYERNORM_EPS, TemporalTransformer, prefixed_renames
from tvr.models.heads.token_wise import (
    TokenWiseInteraction,
    WeightMLP,
    pair_cell_mask,
    positive_pair_maps,
    uniform_token_weights,
)
from tvr.options import limits

INTERACTIONS = ("wti", "ti", "dp", "xti")
#: The reference draws CDCR 1's positions as ``randint(0, 10000) mod length`` (Q12).
CDCR_DRAW_HIGH = 10000


def weight_mlp_hidden(dim: int, wti_arch: int) -> tuple[int, ...]:
    """DRL's ``wti_arch``: 1 ``D -> 1``, 2 ``D -> D -> 1``, 3 ``D -> D -> D -> 1``."""
    return (dim,) * (wti_arch - 1)


def standardised(rows: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel over the rows, with the unbiased std (the reference's)."""
    return (rows - rows.mean(dim=0)) / rows.std(dim=0)


@dataclass
class CDCRTerms:
    """One CDCR evaluation: the Barlow-Twins sums of ``C``, the alpha-weighted loss (before ``cdcr_lambda``)
    and, for CDCR 2/3, the text- and video-side matrices (``C = (c1 + c2) / 2``) and the argmax indices."""

    on_diag: torch.Tensor
    off_diag: torch.Tensor
    loss: torch.Tensor
    c1: torch.Tensor | None = None
    c2: torch.Tensor | None = None
    text_index: torch.Tensor | None = None  # [B, L]: each position's best frame in its own video
    video_index: torch.Tensor | None = None  # [B, F]: each frame's best position in its own text


class CrossEncoder(nn.Module):
    """DRL's ``xti`` cross model: ``[EOT_a; V_b] + positions`` -> dropout -> transformer blocks (seqTransf's,
    key mask ``[1; video_mask_b]``) -> ``QuickGELU(dense(LN(h)[0]))`` -> ``Linear(D, 1)``.

    The reference runs it twice per pair in training (text-major and video-major, Q10), each pass with its own
    dropout draw; tvr runs it once and the loss reads that matrix both ways (identical without dropout)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_positions: int) -> None:
        super().__init__()
        self.encoder = TemporalTransformer(dim, layers, heads, max_positions)
        self.dropout = nn.Dropout(dropout)
        self.ln_pool = LayerNorm(dim, eps=TF_LAYERNORM_EPS)
        self.dense = nn.Linear(dim, dim)
        self.similarity_dense = nn.Linear(dim, 1)
        self.activation = QuickGELU()
        for layer in (self.dense, self.similarity_dense):
            nn.init.normal_(layer.weight, std=0.02)  # the reference's model-wide init pass
            nn.init.zeros_(layer.bias)

    def pooled(self, eot: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[Nt, Nv, D]`` pooled outputs of every text's EOT ``[Nt, D]`` with every video ``[Nv, F, D]``."""
        texts, (videos, num_frames, dim) = eot.shape[0], frames.shape
        sequence = torch.cat(
            (
                eot[:, None, None, :].expand(texts, videos, 1, dim),
                frames[None].expand(texts, videos, num_frames, dim),
            ),
            dim=2,
        ).flatten(0, 1)
        keys = torch.cat((mask.new_ones(videos, 1), mask), dim=1)[None].expand(texts, -1, -1).flatten(0, 1)
        hidden = self.encoder.encode(self.dropout(sequence + self.encoder.positions(sequence)), keys)
        return self.activation(self.dense(self.ln_pool(hidden[:, 0]))).unflatten(0, (texts, videos))

    def forward(self, eot: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.similarity_dense(self.pooled(eot, frames, mask)).squeeze(-1)


@register_head("drl")
class DRLHead(RetrievalHead):
    reads = {**RetrievalHead.reads, "text": frozenset({"tokens", "mask"})}  # every token; the EOT among them
    reference_key_renames = (
        *prefixed_renames("temporal."),
        ("cross.embeddings.position_embeddings.", "cross.encoder.position_embedding."),
        ("cross.transformer.resblocks.", "cross.encoder.blocks."),
        ("cross.pooler.ln_pool.", "cross.ln_pool."),
        ("cross.pooler.dense.", "cross.dense."),
        ("similarity_dense.", "cross.similarity_dense."),
    )

    def __init__(
        self,
        embed_dim: int,
        interaction: Literal["wti", "ti", "dp", "xti"] = "wti",
        temporal: Literal["seqtransf", "none"] = "seqtransf",
        temporal_layers: Annotated[int, limits(minimum=1)] = 4,
        temporal_heads: int | None = None,
        max_positions: Annotated[int, limits(minimum=1)] = 77,
        init_from_clip: bool | str = True,
        wti_arch: Literal[1, 2, 3] = 2,
        wti_mask_value: float = float("-inf"),
        wti_padded_cells: Literal["zero_in_max", "exclude"] = "zero_in_max",
        cdcr: Literal[0, 1, 2, 3] = 3,
        cdcr_alpha1: Annotated[float, limits(minimum=0.0)] = 0.11,
        cdcr_alpha2: Annotated[float, limits(minimum=0.0)] = 0.0,
        cdcr_lambda: Annotated[float, limits(minimum=0.0)] = 0.001,
        cdcr_seed: int = 0,
        xti_layers: Annotated[int, limits(minimum=1)] = 4,
        xti_heads: Annotated[int, limits(minimum=1)] = 8,
        xti_dropout: Annotated[float, limits(minimum=0.0, maximum=1.0)] = 0.1,
    ) -> None:
        super().__init__(embed_dim)
        check_drl_options(interaction, temporal, wti_arch, cdcr)
        self.interaction, self.cdcr = interaction, int(cdcr)
        self.cdcr_alpha1, self.cdcr_alpha2, self.cdcr_lambda = cdcr_alpha1, cdcr_alpha2, cdcr_lambda
        self.query_independent = interaction == "dp"  # wti, ti and xti score pairs: two-stage search
        self.init_from_clip = init_from_clip
        self.temporal = (
            TemporalTransformer(embed_dim, temporal_layers, temporal_heads, max_positions)
            if temporal == "seqtransf"
            else None
        )
        self.token_wise = TokenWiseInteraction(mask_value=float(wti_mask_value), padded_cells=wti_padded_cells)
        if interaction == "wti":
            self.text_weight_fc = WeightMLP(embed_dim, weight_mlp_hidden(embed_dim, wti_arch))
            self.video_weight_fc = WeightMLP(embed_dim, weight_mlp_hidden(embed_dim, wti_arch))
        if interaction == "xti":
            self.cross = CrossEncoder(embed_dim, xti_layers, xti_heads, xti_dropout, max_positions)
        self.cdcr_generator = torch.Generator().manual_seed(int(cdcr_seed))
        self._largest = (1, 1)  # (tokens, frames) of the largest items seen, for tile sizing

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        """seqTransf and the cross encoder start from CLIP's first text blocks and positional embedding."""
        encoders = [self.temporal] if self.temporal is not None else []
        if self.interaction == "xti":
            encoders.append(self.cross.encoder)
        for encoder in encoders:
            encoder.init_as_configured(backbone, self.init_from_clip)

    @classmethod
    def map_reference_keys(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Also ``wti_arch=1``'s single Linear (``text_weight_fc.weight``) to the Sequential's ``.0.``."""
        single = re.compile(r"^(text|video)_weight_fc\.(weight|bias)$")
        state_dict = {single.sub(r"\1_weight_fc.0.\2", key): value for key, value in state_dict.items()}
        return super().map_reference_keys(state_dict)

    # ------------------------------------------------------------------ per item
    def video_tokens(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``V``: the frames after seqTransf (or as they are with ``temporal=none``)."""
        return frames if self.temporal is None else self.temporal(frames, mask)

    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, side: str) -> Repr:
        """Raw ``[N, n, D]`` tokens (text tokens, or ``V``) and their mask -> this interaction's representation."""
        mask = mask.to(tokens.dtype)
        if self.interaction == "xti":
            if side == "text":
                return {"eot": eot_features(tokens, mask)}
            return {"frames": tokens, "mask": mask}
        if self.interaction == "dp":
            if side == "text":
                return {"text": F.normalize(eot_features(tokens, mask), dim=-1)}
            return {"video": masked_mean_of_unit_frames(tokens, mask)}
        if self.interaction == "wti":
            weight_fc = self.text_weight_fc if side == "text" else self.video_weight_fc
            weights = self.token_wise.weights(weight_fc(tokens), mask)
        else:
            weights = uniform_token_weights(mask, tokens.dtype)
        return {"tokens": F.normalize(tokens, dim=-1), "mask": mask, "weights": weights}

    def encode_text(self, text: TextFeatures) -> Repr:
        self._largest = (max(self._largest[0], text.tokens.shape[1]), self._largest[1])
        return self.encode_tokens(text.tokens, text.mask, "text")

    def encode_video(self, video: FrameFeatures) -> Repr:
        self._largest = (self._largest[0], max(self._largest[1], video.frames.shape[1]))
        return self.encode_tokens(self.video_tokens(video.frames, video.mask), video.mask, "video")

    # ------------------------------------------------------------------ pairwise
    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        if self.interaction == "dp":
            return text_repr["text"] @ video_repr["video"].t()
        if self.interaction == "xti":
            return self.cross(text_repr["eot"], video_repr["frames"], video_repr["mask"])
        return self.token_wise.repr_similarity(text_repr, video_repr)

    def pair_bytes(self) -> int:
        tokens, frames = self._largest
        if self.interaction == "dp":
            return 0
        if self.interaction == "xti":  # activations of one cross-encoder pass over F + 1 positions, fp32
            return 4 * (frames + 1) * (12 * self.embed_dim + 8 * (frames + 1))
        return 4 * 3 * tokens * frames  # the [t, v, L, F] map, its cell mask and maxima, fp32

    # ------------------------------------------------------------------ training
    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        if not self.cdcr:
            return {}
        return {"cdcr": self.cdcr_lambda * self.cdcr_terms(text_repr, video_repr).loss}

    def cdcr_terms(self, text_repr: Repr, video_repr: Repr) -> CDCRTerms:
        """CDCR of a paired batch (text i with video i), the variant ``cdcr`` and the interaction choose."""
        if next(iter(text_repr.values())).shape[0] != next(iter(video_repr.values())).shape[0]:
            raise ValueError("drl's CDCR needs a paired batch (text i with video i)")
        if self.interaction == "dp":
            texts, videos = standardised(text_repr["text"]), standardised(video_repr["video"])
            return self._barlow_twins(texts.t() @ videos / texts.shape[0])
        if self.cdcr == 1:
            return self._random_positions_cdcr(text_repr, video_repr)
        return self._matched_cdcr(text_repr, video_repr)

    def cdcr_draws(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CDCR 1's ``randint(0, 10000)`` draws ``[B]`` for the texts, then the videos, from the head's generator."""
        text = torch.randint(0, CDCR_DRAW_HIGH, (batch,), generator=self.cdcr_generator)
        video = torch.randint(0, CDCR_DRAW_HIGH, (batch,), generator=self.cdcr_generator)
        return text, video

    def _random_positions_cdcr(self, text_repr: Repr, video_repr: Repr) -> CDCRTerms:
        """One random real position per text and per video: ``draw mod length`` (an item without any picks 0)."""
        batch = text_repr["mask"].shape[0]
        rows = torch.arange(batch, device=text_repr["mask"].device)
        text_draw, video_draw = (draw.to(rows.device) for draw in self.cdcr_draws(batch))
        text_pick = text_draw % text_repr["mask"].sum(dim=1).long().clamp(min=1)
        video_pick = video_draw % video_repr["mask"].sum(dim=1).long().clamp(min=1)
        text_rows = standardised(text_repr["tokens"][rows, text_pick])
        video_rows = standardised(video_repr["tokens"][rows, video_pick])
        return self._barlow_twins(text_rows.t() @ video_rows / batch)

    def _matched_cdcr(self, text_repr: Repr, video_repr: Repr) -> CDCRTerms:
        """CDCR 2/3: every real token with the frame its own video's map picks, and every real frame with the
        position its own text's map picks (padded cells included under ``zero_in_max``, Q3)."""
        text, video = text_repr["tokens"], video_repr["tokens"]
        text_mask, video_mask = text_repr["mask"], video_repr["mask"]
        maps = positive_pair_maps(text, video, text_mask, video_mask)
        cells = pair_cell_mask(text_mask, video_mask) if self.token_wise.needs_cells else None
        best = self.token_wise.best_matches(maps, cells)
        dim = text.shape[-1]
        matched_frames = video.gather(1, best.text_index[..., None].expand(-1, -1, dim))  # [B, L, D]
        matched_tokens = text.gather(1, best.video_index[..., None].expand(-1, -1, dim))  # [B, F, D]
        real_text, real_video = text_mask.bool(), video_mask.bool()
        text_rows, text_matches = standardised(text[real_text]), standardised(matched_frames[real_text])
        video_rows, video_matches = standardised(video[real_video]), standardised(matched_tokens[real_video])
        if self.cdcr == 3:  # each row weighted by its WTI weight; an item's weights sum to 1
            batch = text.shape[0]
            c1 = (text_rows * text_repr["weights"][real_text][:, None]).t() @ text_matches / batch
            c2 = (video_rows * video_repr["weights"][real_video][:, None]).t() @ video_matches / batch
        else:
            c1 = text_rows.t() @ text_matches / text_rows.shape[0]
            c2 = video_rows.t() @ video_matches / video_rows.shape[0]
        terms = self._barlow_twins((c1 + c2) / 2)
        terms.c1, terms.c2, terms.text_index, terms.video_index = c1, c2, best.text_index, best.video_index
        return terms

    def _barlow_twins(self, correlation: torch.Tensor) -> CDCRTerms:
        diagonal = correlation.diagonal()
        off = ~torch.eye(correlation.shape[0], dtype=torch.bool, device=correlation.device)
        on_diag = (diagonal - 1).square().sum()
        off_diag = correlation[off].square().sum()
        return CDCRTerms(on_diag, off_diag, self.cdcr_alpha1 * on_diag + self.cdcr_alpha2 * off_diag)

    # ------------------------------------------------------------------ explanation
    def explain(self, text_repr: Repr, video_repr: Repr) -> dict[str, torch.Tensor]:
        """wti/ti: the word x frame map of the first (text, video) pair and, for wti, each cell weighted by its
        word's and frame's weights (``[L, F]`` each, padded cells 0); dp and xti have no such map."""
        if self.interaction not in ("wti", "ti"):
            return {}
        pair = (
            {key: value[:1] for key, value in text_repr.items()},
            {key: value[:1] for key, value in video_repr.items()},
        )
        maps = positive_pair_maps(pair[0]["tokens"], pair[1]["tokens"], pair[0]["mask"], pair[1]["mask"])[0]
        explained = {"word x frame similarity": maps}
        if self.interaction == "wti":
            weights = pair[0]["weights"][0][:, None] * pair[1]["weights"][0][None, :]
            explained["word x frame weights (WTI)"] = weights / weights.max().clamp(min=torch.finfo(weights.dtype).tiny)
        return explained

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {"cdcr_generator": self.cdcr_generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.cdcr_generator.set_state(state["cdcr_generator"])


def eot_features(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``T[a, |t_a| - 1]``: each text's EOT feature (its last real token; position 0 for an empty mask)."""
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def check_drl_options(interaction: str, temporal: str, wti_arch: int, cdcr: int) -> None:
    """The combinations the reference cannot run, refused naming the keys (start-up validation builds the head)."""
    if interaction not in INTERACTIONS:
        raise ConfigError("head.interaction", f"got '{interaction}'", f"pass one of {', '.join(INTERACTIONS)}")
    if temporal not in ("seqtransf", "none"):
        raise ConfigError("head.temporal", f"got '{temporal}'", "pass seqtransf or none")
    if wti_arch not in (1, 2, 3):
        raise ConfigError("head.wti_arch", f"got {wti_arch}", "pass 1 (D->1), 2 (D->D->1) or 3 (D->D->D->1)")
    if cdcr not in (0, 1, 2, 3):
        raise ConfigError("head.cdcr", f"got {cdcr}", "pass 0 (off), 1, 2 or 3")
    if cdcr == 3 and interaction != "wti":
        raise ConfigError(
            "head.cdcr",
            f"3 weights CDCR by the WTI token weights, which head.interaction={interaction} has none of "
            "(the reference crashes)",
            "pass head.cdcr=2 (unweighted) or 1, or head.interaction=wti",
        )
    if cdcr and interaction == "xti":
        raise ConfigError(
            "head.cdcr",
            f"{cdcr} has no token features to decorrelate with head.interaction=xti (the reference ignores it)",
            "pass head.cdcr=0 with xti",
        )
