"""ToMe's bipartite soft matching with protected tokens, and TempMe's token schedule (methods spec §1.3-§1.4).

The schedule (how many tokens every block removes) depends only on the geometry, never on the data, so
it is planned once, in plain Python, by :func:`plan_schedule`; the tower, the start-up validation and the
benchmarks read the same plan. What changes per forward (the token sizes) lives in local variables of
the forward pass, so the tower is re-entrant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# ---------------------------------------------------------------------------------------------- merging
@dataclass
class MergeDecision:
    """Which tokens a merge removes, as indices into the A set (``src``, ``unm``) and the B set (``dst``)."""

    protected: int
    a_offset: int  # A = non-protected tokens at even absolute index: position protected + a_offset + 2j
    src: torch.Tensor  # [S, r] A tokens merged away, in descending score order
    dst: torch.Tensor  # [S, r] the B token each goes into
    unm: torch.Tensor  # [S, |A| - r] kept A tokens, ascending

    def absolute(self) -> dict[str, torch.Tensor]:
        """``src``/``dst``/``unm`` as positions in the sequence before the merge."""
        a_start, b_start = self.protected + self.a_offset, self.protected + 1 - self.a_offset
        return {"src": a_start + 2 * self.src, "dst": b_start + 2 * self.dst, "unm": a_start + 2 * self.unm}


def match(metric: torch.Tensor, protected: int, r: int) -> MergeDecision:
    """Bipartite soft matching of ``metric`` ``[S, N, d]``: the first ``protected`` tokens are never merged;
    the others split by the parity of their absolute position (A even, B odd); the ``r`` A tokens most
    similar (cosine) to their best B token are merged into it. The choice carries no gradient."""
    with torch.no_grad():
        m = metric[:, protected:]
        m = m / m.norm(dim=-1, keepdim=True)
        a_offset = protected % 2
        a, b = m[:, a_offset::2], m[:, 1 - a_offset :: 2]
        best_score, best_b = (a @ b.transpose(-1, -2)).max(dim=-1)
        order = best_score.argsort(dim=-1, descending=True)
        src = order[:, :r]
        return MergeDecision(protected, a_offset, src, best_b.gather(-1, src), order[:, r:].sort(dim=-1).values)


def merge(decision: MergeDecision, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted averages: each B token becomes the size-weighted mean of itself and the A tokens merged
    into it, and its size their sum. ``x`` ``[S, N, W]``, ``size`` ``[S, N]`` (None: all ones). Output order:
    ``[protected, kept A (ascending), B (original order)]`` — the next merge's parity split depends on it."""
    if size is None:
        size = x.new_ones(x.shape[:2])
    c, offset = decision.protected, decision.a_offset
    weighted = torch.cat([x * size[..., None], size[..., None]], dim=-1)  # merge value and size in one pass
    head, rest = weighted[:, :c], weighted[:, c:]
    a, b = rest[:, offset::2], rest[:, 1 - offset :: 2]
    channels = weighted.shape[-1]
    kept = a.gather(1, decision.unm[..., None].expand(-1, -1, channels))
    moved = a.gather(1, decision.src[..., None].expand(-1, -1, channels))
    b = b.scatter_add(1, decision.dst[..., None].expand(-1, -1, channels), moved)
    out = torch.cat([head, kept, b], dim=1)
    new_size = out[..., -1]
    return out[..., :-1] / new_size[..., None], new_size


# --------------------------------------------------------------------------------------------- schedule
class ScheduleError(ValueError):
    """A merge schedule that does not fit the frame count, the depth or the token grid."""


@dataclass(frozen=True)
class BlockPlan:
    index: int
    kind: str  # "image" (ImgMe, before the first ClipMe), "clip" (ClipMe), "intra" (after the first ClipMe)
    group: int  # clips joined at the start of a ClipMe block (1 otherwise, or a ClipMe block that joins nothing)
    clips_in: int  # clips per video entering the block
    cross: int  # tokens removed by cross-clip merging (ClipMe joining 2 or more clips only)
    intra: int  # tokens removed after the attention
    protected_out: int  # CLS tokens per clip after the block
    tokens_out: int  # tokens per clip (CLS included) after the block

    @property
    def clips_out(self) -> int:
        return self.clips_in // self.group


def mergeable(tokens: int, protected: int) -> int:
    """Size of the A set: non-protected tokens at even absolute positions (the most one merge can remove)."""
    return (tokens + 1) // 2 - (protected + 1) // 2


