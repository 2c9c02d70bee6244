"""The ``hbi`` head (Jin et al., CVPR 2023; methods spec §3): hierarchical Banzhaf interaction.

Texts and videos are token sets at three semantic levels: entity (words, and frames after the shared
seqTransf temporal transformer), action and event (each built from the level below by a token merge:
DPC-KNN clustering + a cross-attention block). Each level scores pairs by weighted token-wise
interaction (WTI). In training :meth:`similarity` returns the three levels (:class:`ScoreLevels`), the
module applies the contrastive loss to each, and :meth:`extra_losses` adds, per level, the KL between a
student Banzhaf network and the frozen pre-trained estimator (the teacher, ``estimator_ckpt``), plus
self-distillation of the coarse levels towards the entity level. Retrieval ranks on
``sum(level_weights * levels)``; with the reference's ``[1, 0, 0]`` only the entity level is computed at
evaluation (``evaluation.report_levels`` computes all three, as labelled extra rows).

The DPC-KNN density noise comes from the head's own generator (``noise_seed``), whose state is saved in
checkpoints, so runs and resumed runs are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tvr.errors import CheckpointError, ConfigError
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads.base import LossContext, Repr, RetrievalHead, ScoreLevels
from tvr.models.heads.hbi.blocks import LEVELS, HBIBlocks, reference_key_renames
from tvr.models.heads.hbi.losses import BI_TRANSPOSES, banzhaf_distillation, self_distillation
from tvr.models.heads.hbi.wti import pair_cell_mask, positive_pair_maps, token_weights, wti_similarity
from tvr.models.heads.registry import register_head
from tvr.models.heads.temporal import TemporalTransformer, prefixed_renames
from tvr.models.weights import load_tensor_file

ESTIMATOR_FORMAT = "tvr-hbi-estimator"
MAKE_ESTIMATOR = (
    "pre-train one with `tvr-train experiment=hbi_estimator_<dataset>` (it writes <run dir>/estimator.pt), "
    "or pass the estimator released with the paper"
)


@register_head("hbi")
class HBIHead(RetrievalHead):
    query_independent = False
    reads = {**RetrievalHead.reads, "text": frozenset({"tokens", "mask"})}  # word tokens, not the sentence vector
    trained_levels = LEVELS
    reference_key_renames = (*prefixed_renames("temporal."), *reference_key_renames("blocks."))

    def __init__(
        self,
        embed_dim: int,
        temporal_layers: int = 4,
        temporal_heads: int | None = None,
        init_from_clip: bool | str = True,
        text_rates: list[float] = (0.25, 0.5),
        video_rates: list[float] = (0.25, 0.5),
        dpc_k: int = 3,
        merge_heads: int = 8,
        banzhaf_planes: int = 64,
        skl: float = 1.0,
        kl: float = 2.0,
        bi_transpose: str = "reverse_all",
        level_weights: list[float] = (1.0, 0.0, 0.0),
        estimator_ckpt: str | None = None,
        noise_seed: int = 0,
    ) -> None:
        super().__init__(embed_dim)
        if bi_transpose not in BI_TRANSPOSES:
            raise ValueError(f"hbi bi_transpose must be one of {', '.join(BI_TRANSPOSES)}, got '{bi_transpose}'")
        if len(level_weights) != len(LEVELS) or not any(level_weights):
            raise ValueError(
                f"hbi level_weights needs one weight per level {list(LEVELS)}, not all zero; got {list(level_weights)}"
            )
        self.init_from_clip = init_from_clip
        self.temporal = TemporalTransformer(embed_dim, temporal_layers, temporal_heads)
        self.blocks = HBIBlocks(embed_dim, tuple(text_rates), tuple(video_rates), dpc_k, merge_heads, banzhaf_planes)
        self.skl, self.kl, self.bi_transpose = skl, kl, bi_transpose
        self.level_weights = [float(w) for w in level_weights]
        self.estimator_ckpt = estimator_ckpt
        self.noise = torch.Generator().manual_seed(int(noise_seed))
        self._cells = 1  # words x frames of the largest maps seen, for tile sizing

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        self.temporal.init_as_configured(backbone, self.init_from_clip)

    # ------------------------------------------------------------------ per item
    def _levels_needed(self) -> int:
        """How many levels to build: all in training (and when reporting them), else up to the last weighted one."""
        if self.training or self.report_levels:
            return len(LEVELS)
        return max(index for index, weight in enumerate(self.level_weights) if weight) + 1

    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, side: str) -> Repr:
        """Entity-level tokens ``[N, n, D]`` (words; frames after the temporal transformer) of one side
        (``"text"``/``"video"``) -> the normalised tokens and softmaxed WTI weights of every level needed."""
        weights = self.blocks.text_weights if side == "text" else self.blocks.video_weights
        merges = self.blocks.text_merges if side == "text" else self.blocks.video_merges
        rep: Repr = {"mask": mask.to(tokens.dtype)}
        for level in range(self._levels_needed()):
            if level:  # the level below, merged; only the entity level has padding
                tokens = merges[level - 1](tokens, mask if level == 1 else None, self.noise)
            rep[f"tokens{level}"] = F.normalize(tokens, dim=-1)
            rep[f"weights{level}"] = token_weights(weights[level](tokens), mask if level == 0 else None)
        return rep

    def encode_text(self, text: TextFeatures) -> Repr:
        self._cells = max(self._cells, text.tokens.shape[1])
        return self.encode_tokens(text.tokens, text.mask, "text")

    def encode_video(self, video: FrameFeatures) -> Repr:
        self._cells = max(self._cells, video.frames.shape[1])
        return self.encode_tokens(self.temporal(video.frames, video.mask), video.mask, "video")

    # ------------------------------------------------------------------ pairwise
    def _level(self, text_repr: Repr, video_repr: Repr, level: int) -> torch.Tensor:
        masks = (text_repr["mask"], video_repr["mask"]) if level == 0 else (None, None)
        return wti_similarity(
            text_repr[f"tokens{level}"],
            video_repr[f"tokens{level}"],
            text_repr[f"weights{level}"],
            video_repr[f"weights{level}"],
            *masks,
        )

    def level_similarity(self, text_repr: Repr, video_repr: Repr) -> dict[str, torch.Tensor]:
        return {
            name: self._level(text_repr, video_repr, level)
            for level, name in enumerate(LEVELS)
            if f"tokens{level}" in text_repr
        }

    def similarity(self, text_repr: Repr, video_repr: Repr):
        if self.training:
            levels = self.level_similarity(text_repr, video_repr)
            final = sum(weight * levels[name] for name, weight in zip(LEVELS, self.level_weights) if weight)
            return ScoreLevels(final=final, levels=levels)
        # evaluation: only the weighted levels (the reference computes all and discards the others)
        return sum(
            weight * self._level(text_repr, video_repr, level)
            for level, weight in enumerate(self.level_weights)
            if weight
        )

    def pair_bytes(self) -> int:
        return (
            4 * 3 * self._cells * self._cells
        )  # a [t, v, L, F] map and its two maxima, fp32, at the largest sizes seen

    # ------------------------------------------------------------------ training
    def positive_pair_maps(self, text_repr: Repr, video_repr: Repr, level: int) -> torch.Tensor:
        """``[B, L, F]`` word x frame interaction of each text with its own video (entity level: masked)."""
        masks = (text_repr["mask"], video_repr["mask"]) if level == 0 else (None, None)
        return positive_pair_maps(text_repr[f"tokens{level}"], video_repr[f"tokens{level}"], *masks)

    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        if repr_rows(text_repr) != repr_rows(video_repr):
            raise ValueError("hbi's Banzhaf losses need a paired batch (text i with video i)")
        terms = {}
        for level, name in enumerate(LEVELS):
            maps = self.positive_pair_maps(text_repr, video_repr, level)
            cells = pair_cell_mask(text_repr["mask"], video_repr["mask"]) if level == 0 else None
            terms[f"banzhaf_{name}"] = self.skl * banzhaf_distillation(
                maps, self.blocks.students[level], self.blocks.teacher, cells, self.bi_transpose
            )
        terms["self_distillation"] = self.kl * self_distillation(*(context.levels[name] for name in LEVELS))
        return terms

    def check_pretrained(self) -> None:
        self._estimator_weights()

    def load_pretrained(self) -> None:
        """The frozen teacher: the Banzhaf estimator pre-trained by the estimator stage."""
        self.blocks.teacher.load_state_dict(self._estimator_weights())

    def _estimator_weights(self) -> dict[str, torch.Tensor]:
        if not self.estimator_ckpt:
            raise ConfigError(
                "head.estimator_ckpt", "is not set; HBI distils from a pre-trained Banzhaf estimator", MAKE_ESTIMATOR
            )
        return read_estimator(self.estimator_ckpt, self.blocks.teacher.state_dict())

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {"noise_generator": self.noise.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.noise.set_state(state["noise_generator"])

    # ------------------------------------------------------------------ explanation
    def explain(self, text_repr: Repr, video_repr: Repr) -> dict[str, torch.Tensor]:
        """Word x frame maps of one (text, video) pair: the entity-level interaction and the estimator's
        Banzhaf interaction of it (``[L, F]`` each, padded cells 0)."""
        maps = self.positive_pair_maps(text_repr, video_repr, 0)
        cells = pair_cell_mask(text_repr["mask"], video_repr["mask"])
        estimate = self.blocks.teacher(maps.unsqueeze(1)).squeeze(1) * cells
        return {"word x frame similarity": maps[0], "Banzhaf interaction (estimator)": estimate[0]}


def repr_rows(rep: Repr) -> int:
    return next(iter(rep.values())).shape[0]


def read_estimator(path: str | Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An estimator file: tvr's (``estimator.pt``, written by the estimator stage) or the reference's saved
    ``banzhafteacher`` state_dict (keys with or without ``banzhafteacher.``); refused with what to do when
    missing, unreadable or of another shape."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("head.estimator_ckpt", f"file not found: {path}", MAKE_ESTIMATOR)
    loaded = load_tensor_file(path, f"head.estimator_ckpt: {MAKE_ESTIMATOR}", CheckpointError)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if isinstance(state, dict):
        state = {key.removeprefix("module.").removeprefix("banzhafteacher."): value for key, value in state.items()}
    fits = (
        isinstance(state, dict)
        and state.keys() == expected.keys()
        and all(torch.is_tensor(state[key]) and state[key].shape == value.shape for key, value in expected.items())
    )
    if not fits:
        shapes = {key: tuple(value.shape) for key, value in expected.items() if value.ndim}
        found = (
            {key: tuple(value.shape) for key, value in state.items() if torch.is_tensor(value)}
            if isinstance(state, dict)
            else type(loaded).__name__
        )
        raise ConfigError(
            "head.estimator_ckpt",
            f"{path} is not a Banzhaf estimator of this head (expected {shapes}, found {found})",
            MAKE_ESTIMATOR + "; head.banzhaf_planes must match the estimator's",
        )
    return state
