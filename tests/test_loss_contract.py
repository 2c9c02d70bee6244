"""Contract every registered contrastive loss must honour, parametrised over the registry.

A loss takes a text x video logit matrix whose positives are on the diagonal and returns a scalar; a new
loss is covered by registering it, and one that cannot meet a clause fails here (nothing is skipped).
"""

import pytest
import torch

from tvr.models.losses import LOSSES, create_loss

LOSS_NAMES = LOSSES.names()


def logits(batch: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, batch, generator=torch.Generator().manual_seed(seed)) * 5


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_finite_scalar_whose_gradient_reaches_every_logit(name):
    scores = logits().requires_grad_(True)
    loss = create_loss(name)(scores)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad != 0).all(), "every pair of the batch must take part (positives and negatives)"
    assert (scores.grad.diagonal() < 0).all(), "raising a positive's logit must lower the loss"


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_symmetric_in_texts_and_videos(name):
    """Both retrieval directions count alike: transposing the matrix (swapping texts and videos) changes nothing."""
    loss = create_loss(name)
    scores = logits()
    assert torch.allclose(loss(scores), loss(scores.t()))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_the_order_of_pairs_in_a_batch_does_not_matter(name):
    """Shuffling the batch (rows and columns alike, positives stay on the diagonal) leaves the loss unchanged."""
    loss = create_loss(name)
    scores = logits()
    order = torch.randperm(scores.shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(loss(scores), loss(scores[order][:, order]), atol=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_matched_pairs_cost_less_than_mismatched_ones(name):
    """With strong diagonal logits the loss is near zero; pairing each text with another video raises it."""
    loss = create_loss(name)
    matched = torch.eye(6) * 20 + logits() * 0.1
    mismatched = matched.roll(1, dims=1)
    assert loss(matched) < 0.01 < loss(mismatched)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_works_on_a_batch_of_one_and_keeps_the_logits_dtype(name):
    loss = create_loss(name)
    assert torch.isfinite(loss(torch.tensor([[3.0]])))
    assert loss(logits().double()).dtype == torch.float64
