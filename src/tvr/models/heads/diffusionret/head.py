"""The ``diffusionret`` head (Jin et al., ICCV 2023, "DiffusionRet: Generative Text-Video Retrieval with Diffusion
Model"; methods spec DiffusionRet): two stages of one model.

* ``stage=discrimination`` (stage 1): seqTransf over the frames and the weighted token-wise interaction of HBI's
  entity level (:mod:`tvr.models.heads.token_wise`, the module HBI and DRL share: weight MLPs ``D -> 2D -> 1``,
  padded tokens' logit ``-9e15``), trained contrastively. It ranks by WTI alone.
* ``stage=generation`` (stage 2): the stage-1 model of ``stage1_ckpt`` frozen (CLIP, seqTransf, WTI), and two
  relevance generators trained alone: for each query of the global batch the ``num_candidates`` hardest in-batch
  candidates (mined from the detached WTI matrix and the real video ids), a noisy one-hot relevance vector at a
  random timestep, and a cross-entropy on the generator's prediction of the clean vector (:mod:`.losses`).
  At evaluation each query's top-``k`` WTI candidates are re-scored: 50 DDIM steps from noise produce a relevance
  vector over them, whose softmax is added to their WTI scores (:mod:`.sampling`), text-to-video and
  video-to-text separately, so the two directions rank two different matrices (:meth:`rerank_queries`).

The re-ranking is per query, with no other query's scores involved: it is the method's own result (reported as
the headline, with the stage-1 ranking beside it), not a transductive post-processing. It draws: the start noise
``x_T`` comes from ``infer_seed`` plus the evaluation seed (``evaluation.seeds=[...]`` reports the spread), as
``infer_xT`` says. Training draws (timesteps, noise) come from the head's own generator (``train_seed``), whose
state checkpoints carry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from tvr.checkpoint import load_tvr_checkpoint
from tvr.distributed import is_distributed
from tvr.errors import CheckpointError, ConfigError
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.draws import derived_seed
from tvr.models.heads.base import FINAL_LEVEL, LossContext, Repr, RetrievalHead, ScoreLevels
from tvr.models.heads.diffusionret.candidates import mine_candidates, same_video_pairs
from tvr.models.heads.diffusionret.generator import RelevanceGenerator
from tvr.models.heads.diffusionret.losses import generation_losses
from tvr.models.heads.diffusionret.sampling import rerank_rows, t2v_denoiser, v2t_denoiser
from tvr.models.heads.diffusionret.schedule import CosineSchedule
from tvr.models.heads.registry import register_head
from tvr.models.heads.temporal import TemporalTransformer, prefixed_renames
from tvr.models.heads.token_wise import HBI_MASK_VALUE, TokenWiseInteraction, WeightMLP
from tvr.options import limits

log = logging.getLogger(__name__)

STAGES = ("discrimination", "generation")
MAKE_STAGE1 = (
    "train stage 1 first (`tvr-train experiment=diffusionret_stage1_<dataset>`) and pass its "
    "<run dir>/checkpoints/best.ckpt, or a released checkpoint converted by tools/convert_checkpoint.py"
)
#: What stage 2 takes from the stage-1 checkpoint: CLIP and the head's stage-1 modules (not the generators).
STAGE1_PREFIXES = ("backbone.", "head.temporal.", "head.text_weight_fc.", "head.video_weight_fc.")
GENERATOR_KEYS = ("sequence_pos_encoder.", "embed_timestep.sequence_pos_encoder.")


@register_head("diffusionret")
class DiffusionRetHead(RetrievalHead):
    query_independent = False
    reads = {"video": frozenset({"frames", "mask"}), "text": frozenset({"tokens", "mask", "sentence"})}
    trained_levels = (FINAL_LEVEL,)
    reference_key_renames = (
        *prefixed_renames("temporal."),
        ("diffusion_model_v.", "v2t_generator."),
        ("diffusion_model.", "t2v_generator."),
    )
    #: the generators' sinusoidal tables, registered twice in the reference (constants, recomputed here)
    reference_ignored_keys = tuple(
        f"{side}.{key}" for side in ("diffusion_model", "diffusion_model_v") for key in GENERATOR_KEYS
    )

    def __init__(
        self,
        embed_dim: int,
        stage: Literal["discrimination", "generation"] = "discrimination",
        stage1_ckpt: str | None = None,
        temporal_layers: Annotated[int, limits(minimum=1)] = 4,
        temporal_heads: int | None = None,
        init_from_clip: bool | str = True,
        wti_padded_cells: Literal["zero_in_max", "exclude"] = "zero_in_max",
        diffusion_steps: Annotated[int, limits(minimum=1)] = 50,
        coef_dtype: Literal["float32", "model"] = "float32",
        pool_temp: Annotated[float, limits(above=0.0)] = 1.0,
        pool_renorm: bool = False,
        num_candidates: Annotated[int, limits(minimum=1)] = 127,
        negative_target: float = 0.0,
        d_temp: Annotated[float, limits(above=0.0)] = 100.0,
        same_video_mask: Literal["rank_local", "global"] = "rank_local",
        duplicate_policy: Literal["topk_tie", "drop"] = "topk_tie",
        train_seed: int = 0,
        t2v_k: Annotated[int, limits(minimum=1)] = 32,
        v2t_k: Annotated[int, limits(minimum=1)] = 32,
        t2v_alpha: float = 1.0,
        v2t_alpha: float = 1.0,
        t2v_temp: float = 1.0,
        v2t_temp: float = 1.0,
        rerank_chunk: Annotated[int, limits(minimum=1)] = 32,
        infer_seed: int = 42,
        infer_xT: Literal["random", "zeros", "fixed_per_query"] = "random",
    ) -> None:
        super().__init__(embed_dim)
        if stage not in STAGES:
            raise ConfigError("head.stage", f"got '{stage}'", f"pass one of {', '.join(STAGES)}")
        if stage == "discrimination" and stage1_ckpt:
            raise ConfigError(
                "head.stage1_ckpt",
                "is set, but head.stage is discrimination (stage 1 trains from CLIP)",
                "set head.stage=generation to train the generators over that checkpoint, or leave stage1_ckpt null",
            )
        self.stage, self.stage1_ckpt = stage, stage1_ckpt
        self.init_from_clip = init_from_clip
        self.temporal = TemporalTransformer(embed_dim, temporal_layers, temporal_heads)
        self.token_wise = TokenWiseInteraction(mask_value=HBI_MASK_VALUE, padded_cells=wti_padded_cells)
        self.text_weight_fc = WeightMLP(embed_dim, hidden=(2 * embed_dim,))
        self.video_weight_fc = WeightMLP(embed_dim, hidden=(2 * embed_dim,))
        generator = {"pool_temp": pool_temp, "pool_renorm": pool_renorm}
        self.t2v_generator = RelevanceGenerator(embed_dim, "t2v", **generator)
        self.v2t_generator = RelevanceGenerator(embed_dim, "v2t", **generator)
        self.schedule = CosineSchedule(diffusion_steps, coef_dtype=coef_dtype)
        self.num_candidates, self.negative_target, self.d_temp = num_candidates, negative_target, d_temp
        self.same_video_mask, self.duplicate_policy = same_video_mask, duplicate_policy
        self.k = {"t2v": t2v_k, "v2t": v2t_k}
        self.alpha = {"t2v": t2v_alpha, "v2t": v2t_alpha}
        self.temp = {"t2v": t2v_temp, "v2t": v2t_temp}
        self.rerank_chunk, self.infer_seed, self.infer_xT = rerank_chunk, infer_seed, infer_xT
        self.train_draws = torch.Generator().manual_seed(int(train_seed))
        if stage == "generation":  # stage 2 trains the generators alone (the author: fine-tuning all fails)
            for module in (self.temporal, self.text_weight_fc, self.video_weight_fc):
                module.requires_grad_(False)
        else:  # stage 1 never calls them: no gradient, no optimiser state, no unused-parameter error under DDP
            self.t2v_generator.requires_grad_(False)
            self.v2t_generator.requires_grad_(False)
        self._largest = (1, 1)  # (words, frames) of the largest items seen, for tile sizing
        self._clamped: set[tuple[str, int, int]] = set()

    def default_towers(self) -> dict[str, dict]:
        if self.stage == "generation":  # CLIP is stage 1's, frozen (with logit_scale)
            return {
                "video": {"name": "per_frame", "clip_weights": "frozen"},
                "text": {"name": "clip_text", "clip_weights": "frozen"},
            }
        return super().default_towers()

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        self.temporal.init_as_configured(backbone, self.init_from_clip)

    # ------------------------------------------------------------------ per item
    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, side: str) -> Repr:
        weight_fc = self.text_weight_fc if side == "text" else self.video_weight_fc
        return {
            "tokens": F.normalize(tokens, dim=-1),
            "mask": mask.to(tokens.dtype),
            "weights": self.token_wise.weights(weight_fc(tokens), mask),
        }

    def encode_text(self, text: TextFeatures) -> Repr:
        self._largest = (max(self._largest[0], text.tokens.shape[1]), self._largest[1])
        # the generators read the raw EOT feature (CLIP's sentence embedding before normalisation)
        return {**self.encode_tokens(text.tokens, text.mask, "text"), "eot": text.sentence}

    def encode_video(self, video: FrameFeatures) -> Repr:
        self._largest = (self._largest[0], max(self._largest[1], video.frames.shape[1]))
        frames = self.temporal(video.frames, video.mask)
        return {**self.encode_tokens(frames, video.mask, "video"), "frames": frames}

    # ------------------------------------------------------------------ pairwise
    def wti(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        return self.token_wise.repr_similarity(text_repr, video_repr)

    def similarity(self, text_repr: Repr, video_repr: Repr):
        scores = self.wti(text_repr, video_repr)
        if self.training and self.stage == "generation":  # the generators mine their candidates from it
            return ScoreLevels(final=scores, levels={"wti": scores})
        return scores

    def pair_bytes(self) -> int:
        words, frames = self._largest
        return 4 * 3 * words * frames  # the [t, v, L, F] map, its maxima, fp32

    # ------------------------------------------------------------------ training
    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        """Stage 2's generation losses (stage 1 has none). The contrastive loss is still computed on the frozen
        WTI (logged, no gradient reaches it), as the reference does."""
        if self.stage != "generation":
            return {}
        scores = context.levels["wti"].detach()
        batch = scores.shape[0]
        self.check_batch(batch)  # start-up validation checks it too, where devices and nodes are counts
        ids = context.video_ids if context.video_ids is not None else torch.arange(batch)
        ranks = torch.distributed.get_world_size() if is_distributed() else 1
        same = same_video_pairs(ids.to(scores.device), ranks, rank_local=self.same_video_mask == "rank_local")
        t2v_candidates, v2t_candidates = mine_candidates(scores, same, self.num_candidates, self.duplicate_policy)
        timesteps, noise_t2v, noise_v2t = self.training_draws(batch)
        device = scores.device
        losses = generation_losses(
            self.t2v_generator,
            self.v2t_generator,
            self.schedule,
            text_repr["eot"].detach(),
            video_repr["frames"].detach(),
            video_repr["mask"],
            t2v_candidates,
            v2t_candidates,
            timesteps.to(device),
            noise_t2v.to(device),
            noise_v2t.to(device),
            d_temp=self.d_temp,
            neg=self.negative_target,
        )
        return {"generation_t2v": losses["loss_gen_t2v"], "generation_v2t": losses["loss_gen_v2t"]}

    def training_draws(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's timesteps ``[B]`` (shared by both directions, as the reference) and the two directions'
        noise ``[B, 1 + num_candidates]``, from the head's own generator (CPU, so the stream is device-independent)."""
        size = (batch, self.num_candidates + 1)
        timesteps = torch.randint(0, self.schedule.steps, (batch,), generator=self.train_draws)
        return timesteps, torch.randn(size, generator=self.train_draws), torch.randn(size, generator=self.train_draws)

    def check_batch(self, global_batch: int) -> None:
        if self.stage == "generation" and global_batch < self.num_candidates + 1:
            raise ConfigError(
                "head.num_candidates",
                f"is {self.num_candidates}: each query needs {self.num_candidates} in-batch negatives, but the global "
                f"training batch (data.batch_size x devices x nodes) is {global_batch}",
                f"lower head.num_candidates to at most {global_batch - 1} (the reference: global batch - 1), or raise "
                "data.batch_size",
            )

    # ------------------------------------------------------------------ the learned second stage
    @property
    def reranks_queries(self) -> bool:
        return self.stage == "generation"

    def describe_rerank(self, evaluation_seed: int = 0) -> dict:
        return {
            "method": "diffusionret",
            "kind": "learned, per query (not transductive)",
            "t2v_k": self.k["t2v"],
            "v2t_k": self.k["v2t"],
            "steps": self.schedule.steps,
            "xT": self.infer_xT,
            "seed": self.infer_seed + evaluation_seed,
        }

    def rerank_queries(
        self,
        direction: str,
        rows: torch.Tensor,
        queries: Repr,
        gallery: Repr,
        query_index: torch.Tensor,
        evaluation_seed: int = 0,
    ) -> torch.Tensor:
        """``rows`` ``[Nq, Ng]`` (stage-1 scores of these queries against the whole gallery) re-scored: each query's
        top-``k`` candidates get ``alpha * softmax(temp * x0)`` added, ``x0`` generated over them by DDIM.
        ``direction`` ``t2v`` (queries are texts, the gallery videos) or ``v2t``; ``query_index`` ``[Nq]`` are the
        queries' positions in their split (they choose the start noise, so ranks and batching do not)."""
        k = self._clamped_k(direction, rows.shape[1])
        if direction == "t2v":
            denoise = t2v_denoiser(self.t2v_generator, queries["eot"], gallery["frames"], gallery["mask"])
        else:
            denoise = v2t_denoiser(self.v2t_generator, queries["frames"], queries["mask"], gallery["eot"])
        start = self.start_noise(direction, query_index, k, self.infer_seed + evaluation_seed).to(rows.device)
        return rerank_rows(
            rows,
            k,
            start,  # float32, as the reference's start noise (its first DDIM step computes in float32)
            denoise,
            self.schedule,
            alpha=self.alpha[direction],
            temp=self.temp[direction],
            chunk=self.rerank_chunk,
        )

    def _clamped_k(self, direction: str, gallery: int) -> int:
        k = self.k[direction]
        if k > gallery and (direction, k, gallery) not in self._clamped:
            self._clamped.add((direction, k, gallery))
            log.warning(
                "head.%s_k=%d is larger than the gallery (%d items): re-ranking all of it", direction, k, gallery
            )
        return min(k, gallery)

    def start_noise(self, direction: str, query_index: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        """``x_T`` ``[Nq, k]`` of the listed queries (float32, CPU).

        ``random``: one stream per direction from ``seed``, drawn chunk by chunk in query order as the reference
        draws it (``randn(chunk, k)`` per chunk of ``rerank_chunk`` queries), so a query's noise depends on its
        position and the chunk size, not on which process scores it; ``fixed_per_query``: a generator per query
        seeded by (seed, direction, position), independent of the chunk size too; ``zeros``: no noise."""
        if self.infer_xT == "zeros" or not len(query_index):
            return torch.zeros(len(query_index), k)
        if self.infer_xT == "fixed_per_query":
            return torch.stack(
                [
                    torch.randn(k, generator=torch.Generator().manual_seed(derived_seed(seed, direction, int(query))))
                    for query in query_index
                ]
            )
        stream = torch.Generator().manual_seed(derived_seed(seed, direction))
        needed = int(query_index.max()) + 1
        chunks = [
            torch.randn(min(self.rerank_chunk, needed - first), k, generator=stream)
            for first in range(0, needed, self.rerank_chunk)
        ]
        return torch.cat(chunks)[query_index.cpu()]

    # ------------------------------------------------------------------ stage 1's weights
    def check_pretrained(self) -> None:
        if self.stage == "generation":
            self.starting_weights()

    def starting_weights(self) -> dict[str, torch.Tensor] | None:
        """Stage 2 starts from stage 1: CLIP (``backbone.*``), seqTransf and the WTI weight MLPs of
        ``stage1_ckpt``; None in stage 1. Refused, saying how to make one, when missing or of another head or width."""
        if self.stage != "generation":
            return None
        if not self.stage1_ckpt:
            raise ConfigError(
                "head.stage1_ckpt", "is not set; stage 2 (head.stage=generation) freezes a stage-1 model", MAKE_STAGE1
            )
        path = Path(self.stage1_ckpt)
        if not path.is_file():
            raise ConfigError("head.stage1_ckpt", f"file not found: {path}", MAKE_STAGE1)
        try:
            checkpoint = load_tvr_checkpoint(path)
        except CheckpointError as error:
            raise ConfigError("head.stage1_ckpt", str(error), MAKE_STAGE1) from error
        head = checkpoint["hyper_parameters"].get("head", {})
        if head.get("name") != "diffusionret":
            raise ConfigError(
                "head.stage1_ckpt",
                f"{path} is a checkpoint of head '{head.get('name')}', not of diffusionret's stage 1",
                MAKE_STAGE1,
            )
        weights = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith(STAGE1_PREFIXES)}
        expected = {
            f"head.{key}": value
            for key, value in self.state_dict().items()
            if f"head.{key}".startswith(STAGE1_PREFIXES)
        }
        wrong = {
            key: (tuple(weights[key].shape) if key in weights else None, tuple(value.shape))
            for key, value in expected.items()
            if key not in weights or weights[key].shape != value.shape
        }
        extra = {key: value for key, value in weights.items() if key.startswith("head.") and key not in expected}
        wrong.update({key: (tuple(value.shape), None) for key, value in extra.items()})  # CLIP's: at loading
        if wrong:
            found, wanted = next(iter(wrong.items()))[1]
            raise ConfigError(
                "head.stage1_ckpt",
                f"{path} does not fit this head: {len(wrong)} weights missing, extra or of another shape "
                f"(e.g. {next(iter(wrong))}: {found} in the file, {wanted} here; another width or temporal depth?)",
                MAKE_STAGE1 + " with the same backbone and head.temporal_layers",
            )
        return weights

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {"train_draws": self.train_draws.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.train_draws.set_state(state["train_draws"])
