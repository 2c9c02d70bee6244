"""What every registered re-ranker must do (parametrised over the registry, so a new one is covered as it
is added): re-score only the directions it declares, keep the shape, treat texts and videos as a set
(permuting rows or columns of its input permutes its output alike), leave the plain numbers alone, say
what it needs and refuse to run without it, and declare its options with defaults that validate."""

import dataclasses

import pytest
import torch

from tvr.config_checker import ConfigChecker, Section
from tvr.evaluation.options import evaluation_defaults
from tvr.evaluation.report import evaluate_scores
from tvr.evaluation.rerank import DIRECTIONS, RERANKERS, create_reranker
from tvr.options import defaults_of, option_specs

NAMES = RERANKERS.names()


def inputs(generator: torch.Generator, texts: int = 7, videos: int = 5, bank: int = 9):
    """The score matrix and each direction's bank: captions x videos (t2v), bank videos x texts (v2t)."""
    cos = torch.rand(texts, videos, generator=generator, dtype=torch.float64) * 2 - 1
    banks = {
        "t2v": torch.rand(bank, videos, generator=generator, dtype=torch.float64) * 2 - 1,
        "v2t": torch.rand(bank, texts, generator=generator, dtype=torch.float64) * 2 - 1,
    }
    return cos, banks


def bank_for(reranker, banks: dict, direction: str) -> torch.Tensor | None:
    declared = reranker.query_bank() if direction == "t2v" else reranker.video_bank()
    return banks[direction] if declared is not None else None


def test_the_registry_holds_the_published_re_rankers():
    assert {"dsl", "qbnorm", "sknorm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_declared_and_validate(name):
    cls = RERANKERS.get(name)
    assert dataclasses.is_dataclass(cls) and cls.name == name
    assert set(cls.directions) <= set(DIRECTIONS) and cls.directions
    assert set(cls.directions) == set(DIRECTIONS) or cls.why_not, "a direction left alone must say why"
    defaults = defaults_of(cls)
    assert evaluation_defaults()[name] == defaults  # its block in the evaluation section Hydra composes
    checker = ConfigChecker()
    checker.typed(Section(f"evaluation.{name}", defaults), cls, f"re-ranker '{name}'")
    assert checker.problems == []
    for spec in option_specs(cls):
        assert spec.facts.help, f"{name}.{spec.name} has no help text"


@pytest.mark.parametrize("name", NAMES)
def test_rescores_its_directions_with_the_same_shape(name):
    reranker = create_reranker(name)
    cos, bank = inputs(torch.Generator().manual_seed(0))
    for direction in reranker.directions:
        out = reranker.rerank(cos, direction, bank_for(reranker, bank, direction))
        assert out.shape == cos.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_is_equivariant_to_the_order_of_texts_and_videos(name):
    reranker = create_reranker(name)
    generator = torch.Generator().manual_seed(1)
    cos, bank = inputs(generator)
    rows, columns = torch.randperm(cos.shape[0], generator=generator), torch.randperm(cos.shape[1], generator=generator)
    permuted_banks = {"t2v": bank["t2v"][:, columns], "v2t": bank["v2t"][:, rows]}
    for direction in reranker.directions:
        out = reranker.rerank(cos, direction, bank_for(reranker, bank, direction))
        permuted = reranker.rerank(cos[rows][:, columns], direction, bank_for(reranker, permuted_banks, direction))
        torch.testing.assert_close(permuted, out[rows][:, columns])


@pytest.mark.parametrize("name", NAMES)
def test_is_labelled_beside_the_plain_numbers(name):
    reranker = create_reranker(name)
    cos, bank = inputs(torch.Generator().manual_seed(2), texts=5, videos=5)
    plain = evaluate_scores(cos, None)
    levels = {"final": cos} if reranker.level_aware else None
    result = evaluate_scores(
        cos,
        None,
        reranker,
        query_bank=bank_for(reranker, bank, "t2v"),
        video_bank=bank_for(reranker, bank, "v2t"),
        levels=levels,
    )
    assert result["t2v"] == plain["t2v"] and result["v2t"] == plain["v2t"]
    assert result["reranked"]["method"] == name
    for direction in DIRECTIONS:
        kept = isinstance(result["reranked"][direction], dict)
        assert kept == (direction in reranker.directions)


@pytest.mark.parametrize("name", NAMES)
def test_refuses_to_run_without_the_data_it_declares(name):
    reranker = create_reranker(name)
    cos, _ = inputs(torch.Generator().manual_seed(3))
    for direction in reranker.directions:
        if bank_for(reranker, {"t2v": cos, "v2t": cos}, direction) is None:
            reranker.rerank(cos, direction)  # needs nothing beyond the matrix
            continue
        with pytest.raises(ValueError, match="query bank"):
            reranker.rerank(cos, direction)
