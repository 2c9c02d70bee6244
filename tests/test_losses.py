"""Contrastive losses computed by hand."""

import math

import pytest
import torch

from tvr.models.losses import create_loss


def _ce(row, target):
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def test_symmetric_infonce_by_hand():
    logits = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    rows = [_ce([2.0, 0.5], 0), _ce([1.0, 3.0], 1)]
    cols = [_ce([2.0, 1.0], 0), _ce([0.5, 3.0], 1)]
    expected = (sum(rows) / 2 + sum(cols) / 2) / 2
    assert create_loss("infonce")(logits).item() == pytest.approx(expected, rel=1e-6)


def test_dual_softmax_loss_by_hand():
    logits = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    temperature = 2.0

    def one_direction(m):
        prior = torch.softmax(m / temperature, dim=0) * m.shape[0]
        s = (m * prior).tolist()
        return (_ce(s[0], 0) + _ce(s[1], 1)) / 2

    expected = (one_direction(logits) + one_direction(logits.t())) / 2
    assert create_loss("dual_softmax", temperature=temperature)(logits).item() == pytest.approx(expected, rel=1e-6)


def test_unknown_loss_lists_choices():
    with pytest.raises(KeyError, match="dual_softmax, infonce"):
        create_loss("triplet")
