"""One evaluation pass, with or without a Trainer: encode every video and text once, gather them across
ranks, score all pairs in tiles through the retriever, re-rank on request and compute the metrics.

Labels (which video a caption describes, which videos were unreadable or short) travel beside the representations
in :class:`EvalCollector`, never inside them. Batches say what they hold (``batch["role"]``, set by the
evaluation datasets), so nothing here depends on the order of a data module's loaders.

Without a Trainer::

    metrics, failed = evaluate_loaders(retriever, datamodule.test_dataloader(), cfg["evaluation"])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from tvr.data.clips import QUERY_BANK, TEXTS, VIDEO_BANK, VIDEOS
from tvr.data.records import SplitRecords
from tvr.distributed import gather_indexed, gather_no_grad, gather_objects, is_distributed
from tvr.evaluation.checks import check_finite_representations
from tvr.evaluation.metrics import check_finite_scores
from tvr.evaluation.options import configured_reranker, encodes_every_level, evaluation_options
from tvr.evaluation.report import evaluate_scores
from tvr.models.draws import EvaluationDraws
from tvr.models.heads.base import Repr, repr_length, select_repr, slice_repr
from tvr.models.similarity import tiled_similarity

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """Every text and video of a split, encoded once, in split order, with their labels beside them."""

    texts: Repr
    videos: Repr
    text_to_video: np.ndarray  # [Nt] column of each text's video
    unreadable: torch.Tensor  # bool [Nv]: videos that could not be decoded (count as misses)
    short: torch.Tensor  # bool [Nv]: videos with fewer distinct frames than the clip (padded or repeated)
    failed: list[str] = field(default_factory=list)  # their ids, from every rank
    query_bank: Repr | None = None  # a re-ranker's bank of other captions, when asked for
    video_bank: Repr | None = None  # a re-ranker's bank of other videos, when asked for


class EvalCollector:
    """Accumulates one rank's encoded batches; :meth:`gather` joins every rank's share (under DDP each
    rank sees part of the split, and a DistributedSampler pads with duplicates, dropped by item index).

    ``seed`` (``evaluation.seed``) seeds the draws of heads that draw while encoding videos: each batch
    carries :class:`EvaluationDraws` naming its items, so the draws do not depend on ranks or caching."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._parts: dict[str, list] = {
            VIDEOS: [],
            "video_labels": [],
            TEXTS: [],
            "text_labels": [],
            QUERY_BANK: [],
            VIDEO_BANK: [],
        }
        self._failed: list[str] = []

    def draws(self, batch: dict, role: str) -> EvaluationDraws:
        return EvaluationDraws(self.seed, role, tuple(int(index) for index in batch["index"]))

    @torch.no_grad()
    def add(self, retriever, batch: dict) -> None:
        role = batch["role"][0]
        if role == VIDEOS:
            rep = retriever.encode_videos(batch["frames"], batch["frame_mask"], self.draws(batch, role))
            self._parts[VIDEOS].append((batch["index"], rep))
            labels = {"unreadable": batch["unreadable"], "short": batch["short"]}
            self._parts["video_labels"].append((batch["index"], labels))
            self._failed.extend(batch["failed_videos"])
        elif role == TEXTS:
            self._parts[TEXTS].append((batch["index"], retriever.encode_texts(batch["tokens"])))
            self._parts["text_labels"].append((batch["index"], {"video_index": batch["video_index"]}))
        elif role == QUERY_BANK:
            self._parts[QUERY_BANK].append((batch["index"], retriever.encode_texts(batch["tokens"])))
        elif role == VIDEO_BANK:
            rep = retriever.encode_videos(batch["frames"], batch["frame_mask"], self.draws(batch, role))
            self._parts[VIDEO_BANK].append((batch["index"], rep))
        else:
            raise ValueError(f"evaluation batch with unknown role '{role}'")

    def gather(self) -> EncodedSplit | None:
        """The whole split on every rank (every rank must call it); None when nothing was evaluated."""
        parts = self._parts
        if not parts[VIDEOS] or not parts[TEXTS]:
            return None
        video_labels = gather_indexed(parts["video_labels"])  # each video once, however the ranks padded
        return EncodedSplit(
            texts=gather_indexed(parts[TEXTS]),
            videos=gather_indexed(parts[VIDEOS]),
            text_to_video=gather_indexed(parts["text_labels"])["video_index"].cpu().numpy(),
            unreadable=video_labels["unreadable"].bool().cpu(),
            short=video_labels["short"].bool().cpu(),
            failed=sorted(set(gather_lists(self._failed))),
            query_bank=gather_indexed(parts[QUERY_BANK]) if parts[QUERY_BANK] else None,
            video_bank=gather_indexed(parts[VIDEO_BANK]) if parts[VIDEO_BANK] else None,
        )


