"""Top-k retrieval over a precomputed video-embedding index, for galleries too large to score densely.

Only query-independent heads (a video is one vector, similarity a dot product) can be indexed; a
text-conditioned head (X-Pool, GLSCL) fails with a message that says so. The index uses faiss
(``IndexFlatIP``, exact inner product) when it is installed, else chunked torch matrix products.
"""

from __future__ import annotations

import torch

from tvr.models.heads.base import Repr, RetrievalHead


class EmbeddingIndex:
    def __init__(self, embeddings: torch.Tensor, use_faiss: bool | None = None) -> None:
        self.embeddings = embeddings.detach().float().cpu().contiguous()
        self.faiss_index = None
        if use_faiss is not False:
            try:
                import faiss
            except ImportError:
                if use_faiss:
                    raise
            else:
                self.faiss_index = faiss.IndexFlatIP(self.embeddings.shape[1])
                self.faiss_index.add(self.embeddings.numpy())

    @classmethod
    def from_head(cls, head: RetrievalHead, video_repr: Repr, use_faiss: bool | None = None) -> "EmbeddingIndex":
        return cls(head.video_embedding(video_repr), use_faiss)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, queries: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and indices ``[Nq, k]`` of the ``k`` best videos for each query, best first."""
        queries = queries.detach().float().cpu().contiguous()
        k = min(k, len(self))
        if self.faiss_index is not None:
            scores, indices = self.faiss_index.search(queries.numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(indices)
        results = [torch.topk(block @ self.embeddings.t(), k, dim=1) for block in queries.split(chunk)]
        return torch.cat([r.values for r in results]), torch.cat([r.indices for r in results])
