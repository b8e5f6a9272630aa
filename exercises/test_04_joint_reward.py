"""Exercise 04: nested.joint_reward (mean / min / product), alone and inside nested.NestedEnv.

Run:  python -m pytest exercises/test_04_joint_reward.py -q
"""
import pytest

import nested


@pytest.fixture
def joint_reward(target, monkeypatch):
    fn = target.get("nested", "joint_reward")
    # NestedEnv calls the module's joint_reward; when grading solutions.py or stubs.py, it calls theirs.
    monkeypatch.setattr(nested, "joint_reward", fn)
    return fn


@pytest.mark.parametrize("rewards, mean, low, product", [
    ([1.0, 0.5, 0.0], 0.5, 0.0, 0.0),     # (1 + 0.5 + 0) / 3;  worst 0;  1 * 0.5 * 0
    ([1.0, 0.5], 0.75, 0.5, 0.5),         # a TicTacToe draw next to a solved matrix game
    ([0.5, 0.5], 0.5, 0.5, 0.25),         # two draws: min keeps 0.5, product halves it again
    ([1.0, 1.0, 1.0], 1.0, 1.0, 1.0),     # every rule reaches 1 only when every sub-task succeeds
])
def test_hand_computed(joint_reward, rewards, mean, low, product):
    assert joint_reward(rewards, "mean") == pytest.approx(mean)
    assert joint_reward(rewards, "min") == pytest.approx(low)
    assert joint_reward(rewards, "product") == pytest.approx(product)


def test_mean_is_the_default_and_order_does_not_matter(joint_reward):
    assert joint_reward([1.0, 0.0]) == pytest.approx(0.5)
    for rule in ("mean", "min", "product"):
        assert joint_reward([0.0, 1.0, 0.5], rule) == pytest.approx(joint_reward([0.5, 0.0, 1.0], rule))


def test_bad_input_is_an_error(joint_reward):
    with pytest.raises(ValueError):
        joint_reward([], "mean")
    with pytest.raises(ValueError):
        joint_reward([1.0], "max")


class OneShot:
    """A one-turn sub-task that ends with a fixed outcome reward (1 win, 0.5 draw, 0 loss)."""
    max_turns = 1

    def __init__(self, name, reward):
        self.name, self.reward = name, reward

    def reset(self, seed):
        return f"{self.name} {seed}"

    def step(self, response):
        outcome = {1.0: "win", 0.5: "draw", 0.0: "loss"}[self.reward]
        info = {"valid": True, "answer": response, "outcome": outcome, "success": outcome == "win", "turn": 1}
        return "over", self.reward, True, info


@pytest.mark.parametrize("rule, expected", [("mean", 0.75), ("min", 0.5), ("product", 0.5)])
def test_nested_env_pays_the_joint_reward_at_the_end(joint_reward, rule, expected):
    env = nested.NestedEnv([OneShot("matrix", 1.0), OneShot("tictactoe", 0.5)], joint=rule)
    assert env.reset(5) == "matrix 5"
    obs, reward, done, info = env.step("a")
    # sub-task 1 is over: its reward stays hidden (0 now), the next sub-task's first observation follows
    assert (obs, reward, done) == ("tictactoe 5", 0.0, False)
    obs, reward, done, info = env.step("b")
    # R = joint(1.0, 0.5): mean 0.75, min 0.5, product 0.5; a draw is no joint success
    assert done and reward == pytest.approx(expected) and info["joint_reward"] == pytest.approx(expected)
    assert info["success"] is False
