"""Tests of nested.py: the nested environment's bookkeeping with scripted answers, the group layouts and
their budgets, the per-task gradient decomposition, and a short end-to-end run of every mode.

Scripted answers: the matrix game's target is on the env (env.target); TicTacToe is played with the
minimax-best move against games.py's seeded random opponent, so every episode here is deterministic.
"""
import collections
import hashlib
import json
import os
import random

import pytest
import torch

from dataclasses import replace

from transformers import AutoModelForCausalLM

import games
import grpo
import nested


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tiny model's matrices are too small to share, and on a busy machine
    extra threads only wait for each other. Restored afterwards for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def matrix_and_ttt(joint="mean"):
    return nested.NestedEnv([games.make_env("matrix", compact=True),
                             games.make_env("tictactoe", compact=True, opponent="random")], joint)


def right_matrix(env):
    return games.format_answer(str(env.target))


def wrong_matrix(env):
    return games.format_answer(next(a for a in env.legal_actions() if a != str(env.target)))


def best_ttt(env):
    values = games.minimax_values(env.board, env.mark)
    return games.format_answer(games.ttt_move_str(max(values, key=values.get)))


def play(env, seed, answers):
    """Reset, then answer with answers[sub-task index](sub_env) until done. Returns the steps."""
    steps = [("reset", env.reset(seed))]
    while not env.done:
        steps.append(env.step(answers[env.k](env.subs[env.k])))
    return steps


def seed_where_ttt_ends(outcome):
    """The first seed whose TicTacToe sub-task ends with `outcome` under best play (deterministic)."""
    for seed in range(200):
        steps = play(matrix_and_ttt(), seed, [right_matrix, best_ttt])
        if steps[-1][3]["subtasks"][1]["outcome"] == outcome:
            return seed
    raise AssertionError(f"no seed in 0..199 gives a TicTacToe {outcome}")


# -----------------------------------------------------------------------------
# NestedEnv: turns, boundary rewards, joint rules, info, seeds
def test_turn_budget_is_the_sum_and_every_turn_is_counted():
    env = matrix_and_ttt()
    assert env.max_turns == 1 + 5                                   # GIFT App. B.3: I2 nested = 6 turns
    assert env.name == "nested:matrix+tictactoe"
    steps = play(env, seed_where_ttt_ends("win"), [right_matrix, best_ttt])
    infos = [s[3] for s in steps[1:]]
    assert [i["turn"] for i in infos] == list(range(1, len(infos) + 1))
    assert [i["subtask"] for i in infos] == [0] + [1] * (len(infos) - 1)
    assert infos[-1]["turn_tasks"] == ["matrix"] + ["tictactoe"] * (len(infos) - 1)
    assert [r["turns"] for r in infos[-1]["subtasks"]] == [1, len(infos) - 1]


def test_boundary_reward_is_exactly_zero_and_results_stay_hidden_until_the_end():
    seed = seed_where_ttt_ends("win")
    env = matrix_and_ttt()
    steps = play(env, seed, [right_matrix, best_ttt])
    obs, reward, done, info = steps[1]                              # the matrix answer ends sub-task 1
    assert reward == 0.0 and not done and info["outcome"] == "ongoing"
    # the next observation is TicTacToe's first one, with the same seed, and no marker
    assert obs == games.make_env("tictactoe", compact=True, opponent="random").reset(seed)
    assert all(r == 0.0 for _, r, _, _ in steps[2:-1])             # TicTacToe moves before the end
    assert steps[-1][1] == 1.0 and steps[-1][2]                    # mean(1, 1) at the very end
    assert steps[-1][3]["success"] and steps[-1][3]["outcome"] == "success"


