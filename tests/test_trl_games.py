"""Tests of scale/trl_games.py: TRL's GRPOTrainer plays our multi-turn games exactly as grpo.py does.

The claims: what the rollout_func hands TRL (prompt + completion ids, env_mask, reward) is token for token
what grpo.rollout builds for the same start states; its logprobs are the sampling distribution's; TRL's
sampler gives the G episodes of a group one start state; and GRPOTrainer.train really trains on it.
TRL is not a dependency of the core: without it (pip install -r scale/requirements.txt) these are skipped.
"""
import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

import games  # noqa: E402
import grpo  # noqa: E402
import nested  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "scale" / "trl_games.py"
spec = importlib.util.spec_from_file_location("trl_games", SCRIPT)
trl_games = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trl_games)

SMALL = trl_games.Settings(steps=2, num_groups=3, group_size=4, eval_games=0)


@pytest.fixture(autouse=True)
def quiet_trl(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


def make_trainer(tmp_path, cfg=SMALL, model=None, rollout_func=None, **config):
    from datasets import Dataset

    model, tok = model or grpo.load_policy("tiny")
    rows = trl_games.dataset_rows(cfg.game, cfg.steps, cfg.num_groups, cfg.seed)
    return trl.GRPOTrainer(model=model, processing_class=tok, reward_funcs=trl_games.episode_reward,
                           args=trl_games.grpo_config(replace(cfg, out_dir=str(tmp_path)), 1, **config),
                           train_dataset=Dataset.from_list(rows),
                           rollout_func=rollout_func or trl_games.make_rollout_func())


def group_prompts(game, num_groups, group_size):
    """Step 0's prompts as TRL's sampler hands them over: each row repeated G times."""
    return [r["prompt"] for r in trl_games.dataset_rows(game, 1, num_groups, 0) for _ in range(group_size)]


@pytest.mark.parametrize("game", ["tictactoe", "matrix+tictactoe"])
def test_rollout_func_builds_the_tokens_grpo_rollout_builds(tmp_path, game):
    trainer = make_trainer(tmp_path)
    model, tok = trainer.model, trainer.processing_class
    prompts = group_prompts(game, 6, 1)
    out = trl_games.make_rollout_func(temperature=0.0)(prompts, trainer)       # greedy: deterministic
    seeds = grpo.train_seeds(0, 0, 6)
    tasks = game.split("+")
    if len(tasks) == 1:                                                        # exactly what grpo.train builds
        envs = [games.make_env(game, **grpo.env_options(game, True, "random", True)) for _ in seeds]
    else:
        envs = [nested.NestedEnv([games.make_env(t, **grpo.env_options(t, True, "random", True)) for t in tasks])
                for _ in seeds]
    episodes = grpo.rollout(model, tok, envs, seeds, temperature=0.0, max_new=SMALL.max_new_tokens)
    assert len(out["completion_ids"]) == len(episodes) == 6
    for i, ep in enumerate(episodes):
        p = len(out["prompt_ids"][i])
        assert out["prompt_ids"][i] + out["completion_ids"][i] == ep.ids
        assert ep.mask[:p] == [0] * p and out["env_mask"][i] == ep.mask[p:]
        assert out["episode_reward"][i] == ep.reward
    # Multi-turn for real: some episode holds env tokens (0) between two answers (1).
    assert any(ep.turns > 1 for ep in episodes)
    assert any("10" in "".join(map(str, m)).strip("0") for m in out["env_mask"])


def test_logprobs_are_the_sampling_log_probs(tmp_path):
    trainer = make_trainer(tmp_path)
    torch.manual_seed(0)
    out = trl_games.make_rollout_func(temperature=0.7)(group_prompts("tictactoe", 2, 4), trainer)
    for prompt, completion, mask, lps in zip(out["prompt_ids"], out["completion_ids"], out["env_mask"], out["logprobs"]):
        ids = torch.tensor([prompt + completion])                                  # one sequence, no padding
        with torch.no_grad():
            ref, _ = grpo.token_logps_and_entropy(trainer.model, ids, torch.ones_like(ids), 0.7)
        ref = ref[0, len(prompt) - 1:]                                              # aligned with completion
        m = torch.tensor(mask, dtype=torch.bool)
        assert len(lps) == len(completion) and m.any()
        assert torch.allclose(torch.tensor(lps)[m], ref[m], atol=1e-5)
        assert torch.equal(torch.tensor(lps)[~m], torch.zeros(int((~m).sum())))    # env tokens: 0.0


def test_trl_sampler_gives_each_group_one_start_state(tmp_path):
    import json

    trainer = make_trainer(tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    seeds = [json.loads(x["prompt"])["seed"] for x in batch]
    G = SMALL.group_size
    assert seeds == [s for s in grpo.train_seeds(0, 0, SMALL.num_groups) for _ in range(G)]   # grpo.py's groups


def test_sampling_that_training_would_not_match_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, top_p=0.9)
    with pytest.raises(ValueError, match="top_p"):
        trainer.rollout_func(group_prompts("tictactoe", 1, 2), trainer)
    with pytest.raises(ValueError, match="unknown task 'tictactoo'"):
        trl_games.dataset_rows("matrix+tictactoo", 1, 1, 0)


def test_two_training_steps_change_the_weights(tmp_path):
    trainer = make_trainer(tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 2


class StandInVLLM:
    """What play_vllm needs of TRL's VLLMGeneration.generate, served by tiny on the CPU (greedy): the same
    return shapes, including [log p] per token. It checks OUR bookkeeping of the vLLM path, not vLLM."""

    def __init__(self, model, tok, max_new):
        self.model, self.tok = model, tok
        self.config = grpo.generation_config(model, tok, 0.0, max_new)
        self.calls = []

    def generate(self, prompts, images, num_generations):
        assert images is None and num_generations == 1
        self.calls.append(len(prompts))
        new = grpo.generate_batch(self.model, self.tok, prompts, self.config)
        logps = []
        for p, n in zip(prompts, new):
            ids = torch.tensor([p + n])
            with torch.no_grad():
                lp, _ = grpo.token_logps_and_entropy(self.model, ids, torch.ones_like(ids))
            logps.append([[v] for v in lp[0, len(p) - 1:].tolist()])
        return prompts, new, logps, None


def test_vllm_path_keeps_tokens_mask_and_logprobs_aligned(tmp_path):
    trainer = make_trainer(tmp_path)
    model, tok = trainer.model, trainer.processing_class
    trainer.use_vllm, trainer.vllm_generation = True, StandInVLLM(model, tok, SMALL.max_new_tokens)
    out = trainer.rollout_func(group_prompts("tictactoe", 6, 1), trainer)
    seeds = grpo.train_seeds(0, 0, 6)
    envs = [games.make_env("tictactoe", **grpo.env_options("tictactoe", True, "random", True)) for _ in seeds]
    episodes = grpo.rollout(model, tok, envs, seeds, temperature=0.0, max_new=SMALL.max_new_tokens)
    # Every call carries one prompt per episode (finished ones a placeholder): equal counts on every rank.
    assert set(trainer.vllm_generation.calls) == {6} and len(trainer.vllm_generation.calls) == max(ep.turns for ep in episodes)
    for i, ep in enumerate(episodes):
        p = len(out["prompt_ids"][i])
        assert out["prompt_ids"][i] + out["completion_ids"][i] == ep.ids and out["env_mask"][i] == ep.mask[p:]
        ids = torch.tensor([ep.ids])
        with torch.no_grad():
            ref = grpo.token_logps_and_entropy(model, ids, torch.ones_like(ids))[0][0, p - 1:]
        m = torch.tensor(out["env_mask"][i], dtype=torch.bool)
        assert torch.allclose(torch.tensor(out["logprobs"][i])[m], ref[m], atol=1e-5)