def gather_lists(items: list) -> list:
    """Every rank's items, concatenated in rank order (the items themselves without DDP)."""
    return [item for part in gather_objects(list(items)) for item in part]


def rank_share(count: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous share of ``count`` items (the shares' rank order is the items')."""
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    bounds = torch.linspace(0, count, world + 1).long().tolist()
    return bounds[rank], bounds[rank + 1]


def shared_similarity(
    retriever, texts: Repr, videos: Repr, tiles: dict, device: torch.device | str = "cpu", levels: bool = False
):
    """The full ``[Nt, Nv]`` matrix on every rank (with ``levels``, ``{level: [Nt, Nv]}`` of a multi-level
    head); under DDP each rank scores a contiguous share of the texts and the shares are gathered, so
    text-conditioned heads split their cost across ranks."""
    if not is_distributed():
        return tiled_similarity(retriever.head, texts, videos, levels=levels, **tiles)
    share = slice_repr(texts, *rank_share(repr_length(texts)))
    rows = tiled_similarity(retriever.head, share, videos, out_device=device, levels=levels, **tiles)
    if levels:
        return {name: gather_no_grad(part).cpu() for name, part in rows.items()}
    return gather_no_grad(rows).cpu()


def second_stage_pair(
    retriever, scores: torch.Tensor, encoded: EncodedSplit, seed: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A head's learned second stage (:meth:`RetrievalHead.rerank_queries`) applied to ``scores`` ``[Nt, Nv]``
    in both directions: ``(t2v [Nt, Nv], v2t [Nv, Nt])``; None for heads without one. Unreadable videos are
    neither candidates nor queries (their scores stay as they are; the metrics count them as misses)."""
    head = retriever.head
    if not head.reranks_queries:
        return None
    readable = ~encoded.unreadable
    # before the (costly) second stage picks candidates from them: NaN scores would be ranked, not refused
    check_finite_scores(scores.detach().cpu().double().numpy(), readable.numpy())
    every_text = torch.ones(scores.shape[0], dtype=torch.bool)
    t2v = rerank_direction(head, "t2v", scores, encoded.texts, encoded.videos, every_text, readable, seed, device)
    v2t = rerank_direction(head, "v2t", scores.t(), encoded.videos, encoded.texts, readable, every_text, seed, device)
    return t2v, v2t


def rerank_direction(
    head,
    direction: str,
    rows: torch.Tensor,
    queries: Repr,
    gallery: Repr,
    query_keep: torch.Tensor,
    gallery_keep: torch.Tensor,
    seed: int,
    device: torch.device | str,
) -> torch.Tensor:
    """``rows`` ``[Nq, Ng]`` with the kept queries' rows re-scored over the kept gallery items; under DDP each
    rank re-scores a contiguous share of the queries and the shares are gathered (every query is independent)."""
    query_ids, gallery_ids = torch.nonzero(query_keep).flatten(), torch.nonzero(gallery_keep).flatten()
    out = rows.clone()
    if not len(query_ids) or not len(gallery_ids):
        return out
    share = query_ids[slice(*rank_share(len(query_ids)))] if is_distributed() else query_ids

    def picked(rep: Repr, ids: torch.Tensor) -> Repr:
        return {key: value.to(device) for key, value in select_repr(rep, ids).items()}

    part = head.rerank_queries(
        direction,
        rows[share][:, gallery_ids].to(device),
        picked(queries, share),
        picked(gallery, gallery_ids),
        share,
        seed,
    )
    out[query_ids[:, None], gallery_ids[None, :]] = gather_no_grad(part).cpu().to(out.dtype)
    return out


def transposed(scores):
    """A matrix, or every level of ``{level: matrix}``, transposed."""
    return {name: matrix.t() for name, matrix in scores.items()} if isinstance(scores, dict) else scores.t()


def item_names(records: SplitRecords | None) -> tuple[list[str] | None, list[str] | None]:
    """Readable names of a split's texts and videos, for error messages."""
    if records is None:
        return None, None
    return [f"text {text.text_id} of video {text.video_id}" for text in records.texts], [
        video.video_id for video in records.videos
    ]


def evaluate_encoded(
    retriever,
    encoded: EncodedSplit,
    cfg: dict,
    stage: str = "test",
    names: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
    device: torch.device | str = "cpu",
) -> dict:
    """Metrics of an encoded split (both directions; a labelled re-ranked block when ``cfg["rerank"]`` names a re-ranker),
    with what was measured: texts x videos and how many videos were unreadable or short."""
    check_finite_representations(encoded.texts, encoded.videos, encoded.unreadable, *names, stage=stage)
    options, reranker = evaluation_options(cfg), configured_reranker(cfg)
    scores = shared_similarity(retriever, encoded.texts, encoded.videos, options.tiles, device)
    per_level = reranker is not None and reranker.level_aware  # the re-ranker reads every level, banks alike
    level_scores = None
    if per_level or options.report_levels:
        level_scores = shared_similarity(retriever, encoded.texts, encoded.videos, options.tiles, device, levels=True)
    bank = video_bank = None
    if encoded.query_bank is not None:
        bank = shared_similarity(retriever, encoded.query_bank, encoded.videos, options.tiles, device, per_level)
    if encoded.video_bank is not None:  # texts x bank videos, passed as [bank, texts]
        video_bank = transposed(
            shared_similarity(retriever, encoded.texts, encoded.video_bank, options.tiles, device, per_level)
        )
    unreadable = torch.nonzero(encoded.unreadable).flatten().numpy()
    metrics = evaluate_scores(
        scores,
        encoded.text_to_video,
        reranker,
        median=options.median,
        query_bank=bank,
        unreadable_videos=unreadable,
        video_bank=video_bank,
        levels=level_scores if per_level else None,
        second_stage=second_stage_pair(retriever, scores, encoded, options.seed, device),
    )
    if "first_stage" in metrics:
        metrics["second_stage"] = retriever.head.describe_rerank(options.seed)
    if options.report_levels:  # labelled extra rows; the ranking above is the head's final level
        metrics["levels"] = {
            name: evaluate_scores(level, encoded.text_to_video, median=options.median, unreadable_videos=unreadable)
            for name, level in level_scores.items()
        }
    metrics["num_texts"], metrics["num_videos"] = int(scores.shape[0]), int(scores.shape[1])
    metrics["unreadable_videos"] = int(encoded.unreadable.sum())
    metrics["short_videos"] = int(encoded.short.sum())
    if metrics["short_videos"]:  # usual under some protocols (CLIP4Clip's 1 fps on short clips): a fact, not a fault
        log.info(
            "%s: %d videos have fewer distinct frames than a clip holds; their frames were padded or repeated",
            stage,
            metrics["short_videos"],
        )
    if encoded.failed:
        log.warning(
            "%s: %d videos could not be decoded; they stay in the gallery and count as misses: %s",
            stage,
            len(encoded.failed),
            encoded.failed[:10],
        )
    return metrics


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


@torch.no_grad()
def evaluate_loaders(
    retriever,
    loaders: Iterable,
    cfg: dict,
    stage: str = "test",
    records: SplitRecords | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict, list[str]]:
    """Evaluate ``retriever`` on a split's evaluation loaders (videos, texts, optionally a query bank) in
    one process, without a Trainer. Returns the metrics and the ids of the videos that could not be decoded."""
    device = torch.device(device)
    was_training, was_reporting = retriever.training, retriever.head.report_levels
    retriever.eval().to(device)
    retriever.head.report_levels = encodes_every_level(cfg)
    collector = EvalCollector(evaluation_options(cfg).seed)
    try:
        for loader in loaders:
            for batch in loader:
                collector.add(retriever, _to_device(batch, device))
    finally:
        retriever.train(was_training)
        retriever.head.report_levels = was_reporting
    encoded = collector.gather()
    if encoded is None:
        raise ValueError(f"{stage}: the loaders yielded no videos or no texts; nothing to evaluate")
    return evaluate_encoded(retriever, encoded, cfg, stage, item_names(records), device), encoded.failed