def test_invalid_answers_pass_through_and_a_truncated_subtask_hands_over():
    env = matrix_and_ttt()
    bad = lambda sub: "no tags here"
    steps = play(env, 3, [bad, bad])
    rewards = [s[1] for s in steps[1:]]
    # matrix: its one turn is invalid -> "truncated", R_1 = 0, the -0.1 passes through at the boundary;
    # TicTacToe: five invalid turns, -0.1 each, the fifth ends it as truncated; joint mean(0, 0) = 0
    assert rewards == pytest.approx([-0.1] * 6, abs=1e-12)
    assert steps[1][0] == games.make_env("tictactoe", compact=True, opponent="random").reset(3)
    final = steps[-1][3]
    assert final["turn"] == env.max_turns and steps[-1][2]
    assert [r["outcome"] for r in final["subtasks"]] == ["truncated", "truncated"]
    assert [r["reward"] for r in final["subtasks"]] == [0.0, 0.0]
    assert [r["penalty"] for r in final["subtasks"]] == pytest.approx([-0.1, -0.5])
    assert final["joint_reward"] == 0.0 and not final["success"]
    with pytest.raises(RuntimeError):
        env.step("<answer>1</answer>")


def test_a_long_first_subtask_never_eats_the_next_ones_turns():
    # TicTacToe first, all five turns wasted: the matrix game still gets its own turn (turn 6).
    env = nested.NestedEnv([games.make_env("tictactoe", compact=True), games.make_env("matrix", compact=True)])
    steps = play(env, 5, [lambda sub: "<answer>9,9</answer>", right_matrix])
    final = steps[-1][3]
    assert final["turn"] == 6 and final["turn_tasks"] == ["tictactoe"] * 5 + ["matrix"]
    assert [r["outcome"] for r in final["subtasks"]] == ["truncated", "success"]
    assert steps[-1][1] == pytest.approx(0.5)                       # mean(0, 1); the -0.1s came earlier


def test_joint_rules_hand_computed():
    assert nested.joint_reward([1.0, 0.5], "mean") == 0.75
    assert nested.joint_reward([1.0, 0.5], "min") == 0.5
    assert nested.joint_reward([1.0, 0.5], "product") == 0.5
    assert nested.joint_reward([1.0, 0.0, 1.0], "mean") == pytest.approx(2 / 3)
    assert nested.joint_reward([1.0, 0.0, 1.0], "min") == 0.0
    assert nested.joint_reward([1.0, 0.0, 1.0], "product") == 0.0
    assert nested.joint_reward([1.0, 1.0, 1.0], "product") == 1.0     # all three reach 1 only together
    with pytest.raises(ValueError):
        nested.joint_reward([1.0], "max")
    with pytest.raises(ValueError):
        nested.NestedEnv([games.make_env("matrix")], joint="sum")


@pytest.mark.parametrize("rule,wrong_then_win,right_then_draw", [("mean", 0.5, 0.75), ("min", 0.0, 0.5),
                                                                 ("product", 0.0, 0.5)])
def test_each_joint_rule_in_a_played_episode(rule, wrong_then_win, right_then_draw):
    # matrix wrong (R_1 = 0) then a TicTacToe win (R_2 = 1); matrix right (1) then a draw (0.5)
    win, draw = seed_where_ttt_ends("win"), seed_where_ttt_ends("draw")
    steps = play(matrix_and_ttt(rule), win, [wrong_matrix, best_ttt])
    assert steps[-1][1] == pytest.approx(wrong_then_win) and not steps[-1][3]["success"]
    steps = play(matrix_and_ttt(rule), draw, [right_matrix, best_ttt])
    assert steps[-1][1] == pytest.approx(right_then_draw) and not steps[-1][3]["success"]


def test_info_reports_every_subtask():
    seed = seed_where_ttt_ends("draw")
    final = play(matrix_and_ttt(), seed, [wrong_matrix, best_ttt])[-1][3]
    first, second = final["subtasks"]
    assert first == {"task": "matrix", "outcome": "failure", "success": False, "reward": 0.0, "penalty": 0.0, "turns": 1}
    assert second["task"] == "tictactoe" and second["outcome"] == "draw" and second["reward"] == 0.5
    assert final["task"] == "tictactoe" and final["subtask"] == 1 and final["sub_info"]["outcome"] == "draw"


