"""Exercise 02: what each --loss-type does to the weight of a token, graded on hand-computed gradients.

On-policy (old = logp, so ratio = 1 and no clipping), the gradient of the loss with respect to the
log-probability of token t of sequence i is exactly

    d loss / d logp_it = -A_i * w_it,   w_it = 1 / (B * |o_i|)     grpo     (|o_i|: sequence i's tokens)
                                          w_it = 1 / num_tokens      bnpo, dapo
                                          w_it = 1 / (B * L_max)     dr_grpo

so the per-token weight is where the length bias lives.
Run:  python -m pytest exercises/test_02_loss_types.py -q
"""
import pytest
import torch


@pytest.fixture
def grpo_loss(target):
    return target.get("grpo", "grpo_loss")


# Two sequences, B = 2, T = 4: a short right answer (2 tokens, A = +1) and a long wrong one (4 tokens, A = -1).
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
ADV = torch.tensor([1.0, -1.0])


def token_gradients(grpo_loss, **kwargs):
    logps = torch.full((2, 4), -0.7, requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), ADV, MASK, eps_low=0.2, eps_high=0.28, **kwargs)
    loss.backward()
    return logps.grad


def test_grpo_weighs_a_token_by_one_over_its_sequence_length(grpo_loss):
    g = token_gradients(grpo_loss, loss_type="grpo")
    # short right answer: -(+1) / (2 * 2) = -0.25 per token; long wrong answer: -(-1) / (2 * 4) = +0.125.
    # Each WRONG token of the long answer is pushed down half as hard as it would be in a 2-token answer:
    # under grpo, being long is a cheap way for a wrong answer to lose less per token.
    expected = torch.tensor([[-0.25, -0.25, 0.0, 0.0], [0.125, 0.125, 0.125, 0.125]])
    assert torch.allclose(g, expected, atol=1e-6)


def test_bnpo_weighs_every_token_of_the_batch_alike(grpo_loss):
    g = token_gradients(grpo_loss, loss_type="bnpo")
    # 6 counted tokens: +-1/6 = 0.166667 on every one of them
    s = 1.0 / 6.0
    assert torch.allclose(g, torch.tensor([[-s, -s, 0.0, 0.0], [s, s, s, s]]), atol=1e-6)


def test_dr_grpo_uses_a_constant_normaliser(grpo_loss):
    g = token_gradients(grpo_loss, loss_type="dr_grpo", max_completion_length=8)
    # 1 / (B * L_max) = 1 / (2 * 8) = 0.0625, whatever the length of the sequence
    assert torch.allclose(g, torch.tensor([[-0.0625, -0.0625, 0.0, 0.0], [0.0625] * 4]), atol=1e-6)
    g = token_gradients(grpo_loss, loss_type="dr_grpo")
    # without L_max the padded width T = 4 is the constant: 1 / (2 * 4) = 0.125
    assert torch.allclose(g, torch.tensor([[-0.125, -0.125, 0.0, 0.0], [0.125] * 4]), atol=1e-6)


def test_dapo_divides_by_the_tokens_of_the_whole_step(grpo_loss):
    g = token_gradients(grpo_loss, loss_type="dapo", num_tokens=12)
    # this call sees 6 tokens of a step that sampled 12: 1/12 = 0.083333 each
    s = 1.0 / 12.0
    assert torch.allclose(g, torch.tensor([[-s, -s, 0.0, 0.0], [s, s, s, s]]), atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_micro_batches_with_global_normalisers_add_up_to_the_batch(grpo_loss, loss_type):
    # grpo.accumulate_gradients passes the GLOBAL counts to every micro-batch, so the micro-batch losses
    # sum to the full-batch loss exactly, whatever the split: the gradient cannot depend on
    # --micro-batch-size.
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 5, generator=g)
    old = logps + 0.3 * (torch.rand(4, 5, generator=g) - 0.5)
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    common = dict(eps_low=0.2, eps_high=0.28, loss_type=loss_type, max_completion_length=5)
    full, _ = grpo_loss(logps, old, adv, mask, **common)
    parts = [grpo_loss(logps[s], old[s], adv[s], mask[s], num_sequences=4, num_tokens=mask.sum(), **common)[0]
             for s in (slice(0, 1), slice(1, 3), slice(3, 4))]
    assert float(sum(parts)) == pytest.approx(float(full), abs=1e-6)
    assert float(full) != 0.0
