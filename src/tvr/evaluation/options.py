"""The ``evaluation`` config section, declared once (see :mod:`tvr.options`): tiles, median rule, level rows
and re-ranking. Each registered re-ranker's options form a block of their own, ``evaluation.<name>``, whose
defaults and checks come from the re-ranker's dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from tvr.evaluation.metrics import Median
from tvr.evaluation.rerank import RERANKERS, Reranker
from tvr.options import defaults_of, from_config, option, option_names

NO_RERANKING = "none"


def rerank_choices() -> tuple[str, ...]:
    return (NO_RERANKING, *RERANKERS.names())


@dataclass(frozen=True)
class EvaluationOptions:
    rerank: str = option(
        NO_RERANKING,
        choices=rerank_choices,
        help="a re-ranker (its options: evaluation.<name>), labelled separately in every output",
    )
    median: Median = option("mean", help="mean: np.median | lower: torch.median")
    text_chunk: int = option(1024, minimum=1, help="texts per similarity tile")
    video_chunk: int = option(1024, minimum=1, help="videos per similarity tile")
    memory_budget_gb: float = option(
        0.5, above=0, help="per similarity tile; text-conditioned heads shrink their tiles to fit"
    )
    report_levels: bool | None = option(
        False, help="heads scoring at several levels (HBI) also report each level as labelled rows"
    )
    seed: int = option(
        0,
        minimum=0,
        help="seeds the random draws a head makes while encoding at evaluation (UCoFiA's patch selection), "
        "per item, so batching, processes and caching do not change them",
    )
    seeds: list[int] | None = option(
        None,
        help="tvr-eval: evaluate once per seed (each replacing evaluation.seed) and report the mean and standard "
        "deviation over them, for heads whose evaluation draws (UCoFiA); null: one evaluation with evaluation.seed",
    )

    @property
    def tiles(self) -> dict:
        return {
            "text_chunk": self.text_chunk,
            "video_chunk": self.video_chunk,
            "memory_budget_bytes": int(self.memory_budget_gb * 2**30),
        }


def evaluation_defaults() -> dict:
    """The section Hydra composes: the options above and one block per registered re-ranker."""
    return {**defaults_of(EvaluationOptions), **{name: defaults_of(RERANKERS.get(name)) for name in RERANKERS.names()}}


def evaluation_options(section: dict | None) -> EvaluationOptions:
    section = section or {}
    return from_config(
        EvaluationOptions, {name: section[name] for name in option_names(EvaluationOptions) if name in section}
    )


def encodes_every_level(section: dict | None) -> bool:
    """Whether evaluation needs every score level of a multi-level head: for the labelled level rows
    (``report_levels``) or for a level-aware re-ranker (SK-norm)."""
    reranker = configured_reranker(section)
    return bool(evaluation_options(section).report_levels) or (reranker is not None and reranker.level_aware)


def configured_reranker(section: dict | None) -> Reranker | None:
    """The re-ranker ``evaluation.rerank`` names, built from its block; None for ``none``."""
    section = section or {}
    name = section.get("rerank", NO_RERANKING)
    if name == NO_RERANKING:
        return None
    return from_config(RERANKERS.get(name), section.get(name))
