"""HBI's trainable blocks in one container, laid out so the reference's state_dict keys map onto it by
prefix renames (:func:`reference_key_renames`). Levels are indexed 0, 1, 2 = entity, action, event.

* ``text_weights.{0,1,2}`` / ``video_weights.{0,1,2}``: the WTI weight MLPs of each level
  (reference ``{text,video}_weight_fc``, ``..._fc0``, ``..._fc1``);
* ``text_merges.{0,1}`` / ``video_merges.{0,1}``: the merges from level n to n+1, each ``.ctm`` and
  ``.block`` (reference ``{t,v}_ctm{0,1}`` and ``{t,v}_block{0,1}``);
* ``students.{0,1,2}``: the per-level Banzhaf students (reference ``banzhafmodel``, ``...0``, ``...1``);
* ``teacher``: the pre-trained Banzhaf estimator (reference ``banzhafteacher``).
"""

from __future__ import annotations

from torch import nn

from tvr.models.heads.hbi.banzhaf import BanzhafModule
from tvr.models.heads.hbi.token_merge import TokenMerge
from tvr.models.heads.hbi.wti import hbi_weight_mlp

LEVELS = ("entity", "action", "event")
_REFERENCE_LEVEL_SUFFIXES = ("", "0", "1")  # text_weight_fc, text_weight_fc0, text_weight_fc1; banzhafmodel...


class HBIBlocks(nn.Module):
    """The WTI weight MLPs, token merges and Banzhaf networks of HBI (no forward: a head composes them)."""

    def __init__(
        self,
        dim: int,
        text_rates: tuple[float, float] = (0.25, 0.5),
        video_rates: tuple[float, float] = (0.25, 0.5),
        dpc_k: int = 3,
        merge_heads: int = 8,
        banzhaf_planes: int = 64,
    ) -> None:
        super().__init__()
        merges = len(LEVELS) - 1
        if len(text_rates) != merges or len(video_rates) != merges:
            raise ValueError(
                f"hbi needs {merges} text and {merges} video merge rates, got {list(text_rates)} and {list(video_rates)}"
            )
        self.text_weights = nn.ModuleList(hbi_weight_mlp(dim) for _ in LEVELS)
        self.video_weights = nn.ModuleList(hbi_weight_mlp(dim) for _ in LEVELS)
        self.text_merges = nn.ModuleList(TokenMerge(dim, rate, dpc_k, merge_heads) for rate in text_rates)
        self.video_merges = nn.ModuleList(TokenMerge(dim, rate, dpc_k, merge_heads) for rate in video_rates)
        self.students = nn.ModuleList(BanzhafModule(banzhaf_planes) for _ in LEVELS)
        self.teacher = BanzhafModule(banzhaf_planes)
        # the teacher is the pre-trained estimator: it only ever runs without gradient
        self.teacher.requires_grad_(False)


def reference_key_renames(prefix: str = "") -> tuple[tuple[str, str], ...]:
    """``(reference prefix, our prefix)`` pairs for a head holding :class:`HBIBlocks` at ``prefix``
    (e.g. ``"blocks."``); every reference prefix ends with a dot, so ``text_weight_fc.`` never catches
    ``text_weight_fc0.``."""
    renames = [("banzhafteacher.", f"{prefix}teacher.")]
    for level, suffix in enumerate(_REFERENCE_LEVEL_SUFFIXES):
        renames += [
            (f"text_weight_fc{suffix}.", f"{prefix}text_weights.{level}."),
            (f"video_weight_fc{suffix}.", f"{prefix}video_weights.{level}."),
            (f"banzhafmodel{suffix}.", f"{prefix}students.{level}."),
        ]
    for merge in range(len(LEVELS) - 1):
        for side, name in (("t", "text"), ("v", "video")):
            renames += [
                (f"{side}_ctm{merge}.", f"{prefix}{name}_merges.{merge}.ctm."),
                (f"{side}_block{merge}.", f"{prefix}{name}_merges.{merge}.block."),
            ]
    return tuple(renames)
