"""The trained retrieval model on its own: the CLIP backbone and one head, with no loss and no optimiser.

Everything that turns inputs into scores lives here, so the same object serves training (the
LightningModule is a Retriever plus loss and optimisation), evaluation (with or without a Trainer) and
search over the user's own videos (``tvr-index``/``tvr-search``)::

    retriever = Retriever.from_checkpoint("outputs/.../checkpoints/best.ckpt")
    videos = retriever.encode_videos(frames, frame_mask)   # [Nv, ...] per-video representation
    texts = retriever.encode_texts(tokens)                 # [Nt, ...] per-text representation
    scores = retriever.score(texts, videos)                # [Nt, Nv], tiled, unscaled (cosine for CLIP heads)

The state_dict keys (``backbone.*``, ``head.*``) are those of every tvr checkpoint, converted paper
checkpoints included, so a checkpoint loads into a Retriever as it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tvr.checkpoint import load_state_dict_checked, load_tvr_checkpoint
from tvr.data.transforms import normalize_frames
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.draws import EvaluationDraws
from tvr.models.heads import create_head
from tvr.models.heads.base import Repr, RetrievalHead, masked_mean_of_unit_frames, split_tower_choice
from tvr.models.similarity import tiled_similarity


def scaled_scores(head: RetrievalHead, scores: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """A head's unscaled scores as training logits: times CLIP's ``exp(logit_scale)`` for heads that use it."""
    return scores * logit_scale.exp() if head.uses_logit_scale else scores


class Retriever(nn.Module):
    """``backbone`` and ``head`` are the config dicts a tvr checkpoint stores under ``hyper_parameters``; the
    head's ``video_tower``/``text_tower`` keys (and their options) choose its towers, the others are its own."""

    def __init__(self, backbone: dict, head: dict) -> None:
        super().__init__()
        self.backbone = CLIPBackbone(**backbone)
        options, towers = split_tower_choice({key: value for key, value in head.items() if key != "name"})
        self.head = create_head(head["name"], embed_dim=self.backbone.embed_dim, **options)
        self.head.attach_towers(self.backbone, towers)
        self.head.init_from_backbone(self.backbone)

    def freeze_for_training(self, freeze_layer_num: int = -1, freeze_patch_embedding: bool = False) -> list[str]:
        """Freeze what the method keeps fixed: all of CLIP (``logit_scale`` included) when a tower says so
        (parameter-efficient methods), else CLIP4Clip's ``freeze_layer_num`` rule when it is >= 0, and the patch
        embedding when ``freeze_patch_embedding`` (the GLSCL and HBI references). Returns the frozen names."""
        if any(tower.freezes_clip for tower in self.head.towers().values()):
            return self.backbone.freeze()
        frozen = self.backbone.freeze_like_clip4clip(freeze_layer_num) if freeze_layer_num >= 0 else []
        if freeze_patch_embedding:
            frozen += [name for name in self.backbone.freeze_patch_embedding() if name not in frozen]
        return frozen

    def check_state_dict(self, state_dict: dict) -> None:
        """Refuse weights saved with other towers or tower settings, naming both (before any key is compared)."""
        self.head.check_towers(state_dict, prefix="head.")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.check_state_dict(state_dict)
        self.store_as_saved(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def store_as_saved(self, state_dict: dict) -> None:
        """Weights trained with ``train.clip_param_dtype=fp16`` hold CLIP's layers in fp16: the model then stores
        and computes them in fp16 too, so that ``tvr-eval`` and ``tvr-search`` score as the run's own evaluation
        did (copied into fp32 parameters, they would compute in fp32). Converted paper releases are fp32."""
        saved = state_dict.get("backbone.clip.visual.conv1.weight")
        if torch.is_tensor(saved) and saved.dtype == torch.float16 and self.backbone.clip_param_dtype == "fp32":
            self.backbone.store_in_fp16()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu", strict: bool = True
    ) -> "Retriever":
        """The model of any tvr checkpoint (``tvr-train``'s, or a paper's converted by
        ``tools/convert_checkpoint.py``); the file alone suffices: CLIP weights come from it too.
        ``run_config`` is the config it was trained with (None for older files), ``source`` the file."""
        checkpoint = load_tvr_checkpoint(path, map_location)
        hyper_parameters = checkpoint["hyper_parameters"]
        backbone = {**hyper_parameters["backbone"], "weights": None}  # every CLIP weight is in the state_dict
        retriever = cls(backbone, hyper_parameters["head"])
        own = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith(("backbone.", "head."))}
        load_state_dict_checked(retriever, own, strict=strict, source=str(path))
        retriever.run_config = hyper_parameters.get("run_config")
        retriever.source = str(Path(path).resolve())
        return retriever.eval()

    # ------------------------------------------------------------------ encoding
    def frame_features(
        self, frames: torch.Tensor, frame_mask: torch.Tensor, draws: EvaluationDraws | None = None
    ) -> FrameFeatures:
        """The video tower's features. ``frames``: normalised float frames, or the uint8 frames tvr's loaders
        deliver, normalised here on the model's device with its own mean/std (padded slots, where
        ``frame_mask`` is False, become zeros). ``draws`` (evaluation) say where a head's random draws come from."""
        if frames.dtype == torch.uint8:
            preprocessing = self.backbone.preprocessing
            frames = normalize_frames(frames, preprocessing.mean, preprocessing.std, frame_mask)
        features = self.head.video_tower(self.backbone, frames, frame_mask, with_tokens=self.head.reads_tokens)
        features.draws = draws
        return self.backbone.features_for_head(features)

    def text_features(self, tokens: torch.Tensor) -> TextFeatures:
        return self.backbone.features_for_head(self.head.text_tower(self.backbone, tokens))

    def encode_texts(self, tokens: torch.Tensor) -> Repr:
        return self.head.encode_text(self.text_features(tokens))

    def encode_videos(
        self, frames: torch.Tensor, frame_mask: torch.Tensor, draws: EvaluationDraws | None = None
    ) -> Repr:
        return self.head.encode_video(self.frame_features(frames, frame_mask, draws))

    def encode_texts_with_summary(self, tokens: torch.Tensor) -> tuple[Repr, torch.Tensor]:
        """The representation and a ``[N, D]`` unit vector for a first-stage vector search (see
        :meth:`summary_is_exact`): the head's own text embedding, or CLIP's sentence embedding."""
        features = self.text_features(tokens)
        rep = self.head.encode_text(features)
        summary = (
            self.head.text_embedding(rep) if self.summary_is_head_level else F.normalize(features.sentence, dim=-1)
        )
        return rep, summary

    def encode_videos_with_summary(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[Repr, torch.Tensor]:
        """The representation and a ``[N, D]`` vector for a first-stage vector search: the head's own video
        embedding (of its indexable level, for a text-conditioned head that has one), or, for other
        text-conditioned heads, CLIP's mean-pooled unit frames (CLIP4Clip's meanP)."""
        features = self.frame_features(frames, frame_mask)
        rep = self.head.encode_video(features)
        if self.summary_is_head_level:
            return rep, self.head.video_embedding(rep)
        return rep, masked_mean_of_unit_frames(features.frames, features.mask)

    @property
    def summary_is_head_level(self) -> bool:
        """True when the summaries are the head's own vectors: its scores (:attr:`summary_is_exact`) or one of
        its levels (``head.indexable_level``, whose ranking the first stage of a two-stage search then follows)."""
        return self.summary_is_exact or self.head.indexable_level is not None

    @property
    def summary_is_exact(self) -> bool:
        """True when the summaries' dot products are the head's scores (a query-independent head): a vector
        index then answers exactly; otherwise it only proposes candidates for the head to re-score."""
        return self.head.query_independent

    # ------------------------------------------------------------------ scoring
    def scaled(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores as training logits: times CLIP's ``exp(logit_scale)`` for heads that use it."""
        return scaled_scores(self.head, scores, self.backbone.logit_scale)

    @torch.no_grad()
    def score(
        self,
        text_repr: Repr,
        video_repr: Repr,
        text_chunk: int = 1024,
        video_chunk: int = 1024,
        memory_budget_bytes: int | None = 512 * 2**20,
        out_device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """``[Nt, Nv]`` unscaled scores of every text against every video, tile by tile within the memory budget."""
        return tiled_similarity(
            self.head, text_repr, video_repr, text_chunk, video_chunk, memory_budget_bytes, out_device
        )

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict:
        """What an index built with this model must be searched with: head, backbone and a hash of every
        weight (two checkpoints of one run differ in it; a re-saved copy of one does not). A head's extra state
        (the generator of HBI's noise or DRL's CDCR draws) is training state, not a weight: it scores nothing."""
        digest = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            if not torch.is_tensor(value):
                continue
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"head": self.head.name, "backbone": self.backbone.model_name, "weights_sha256": digest.hexdigest()[:16]}