def test_the_same_seed_replays_the_same_episode():
    def trace(seed):
        env, rng = matrix_and_ttt(), random.Random(7)
        out = [env.reset(seed)]
        while not env.done:
            obs, r, d, info = env.step(games.format_answer(env.subs[env.k].random_action(rng)))
            out.append((obs, r, d, info["subtasks"], info["turn"]))
        return out
    assert trace(11) == trace(11)
    assert trace(11) != trace(12)
    # every sub-task is reset with the episode's seed (GIFT's ComposeNewEnv does the same)
    env = matrix_and_ttt()
    assert env.reset(11) == games.make_env("matrix", compact=True).reset(11)


def test_settings_and_order():
    assert nested.setting_tasks("F+I3") == ("arith", "matrix", "tictactoe", "spy")   # GIFT Fig. 2 order
    assert nested.setting_tasks("I2", "tictactoe,matrix") == ("tictactoe", "matrix")
    with pytest.raises(ValueError):
        nested.setting_tasks("I2", "matrix,spy")
    with pytest.raises(ValueError):
        nested.setting_tasks("I4")


# -----------------------------------------------------------------------------
# Group layouts and budgets
def test_mixed_layout_has_equal_groups_per_task_every_step():
    tasks = ("arith", "matrix", "tictactoe")
    for step in range(5):
        layout = nested.group_layout("mixed", tasks, 12, seed=0, step=step)
        assert collections.Counter(layout) == {(t,): 4 for t in tasks}
    assert nested.group_layout("mixed", tasks, 12, 0, 3) == nested.group_layout("mixed", tasks, 12, 0, 3)
    assert len({tuple(nested.group_layout("mixed", tasks, 12, 0, s)) for s in range(5)}) > 1   # reshuffled
    with pytest.raises(ValueError):
        nested.group_layout("mixed", tasks, 8, 0, 0)                # 8 groups cannot split over 3 tasks


@pytest.mark.parametrize("tasks", [("matrix", "tictactoe"), ("arith", "matrix", "tictactoe"),
                                   ("arith", "matrix", "tictactoe", "spy")])
