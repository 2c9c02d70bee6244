"""The ``ucofia`` head (Wang et al., ICCV 2023; methods spec §3): unified coarse-to-fine alignment.

A pair is scored at three levels, returned as :class:`ScoreLevels` (ranking = their mean, as the
training code returns):

* ``video_sentence``: ``s (c W_g1) . (v W_g2)``, ``v`` the unit masked mean of the unit seqTransf frames;
* ``sentence_frame``: ``s ISA_f(<c, f_f>)`` over the unit raw CLIP frames (all ``F``, unmasked: Q5);
* ``patch_word``: word tokens (all ``L`` positions) against ``k`` patch tokens per frame picked by a
  differentiable top-k (:mod:`.selection`), aggregated by ISA over words and tokens (:mod:`.levels`), with
  no logit scale (Q6).

``s = exp(logit_scale)`` is CLIP's own (bound by :meth:`init_from_backbone`); the head applies it itself,
only to the first two levels, so ``uses_logit_scale`` is False and the module trains the symmetric
cross-entropy on the mean as it is. Every quirk of spec §3.11 is an option whose default is the
reference: ``eval_w_l1`` (Q2), ``selector`` (Q3), ``mask_padding`` (Q5), ``topk_noise`` (Q1); the text
tower's padding attention (Q5) is the backbone's ``text_padding_mask``.

Patch selection draws Gaussian noise at evaluation too (Q1). In training the draws come from the head's
generator (``noise_seed``; its state is saved in checkpoints, as HBI's). At evaluation ``topk_noise`` says
how: ``per_batch`` (the reference: one draw per encoded batch, from the evaluation's seeded generator of
that batch), ``per_item_seeded`` (each video's own draws, the same whatever batch, process or cache it is
encoded in) or ``none`` (the deterministic top-k). The seeds come from the evaluation
(:class:`~tvr.models.draws.EvaluationDraws`); where there is none (scoring outside an evaluation), the
head's generator serves.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tvr.errors import ConfigError
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads.base import FINAL_LEVEL, Repr, RetrievalHead, ScoreLevels, masked_mean_of_unit_frames
from tvr.models.heads.registry import register_head
from tvr.models.heads.temporal import TemporalTransformer, prefixed_renames
from tvr.models.heads.ucofia.levels import PatchWordParts, patch_word, sentence_frame
from tvr.models.heads.ucofia.selection import PatchSelector
from tvr.models.towers.base import VisionGeometry
from tvr.options import limits

LEVELS = ("video_sentence", "sentence_frame", "patch_word")
#: The reference's square matrices, by attribute (= reference key) name, and the axis each one's size follows.
USED_MATRICES = {
    "global_mat_weight": "dim",  # W_g1, sentence side of S1
    "global_mat_weight_1": "dim",  # W_g2, video side of S1
    "frame_logit_weight": "frames",  # ISA of S2
    "local_mat_weight": "dim",  # W_l, word side of A
    "local_mat_weight1": "dim",  # W_l1, token side of A (the training code only, Q2)
    "word_mat_weight": "words",  # ISA of A over words
    "pixel_mat_weight": "tokens",  # ISA of A over tokens
    "pixel_mat_weight2": "tokens",  # ISA of the word-level scores over tokens
    "word_mat_weight2": "words",  # ISA of the token-level scores over words
}
#: Declared by the reference and never used (Q7): kept as buffers so its checkpoints load key for key.
UNUSED_MATRICES = {
    "word_logit_weight": "words",
    "frame_mat_weight": "frames",
    "frame_mat_weight2": "frames",
    "word_mat_weight_for_pixel": "words",
}
TOPK_NOISE = ("per_batch", "per_item_seeded", "none")


@register_head("ucofia")
class UCoFiAHead(RetrievalHead):
    query_independent = False
    indexable_level = "video_sentence"  # (c W_g1) . (v W_g2): two-stage search proposes candidates by it
    uses_logit_scale = False  # s scales S1 and S2 only, inside the head
    reads = {"video": frozenset({"frames", "mask", "patches"}), "text": frozenset({"sentence", "tokens", "mask"})}
    trained_levels = (FINAL_LEVEL,)  # symmetric cross-entropy on the mean of the levels (spec §3.6)
    reference_key_renames = (
        *prefixed_renames("temporal."),
        ("visual_token_selector.score_predictor.", "selector.predictor."),
    )

    def __init__(
        self,
        embed_dim: int,
        max_words: Annotated[int, limits(minimum=1)] = 32,
        max_frames: Annotated[int, limits(minimum=1)] = 12,
        temporal_layers: int = 4,
        temporal_heads: int | None = None,
        max_positions: Annotated[int, limits(minimum=1)] = 77,
        init_from_clip: bool | str = True,
        topk: Annotated[int, limits(minimum=1)] = 3,
        topk_samples: Annotated[int, limits(minimum=1)] = 500,
        topk_sigma: Annotated[float, limits(above=0)] = 0.05,
        topk_noise: Literal["per_batch", "per_item_seeded", "none"] = "per_batch",
        selector: Literal["ts2net", "cvid"] = "ts2net",
        isa_tau: Annotated[float, limits(above=0)] = 0.01,
        frame_features: Literal["raw_clip", "temporal"] = "raw_clip",
        eval_w_l1: Literal["omit", "use"] = "omit",
        mask_padding: bool = False,
        noise_seed: int = 0,
    ) -> None:
        super().__init__(embed_dim)
        if topk_noise not in TOPK_NOISE:
            raise ValueError(f"ucofia topk_noise must be one of {', '.join(TOPK_NOISE)}, got '{topk_noise}'")
        self.max_words, self.max_frames, self.topk = max_words, max_frames, topk
        self.topk_noise, self.isa_tau, self.frame_features = topk_noise, isa_tau, frame_features
        self.eval_w_l1, self.mask_padding = eval_w_l1, mask_padding
        self.init_from_clip = init_from_clip
        self.temporal = TemporalTransformer(embed_dim, temporal_layers, temporal_heads, max_positions)
        self.selector = PatchSelector(embed_dim, topk, topk_samples, topk_sigma, selector)
        sizes = {"dim": embed_dim, "words": max_words, "frames": max_frames, "tokens": max_frames * (1 + topk)}
        for name, axis in USED_MATRICES.items():
            self.register_parameter(name, nn.Parameter(torch.eye(sizes[axis])))
        for name, axis in UNUSED_MATRICES.items():
            self.register_buffer(name, torch.eye(sizes[axis]))
        self.noise = torch.Generator().manual_seed(int(noise_seed))
        self._logit_scale: list[torch.Tensor] = []  # CLIP's, bound by init_from_backbone (a list: not our parameter)

    # ------------------------------------------------------------------ set-up
    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        self.temporal.init_as_configured(backbone, self.init_from_clip)
        self.bind_logit_scale(backbone.logit_scale)

    def bind_logit_scale(self, logit_scale: torch.Tensor) -> None:
        """Score S1 and S2 with ``exp(logit_scale)`` of this (CLIP's) parameter; gradients reach it."""
        self._logit_scale[:] = [logit_scale]

    @property
    def scale(self) -> torch.Tensor:
        if not self._logit_scale:
            raise RuntimeError(
                "ucofia scales its levels by CLIP's logit scale: build it in a Retriever (init_from_backbone)"
            )
        return self._logit_scale[0].exp()

    def check_fits(self, vision: VisionGeometry) -> None:
        patches = vision.tokens_per_frame - 1
        if self.topk > patches:
            raise ConfigError(
                "head.topk",
                f"is {self.topk}, more than the {patches} patch tokens per frame of the backbone's ViT",
                f"select at most {patches} patches per frame",
            )

    def clip_lengths(self) -> dict[str, int]:
        return {"max_words": self.max_words, "max_frames": self.max_frames}

    # ------------------------------------------------------------------ per item
    def encode_text(self, text: TextFeatures) -> Repr:
        self._check_length("max_words", text.tokens.shape[1])
        sentence = F.normalize(text.sentence, dim=-1)
        return {
            "text": sentence @ self.global_mat_weight,  # S1's sentence side, query-independent
            "sentence": sentence,
            "words": F.normalize(text.tokens, dim=-1) @ self.local_mat_weight,
            "mask": text.mask,
        }

    def encode_video(self, video: FrameFeatures) -> Repr:
        self._check_length("max_frames", video.frames.shape[1])
        if video.patches is None:
            raise ValueError("ucofia reads patch tokens: its video tower must give them (with_tokens)")
        sequence = self.temporal(video.frames, video.mask)
        frames = sequence if self.frame_features == "temporal" else video.frames
        tokens = self.selector(video.frames, video.patches, self.selection_noise(video))
        if self.training or self.eval_w_l1 == "use":
            tokens = tokens @ self.local_mat_weight1
        return {
            "video": masked_mean_of_unit_frames(sequence, video.mask) @ self.global_mat_weight_1,
            "frames": F.normalize(frames, dim=-1),
            "tokens": tokens,
            "mask": video.mask,
        }

    def selection_noise(self, video: FrameFeatures) -> torch.Tensor | None:
        """The Gaussian draws ``[B*F, n_s, N]`` of the patch selection (None: the deterministic top-k)."""
        batch, num_frames, patches = video.patches.shape[:3]
        shape = self.selector.noise_shape(batch, num_frames, patches)
        draws = None if self.training else video.draws
        if not self.training and self.topk_noise == "none":
            return None
        if draws is None:  # training (the reference draws per batch), or scoring outside an evaluation
            noise = torch.randn(shape, generator=self.noise)
        elif self.topk_noise == "per_batch":
            noise = torch.randn(shape, generator=draws.batch_generator())
        else:
            per_item = (num_frames, *shape[1:])
            noise = torch.cat([torch.randn(per_item, generator=draws.item_generator(row)) for row in range(batch)])
        return noise.to(video.patches.device)  # drawn on the CPU, as the reference does (Q12)

    def _check_length(self, option: str, length: int) -> None:
        if length != getattr(self, option):
            raise ValueError(
                f"ucofia is built for {option}={getattr(self, option)} (its ISA matrices are that size), got inputs "
                f"of {length}; set head.{option} to the data's"
            )

    # ------------------------------------------------------------------ pairwise
    def token_mask(self, video_repr: Repr) -> torch.Tensor:
        """``[v, P]``: each frame's mask repeated over its CLS and selected tokens."""
        return video_repr["mask"].repeat_interleave(1 + self.topk, dim=1)

    def patch_word_parts(self, text_repr: Repr, video_repr: Repr) -> PatchWordParts:
        matrices = {
            "word": self.word_mat_weight,
            "pixel": self.pixel_mat_weight,
            "pixel2": self.pixel_mat_weight2,
            "word2": self.word_mat_weight2,
        }
        masks = (text_repr["mask"], self.token_mask(video_repr)) if self.mask_padding else (None, None)
        return patch_word(text_repr["words"], video_repr["tokens"], matrices, self.isa_tau, *masks)

    def level_similarity(self, text_repr: Repr, video_repr: Repr) -> dict[str, torch.Tensor]:
        scale = self.scale
        frame_mask = video_repr["mask"] if self.mask_padding else None
        return {
            "video_sentence": scale * text_repr["text"] @ video_repr["video"].t(),
            "sentence_frame": scale
            * sentence_frame(
                text_repr["sentence"], video_repr["frames"], self.frame_logit_weight, self.isa_tau, frame_mask
            ),
            "patch_word": self.patch_word_parts(text_repr, video_repr).score,
        }

    def similarity(self, text_repr: Repr, video_repr: Repr):
        levels = self.level_similarity(text_repr, video_repr)
        final = sum(levels.values()) / len(levels)
        return ScoreLevels(final=final, levels=levels) if self.training else final

    def pair_bytes(self) -> int:
        words, tokens = self.max_words, self.max_frames * (1 + self.topk)
        return 4 * 3 * words * tokens  # A [L, P] and the two ISA softmaxes over it, fp32

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {"noise_generator": self.noise.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.noise.set_state(state["noise_generator"])
