"""DiffusionRet's inference (methods spec §5): DDIM sampling of a relevance vector and the re-ranking of a score
matrix's rows with it, one direction at a time.

For each chunk of queries, :func:`rerank_rows` takes every query's top-``k`` gallery items, samples their
relevance ``x̂₀ [chunk, k]`` from the start noise ``x_T`` by ``T`` DDIM steps, and adds
``alpha · softmax(temp · x̂₀)`` to those ``k`` scores; the rest of the row is untouched. Which generator runs
and which features it sees is the caller's: a *denoiser factory* ``denoise_queries(candidates, (start, stop))``
gathers the chunk's features once and returns the per-step ``denoise(x, t)``. :func:`t2v_denoiser` and
:func:`v2t_denoiser` build the two directions' factories.
"""

from __future__ import annotations

from typing import Callable

import torch

from tvr.models.heads.diffusionret.generator import RelevanceGenerator
from tvr.models.heads.diffusionret.schedule import CosineSchedule

#: ``denoise(x [n, k], t [n]) -> predicted x₀ [n, k]`` for one chunk of queries.
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``denoise_queries(candidates [n, k], (start, stop)) -> Denoise`` for the queries ``start:stop``, whose
#: candidates (gallery indices) are ``candidates``.
DenoiserFactory = Callable[[torch.Tensor, tuple[int, int]], Denoise]
#: What :func:`ddim_sample` records, per step or per state.
TRAJECTORY_KEYS = ("x_traj", "model_out", "pred_x0", "t_seq")


def ddim_sample(
    denoise: Denoise, x_T: torch.Tensor, schedule: CosineSchedule, record: dict | None = None
) -> torch.Tensor:
    """The final ``x̂₀ [b, K]`` after ``schedule.steps`` DDIM steps (``t = T−1 … 0``, ``eta = 0``) from ``x_T``.

    ``x_T`` keeps its dtype for the first step (the reference's float32 start noise). ``record`` receives
    ``x_traj [T+1, b, K]`` (``x_T`` then each step's sample), ``model_out`` and ``pred_x0`` ``[T, b, K]`` (raw
    and clamped prediction) and ``t_seq [T]``."""
    x = x_T
    states, outputs, predictions = [x_T], [], []
    t_seq = torch.arange(schedule.steps - 1, -1, -1, device=x_T.device)
    for step in t_seq:
        t = step.expand(x.shape[0])
        predicted = denoise(x, t)
        x, x0_hat = schedule.ddim_step(x, t, predicted)
        if record is not None:
            states.append(x)
            outputs.append(predicted)
            predictions.append(x0_hat)
    if record is not None:
        dtype = x.dtype
        record.update(
            x_traj=torch.stack([state.to(dtype) for state in states]),
            model_out=torch.stack(outputs),
            pred_x0=torch.stack(predictions),
            t_seq=t_seq,
        )
    return x


def rerank_rows(
    rows: torch.Tensor,
    k: int,
    x_T: torch.Tensor,
    denoise_queries: DenoiserFactory,
    schedule: CosineSchedule,
    alpha: float = 1.0,
    temp: float = 1.0,
    chunk: int = 32,
    record: dict | None = None,
) -> torch.Tensor:
    """``rows' [Nq, Ng]``: each query's top-``k`` scores plus ``alpha · softmax(temp · x̂₀)``, other entries
    untouched; ``x̂₀`` sampled by :func:`ddim_sample` from ``x_T [Nq, k]``, in chunks of ``chunk`` queries
    (each chunk's generator calls are batched over its queries). The result does not depend on ``chunk``
    for a given ``x_T``; the reference draws ``x_T`` per chunk of ``t2v_num`` queries.

    ``record`` receives ``cand [Nq, k]`` (``topk(sorted=True)`` indices), ``added [Nq, k]`` (what was added
    at ``cand``) and the trajectories of :func:`ddim_sample` concatenated over chunks along the query axis."""
    queries, gallery = rows.shape
    if not 1 <= k <= gallery:
        raise ValueError(f"re-rank k must lie in [1, {gallery}] (the gallery size), got {k}")
    if tuple(x_T.shape) != (queries, k):
        raise ValueError(f"x_T must have shape [{queries}, {k}] (queries, k), got {list(x_T.shape)}")
    if chunk < 1:
        raise ValueError(f"re-rank chunk must be >= 1, got {chunk}")
    reranked = rows.clone()
    chunk_records: list[dict] = []
    for start in range(0, queries, chunk):
        stop = min(start + chunk, queries)
        candidates = rows[start:stop].topk(k, dim=1, sorted=True).indices
        chunk_record: dict | None = {} if record is not None else None
        x0_hat = ddim_sample(denoise_queries(candidates, (start, stop)), x_T[start:stop], schedule, chunk_record)
        added = alpha * (temp * x0_hat).softmax(dim=-1)
        reranked[start:stop].scatter_add_(1, candidates, added.to(rows.dtype))
        if chunk_record is not None:
            chunk_records.append({**chunk_record, "cand": candidates, "added": added})
    if record is not None:
        record.update({key: torch.cat([r[key] for r in chunk_records]) for key in ("cand", "added")})
        record.update({key: torch.cat([r[key] for r in chunk_records], dim=1) for key in TRAJECTORY_KEYS[:3]})
        record["t_seq"] = chunk_records[0]["t_seq"]
    return reranked


def t2v_denoiser(
    generator: RelevanceGenerator, eot: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor
) -> DenoiserFactory:
    """Text queries (EOT features ``[Nq, D]``) against a video gallery (``frames [Nv, F, D]``, ``mask [Nv, F]``)."""
    _expect_direction(generator, "t2v")

    def denoise_queries(candidates: torch.Tensor, span: tuple[int, int]) -> Denoise:
        query_eot = eot[span[0] : span[1]]
        candidate_frames, candidate_mask = frames[candidates], mask[candidates]  # gathered once per chunk
        return lambda x, t: generator(x, t, query_eot, candidate_frames, candidate_mask)

    return denoise_queries


def v2t_denoiser(
    generator: RelevanceGenerator, frames: torch.Tensor, mask: torch.Tensor, eot: torch.Tensor
) -> DenoiserFactory:
    """Video queries (``frames [Nq, F, D]``, ``mask [Nq, F]``) against a text gallery (EOT features ``[Nt, D]``)."""
    _expect_direction(generator, "v2t")

    def denoise_queries(candidates: torch.Tensor, span: tuple[int, int]) -> Denoise:
        query_frames, query_mask = frames[span[0] : span[1]], mask[span[0] : span[1]]
        candidate_eot = eot[candidates]
        return lambda x, t: generator(x, t, candidate_eot, query_frames, query_mask)

    return denoise_queries


def _expect_direction(generator: RelevanceGenerator, direction: str) -> None:
    if generator.direction != direction:
        raise ValueError(f"a {direction} denoiser needs the {direction} generator, got a {generator.direction} one")
