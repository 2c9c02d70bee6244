"""Search an index of the user's videos with text queries, from Python or through ``tvr-search``::

    searcher = Searcher("my_index")                 # the index's own model, checked against its identity
    for hit in searcher.search(["a dog runs on the beach"], top_k=10)[0].hits:
        print(hit.rank, hit.score, hit.path)

Query-independent heads answer from a faiss index over the per-video embeddings (exact inner product by
default; a factory string such as ``IVF1024,PQ64`` for very large galleries). Text-conditioned heads
search in two stages: the faiss index over CLIP's mean-pooled frame vectors proposes ``rerank_k``
candidates per query, which the head re-scores exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tvr.data.tokenizer import CaptionTokenizer
from tvr.errors import UserInputError
from tvr.evaluation.report import second_stage_label
from tvr.models.heads.base import cat_reprs
from tvr.search.model import load_retriever
from tvr.search.page import Hit, QueryResult
from tvr.search.store import IndexMismatchError, VideoIndexStore
from tvr.search.two_stage import exhaustive_search, recall_at_k, rescored_top, two_stage_search
from tvr.search.vector_index import VectorIndex

log = logging.getLogger(__name__)


@dataclass
class SearchResult(QueryResult):
    """A query's ranked videos; for a two-stage search asked to check, the first stage's recall@top_k
    against exhaustive head scoring."""

    first_stage_recall: float | None = None

    def as_json(self) -> dict:
        return {
            "query": self.query,
            "note": self.note,
            "first_stage_recall": self.first_stage_recall,
            "results": [
                {"rank": hit.rank, "score": hit.score, "path": hit.path, "duration": hit.duration} for hit in self.hits
            ],
        }


class QueryError(UserInputError):
    """A query the model cannot read as written (empty, or longer than its tokenizer's limit)."""


@dataclass
class SearchOptions:
    top_k: int = 10
    rerank_k: int = 100  # two-stage only: candidates the head re-scores per query
    factory: str = "Flat"  # faiss index over the summaries; e.g. "IVF1024,PQ64" for very large galleries
    nprobe: int = 16
    check_recall: bool = False  # two-stage only: also score every video with the head, report stage-1 recall


class Searcher:
    def __init__(
        self,
        index: str | Path,
        ckpt_path: str | None = None,
        factory: str = "Flat",
        nprobe: int = 16,
        device: str = "cpu",
    ) -> None:
        self.store = VideoIndexStore.open(index)
        self.retriever = load_retriever(self.store.model, ckpt_path).to(device)
        self.device = torch.device(device)
        found = self.retriever.identity()
        if found != self.store.identity:
            raise IndexMismatchError(
                f"index {index} was built with {self.store.identity}, but the model is {found}; search it with the "
                "checkpoint it was built with (ckpt_path=...), or build another index with this model"
            )
        self.contents = self.store.load()
        if not self.contents.paths:
            raise UserInputError(
                f"index {index} holds no video yet; add some with tvr-index VIDEOS_DIR ... index={index}"
            )
        self.tokenizer = CaptionTokenizer(self.store.settings["max_words"])
        self.vectors = self._vector_index(Path(index), factory, nprobe)

    def _vector_index(self, folder: Path, factory: str, nprobe: int) -> VectorIndex:
        """Exact indexes are rebuilt in moments; trained ones are cached beside the shards, per contents (a
        video re-encoded in place keeps the count, so the count alone would serve its old vector)."""
        if factory == "Flat":
            return VectorIndex.build(self.contents.summary, factory="Flat")
        name = f"vectors_{factory.replace(',', '_')}_{len(self.contents.paths)}_{self.store.contents_digest()}.faiss"
        cached = folder / name
        if cached.exists():
            index = VectorIndex.load(cached)
            index.nprobe = nprobe
            return index
        index = VectorIndex.build(self.contents.summary, factory=factory, nprobe=nprobe)
        index.save(cached)
        return index

    def tokens(self, queries: list[str]) -> torch.Tensor:
        limit = self.tokenizer.max_words - 2
        for query in queries:
            if not query.strip():
                raise QueryError(
                    'the query is empty; pass the text to search for, e.g. tvr-search "a dog runs on the beach" index=...'
                )
            length = len(self.tokenizer.bpe.encode(query))
            if length > limit:
                raise QueryError(
                    f"the query '{query[:60]}...' has {length} tokens, but this model reads at most {limit} "
                    f"(its data.max_words={self.tokenizer.max_words}, minus start and end); shorten it"
                )
        return torch.stack([self.tokenizer(query) for query in queries]).to(self.device)

    @torch.no_grad()
    def search(self, queries: list[str], options: SearchOptions | None = None) -> list[SearchResult]:
        options = options or SearchOptions()
        tokens = self.tokens(queries)
        parts = [self.retriever.encode_texts_with_summary(chunk) for chunk in tokens.split(256)]
        text_repr, summaries = cat_reprs([rep for rep, _ in parts]), torch.cat([summary for _, summary in parts])
        text_repr = {key: value.cpu() for key, value in text_repr.items()}
        if self.retriever.summary_is_exact:
            scores, ids = self.vectors.search(summaries.cpu(), options.top_k)
            note = f"{self.vectors.factory} inner-product search over the {self.retriever.head.name} embeddings"
            recalls = None
        else:
            rerank_k = max(options.rerank_k, options.top_k)
            scores, ids = two_stage_search(
                self.retriever.head,
                text_repr,
                summaries.cpu(),
                self.vectors,
                self.contents.representation,
                rerank_k,
                options.top_k,
            )
            note = (
                f"two stages: {min(rerank_k, len(self.contents.paths))} candidates from a {self.vectors.factory} search "
                f"over mean-pooled CLIP frame vectors, re-scored by {self.retriever.head.name}"
            )
            if self.retriever.head.reranks_queries:
                second = second_stage_label(self.retriever.head.describe_rerank())
                note += f", then {second} over each query's best candidates"
            recalls = None
            if options.check_recall:
                head, gallery = self.retriever.head, self.contents.representation
                if head.reranks_queries:  # the reference: the same second stage over the exhaustive best candidates
                    best = exhaustive_search(head, text_repr, gallery, rerank_k)
                    _, exhaustive_ids = rescored_top(head, text_repr, gallery, *best, options.top_k)
                else:
                    _, exhaustive_ids = exhaustive_search(head, text_repr, gallery, options.top_k)
                recalls = [recall_at_k(ids[i : i + 1], exhaustive_ids[i : i + 1]) for i in range(len(queries))]
        results = []
        for row, query in enumerate(queries):
            hits = [
                Hit(
                    rank=rank + 1,
                    score=float(scores[row, rank]),
                    path=self.contents.paths[int(video)],
                    duration=float(self.contents.durations[int(video)]),
                    thumbnail=self.contents.thumbnails[int(video)],
                )
                for rank, video in enumerate(ids[row].tolist())
                if video >= 0
            ]
            recall = recalls[row] if recalls else None
            extra = (
                f"; recall@{options.top_k} against exhaustive {self.retriever.head.name} scoring: {recall:.3f}"
                if recalls
                else ""
            )
            results.append(SearchResult(query=query, hits=hits, note=note + extra, first_stage_recall=recall))
        return results

    def summary(self) -> dict:
        return {
            **self.store.identity,
            "videos": len(self.contents.paths),
            "unreadable": len(self.store.unreadable),
            "sampler": self.store.settings["sampler"].get("sampler"),
            "frames": self.store.settings["sampler"].get("max_frames"),
            "vector index": self.vectors.factory,
        }
