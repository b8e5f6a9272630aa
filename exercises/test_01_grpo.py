"""Exercise 01: grpo.group_advantages and grpo.grpo_loss, graded on hand-computed numbers.

Every expected value below is worked out in the comment above it; none comes from running the code.
Run:  python -m pytest exercises/test_01_grpo.py -q
"""
import math

import pytest
import torch


@pytest.fixture
def group_advantages(target):
    return target.get("grpo", "group_advantages")


@pytest.fixture
def grpo_loss(target):
    return target.get("grpo", "grpo_loss")


# -----------------------------------------------------------------------------
# group_advantages: A_i = (R_i - mean_g R) / (std_g R + eps), unbiased std, flat groups -> 0
def test_one_group_hand_computed(group_advantages):
    r = torch.tensor([1.0, 0.0, 0.5])                       # one group of 3
    # mean 0.5; deviations 0.5, -0.5, 0; unbiased var (0.25 + 0.25 + 0) / 2 = 0.25, std 0.5
    # A = deviation / (0.5 + 1e-6) = 0.999998, -0.999998, 0
    assert torch.allclose(group_advantages(r, 3), torch.tensor([0.999998, -0.999998, 0.0]), atol=1e-6)


def test_std_is_unbiased_not_population(group_advantages):
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])                  # one group of 4
    # deviations +-0.5; unbiased var 4 * 0.25 / 3 = 1/3, std 0.577350 -> A = +-0.5 / 0.577351 = +-0.866024
    # (the population std 0.5 would give +-1.0: that is the usual slip this test catches)
    expected = torch.tensor([0.866024, -0.866024, -0.866024, 0.866024])
    assert torch.allclose(group_advantages(r, 4), expected, atol=1e-5)


def test_each_group_has_its_own_baseline(group_advantages):
    r = torch.tensor([1.0, 0.0, 0.3, 0.3])                  # two groups of 2
    adv = group_advantages(r, 2)
    assert adv.shape == (4,)
    # group 1: mean 0.5, unbiased std sqrt(0.5 / 1) = 0.707107 -> +-0.5 / 0.707108 = +-0.707106
    assert torch.allclose(adv[:2], torch.tensor([0.707106, -0.707106]), atol=1e-5)
    # group 2: every game scored the same -> no signal, and exactly 0 (not eps noise)
    assert torch.equal(adv[2:], torch.zeros(2))


def test_a_nearly_flat_group_is_flat(group_advantages):
    r = torch.tensor([0.3, 0.3000001, 1.0, 0.0])              # two groups of 2
    # group 1: std ~7e-8 <= eps = 1e-6: rounding noise, not signal -> exactly 0 (without the rule it would be
    # +-5e-8 / (7e-8 + 1e-6) = +-0.05, a push driven by nothing but float error)
    assert torch.equal(group_advantages(r, 2)[:2], torch.zeros(2))


def test_a_constant_added_to_every_reward_changes_nothing(group_advantages):
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # the group mean absorbs any offset: that is why no value network is needed
    assert torch.allclose(group_advantages(r + 100.0, 4), group_advantages(r, 4), atol=1e-4)


def test_scale_none_and_batch(group_advantages):
    r = torch.tensor([2.0, 0.0, 1.0, 1.0])                  # two groups of 2
    # none (Dr. GRPO): just R - group mean = [1, -1, 0, 0]
    assert torch.allclose(group_advantages(r, 2, scale="none"), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    # batch: divide by the std of all 4 rewards: mean 1, squares 1+1+0+0 = 2, unbiased var 2/3,
    # std 0.816497 -> 1 / 0.816498 = 1.224743
    assert torch.allclose(group_advantages(r, 2, scale="batch"), torch.tensor([1.224743, -1.224743, 0.0, 0.0]),
                          atol=1e-5)


def test_groups_of_one_carry_no_signal(group_advantages):
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.7]), 1), torch.zeros(2))


def test_unknown_scale_is_an_error(group_advantages):
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0]), 2, scale="bogus")


# -----------------------------------------------------------------------------
# grpo_loss: the clipped surrogate, k3 KL, four aggregations
#
# The batch used below. old log-probs are 0, so ratio = exp(logp) = the numbers in RATIOS.
#   sequence 0: A = +1, ratios 1.5, 0.9, (1.0 masked out)
#   sequence 1: A = -2, ratios 0.5, 1.1, 1.0
# eps_low 0.2, eps_high 0.28: clip range [0.8, 1.28]. l = -min(r A, clip(r) A):
#   seq 0: r 1.5 -> -min(1.5, 1.28) = -1.28        r 0.9 -> -0.9
#   seq 1: r 0.5 -> -min(-1.0, -1.6) = 1.6         r 1.1 -> 2.2        r 1.0 -> 2.0
# masked sums: seq 0 = -2.18 over 2 tokens, seq 1 = 5.8 over 3 tokens; all = 3.62 over 5 tokens
RATIOS = [[1.5, 0.9, 1.0], [0.5, 1.1, 1.0]]
MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
ADV = [1.0, -2.0]
CLIP = dict(eps_low=0.2, eps_high=0.28)


