"""Tests of experiments/: the blocking study's opponents, starts, dice and turn discount; the tactics
counters, the probe and the exact optimum against the random opponent; the supervised ceiling. Each script
also runs end to end on tiny settings."""
import builtins
import json
import math
import os
import random
import types
import sys

import pytest
import torch

import games
import grpo

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import answer_drift  # noqa: E402
import blocking  # noqa: E402
import plot_logs  # noqa: E402
import supervised_ceiling  # noqa: E402
import tictactoe_tactics as tt  # noqa: E402

fmt = games.format_answer


# -----------------------------------------------------------------------------
# TicTacToe facts: positions, tactic positions, the best result against random
def test_position_counts():
    # 4,520 unfinished positions = 5,478 legal minus 958 finished (tests/test_games.py counts those two)
    assert len(tt.positions()) == 5478 - 958
    kinds = [kind for _, _, kind, _ in tt.tactic_positions()]
    assert (kinds.count("win"), kinds.count("block")) == (2358, 976)
    assert tt.winning_cells(tuple("xx.oo...."), "x") == [2] and tt.winning_cells(tuple("xx.oo...."), "o") == [5]


def test_the_best_policy_against_random():
    # Expectimax over the game tree, empty board, random first player, rewards 1 / 0.5 / 0. The expected
    # reward is unique (0.9799); moves of equal value split it differently into wins and draws, so the best
    # policies win 96.2-96.5% and lose 0.2-0.5% (the figure "87% wins" once quoted here was minimax play).
    for prefer, expected in (("wins", (0.9646, 0.0306, 0.0048)), ("safety", (0.9619, 0.0359, 0.0021))):
        win, draw, loss = tt.optimum(prefer)
        assert (win, draw, loss) == pytest.approx(expected, abs=1e-4)
        assert win + 0.5 * draw == pytest.approx(0.97991, abs=1e-5) and win + draw + loss == pytest.approx(1.0)
    # minimax play (uniform among its optimal moves) never loses, and wins only 87.3%
    assert tt.optimum("minimax") == pytest.approx((0.8726, 0.1274, 0.0), abs=1e-4)


def test_rule_players_bracket_what_blocking_is_worth():
    # Exact values of two rule players (random first player): taking wins alone caps wins at 66.8%, blocking
    # as well lifts them to 79.8% and cuts losses from 25.8% to 3.7% (docs/LOG.md, 2026-12-06).
    assert tt.rule_player(False) == pytest.approx((0.6676, 0.0746, 0.2578), abs=1e-4)
    assert tt.rule_player(True) == pytest.approx((0.7976, 0.1653, 0.0370), abs=1e-4)
    # a hand check on one position: x to move with a win at cell 2 takes it every time
    assert tt._scripted(tuple("xx.oo...."), "x", "x", None, "win") == (1.0, 0.0, 0.0)


def test_fixed_order_players():
    # A good fixed order of cells, no board reading beyond legality, wins about as often as the default run;
    # the best of 3,000 random orders (python experiments/tictactoe_tactics.py --orders 3000) is this one.
    best = (8, 6, 7, 4, 0, 2, 3, 1, 5)
    assert tt.order_player(best)[0] == pytest.approx(0.7511, abs=1e-4)
    # the board's symmetries cannot change a value: rotate every cell of the order by 90 degrees
    rotate = lambda k: (k % 3) * 3 + 2 - k // 3
    for tactics in ("", "win", "win+block"):
        assert tt.order_player(best, tactics) == pytest.approx(tt.order_player(map(rotate, best), tactics), abs=1e-12)
    # by hand: x to move on xx.oo.... plays cell 8 by the order, or takes the win at cell 2 with "win"
    assert tt._scripted(tuple("xx.oo...."), "x", "x", best, "win") == (1.0, 0.0, 0.0)
    assert tt._scripted(tuple("xx.oo...."), "x", "x", best, "")[2] >= 0.25   # then o completes its row at 5 (1 in 4)


def test_fit_order_recovers_a_board_blind_policy():
    boards = [board for board, _ in tt.positions()]
    order = (4, 0, 8, 2, 6, 1, 3, 5, 7)
    moves = [next(k for k in order if board[k] == tt.EMPTY) for board in boards]    # a pure fixed-order player
    assert tt.fit_order(boards, moves) == (order, 1.0)
    # a policy that takes its wins first is that order in every position without a win to take
    wins = [tt.winning_cells(board, mark) for board, mark in tt.positions()]
    tactical = [next(k for k in order if k in w) if w else m for w, m in zip(wins, moves)]    # its first win
    fitted, agreement = tt.fit_order(boards, tactical)
    assert fitted == order and agreement == sum(not w or m in w for w, m in zip(wins, moves)) / len(boards) < 1.0