def plan_schedule(
    depth: int,
    tokens_per_frame: int,
    frames: int,
    tome_r: int,
    clip_layers: list[int],
    clip_groups: list[int],
    cross_ratio: float,
    intra_ratio: float,
) -> list[BlockPlan]:
    """TempMe's token budget per block (spec §1.4), with Python's ``int()`` truncation of the float products
    evaluated left to right as the reference does. Raises :class:`ScheduleError` naming the reason and a
    schedule that would fit."""
    layers, groups = list(clip_layers), list(clip_groups)
    if not (0 <= cross_ratio < 1 and 0 <= intra_ratio < 1):
        raise ScheduleError(f"cross_clip_ratio={cross_ratio} and intra_clip_ratio={intra_ratio} must lie in [0, 1)")
    if tome_r < 0:
        raise ScheduleError(f"tome_r={tome_r} must be >= 0")
    _check_layers(depth, layers, groups)
    _check_groups(frames, layers, groups)
    group_at = dict(zip(layers, groups))
    first_clip_layer = min(layers) if layers else depth
    plan, n, c, clips = [], tokens_per_frame, 1, frames
    for index in range(depth):
        if index in group_at:
            g = group_at[index]
            cross = min(int(n * g * cross_ratio), ((n - c) * g) // 2)
            intra = min(int((n * g - cross) * intra_ratio), ((n - c) * g - cross) // 2)
            if g == 1:
                # The reference (ToMeBlock.forward, `if r_f > 1`) skips the join, the temporal embedding and the
                # cross-clip merge of a group of one clip, yet its intra budget above still has the unused cross
                # budget subtracted; the block still opens the clip stage (later blocks merge within clips).
                plan.append(BlockPlan(index, "clip", 1, clips, 0, intra, c, n - intra))
                n -= intra
                continue
            plan.append(BlockPlan(index, "clip", g, clips, cross, intra, c * g, n * g - cross - intra))
            n, c, clips = n * g - cross - intra, c * g, clips // g
            continue
        if index < first_clip_layer:
            kind, r = "image", tome_r
            if r > mergeable(n, c):
                raise ScheduleError(
                    f"tome_r={tome_r} removes more tokens than block {index} can merge: its frames hold {n} tokens "
                    f"({c} protected CLS), at most {mergeable(n, c)} of them mergeable; "
                    f"use tome_r={_largest_fitting_tome_r(tokens_per_frame, first_clip_layer)} or fewer image-merging blocks "
                    f"(an earlier first clip layer)"
                )
        else:
            kind, r = "intra", min(int(n * intra_ratio), (n - c) // 2)
        plan.append(BlockPlan(index, kind, 1, clips, 0, r, c, n - r))
        n -= r
    return plan


def _largest_fitting_tome_r(tokens_per_frame: int, image_blocks: int) -> int:
    for r in range(tokens_per_frame, -1, -1):
        n, fits = tokens_per_frame, True
        for _ in range(image_blocks):
            if r > mergeable(n, 1):
                fits = False
                break
            n -= r
        if fits:
            return r
    return 0


def _check_layers(depth: int, layers: list[int], groups: list[int]) -> None:
    if len(layers) != len(groups):
        raise ScheduleError(
            f"clip_layers {layers} and clip_groups {groups} must have the same length (one group size per clip layer)"
        )
    if any(g < 1 for g in groups):
        raise ScheduleError(f"clip_groups {groups} must be positive")
    if layers != sorted(set(layers)) or (layers and (layers[0] < 0 or layers[-1] >= depth)):
        fitting = list(range(max(depth - len(layers) - 1, 0), depth - 1))[: len(layers)]
        raise ScheduleError(
            f"clip_layers {layers} must be increasing block indices below the vision depth {depth}; "
            f"for example clip_layers={fitting}"
        )


def _check_groups(frames: int, layers: list[int], groups: list[int]) -> None:
    clips = frames
    for layer, g in zip(layers, groups):
        if clips % g:
            fitting = suggest_groups(frames, len(groups))
            advice = f"clip_groups={fitting}"
            if len(fitting) < len(groups):
                advice += (
                    f" with clip_layers={layers[: len(fitting)]} ({frames} frames allow only {len(fitting)} clip layers "
                    "that join clips; a clip layer of group 1 joins nothing and merges within clips only)"
                )
            raise ScheduleError(
                f"clip_groups {groups} do not fit {frames} frames: block {layer} joins groups of {g} clips, but "
                f"{clips} clips enter it; a schedule that fits {frames} frames: {advice}"
            )
        clips //= g


def suggest_groups(frames: int, count: int, allow_single: bool = False) -> list[int]:
    """Factor ``frames`` into at most ``count`` group sizes as evenly as possible, smallest first (12, 3 ->
    [2, 2, 3]; 64, 3 -> [4, 4, 4]). When ``frames`` has fewer prime factors than ``count``, the list is shorter
    (4, 3 -> [2, 2]): a group of 1 is no clip join (the reference treats it specially, see :func:`plan_schedule`),
    so 1s fill in to ``count`` only with ``allow_single``."""
    if count == 0:
        return []
    primes, rest, p = [], frames, 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    bins = [1] * (count if allow_single else min(count, len(primes)))
    for prime in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= prime
    return sorted(bins)
