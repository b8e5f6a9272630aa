"""Exercise 07, Part A: turn_weights in experiments/blocking.py, graded on hand-computed weights.

Every expected value below is worked out in the comment above it; none comes from running the code.
Run:  python -m pytest exercises/test_07_turn_weights.py -q
"""
import pytest
import torch


@pytest.fixture
def turn_weights(target):
    return target.get("blocking", "turn_weights")


def test_hand_row(turn_weights):
    # mask [0, 1, 1, 0, 0, 1, 0, 1]: three turns (positions 1-2, 5, 7). Turns after each: 2, 1, 0.
    # gamma 0.5: weights 0.25, 0.25 | 0.5 | 1; every unsampled position gets 1.
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    expected = torch.tensor([[1.0, 0.25, 0.25, 1.0, 1.0, 0.5, 1.0, 1.0]])
    assert torch.allclose(turn_weights(mask, 0.5), expected)


def test_rows_are_independent_and_gamma_one_is_flat(turn_weights):
    # Row 0: one turn (weight 1). Row 1: two turns; gamma 0.9 gives the first 0.9. Row 2: no turn at all.
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.9, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(turn_weights(mask, 0.9), expected)
    assert torch.equal(turn_weights(mask, 1.0), torch.ones(3, 4))


def test_a_turn_that_ends_the_row(turn_weights):
    # mask [1, 1, 0, 1]: turns at 0-1 and at 3 (the last token). gamma 0.2: 0.2, 0.2, 1, 1.
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert torch.allclose(turn_weights(mask, 0.2), torch.tensor([[0.2, 0.2, 1.0, 1.0]]))