def scripted(replies):
    """Seed 2: the learner is x and moves first; the opponent's replies are fixed."""
    replies = iter(replies)
    env = tt.TacticsTicTacToe(opponent=lambda prompt: fmt(next(replies)))
    env.reset(2)
    assert env.mark == "x"
    return env


def test_tactics_counters_in_play():
    keys = ("win_chances", "wins_taken", "block_chances", "blocks_made")
    env = scripted(["(2,1)", "(2,2)", "(3,3)"])
    assert env.step("no answer")[3]["win_chances"] == 0               # an invalid answer counts nothing
    counts = lambda info: [info[k] for k in keys]
    assert counts(env.step(fmt("(1,1)"))[3]) == counts(env.step(fmt("(1,2)"))[3]) == [0, 0, 0, 0]
    # x x . / o o . / . . . -- x can win at (1,3) and o threatens (2,3): the win counts first.
    _, _, done, info = env.step(fmt("(2,3)"))                         # blocks, but misses the win
    assert counts(info) == [1, 0, 0, 0] and not done
    _, reward, done, info = env.step(fmt("(1,3)"))                    # the win, taken this time
    assert (reward, done, counts(info)) == (1.0, True, [2, 1, 0, 0])
    env = scripted(["(2,1)", "(2,2)", "(1,2)"])
    env.step(fmt("(1,1)"))
    env.step(fmt("(3,3)"))
    # x . . / o o . / . . x -- o threatens (2,3); x has no win: the block counts
    assert counts(env.step(fmt("(2,3)"))[3]) == [0, 0, 1, 1]


# -----------------------------------------------------------------------------
# The blocking study's environment: opponents, tactic starts, per-game dice
def outcomes(bot, n=300):
    env, rng, seen = blocking.StudyTicTacToe(bot), random.Random(2), []
    for seed in range(n):
        env.reset(seed)
        done = False
        while not done:
            _, _, done, info = env.step(fmt(env.random_action(rng)))
        seen.append(info["outcome"])
    return seen


def test_noisy_minimax_mixes_perfect_and_random_replies():
    perfect, noisy, random_ = outcomes("minimax:1"), outcomes("minimax:0.5"), outcomes("minimax:0")
    assert "win" not in perfect
    assert perfect.count("loss") > noisy.count("loss") > random_.count("loss")
    for bad in ("minimax:2", "minimax:-0.1", "minimax:half", "random:0.5", "greed"):
        with pytest.raises(ValueError, match="--bot"):
            blocking.StudyTicTacToe(bad)


def test_greedy_opponent_always_completes_its_line():
    # The learner ignores o's threat at (1,3): greedy takes the win every time, greedy:0 (random) not always.
    def replies(bot, n=20):
        env, seen = blocking.StudyTicTacToe(bot), []
        for seed in range(n):
            env.reset(2)
            env.rng, env.board = random.Random(seed), tuple("oo.x....x")
            _, _, done, info = env.step("<answer>(2,2)</answer>")
            seen.append(info["outcome"] if done else info["opponent_action"])
        return seen
    assert replies("greedy") == replies("greedy:1") == ["loss"] * 20
    assert 0 < replies("greedy:0").count("loss") < 20


def test_tactic_start_and_per_game_dice():
    probe = {(board, mark): kind for board, mark, kind, _ in tt.tactic_positions()}
    env, kinds = blocking.StudyTicTacToe(tactic_start=1.0), set()
    for seed in range(40):
        env.reset(seed)
        kinds.add(probe[env.board, env.mark])                  # a KeyError if it is not a tactic position
    assert kinds == {"win", "block"}

    def game(stream):
        env = blocking.StudyTicTacToe(stream=stream)
        first, replies, done = env.reset(5), [], False
        while not done:
            _, _, done, info = env.step(fmt(env.legal_actions()[0]))
            replies.append(info["opponent_action"])
        return first, replies
    split = [game(k) for k in range(6)]
    assert len({first for first, _ in split}) == 1                # the same start state ...
    assert len({tuple(r) for _, r in split}) > 1                  # ... different opponents' replies
    assert game(3) == split[3] and game(None) == game(None)


