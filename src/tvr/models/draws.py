"""Random draws at evaluation that do not depend on how the evaluation is run.

A head that draws while it encodes (UCoFiA's patch selection draws Gaussian noise at evaluation too)
would otherwise give scores that depend on the global RNG's state, the batch composition, the number of
processes and whether representations were cached. Evaluation therefore hands every encoded batch an
:class:`EvaluationDraws` (``FrameFeatures.draws``): the evaluation seed (``evaluation.seed``), the role of
the items (test videos, bank videos) and their positions in their split. From it a head takes generators
seeded by the items themselves (:meth:`EvaluationDraws.item_generator`: the same draws for an item
whatever batch, rank or tile it is in) or by the batch (:meth:`EvaluationDraws.batch_generator`: one
draw per batch as some references do, reproducible for the same batching). Heads that do not draw ignore
it; outside evaluation (training, search) it is None.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def derived_seed(*parts) -> int:
    """A 63-bit seed from the parts (stable across processes and Python runs, unlike ``hash``)."""
    digest = hashlib.blake2b(":".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class EvaluationDraws:
    """``seed``: the evaluation seed; ``role``: what the items are (``videos``, ``video_bank``, ...);
    ``items``: ``[B]`` their positions in their split, in batch order."""

    seed: int
    role: str
    items: tuple[int, ...]

    def item_generator(self, row: int) -> torch.Generator:
        """The generator of the batch's ``row``-th item: seeded by (seed, role, item) alone."""
        return torch.Generator().manual_seed(derived_seed(self.seed, self.role, self.items[row]))

    def batch_generator(self) -> torch.Generator:
        """One generator for the whole batch, seeded by (seed, role, the batch's items)."""
        return torch.Generator().manual_seed(derived_seed(self.seed, self.role, *self.items))
