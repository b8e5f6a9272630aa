"""
exercises/stubs.py -- deliberately wrong "answers", to prove that the grading tests can fail.

`EXERCISE_TARGET=stub python -m pytest exercises/` grades this file. Every function here is what a
student who has not started would hand in: it raises NotImplementedError or returns zeros / ones of the
right shape. The meta-test exercises/test_grading_can_fail.py runs exactly that command in a
subprocess and asserts that every exercise's tests fail on it. A grading test that passes on these
stubs tests nothing.
"""
import torch


def group_advantages(rewards, group_size, scale="group", eps=1e-6):
    return torch.zeros_like(rewards)                                    # right shape, no signal


def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, beta=0.0, eps_low=0.2, eps_high=0.2,
              loss_type="grpo", max_completion_length=None, num_sequences=None, num_tokens=None):
    return (logps * 0.0).sum(), {}                                      # a zero loss that still backpropagates


class ConnectFourEnv:
    name = "connect4"

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("exercise 03: ConnectFourEnv")


def joint_reward(rewards, rule="mean"):
    raise NotImplementedError("exercise 04: joint_reward")


def glow_weights(prev_loss, curr_loss, alpha=1.0, beta=20.0, w_min=0.5, w_max=5.0, offset=False):
    return torch.ones_like(curr_loss)                                   # plain SFT: every weight 1


def selfplay_plan(rounds, steps_per_round, out_dir, start_model="tiny", first_opponent="random", extra_args=()):
    raise NotImplementedError("exercise 06: selfplay_plan")


def turn_weights(mask, gamma):
    return torch.ones_like(mask)                                        # gamma = 1 whatever is asked