def test_turn_weights_hand_computed():
    # mask [1, 0, 1, 1]: two turns; gamma 0.5: the first 0.5, the last 1. Unsampled positions get 1.
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    assert torch.equal(blocking.turn_weights(mask, 0.5), torch.tensor([[0.5, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    three = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    assert torch.equal(blocking.turn_weights(three, 0.5), torch.tensor([[1.0, 0.25, 1.0, 0.5, 0.5, 1.0, 1.0]]))
    # grpo_loss takes the (B, T) advantages: row 0 gets 2 * (0.5, 1, 1) over 3 tokens, row 1 -1 over 2 tokens
    zeros = torch.zeros(2, 4)
    loss, _ = grpo.grpo_loss(zeros, zeros, torch.tensor([2.0, -1.0])[:, None] * blocking.turn_weights(mask, 0.5), mask)
    assert float(loss) == pytest.approx((-5 / 3 + 1.0) / 2, abs=1e-6)


# -----------------------------------------------------------------------------
# End to end, on the shipped tiny: the probe, one blocking-study step, the supervised ceiling
@pytest.fixture(scope="module")
def tiny():
    return grpo.load_policy("tiny")


def test_probe_asks_every_tactic_position(tiny):
    rates = tt.probe(*tiny)
    assert set(rates) == {"took_win", "blocked"} and all(0.0 < r < 1.0 for r in rates.values())


def test_blocking_study_trains_with_every_instrument(tmp_path):
    cfg = blocking.Settings(steps=1, num_groups=2, group_size=4, eval_games=4, bot="greedy:0.5", tactic_start=0.5,
                            turn_discount=0.5, env_rng="per-game", out_dir=str(tmp_path / "run"))
    before, after = blocking.run(cfg)
    assert {"win", "took_win", "blocked"} <= set(before) | set(after)
    assert os.path.exists(tmp_path / "run" / "checkpoint" / "model.safetensors")
    with pytest.raises(ValueError, match="turn-discount"):
        blocking.run(blocking.Settings(turn_discount=0.0, out_dir=str(tmp_path / "bad")))


def test_supervised_ceiling_counts_and_learns():
    history = supervised_ceiling.run("win", steps=4, batch=16, every=2)
    assert [h[0] for h in history] == [0, 2, 4] and all(0.0 <= h[2] <= 1.0 for h in history)
    assert len(supervised_ceiling.examples("matrix", grpo.load_policy("tiny")[1])) == 96


# -----------------------------------------------------------------------------
# Training curves
def write_log(folder, records):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "log.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_plot_falls_back_to_csv_without_matplotlib(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    a = write_log(tmp_path / "grpo", [{"step": 1, "reward_mean": 0.1, "matrix/success": 0.2, "note": "text"},
                                      {"step": 2, "reward_mean": 0.3, "matrix/success": 0.4}])
    b = write_log(tmp_path / "nested", [{"step": 2, "reward_mean": 0.5, "tictactoe/success": 0.6}])
    out = tmp_path / "curves"
    written = plot_logs.plot_logs([a, b], str(out))
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert sorted(os.path.basename(p) for p in written) == ["matrix_success.csv", "reward_mean.csv",
                                                          "tictactoe_success.csv"]
    assert (out / "reward_mean.csv").read_text().splitlines() == ["step,grpo,nested", "1,0.1,", "2,0.3,0.5"]
    assert not any(name.endswith(".png") for name in os.listdir(out))


def test_plot_log_errors_name_the_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "reward_mean": 0}\n{"reward_mean": 1}\n')
    with pytest.raises(ValueError, match="log.jsonl:2"):
        plot_logs.plot_logs([str(path)], str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="log.jsonl:2"):
        plot_logs.main([str(path), "--out", str(tmp_path / "out")])


# -----------------------------------------------------------------------------
# experiments/answer_drift.py: the two measurements of why answers used to run on past </answer>
def test_entropy_bonus_pushes_a_confident_stop_down_by_hand():
    # dH/dz_s = -p_s (log p_s + H). Check the formula against autograd on a 3-token softmax with p_s = 0.9.
    z = torch.tensor([math.log(0.9), math.log(0.06), math.log(0.04)], requires_grad=True)
    logp = torch.log_softmax(z, -1)
    H = -(logp.exp() * logp).sum()
    H.backward()
    p, h = 0.9, float(H)
    assert float(z.grad[0]) == pytest.approx(-p * (math.log(p) + h), abs=1e-6) and z.grad[0] < 0


def test_answer_drift_measures_both_rules(tiny):
    model, tok = tiny
    close = tok.convert_tokens_to_ids("</answer>")
    ep = grpo.start_episode(tok, games.make_env("tictactoe", compact=True), 2, 0)
    run_on = tok("<answer>(2,2)</answer></answer>", add_special_tokens=False)["input_ids"]
    grpo.finish_turn(tok, ep, run_on + [tok.eos_token_id], {tok.eos_token_id})
    assert answer_drift.ran_on(tok, ep, close) and not ep.info["valid"]          # the current rule: -0.1
    old = answer_drift.Tolerant(compact=True)
    old.reset(2)
    assert old.step("<answer>(2,2)</answer></answer>")[3]["valid"]              # the old rule: no cost
    args = types.SimpleNamespace(groups=2, group_size=2, temperature=1.3, seed=0)
    push = answer_drift.entropy_push(model, tok, args)
    assert push["positions"] > 0 and push["negative_share"] > 0.5