def batch(requires_grad=False):
    logps = torch.log(torch.tensor(RATIOS)).requires_grad_(requires_grad)
    return logps, torch.zeros(2, 3), torch.tensor(ADV), torch.tensor(MASK)


@pytest.mark.parametrize("loss_type, kwargs, expected", [
    ("grpo", {}, 0.421667),                           # (-2.18/2 + 5.8/3) / 2 = (-1.09 + 1.933333) / 2
    ("bnpo", {}, 0.724),                              # 3.62 / 5
    ("dapo", {}, 0.724),                              # the same formula as bnpo inside one call
    ("dr_grpo", {}, 0.603333),                        # 3.62 / (B * T) = 3.62 / (2 * 3)
    ("dr_grpo", {"max_completion_length": 10}, 0.181),  # 3.62 / (2 * 10)
    ("grpo", {"num_sequences": 4}, 0.210833),         # (-1.09 + 1.933333) / 4: a micro-batch of a batch of 4
    ("bnpo", {"num_tokens": 10}, 0.362),              # 3.62 / 10
    ("dapo", {"num_tokens": 20}, 0.181),              # 3.62 / 20: the tokens of the whole generation step
])
def test_loss_value_hand_computed(grpo_loss, loss_type, kwargs, expected):
    logps, old, adv, mask = batch()
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type=loss_type, **CLIP, **kwargs)
    assert float(loss) == pytest.approx(expected, abs=1e-5)


def test_stats_hand_computed(grpo_loss):
    logps, old, adv, mask = batch()
    _, stats = grpo_loss(logps, old, adv, mask, loss_type="grpo", **CLIP)
    # 5 counted tokens; clip_low: r < 0.8 with A < 0 -> seq 1's 0.5, 1 of 5 = 0.2
    # clip_high: r > 1.28 with A > 0 -> seq 0's 1.5, 0.2;  mean ratio (1.5+0.9+0.5+1.1+1.0)/5 = 1.0;  no KL
    assert stats["tokens"] == pytest.approx(5.0)
    assert stats["clip_low"] == pytest.approx(0.2, abs=1e-6)
    assert stats["clip_high"] == pytest.approx(0.2, abs=1e-6)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-9)


def test_clipped_tokens_get_no_gradient(grpo_loss):
    logps, old, adv, mask = batch(requires_grad=True)
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="grpo", **CLIP)
    loss.backward()
    # d l / d logp = -A * ratio on unclipped tokens, times the grpo weight 1 / (B * len_i):
    #   seq 0 (len 2, weight 1/4): r 1.5 is clipped -> 0;      r 0.9 -> -1 * 0.9 / 4 = -0.225;   masked -> 0
    #   seq 1 (len 3, weight 1/6): r 0.5 is clipped -> 0;      r 1.1 -> 2 * 1.1 / 6 = 0.366667; r 1.0 -> 2/6 = 0.333333
    expected = torch.tensor([[0.0, -0.225, 0.0], [0.0, 0.366667, 0.333333]])
    assert torch.allclose(logps.grad, expected, atol=1e-5)


def test_k3_kl_to_the_reference(grpo_loss):
    logps, old, adv, mask = batch()
    ref = logps.detach().clone()
    ref[0, 0] += math.log(2.0)      # counted token: ref - logp = ln 2 -> k3 = 2 - ln 2 - 1 = 0.306853
    ref[0, 2] += math.log(2.0)      # masked token: must not count anywhere
    loss, stats = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.1, loss_type="grpo", **CLIP)
    # seq 0: (-1.28 + 0.1 * 0.306853 - 0.9) / 2 = -1.074657;  seq 1 unchanged 1.933333
    # grpo: (-1.074657 + 1.933333) / 2 = 0.429338;  mean KL over the 5 counted tokens: 0.306853 / 5 = 0.061371
    assert float(loss) == pytest.approx(0.429338, abs=1e-5)
    assert stats["kl"] == pytest.approx(0.061371, abs=1e-5)


def test_bad_arguments_are_errors(grpo_loss):
    logps, old, adv, mask = batch()
    with pytest.raises(ValueError):
        grpo_loss(logps, old, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError):
        grpo_loss(logps, old, adv, mask, beta=0.1)            # a KL term needs ref_logps
