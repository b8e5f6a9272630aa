"""Exercise 05: glow_sft.glow_weights, graded on hand-computed weights.

    gain_i = prev_i - curr_i;   w_i = clamp(alpha * (1 - sigmoid(beta * gain_i)), w_min, w_max)
    offset=True: w_i = clamp(1 + alpha * (1 - sigmoid(beta * gain_i)), w_min, w_max)
    prev_i = NaN (a sample never seen): use the mean of curr over the batch as prev_i

Values used below: sigmoid(2) = 0.880797, sigmoid(1) = 0.731059, sigmoid(4) = 0.982014,
sigmoid(10) = 0.9999546; and 1 - sigmoid(x) = sigmoid(-x).
Run:  python -m pytest exercises/test_05_glow_weights.py -q
"""
import pytest
import torch


@pytest.fixture
def glow_weights(target):
    return target.get("glow_sft", "glow_weights")


def close(w, expected):
    return torch.allclose(w, torch.tensor(expected), atol=1e-5)


def test_official_defaults(glow_weights):
    # alpha 1, beta 20, clamp [0.5, 5]; gains 0.1, 0, -0.05 -> beta * gain = 2, 0, -1
    # 1 - sigmoid: 0.119203, 0.5, 0.731059 -> clamped below at 0.5: 0.5, 0.5, 0.731059
    # (with the defaults every sample whose loss did not rise gets exactly 0.5)
    w = glow_weights(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.9, 1.0, 1.05]))
    assert close(w, [0.5, 0.5, 0.731059])


def test_alpha_and_beta(glow_weights):
    # alpha 3, beta 10; gains 0 and -0.2 -> x = 0, -2 -> 3 * (0.5, 0.880797) = 1.5, 2.642391
    w = glow_weights(torch.tensor([2.0, 2.0]), torch.tensor([2.0, 2.2]), alpha=3.0, beta=10.0)
    assert close(w, [1.5, 2.642391])


def test_upper_clamp(glow_weights):
    # alpha 10, beta 10, gain -1 -> 10 * sigmoid(10) = 9.999546 -> clamped to w_max 5
    w = glow_weights(torch.tensor([0.0]), torch.tensor([1.0]), alpha=10.0, beta=10.0)
    assert close(w, [5.0])


def test_clamp_bounds_are_arguments(glow_weights):
    # w_min 0, w_max 1: 1 - sigmoid(2) = 0.119203 survives now, and 0.5 stays 0.5
    w = glow_weights(torch.tensor([1.0, 1.0]), torch.tensor([0.9, 1.0]), w_min=0.0, w_max=1.0)
    assert close(w, [0.119203, 0.5])


def test_offset_variant(glow_weights):
    # 1 + (1 - sigmoid(20 * gain)) with gains 0.1, -0.05: 1.119203, 1.731059 (the clamp does not bind)
    w = glow_weights(torch.tensor([1.0, 1.0]), torch.tensor([0.9, 1.05]), offset=True)
    assert close(w, [1.119203, 1.731059])


def test_unseen_samples_use_the_batch_mean(glow_weights):
    # curr = 1.0, 0.6 -> batch mean 0.8. Sample 0 was never seen: prev_0 = 0.8, gain -0.2.
    # Sample 1: gain 1.0 - 0.6 = 0.4. alpha 2, beta 10: x = -2, 4
    # w = 2 * (0.880797, 0.017986) = 1.761594, 0.035972 -> clamped below: 1.761594, 0.5
    w = glow_weights(torch.tensor([float("nan"), 1.0]), torch.tensor([1.0, 0.6]), alpha=2.0, beta=10.0)
    assert close(w, [1.761594, 0.5])


def test_weights_carry_no_gradient(glow_weights):
    curr = torch.tensor([0.9, 1.05], requires_grad=True)
    w = glow_weights(torch.tensor([1.0, 1.0]), curr)
    assert not w.requires_grad
    assert w.shape == (2,)
