"""Checks that stop a wrong number before it is computed: non-finite representations name their items."""

from __future__ import annotations

from typing import Sequence

import torch

from tvr.errors import NonFiniteScoresError
from tvr.evaluation.metrics import first_few
from tvr.models.heads.base import Repr


def nonfinite_items(rep: Repr) -> torch.Tensor:
    """Bool ``[N]``: items holding a NaN or inf in any of their representation's tensors."""
    bad = None
    for value in rep.values():
        if not value.is_floating_point():
            continue
        item_bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
        bad = item_bad if bad is None else bad | item_bad
    if bad is None:
        return torch.zeros(next(iter(rep.values())).shape[0], dtype=torch.bool)
    return bad.cpu()


def _named(mask: torch.Tensor, names: Sequence[str] | None) -> str:
    indices = torch.nonzero(mask).flatten().tolist()
    return first_few([names[i] for i in indices] if names is not None else indices)


def check_finite_representations(
    texts: Repr,
    videos: Repr,
    skip_videos: torch.Tensor,
    text_names: Sequence[str] | None = None,
    video_names: Sequence[str] | None = None,
    stage: str = "evaluation",
) -> None:
    """Raise when a text or a readable video has a NaN/inf representation, with how many and which;
    ``skip_videos`` (bool ``[Nv]``) are unreadable videos, counted elsewhere as misses."""
    bad_texts = nonfinite_items(texts)
    bad_videos = nonfinite_items(videos) & ~skip_videos.bool().cpu()
    if not bad_texts.any() and not bad_videos.any():
        return
    parts = []
    if bad_texts.any():
        parts.append(f"{int(bad_texts.sum())} of {bad_texts.numel()} texts ({_named(bad_texts, text_names)})")
    if bad_videos.any():
        parts.append(f"{int(bad_videos.sum())} of {bad_videos.numel()} videos ({_named(bad_videos, video_names)})")
    raise NonFiniteScoresError(
        f"{stage}: NaN or inf in the representations of {' and '.join(parts)}; no metric is computed from them "
        "(the checkpoint or the training has diverged, or an input is broken)"
    )