def test_nested_and_mixed_see_the_same_subtask_episodes(tasks):
    K, N, G, steps = len(tasks), 12, 3, 7
    budget = nested.check_budget(tasks, N, G, steps)
    assert budget == {"per_step": N * G, "trained_per_step": N * G, "total": N * G * steps}
    # ... and so do the envs that grpo.train actually gets, step after step
    counts = {}
    for mode in ("mixed", "nested"):
        make = nested.make_envs_hook(mode, tasks, N, G, seed=0)
        envs_per_step = [make(s, True, "random") for s in range(steps)]
        counts[mode] = sum(len(getattr(e, "subs", [e])) for envs in envs_per_step for e in envs)
        per_task = collections.Counter(e.name for envs in envs_per_step for env in envs
                                       for e in getattr(env, "subs", [env]))
        assert per_task == {t: N * G * steps // K for t in tasks}
    assert len(make(0, True, "random")) == N // K * G                 # nested: N/K groups of G
    assert counts["mixed"] == counts["nested"] == budget["total"]


def test_budgets_stay_equal_after_the_starpo_filter():
    # F+I2 with 6 groups and ratio 0.25: mixed keeps int(1.5) = 1 group of one task (G sub-task episodes),
    # nested max(1, int(0.5)) = 1 group of three-task trajectories (3G): 3x the training data. Refused.
    with pytest.raises(ValueError, match="unequal budgets"):
        nested.check_budget(("arith", "matrix", "tictactoe"), 6, 4, 10, filter_ratio=0.25)
    # 12 groups at 0.25: mixed keeps 3 groups, nested 1 group of 3 tasks: both train on 3G sub-task episodes.
    assert nested.check_budget(("arith", "matrix", "tictactoe"), 12, 4, 10, 0.25)["trained_per_step"] == 12
    assert nested.check_budget(("matrix", "tictactoe"), 8, 6, 10, 0.25)["trained_per_step"] == 12


# -----------------------------------------------------------------------------
# Per-task gradients: labels, then the decomposition g = sum_t g_t
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tok = grpo.load_policy("tiny")
    return AutoModelForCausalLM.from_config(model.config), tok            # random weights: every token is uncertain


@pytest.fixture(scope="module")
def episodes(tiny):
    """Two nested episodes and one of each task alone, played by the random tiny model."""
    model, tokenizer = tiny
    envs = [matrix_and_ttt(), matrix_and_ttt(), games.make_env("matrix", compact=True),
            games.make_env("tictactoe", compact=True)]
    torch.manual_seed(0)
    return grpo.rollout(model, tokenizer, envs, [1, 2, 3, 4], max_new=5)


def test_every_sampled_token_is_labelled_with_its_turns_task(episodes):
    tasks = ["matrix", "tictactoe"]
    for ep in episodes:
        labels = nested.token_tasks(ep, tasks)
        assert [l >= 0 for l in labels] == [m == 1 for m in ep.mask]
        runs = [labels[i] for i in range(len(labels)) if labels[i] >= 0 and (i == 0 or labels[i - 1] < 0)]
        assert runs == [tasks.index(t) for t in ep.info.get("turn_tasks") or [ep.task] * ep.turns]


@pytest.mark.parametrize("loss_type,per_token", [("grpo", False), ("bnpo", False), ("dr_grpo", False),
                                                 ("grpo", True), ("dapo", True)])
def test_per_task_gradients_sum_to_the_full_gradient(tiny, episodes, loss_type, per_token):
    # With per-token advantages too (an advantage hook, e.g. experiments/blocking.py's turn discount): the
    # instruments get the advantages the update trains, so their sum is still the step's gradient.
    model, tokenizer = tiny
    tasks = ["matrix", "tictactoe"]
    ids, attn, mask = grpo.pad_batch(episodes, tokenizer.pad_token_id)
    labels = torch.tensor([nested.token_tasks(ep, tasks) + [-1] * (ids.shape[1] - len(ep.mask)) for ep in episodes])
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    if per_token:
        adv = adv[:, None] * torch.linspace(0.2, 1.0, ids.shape[1])[None]
    cfg = replace(grpo.Settings(), loss_type=loss_type, micro_batch_size=3, entropy_coef=0.01)
    cfg.max_completion_length = 5 * 6
    grads, ent, tok = nested.task_gradients(model, ids, attn, mask, labels, adv, cfg, len(tasks))
    model.zero_grad(set_to_none=True)
    grpo.accumulate_gradients(model, ids, attn, mask, adv, cfg, num_tokens=mask[:, 1:].sum())
    full = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    assert grads[0].norm() > 0 and grads[1].norm() > 0
    assert torch.allclose(grads.sum(0), full, atol=1e-5)
    assert float(tok.sum()) == float(mask[:, 1:].sum())            # every sampled token has one task


def test_dynamics_table_hand_computed():
    # 4 steps, the second half counts: grad norms 1 and 3 -> mean 2, cv = std / mean = 1 / 2 (population std)
    early = {"matrix/entropy": 9.0, "matrix/grad_norm": 9.0, "matrix/grad_cos": 9.0}
    run = [early, early, {"matrix/entropy": 0.5, "matrix/grad_norm": 1.0, "matrix/grad_cos": 0.2},
           {"matrix/entropy": 0.7, "matrix/grad_norm": 3.0, "matrix/grad_cos": 0.4}]
    table = nested.dynamics_table({"mixed": [run, run]}, ["matrix", "tictactoe"])
    assert "| mixed | matrix | 0.600 | 2.000 | 0.500 | 0.300 |" in table
    assert "tictactoe" not in table                                 # no run trained it: no line


# -----------------------------------------------------------------------------
# End to end: every mode, 1 step, groups of 2, the shipped tiny, 2 evaluation games
def quick_args(out, *extra):
    return ["--out-dir", str(out), "--steps", "1", "--num-groups", "2", "--group-size", "2",
            "--max-new-tokens", "8", "--eval-games", "2", "--seeds", "0", *extra]


def test_end_to_end_single_mixed_nested(tmp_path, capsys):
    cfg = nested.parse_args(quick_args(tmp_path))
    results = nested.run_experiment(cfg)
    assert list(results) == ["base", "single-matrix", "single-tictactoe", "mixed", "nested"]
    root = tmp_path / "I2"
    for row in ("single-matrix", "single-tictactoe", "mixed", "nested"):
        log = [json.loads(line) for line in open(root / row / "seed0" / "log.jsonl")]
        assert [r["step"] for r in log] == [1]
        tasks = [row[len("single-"):]] if row.startswith("single") else ["matrix", "tictactoe"]
        for r in log:
            for t in tasks:
                assert {f"{t}/{k}" for k in ("entropy", "grad_norm", "grad_cos", "token_share")} <= set(r)
            # the decomposition's total is grpo's own pre-clip gradient norm
            assert r["task_grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-3, abs=1e-6)
        after = json.load(open(root / row / "seed0" / "eval.json"))["after"]
        assert {"matrix", "tictactoe", "joint"} <= set(after)
    table = open(root / "table.md").read()
    assert "| nested |" in table and "| base |" in table and "grad cos to update" in table
    assert "| nested | tictactoe |" in table and "| single-matrix | tictactoe |" not in table    # dynamics rows
    # a second call finds every eval.json and trains nothing
    stamp = os.path.getmtime(root / "nested" / "seed0" / "log.jsonl")
    nested.run_experiment(cfg)
    assert os.path.getmtime(root / "nested" / "seed0" / "log.jsonl") == stamp
    # ... but refuses to reuse a folder for other settings
    with pytest.raises(SystemExit):
        nested.run_experiment(nested.parse_args(quick_args(tmp_path, "--lr", "0.1")))
    # ... or for other starting weights under the same name (a rebuilt data/tiny): run.json holds their hash
    spec = json.load(open(root / "run.json"))
    shipped = open(os.path.join(grpo.TINY_DIR, "model.safetensors"), "rb").read()
    assert spec["model_sha256"] == hashlib.sha256(shipped).hexdigest()
    json.dump({**spec, "model_sha256": "0" * 64}, open(root / "run.json", "w"))
    with pytest.raises(SystemExit):
        nested.run_experiment(cfg)


def test_nested_after_warmup_keeps_the_budget_and_fresh_start_states(tmp_path, monkeypatch):
    seen = []
    real = grpo.train_seeds
    monkeypatch.setattr(grpo, "train_seeds", lambda *a: seen.append(real(*a)) or seen[-1])
    cfg = nested.parse_args(quick_args(tmp_path, "--modes", "nested", "--warmup-steps", "1", "--steps", "2",
                                       "--joint", "min"))
    nested.run_experiment(cfg)
    run = tmp_path / "I2" / "nested" / "seed0"
    warm = [json.loads(line) for line in open(run / "warmup" / "log.jsonl")]
    main = [json.loads(line) for line in open(run / "log.jsonl")]
    # 1 mixed step of 2 groups x 2, then 1 nested step of 1 group x 2 trajectories of 2 sub-tasks
    assert len(warm) == 1 and len(main) == 1
    assert json.load(open(run / "warmup" / "args.json"))["num_groups"] == 2
    assert json.load(open(run / "args.json"))["num_groups"] == 1
    # the nested stage plays new start states, not the warm-up's again
    assert len(seen) == 2 and not set(seen[0]) & set(seen[1])
    # the dynamics table reads the warm-up's steps first: its second half is the nested step alone
    table = open(tmp_path / "I2" / "table.md").read()
    assert f"| nested | matrix | {main[0]['matrix/entropy']:.3f} | {main[0]['matrix/grad_norm']:.3f} | - |" in table


def test_quick_sets_its_own_size_and_given_flags_still_win():
    cfg = nested.parse_args(["--quick", "--seeds", "5"])
    assert (cfg.steps, cfg.eval_games, cfg.out_dir, cfg.seeds) == (nested.QUICK["steps"], nested.QUICK["eval_games"],
                                                                   nested.QUICK["out_dir"], "5")
