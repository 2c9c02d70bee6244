"""The head interface: what a retrieval method adds on top of the shared CLIP backbone.

A head splits its work into a cacheable part, run once per item, and a pairwise part:

* ``encode_text(TextFeatures) -> Repr`` and ``encode_video(FrameFeatures) -> Repr`` run once per text and
  per video. A ``Repr`` is a dict of tensors that all share the leading item dimension, so the training
  and evaluation code can slice, concatenate and all-gather them without knowing what is inside.
* ``similarity(text_repr, video_repr) -> [Nt, Nv]`` scores chunks of texts against chunks of videos. It
  returns the method's *unscaled* score (a cosine for CLIP-style heads); the training module multiplies
  by CLIP's ``exp(logit_scale)`` when ``uses_logit_scale`` is set. Evaluation calls it on tiles, so a
  text-conditioned head never materialises ``Nt x Nv x D``. A head that scores at several semantic
  levels (HBI) returns :class:`ScoreLevels` in training: named levels plus the ranking scores; the module
  applies the configured contrastive loss to each level in ``trained_levels``. At evaluation it returns
  the ranking scores, and ``level_similarity`` gives every level for the labelled extra rows
  ``evaluation.report_levels`` asks for.
* ``extra_losses(text_repr, video_repr, context)`` returns head-specific terms by name; the
  :class:`LossContext` carries ``logit_scale``, the configured contrastive loss, the batch's score levels
  and its videos' ids. ``new_parameters()`` lists parameters that take the head learning rate
  (everything the head owns but its towers, by default).
* ``load_pretrained()`` reads weights a head takes from files of its own (HBI's Banzhaf estimator) when a
  run starts training; a checkpoint carries them afterwards, so evaluation never reads those files.
* Towers (:mod:`tvr.models.towers`): the config chooses the video and text tower a head reads from
  (``head.video_tower``, ``head.text_tower`` and their ``*_tower_options``, split off the head's own
  options by :func:`split_tower_choice`); ``default_towers()`` names the head's own when the config names
  none (CLIP frame by frame and CLIP's text tower; a preset such as TempMe names its towers and sets their
  options). A head declares the features it reads (:attr:`RetrievalHead.reads`) and any tower that gives
  them will do. :meth:`attach_towers` builds them over the backbone; the head then owns them, so their
  weights are saved under ``head.video_tower.*`` / ``head.text_tower.*`` and train in the tower
  learning-rate group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tvr.distributed import gather_no_grad
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.towers import TOWERS, TextTower, VideoTower, check_state_dict_towers, create_tower
from tvr.models.towers.base import ON_REQUEST, VisionGeometry, tower_class, tower_names, tower_option_names

Repr = dict[str, torch.Tensor]
TOWER_KINDS = ("video", "text")


@dataclass(frozen=True)
class TowerChoice:
    """One tower as the config chooses it: ``name`` (None: the head's own) and its constructor ``options``."""

    name: str | None = None
    options: dict = field(default_factory=dict)


def tower_keys(kind: str) -> tuple[str, str]:
    """The head config keys choosing a ``kind`` tower: its name and its options."""
    return f"{kind}_tower", f"{kind}_tower_options"


TOWER_CONFIG_KEYS = tuple(key for kind in TOWER_KINDS for key in tower_keys(kind))


def split_tower_choice(head_config: dict) -> tuple[dict, dict[str, TowerChoice]]:
    """A head's config (without ``name``) -> the head constructor's options and the towers it chooses."""
    options = dict(head_config)
    choice = {}
    for kind in TOWER_KINDS:
        name_key, options_key = tower_keys(kind)
        choice[kind] = TowerChoice(options.pop(name_key, None), dict(options.pop(options_key, None) or {}))
    return options, choice


#: The name by which :attr:`RetrievalHead.trained_levels` asks for the loss on the ranking scores themselves
#: (``ScoreLevels.final``, e.g. UCoFiA's mean of its levels) rather than on one of its levels.
FINAL_LEVEL = "final"


@dataclass
class ScoreLevels:
    """Scores of one batch at several semantic levels: ``levels`` by name, ``final`` the ranking scores."""

    final: torch.Tensor
    levels: dict[str, torch.Tensor]

    def trained(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The scores the loss applies to, by name: a level, or :data:`FINAL_LEVEL` for the ranking scores."""
        return {name: self.final if name == FINAL_LEVEL else self.levels[name] for name in names}


@dataclass
class LossContext:
    """What a head's extra losses may need beyond the representations: CLIP's ``logit_scale`` (log), the
    configured contrastive loss (on logits), the batch's unscaled score levels (empty for one-level
    heads), the ids of its videos (:attr:`video_ids`), the caption token ids (:attr:`token_ids`) and the
    backbone, for read access to CLIP's own modules (Prompt Switch's captioner embeds its teacher-forcing
    input with ``backbone.embed_text``, CLIP's token and position embeddings, under ``no_grad``). A head must
    not train the backbone through it: CLIP's training is the towers' business."""

    logit_scale: torch.Tensor
    contrastive: Callable[[torch.Tensor], torch.Tensor]
    levels: dict[str, torch.Tensor] = field(default_factory=dict)
    local_video_ids: torch.Tensor | None = None  # this rank's part of the batch
    local_token_ids: torch.Tensor | None = None  # [B, L] this rank's captions (SOT .. EOT, 0-padded)
    backbone: CLIPBackbone | None = None

    @cached_property
    def token_ids(self) -> torch.Tensor | None:
        """``[B, L]`` caption token ids of the global batch (text order), gathered across ranks on first use."""
        return None if self.local_token_ids is None else gather_no_grad(self.local_token_ids)

    @cached_property
    def video_ids(self) -> torch.Tensor | None:
        """``[B]`` ids of the global batch's videos (equal for texts of the same video), gathered across ranks
        on first use: only a head that reads them pays for the collective."""
        return None if self.local_video_ids is None else gather_no_grad(self.local_video_ids)


class RetrievalHead(nn.Module):
    #: True when ``similarity`` is a plain dot product of per-item vectors, so galleries can be indexed
    #: (e.g. with faiss) without the head; text-conditioned heads set it False.
    query_independent: bool = True
    #: For a text-conditioned head: a score level that is a dot product of per-item vectors
    #: (:meth:`text_embedding` . :meth:`video_embedding`, e.g. UCoFiA's video-sentence level), which the first
    #: stage of a two-stage search indexes instead of CLIP's mean-pooled frames; None: it has none.
    indexable_level: str | None = None
    uses_logit_scale: bool = True
    #: The feature fields this head reads (of :class:`FrameFeatures` and :class:`TextFeatures`): its towers
    #: must give them (:attr:`Tower.outputs`), which start-up validation and :meth:`attach_towers` check.
    reads: dict[str, frozenset[str]] = {"video": frozenset({"frames", "mask"}), "text": frozenset({"sentence"})}
    #: Prefix renames from the reference implementation's state_dict keys to this head's keys.
    reference_key_renames: tuple[tuple[str, str], ...] = ()
    #: Key prefixes present in the reference's checkpoints but unused by its forward pass (dropped).
    reference_ignored_keys: tuple[str, ...] = ()
    #: Score levels the contrastive loss applies to when ``similarity`` returns :class:`ScoreLevels`
    #: (:data:`FINAL_LEVEL` names the ranking scores).
    trained_levels: tuple[str, ...] = ()
    #: Set by evaluation (``evaluation.report_levels``): encode every level, not only the ranking ones.
    report_levels: bool = False
    #: Name fragments of weights the reference keeps inside its CLIP modules (``clip.*``) that are the
    #: method's own (TempMe's adapters), so conversion routes them to the head rather than to CLIP.
    reference_clip_keys: tuple[str, ...] = ()

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        """Hook for heads initialised from CLIP weights (e.g. seqTransf copies text-transformer blocks)."""

    def check_fits(self, vision: VisionGeometry) -> None:
        """Raise :class:`~tvr.errors.ConfigError` naming the head option if this head's options do not fit the
        backbone's ViT (UCoFiA's top-k of the patch grid); start-up validation calls it, before any data work."""

    @property
    def has_levels(self) -> bool:
        """Whether this head scores at several levels (:meth:`level_similarity`), which level-aware re-rankers read."""
        return type(self).level_similarity is not RetrievalHead.level_similarity

    def clip_lengths(self) -> dict[str, int]:
        """``{"max_words": n, "max_frames": n}`` where the head's parameters are built for captions or clips
        of a fixed length (UCoFiA's ISA matrices); start-up validation compares them with the data's."""
        return {}

    def default_towers(self) -> dict[str, dict]:
        """``{"video": {"name": ..., **options}, "text": {...}}``: the towers this head reads from when the
        config chooses none, with the options the head sets for them."""
        return {"video": {"name": "per_frame"}, "text": {"name": "clip_text"}}

    def tower_specs(self, choice: dict[str, TowerChoice] | None = None) -> dict[str, dict]:
        """The towers to build: the config's ``choice`` over :meth:`default_towers`. The options the head
        sets for its own tower carry over to a chosen other tower where that tower takes them (HBI's
        estimator keeps any tower's CLIP frozen); the rest belong to the tower not built (a preset's)."""
        specs = {}
        for kind, default in self.default_towers().items():
            chosen = (choice or {}).get(kind, TowerChoice())
            name = chosen.name or default["name"]
            own = {key: value for key, value in default.items() if key != "name"}
            if name != default["name"]:
                takes = tower_option_names(tower_class(name, kind))
                own = {key: value for key, value in own.items() if key in takes}
            specs[kind] = {"name": name, **own, **chosen.options}
        return specs

    def unread_features(self, kind: str, tower: type) -> list[str]:
        """What this head reads from its ``kind`` tower that ``tower`` (a class) does not give."""
        return sorted(self.reads[kind] - tower.outputs)

    def readable_towers(self, kind: str) -> list[str]:
        """The registered ``kind`` towers that give everything this head reads."""
        return [name for name in tower_names(kind) if not self.unread_features(kind, TOWERS.get(name))]

    def check_tower_outputs(self, specs: dict[str, dict]) -> None:
        """Raise ``ValueError`` naming the key if a chosen tower does not give what this head reads."""
        for kind, spec in specs.items():
            missing = self.unread_features(kind, tower_class(spec["name"], kind))
            if missing:
                raise ValueError(
                    f"head '{self.name}' reads {', '.join(missing)} from its {kind} features, which the '{spec['name']}' "
                    f"{kind} tower (head.{tower_keys(kind)[0]}) does not give; choose a {kind} tower that does"
                )

    @property
    def reads_tokens(self) -> bool:
        """Whether the video tower must also compute its token outputs (patches or token set)."""
        return bool(self.reads["video"] & ON_REQUEST)

    def attach_towers(self, backbone: CLIPBackbone, choice: dict[str, TowerChoice] | None = None) -> None:
        """Build the chosen towers (:meth:`tower_specs`) over ``backbone``; the head owns them from then on."""
        specs = self.tower_specs(choice)
        self.check_tower_outputs(specs)
        self.video_tower: VideoTower = create_tower(backbone=backbone, **specs["video"])
        self.text_tower: TextTower = create_tower(backbone=backbone, **specs["text"])

    def towers(self) -> dict[str, nn.Module]:
        """The attached towers by kind (none before :meth:`attach_towers`)."""
        return {kind: getattr(self, f"{kind}_tower") for kind in ("video", "text") if hasattr(self, f"{kind}_tower")}

    def check_towers(self, state_dict: dict, prefix: str = "") -> None:
        """Refuse a state_dict saved with other towers (or tower settings), naming both, before loading it."""
        check_state_dict_towers(self.towers(), state_dict, prefix)

    def encode_text(self, text: TextFeatures) -> Repr:
        raise NotImplementedError

    def encode_video(self, video: FrameFeatures) -> Repr:
        raise NotImplementedError

    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        raise NotImplementedError

    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        return {}

    def level_similarity(self, text_repr: Repr, video_repr: Repr) -> dict[str, torch.Tensor]:
        """Every score level by name (none for one-level heads), for evaluation's labelled extra rows."""
        return {}

    def check_pretrained(self) -> None:
        """Raise (naming the option and how to make the file) if a file :meth:`load_pretrained` reads is
        missing or does not fit; called at start-up, before any data work."""

    def load_pretrained(self) -> None:
        """Read weights this head takes from its own files (called when training starts, never at evaluation)."""

    def starting_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights of the whole model (``backbone.*``, ``head.*`` keys) a run starts from when the method trains
        in stages over an earlier stage's checkpoint (DiffusionRet's generators over its stage 1); the training
        module loads them when training starts, never at evaluation. None: the run starts from CLIP."""
        return None

    def check_batch(self, global_batch: int) -> None:
        """Raise :class:`~tvr.errors.ConfigError` naming the head option if training batches of ``global_batch``
        pairs cannot work (DiffusionRet mines a fixed number of in-batch candidates); start-up validation calls it."""

    # ------------------------------------------------------------------ a learned second stage
    #: Whether the head re-scores each query's top candidates after the score matrix (:meth:`rerank_queries`),
    #: per direction: evaluation then ranks text-to-video and video-to-text on two different matrices, reports
    #: that pair as the headline and the plain matrix beside it. Not transductive: each query on its own.
    reranks_queries: bool = False

    def rerank_queries(
        self,
        direction: str,
        rows: torch.Tensor,
        queries: Repr,
        gallery: Repr,
        query_index: torch.Tensor,
        evaluation_seed: int = 0,
    ) -> torch.Tensor:
        """``rows`` ``[Nq, Ng]``: these queries' scores against the whole gallery, re-scored. ``direction``
        ``t2v`` (queries are texts, the gallery videos) or ``v2t`` (queries are videos, the gallery texts);
        ``query_index`` ``[Nq]`` the queries' positions in their split; ``evaluation_seed`` the evaluation's seed,
        for heads that draw."""
        raise NotImplementedError(f"head '{self.name}' has no second stage")

    def describe_rerank(self, evaluation_seed: int = 0) -> dict:
        """The label written beside the numbers of :meth:`rerank_queries` (method and options)."""
        return {}

    def explain(self, text_repr: Repr, video_repr: Repr) -> dict[str, torch.Tensor]:
        """Word x frame maps ``{title: [L, F]}`` of one (text, video) pair for ``tools/explain.py``; heads that
        score token against frame offer them (HBI), others have none."""
        return {}

    def write_artifacts(self, run_dir) -> list:
        """Files a head writes into the run folder after training (HBI's estimator stage); their paths."""
        return []

    @classmethod
    def map_reference_keys(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference implementation's names for this head's weights -> this head's state_dict keys."""
        return rename_reference_keys(state_dict, cls.reference_key_renames, cls.reference_ignored_keys)

    def new_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The head's own parameters (the head learning-rate group); tower parameters are not among them."""
        tower_ids = {id(param) for _, param in self.tower_parameters(every=True)}
        return ((name, param) for name, param in self.named_parameters() if id(param) not in tower_ids)

    def tower_parameters(self, every: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
        """What the towers add (adapters, temporal embeddings): the tower learning-rate group. Those a tower
        trains at the backbone's rate (:meth:`Tower.backbone_rate_parameters`) are left out unless ``every``."""
        for kind, tower in self.towers().items():
            at_backbone_rate = set() if every else tower.backbone_rate_parameters()
            for name, param in tower.named_parameters():
                if name not in at_backbone_rate:
                    yield f"{kind}_tower.{name}", param

    def text_embedding(self, text_repr: Repr) -> torch.Tensor:
        """``[Nt, D]`` vectors whose dot products with :meth:`video_embedding` are the similarity."""
        self._require_query_independent("text embeddings")
        return text_repr["text"]

    def video_embedding(self, video_repr: Repr) -> torch.Tensor:
        """``[Nv, D]`` per-video vectors, for a vector index over a large gallery (``tvr.search``)."""
        self._require_query_independent("video embeddings")
        return video_repr["video"]

    def _require_query_independent(self, what: str) -> None:
        if not (self.query_independent or self.indexable_level):
            raise ValueError(
                f"head '{self.name}' is text-conditioned: its video representation depends on the query text, so it "
                f"has no fixed {what} for a vector index; search it in two stages (tvr.search.two_stage) or score it with "
                "tiled similarity instead"
            )

    def pair_bytes(self) -> int:
        """Bytes of intermediate tensors ``similarity`` holds per (text, video) pair of a tile; sizes the
        evaluation tiles under a memory budget. Zero for heads whose similarity is a plain GEMM."""
        return 0


def repr_length(rep: Repr) -> int:
    return next(iter(rep.values())).shape[0]


def slice_repr(rep: Repr, start: int, stop: int) -> Repr:
    return {key: value[start:stop] for key, value in rep.items()}


def select_repr(rep: Repr, ids: torch.Tensor) -> Repr:
    """The items ``ids`` of a representation, in that order (on each tensor's own device)."""
    return {key: value.index_select(0, ids.to(value.device)) for key, value in rep.items()}


def cat_reprs(reps: list[Repr]) -> Repr:
    return {key: torch.cat([rep[key] for rep in reps]) for key in reps[0]}


def masked_mean_of_unit_frames(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip's video vector: normalise each frame, average the real ones, normalise again.

    A video with no real frame (e.g. one that failed to decode) yields the zero vector, which scores 0
    against every text instead of producing NaNs.
    """
    weights = mask.to(frames.dtype).unsqueeze(-1)
    summed = (F.normalize(frames, dim=-1) * weights).sum(dim=1)
    mean = summed / weights.sum(dim=1).clamp(min=1.0)
    return F.normalize(mean, dim=-1)


def rename_reference_keys(
    state_dict: dict[str, torch.Tensor], renames, ignored: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        if ignored and key.startswith(ignored):
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
