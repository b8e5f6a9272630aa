"""Tests for games.py: the facts of each game, the answer format, and robustness of every env."""
import http.server
import json
import os
import random
import re
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import games  # noqa: E402
from games import (ENV_NAMES, check_answer, format_answer, make_arith_problem, make_env,  # noqa: E402
                   matrix_target, minimax_values, parse_answer, ttt_legal_moves, ttt_winner)

ALLOWED_OUTCOMES = {"ongoing", "win", "draw", "loss", "success", "failure", "truncated", "opponent_error"}
ALLOWED_REWARDS = {-0.1, 0.0, 0.5, 1.0}


@pytest.fixture
def jsonl_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n\n'
                    '{"question": "Half of 9?", "answer": 4.5}\n'
                    '{"question": "Name the colour of snow.", "answer": "white"}\n')
    return str(path)


def all_envs(jsonl_path):
    """One env of each kind, with cheap options."""
    return [make_env("matrix"), make_env("matrix", compact=True), make_env("tictactoe"),
            make_env("tictactoe", opponent="minimax", random_start=True), make_env("spy"),
            make_env("arith"), make_env("arith", split="ood"), make_env("math_jsonl", path=jsonl_path)]


# -----------------------------------------------------------------------------
# 1. The answer format
def test_parse_answer_basic_cases():
    assert parse_answer("no tags at all") is None
    assert parse_answer("") is None
    assert parse_answer("<answer>1</answer> then <answer>2</answer>") == "2"          # last pair wins
    assert parse_answer("<ANSWER>yes</Answer>") == "yes"                                # tags ignore case
    assert parse_answer("<answer>   (2, 3) \n</answer>") == "(2, 3)"                    # content stripped
    assert parse_answer("<think>maybe 4?</think> <answer>5</answer>") == "5"
    assert parse_answer("Sure! <think>hmm</think>\n<answer>Player 3</answer> Good luck.") == "Player 3"
    assert parse_answer("<answer>日本語 ✓</answer>") == "日本語 ✓"
    assert parse_answer("<answer><answer>1</answer></answer>") == "1"                   # innermost pair
    assert parse_answer("<answer>12") is None                                           # unclosed
    assert parse_answer("</answer>12<answer>") is None                                  # wrong order
    assert parse_answer("<answer>1</answer><answer>2") == "1"                           # 2 never closed
    assert parse_answer("<answer>  </answer>") is None                                  # empty
    assert parse_answer("<answer>1</answer><answer></answer>") is None                  # last pair is empty


def test_a_game_reply_must_end_with_its_answer():
    # GIFT's parser ends in "</answer>$": text after the answer makes the reply invalid (-0.1, state kept).
    # This is what stops the tiny model's answers drifting to "<answer>(2,2)</answer></answer>..." (LOG.md).
    assert games.answer_ends_reply("<think>x</think> <answer>(2,2)</answer> \n")
    assert not games.answer_ends_reply("<answer>(2,2)</answer></answer>")
    assert not games.answer_ends_reply("<answer>(2,2)</answer> I hope that helps.")
    assert not games.answer_ends_reply("no answer at all")
    env = make_env("tictactoe", compact=True)
    env.reset(2)
    board = env.board
    _, reward, done, info = env.step("<answer>(2,2)</answer></answer></answer>")
    assert (reward, done, info["valid"], env.board) == (-0.1, False, False, board)
    _, reward, _, info = env.step("<answer>(2,2)</answer>")
    assert info["valid"] and env.board != board
    # Benchmark replies are only read, never judged by this rule: parse_answer itself still tolerates it.
    assert parse_answer("<answer>(2,2)</answer></answer>") == "(2,2)"


def test_parse_answer_is_linear_on_one_megabyte():
    nasty = ["<answer>" * 125_000, "x" * 1_000_000 + "<answer>5</answer>", "</answer>" * 110_000,
             "<answer" * 140_000, "<" * 1_000_000]
    start = time.perf_counter()
    results = [parse_answer(text) for text in nasty]
    assert time.perf_counter() - start < 2.0
    assert results == [None, "5", None, None, None]


def test_format_answer_round_trips():
    assert format_answer("(1,2)") == "<answer>(1,2)</answer>"
    assert format_answer("3", think="because") == "<think>because</think> <answer>3</answer>"
    assert parse_answer(format_answer("Player 2", think="p2 was vague")) == "Player 2"


def test_make_env_rejects_unknown_names_and_options():
    assert ENV_NAMES == ("matrix", "tictactoe", "spy", "arith", "math_jsonl")
    with pytest.raises(ValueError, match="matrix, tictactoe, spy, arith, math_jsonl"):
        make_env("chess")
    with pytest.raises(TypeError, match="'colour'"):
        make_env("tictactoe", colour="red")
    with pytest.raises(TypeError, match="'games'"):
        make_env("matrix", games="random")                        # removed (docs/LOG.md); a typo-proof refusal
    with pytest.raises(ValueError, match="'random', 'minimax' or a callable"):
        make_env("tictactoe", opponent="greedy")                  # research bots live in experiments/blocking.py


# -----------------------------------------------------------------------------
# 2. Matrix games
def classic(name):
    _, A, B = next(g for g in games.MATRIX_GAMES if g[0] == name)
    return np.array(A), np.array(B)


def test_prisoners_dilemma_targets():
    A, B = classic("Prisoner's Dilemma")
    assert [matrix_target(A, B, r) for r in (1, 2)] == [2, 2]         # both defect
    assert [matrix_target(-A, -B, r) for r in (1, 2)] == [1, 1]       # negated: both "cooperate"


def test_all_classic_targets_pinned():
    # (P1, P2) and (negated P1, negated P2) under our rule; see the table in games.py section 3c.
    expected = {"Prisoner's Dilemma": ((2, 2), (1, 1)), "Battle of the Sexes": ((1, 1), (1, 2)),
                "Game of Chicken": ((1, 2), (1, 1)), "Stag Hunt": ((1, 1), (1, 2)),
                "Radio Station": ((1, 2), (3, 3)), "IESDS": ((2, 2), (2, 3)),
                "Duopolistic Competition": ((3, 3), (6, 6)), "GAME": ((2, 1), None),
                "Weakly Dominated Game": ((3, 1), None)}
    for name, (plain, negated) in expected.items():
        A, B = classic(name)
        assert (matrix_target(A, B, 1), matrix_target(A, B, 2)) == plain, name
        if negated:
            assert (matrix_target(-A, -B, 1), matrix_target(-A, -B, 2)) == negated, name


def test_known_equilibria():
    assert games.pure_equilibria(*classic("Battle of the Sexes")) == [(0, 0), (1, 1)]
    assert games.pure_equilibria(*classic("IESDS")) == [(1, 1)]                 # survives iterated deletion
    assert games.pure_equilibria(*classic("Weakly Dominated Game")) == [(2, 0)]
    A, B = classic("IESDS")
    assert games.pure_equilibria(-A, -B) == []                                # negated IESDS: mixed only


def test_several_pure_equilibria_pick_the_largest_payoff_sum():
    # (1,1) pays 10 + 1 = 11 in total, (2,2) pays 5 + 1 = 6: both players take action 1, although
    # Player 1 alone would prefer (2,2).
    A, B = np.array([[10, 0], [0, 5]]), np.array([[1, 0], [0, 1]])
    assert games.pure_equilibria(A, B) == [(0, 0), (1, 1)]
    assert (matrix_target(A, B, 1), matrix_target(A, B, 2)) == (1, 1)
    A, B = np.array([[1, 0], [0, 5]]), np.array([[10, 0], [0, 1]])     # 11 vs 6 again, other way round
    assert (matrix_target(A, B, 1), matrix_target(A, B, 2)) == (1, 1)
    A, B = np.array([[2, 0], [0, 2]]), np.array([[2, 0], [0, 2]])       # equal sums: lowest numbers
    assert (matrix_target(A, B, 1), matrix_target(A, B, 2)) == (1, 1)


def test_offsets_do_not_change_targets():
    for _, A, B in games.MATRIX_GAMES:
        A, B = np.array(A), np.array(B)
        for offset in (100, -100):
            for role in (1, 2):
                assert matrix_target(A + offset, B + offset, role) == matrix_target(A, B, role)


def test_mixed_equilibrium_argmax_when_no_pure_equilibrium():
    # Player 1 wants to match, Player 2 to mismatch, with unequal stakes: no pure NE, and the unique
    # equilibrium is x = (1/3, 2/3), y = (1/3, 2/3), so both targets are action 2.
    A, B = np.array([[2, 0], [0, 1]]), np.array([[0, 2], [1, 0]])
    assert games.pure_equilibria(A, B) == []
    (x, y), = games.mixed_equilibria(A, B)
    assert np.allclose(x, [1 / 3, 2 / 3]) and np.allclose(y, [1 / 3, 2 / 3])
    assert (matrix_target(A, B, 1), matrix_target(A, B, 2)) == (2, 2)
    pennies = np.array([[1, -1], [-1, 1]])                                    # uniform mix: lowest index
    assert (matrix_target(pennies, -pennies, 1), matrix_target(pennies, -pennies, 2)) == (1, 1)


def test_matrix_env_rewards_and_parsing():
    env = make_env("matrix")
    env.reset(seed=3)
    target = str(env.target)
    _, reward, done, info = env.step(format_answer(f"  {target} "))
    assert (reward, done, info["outcome"], info["success"], info["valid"]) == (1.0, True, "success", True, True)
    for bad in ("Action 1", "0", "99", "one", "<answer>1"):
        env.reset(seed=3)
        _, reward, done, info = env.step(bad if bad.startswith("<") else format_answer(bad))
        assert (reward, done, info["outcome"], info["valid"]) == (-0.1, True, "truncated", False), bad
    env.reset(seed=3)
    wrong = next(a for a in env.legal_actions() if a != target)
    assert env.step(format_answer(wrong))[1:3] == (0.0, True)


def test_matrix_transforms_follow_gift_code():
    env = make_env("matrix")
    seen_templates, negated_ids = set(), set()
    for seed in range(400):
        env.reset(seed)
        seen_templates.add(env.template)
        assert env.offset in (0, 100, -100)
        if env.negated:
            negated_ids.add(env.game_name)
    assert len(seen_templates) == len(games.MATRIX_TEMPLATES) >= 3
    assert "GAME" not in negated_ids and "Weakly Dominated Game" not in negated_ids
    assert "Prisoner's Dilemma" in negated_ids
    plain = make_env("matrix", transform=False)
    plain.reset(0)
    assert plain.offset == 0 and not plain.negated


def test_matrix_compact_observation():
    env = make_env("matrix", compact=True, transform=False)
    obs = env.reset(seed=0)
    lines = obs.split("\n")
    assert lines[0] in ("you:p1", "you:p2") and len(lines) == 1 + env.A.shape[0]
    assert lines[1] == " ".join(f"{a},{b}" for a, b in zip(env.A[0].tolist(), env.B[0].tolist()))


# -----------------------------------------------------------------------------
# 3. TicTacToe
def test_tictactoe_position_counts():
    # Every position reachable from the empty board: 5,478 (with the empty board), 958 of them final.
    seen, terminal, stack = set(), set(), [(".",) * 9]
    while stack:
        board = stack.pop()
        if board in seen:
            continue
        seen.add(board)
        moves = ttt_legal_moves(board)
        if not moves:
            terminal.add(board)
        mark = games.ttt_to_move(board)
        stack.extend(board[:m] + (mark,) + board[m + 1:] for m in moves)
    assert (len(seen), len(terminal)) == (5478, 958)
    assert sum(ttt_winner(b) == "x" for b in terminal) == 626
    assert sum(ttt_winner(b) == "o" for b in terminal) == 316


def test_minimax_facts():
    assert set(minimax_values((".",) * 9, "x").values()) == {0}              # every opening draws
    board = tuple("xx.oo....")                                               # x to move wins at (1,3)
    assert minimax_values(board, "x")[2] == 1
    # Against a corner opening the centre is the only reply that does not lose.
    replies = minimax_values(tuple("x........"), "o")
    assert [m for m, v in replies.items() if v == 0] == [4] and set(replies.values()) == {0, -1}


def test_minimax_vs_minimax_always_draws():
    rng = random.Random(0)
    for first in range(9):
        for _ in range(5):
            board = tuple("x" if k == first else "." for k in range(9))
            while ttt_legal_moves(board):
                mark = games.ttt_to_move(board)
                values = minimax_values(board, mark)
                move = rng.choice([m for m, v in values.items() if v == max(values.values())])
                board = board[:move] + (mark,) + board[move + 1:]
            assert ttt_winner(board) is None


def minimax_reply(env):
    values = minimax_values(env.board, env.mark)
    return format_answer(games.ttt_move_str(max(values, key=values.get)))


def test_minimax_env_draws_with_itself_and_never_loses_to_random():
    env = make_env("tictactoe", opponent="minimax")
    for seed in range(30):
        env.reset(seed)
        done = False
        while not done:
            _, reward, done, info = env.step(minimax_reply(env))
        assert info["outcome"] == "draw" and reward == 0.5
    rng = random.Random(1)
    outcomes = set()
    for seed in range(500):
        env.reset(seed)
        done = False
        while not done:
            _, _, done, info = env.step(format_answer(env.random_action(rng)))
        outcomes.add(info["outcome"])
    assert "win" not in outcomes and "loss" in outcomes


def test_tictactoe_move_parsing():
    # an opponent's reply: the first move counts, as in GIFT's parser
    parse = games.parse_ttt_move
    assert [parse(a) for a in ("(2,3)", "( 2 , 3 )", "2,3", "2 3", "I pick (1,1) then (3,3)")] == [5, 5, 5, 5, 0]
    assert [parse(a) for a in ("(9,9)", "(0,1)", "(12,1)", "row two", "", None)] == [None] * 6
    # the learner's answer must be exactly one move: "(2,2)(2,2)" would otherwise be a free run-on
    for answer, valid in (("(2,3)", True), (" 2, 3 ", True), ("2 3", True), ("(2,2)(2,2)", False),
                          ("I pick (1,1)", False), ("(1,1) then (3,3)", False)):
        env = make_env("tictactoe")
        env.reset(2)
        assert env.step(format_answer(answer))[3]["valid"] == valid, answer


def test_tictactoe_illegal_moves_cost_a_turn_and_can_truncate():
    env = make_env("tictactoe")
    env.reset(seed=4)
    taken = next(k for k in range(9) if env.board[k] != ".") if "x" in env.board or "o" in env.board else None
    board = env.board
    if taken is not None:
        obs, reward, done, info = env.step(format_answer(games.ttt_move_str(taken)))
        assert (reward, done, info["valid"], env.board) == (-0.1, False, False, board)
        assert "invalid" in obs
    env.reset(seed=4)
    rewards = [env.step("<answer>(9,9)</answer>")[1] for _ in range(5)]
    assert rewards == [-0.1] * 5 and env.done and env.outcome == "truncated"


def test_tictactoe_start_states():
    plain = make_env("tictactoe")
    pieces = {sum(c != "." for c in (plain.reset(s), plain.board)[1]) for s in range(50)}
    assert pieces == {0, 1}                                                  # empty, or the random opening
    training = make_env("tictactoe", random_start=True)
    pieces = {sum(c != "." for c in (training.reset(s), training.board)[1]) for s in range(80)}
    assert pieces == {0, 1, 2, 3}                                            # GIFT: 0-3 random pieces


def test_tictactoe_compact_observation():
    env = make_env("tictactoe", compact=True)
    obs = env.reset(seed=0)
    lines = obs.split("\n")
    # your mark first, the board last (each cell at a fixed distance from the answer)
    assert len(lines) == 4 and lines[0] == f"you:{env.mark}"
    assert all(re.fullmatch(r"[xo.]{3}", line) for line in lines[1:])
    assert "".join(lines[1:]) == "".join(env.board)
    assert "".join(lines[1:]).count(".") == len(env.legal_actions())


def test_tictactoe_callable_opponent_errors_after_its_tries():
    calls = []

    def broken(prompt):
        calls.append(prompt)
        return "I refuse"

    env = make_env("tictactoe", opponent=broken, opponent_tries=3)
    env.reset(seed=0)
    _, reward, done, info = env.step(format_answer(env.legal_actions()[0]))
    assert (reward, done, info["outcome"], info["success"]) == (0.0, True, "opponent_error", False)
    assert len(calls) == 3 and "Legal moves:" in calls[0]


# -----------------------------------------------------------------------------
# 4. Who's the Spy
def test_spy_word_list():
    pairs, clues = games.load_spy_words()
    assert len(pairs) >= 120
    for spy_word, civilian_word in pairs:
        a, b = set(clues[spy_word]), set(clues[civilian_word])
        assert len(a) >= 5 and len(b) >= 5
        assert a & b and a - b and b - a, (spy_word, civilian_word)              # overlap, but differ
        for clue in a | b:
            assert spy_word not in clue and civilian_word not in clue, clue


def test_spy_takes_three_turns():
    env = make_env("spy")
    rng = random.Random(0)
    for seed in range(20):
        env.reset(seed)
        turns = []
        done = False
        while not done:
            _, reward, done, info = env.step(format_answer(env.random_action(rng)))
            turns.append(info["turn"])
        assert turns == [1, 2, 3] and info["outcome"] in ("win", "loss")
        civilians_won = info["eliminated"] == env.spy_seat
        assert info["success"] == (civilians_won != (env.learner_seat == env.spy_seat))


def test_spy_bots_describe_with_fresh_clues_and_vote_for_the_worst_fit():
    env = make_env("spy")
    for seed in range(30):
        env.reset(seed)
        env.step(format_answer("quite plain"))
        env.step(format_answer("rather ordinary"))
        for k, (_, seat, text) in enumerate(env.descriptions):
            if seat == env.learner_seat:
                continue
            clues = env.clues[env.words[seat]]
            used = {w for _, _, earlier in env.descriptions[:k] for w in earlier.split()}
            assert text in clues
            assert text not in used or set(clues) <= used                   # a repeat only when none is fresh
    # Hand-made history: everyone fits the civilian word except one player who says nonsense.
    civilian = env.words[next(p for p in env.players if p != env.spy_seat)]
    odd = env.players[-1]
    env.reset(seed=3)
    env.descriptions = [(1, p, "zzz qqq" if p == odd else env.clues[civilian][p]) for p in env.players]
    voter = next(p for p in env.players if p not in (odd, env.spy_seat))
    assert env._bot_vote(voter) == odd


def test_spy_vote_parsing():
    players = [1, 2, 3, 4]
    assert games.parse_vote("Player 3", 1, players) == 3
    assert games.parse_vote("I vote for player 2.", 1, players) == 2
    assert games.parse_vote("4", 1, players) == 4
    assert games.parse_vote("Player 1", 1, players) is None                   # not yourself
    assert games.parse_vote("Player 7", 1, players) is None
    assert games.parse_vote("nobody", 1, players) is None


def test_spy_ties_are_broken_by_the_seeded_rng():
    votes = {1: 2, 2: 1, 3: 1, 4: 2}                                          # seats 1 and 2 tie
    picks = [games.spy_eliminate(votes, random.Random(s)) for s in range(40)]
    assert picks == [games.spy_eliminate(votes, random.Random(s)) for s in range(40)]
    assert set(picks) == {1, 2}
    assert games.spy_eliminate({1: 3, 2: 3, 3: 4, 4: 3}, random.Random(0)) == 3


def scripted_spy(victim_of):
    """A callable opponent: bland descriptions, then a vote for victim_of(own seat)."""
    def opponent(prompt):
        seat = int(re.search(r"You are Player (\d)", prompt).group(1))
        if "vote for the player" in prompt:
            return format_answer(f"Player {victim_of(seat)}")
        return format_answer("quite plain")
    return opponent


def play_spy(env, seed, victim):
    env.reset(seed)
    env.step(format_answer("quite plain"))
    env.step(format_answer("rather ordinary"))
    learner = env.learner_seat
    return env.step(format_answer(f"Player {victim if victim != learner else (1 if learner != 1 else 2)}"))


def test_spy_win_conditions():
    env = make_env("spy")
    roles = set()
    for seed in range(40):
        env.opponent = None
        env.reset(seed)
        spy = env.spy_seat
        # Spy voted out -> civilians win.
        env.opponent = scripted_spy(lambda s: spy if s != spy else (1 if spy != 1 else 2))
        _, reward, _, info = play_spy(env, seed, spy)
        assert info["eliminated"] == spy and info["success"] == (env.learner_seat != spy)
        # A civilian voted out -> the spy wins.
        victim = min(p for p in env.players if p != spy)
        env.opponent = scripted_spy(lambda s: victim if s != victim else spy)
        _, reward, _, info = play_spy(env, seed, victim)
        assert info["eliminated"] == victim and info["success"] == (env.learner_seat == spy)
        assert reward == float(info["success"])
        roles.add(info["role"])
    assert roles == {"spy", "civilian"}


def test_spy_secret_word_is_an_invalid_description():
    env = make_env("spy")
    env.reset(seed=0)
    word = env.words[env.learner_seat]
    obs, reward, done, info = env.step(format_answer(f"It is a kind of {word.upper()}!"))
    assert (reward, done, info["valid"], info["turn"]) == (-0.1, False, False, 1)
    assert env.descriptions == [d for d in env.descriptions if d[1] != env.learner_seat]


def test_spy_callable_opponent_that_breaks_voids_the_game():
    with pytest.raises(ValueError, match="callable"):
        make_env("spy", opponent="random")
    for seed in range(8):                                    # it fails in reset() or in the learner's first step
        env = make_env("spy", opponent=lambda prompt: "")
        env.reset(seed)
        _, reward, done, info = env.step(format_answer(env.random_action(random.Random(0))))
        assert (reward, done, info["outcome"]) == (0.0, True, "opponent_error")


def test_spy_compact_observation():
    env = make_env("spy", compact=True)
    obs = env.reset(seed=5)
    lines = obs.split("\n")
    assert re.fullmatch(r"you:[1-4] word:[a-z]+", lines[0]) and lines[-1] == "say" and len(lines) == 6


# -----------------------------------------------------------------------------
# 5. Arithmetic and the answer checker
STEP_RE = re.compile(r"Step (\d+): (-?\d+) ([-+*/]) (-?\d+) = (-?\d+)")


def steps_of(solution):
    return [(int(a), op, int(b), int(r)) for _, a, op, b, r in STEP_RE.findall(solution)]


def test_arith_solutions_right_and_wrong_solutions_wrong():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    kinds = set()
    for split in ("train", "ood"):
        for seed in range(500):
            p = make_arith_problem(random.Random(seed), split=split)
            assert check_answer(p["solution"], p["answer"]), (split, seed)
            assert not check_answer(p["wrong_solution"], p["answer"]), (split, seed)
            assert p["wrong_answer"] != p["answer"]
            right = steps_of(p["solution"])
            assert all(ops[op](a, b) == r for a, op, b, r in right) and right[-1][3] == p["answer"]
            wrong = steps_of(p["wrong_solution"])
            assert len(wrong) == len(right) and wrong[-1][3] == p["wrong_answer"]
            assert all(wrong[k][0] == wrong[k - 1][3] for k in range(1, len(wrong)))    # the chain holds
            k = next(k for k in range(len(wrong)) if wrong[k] != right[k])                # the slipped step
            assert all(ops[op](a, b) == r for a, op, b, r in wrong[k + 1:])                # redone correctly
            (a, op, b, r), (_, op0, b0, r0) = wrong[k], right[k]
            kind = p["slip"].split()[0]
            kinds.add(kind)
            if kind == "off_by_one":
                assert (op, b) == (op0, b0) and abs(r - r0) == 1
            elif kind == "carry":
                assert (op, b) == (op0, b0) and abs(r - r0) == 10
            elif kind == "sign":
                assert {op, op0} == {"+", "-"} and b == b0 and ops[op](a, b) == r
            else:
                assert kind == "operand" and op == op0 and b != b0 and ops[op](a, b) == r
    assert kinds == {"off_by_one", "carry", "sign", "operand"}


def test_arith_ood_differs_in_kind():
    train = [make_arith_problem(random.Random(s), steps=2, split="train") for s in range(300)]
    ood = [make_arith_problem(random.Random(s), steps=2, split="ood") for s in range(300)]
    assert not any("/" in p["expression"] for p in train)                  # division never in train
    assert all("/" in p["expression"] for p in ood)
    assert {len(steps_of(p["solution"])) for p in train} == {2}
    assert {len(steps_of(p["solution"])) for p in ood} == {4}
    assert max(steps_of(p["solution"])[0][0] for p in ood) > 20             # bigger numbers
    train_words = set(" ".join(p["question"] for p in train).split())
    for noun in games.ARITH_TEXT["ood"]["nouns"]:
        assert noun not in train_words


def test_check_answer():
    assert all(check_answer(a, 12) for a in ("12", " 12 ", "12.0", "<answer>12</answer>", "\\boxed{12}", "+12"))
    assert check_answer("-3", -3) and check_answer("1,200", 1200) and check_answer("3/4", 0.75)
    assert check_answer("\\frac{3}{4}", "3/4") and check_answer("0.3333333", "1/3")
    assert check_answer("White.", "white")                                  # string fallback
    assert not any(check_answer(a, 12) for a in ("12.5", "twelve", "", "<answer></answer>", "1 2", "13"))


def test_arith_env_rewards():
    env = make_env("arith")
    env.reset(seed=7)
    answer = env.problem["answer"]
    assert env.step(format_answer(f"{answer}.0"))[1] == 1.0
    env.reset(seed=7)
    _, reward, done, info = env.step(format_answer(str(answer + 0.5)))
    assert (reward, done, info["valid"], info["outcome"]) == (0.0, True, True, "failure")
    env.reset(seed=7)
    _, reward, done, info = env.step(format_answer("about twelve"))
    assert (reward, done, info["valid"], info["outcome"]) == (-0.1, True, False, "truncated")
    compact = make_env("arith", compact=True)
    assert re.fullmatch(r"[0-9()+\-*]+=\?", compact.reset(seed=7))


def test_math_jsonl_env(jsonl_file, tmp_path):
    env = make_env("math_jsonl", path=jsonl_file)
    questions = {env.reset(s) and env.problem["question"] for s in range(30)}
    assert len(questions) == 3
    env.reset(0)
    _, reward, done, _ = env.step(format_answer(str(env.problem["answer"])))
    assert (reward, done) == (1.0, True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "answer": 1}\n{"question": "", "answer": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*question"):
        make_env("math_jsonl", path=str(bad))
    bad.write_text('{"question": "ok?", "answer": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        make_env("math_jsonl", path=str(bad))


# -----------------------------------------------------------------------------
# 6. Every env: robustness, reproducibility, legal random actions
def adversarial_strings(n=1000):
    rng = random.Random(0)
    fixed = ["", " ", "<answer></answer>", "<answer>(9,9)</answer>", "<answer><answer>1</answer></answer>",
             "<answer>Player 9</answer>", "<answer>player 0</answer>", "<answer>1e999</answer>",
             "<answer>" + "9" * 5000 + "</answer>", "<answer>-0</answer>", "<answer>NaN</answer>",
             "<answer>\x00\x01</answer>", "<answer>ضد ✓ 🙂</answer>", "<think><answer>2</answer>",
             "<answer>" * 1000, "x" * 200_000, "<answer>" + "a" * 100_000 + "</answer>",
             "<answer>(1,1)||(2,2)</answer>", "<answer>3/0</answer>", "<answer>\\boxed{}</answer>"]
    out = list(fixed)
    while len(out) < n:
        kind = rng.randrange(3)
        if kind == 0:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(60))).decode("utf-8", errors="replace")
        elif kind == 1:
            blob = "".join(rng.choice("()<>/,0123456789 answerPlayr\n-.") for _ in range(rng.randrange(40)))
        else:
            blob = rng.choice(["1", "2", "(2,2)", "Player 2", "3", "cold", "12"])
        out.append(blob if rng.random() < 0.3 else format_answer(blob))
    return out


def test_every_env_survives_adversarial_input(jsonl_file):
    strings = adversarial_strings()
    for env in all_envs(jsonl_file):
        seed = 0
        env.reset(seed)
        for text in strings:
            obs, reward, done, info = env.step(text)
            assert isinstance(obs, str) and reward in ALLOWED_REWARDS and isinstance(done, bool)
            assert info["outcome"] in ALLOWED_OUTCOMES and isinstance(info["valid"], bool)
            assert info["success"] == (info["outcome"] in ("win", "success"))
            assert 1 <= info["turn"] <= env.max_turns and done == (info["outcome"] != "ongoing")
            if done:
                seed += 1
                env.reset(seed)


def play(env, seed, answers_seed):
    rng = random.Random(answers_seed)
    trace = [env.reset(seed)]
    done = False
    while not done:
        obs, reward, done, info = env.step(format_answer(env.random_action(rng)))
        trace.append((obs, reward, info["outcome"], info["valid"]))
    return trace


def test_seeds_reproduce_episodes(jsonl_file):
    for env in all_envs(jsonl_file):
        for seed in range(5):
            assert play(env, seed, 1) == play(env, seed, 1), env.name
        assert play(env, 0, 1)[0] != play(env, 1, 1)[0] or env.name == "math_jsonl"


def test_random_actions_are_legal(jsonl_file):
    for env in all_envs(jsonl_file):
        for seed in range(40):
            trace = play(env, seed, seed)
            assert all(valid for _, _, _, valid in trace[1:]), (env.name, seed)


# -----------------------------------------------------------------------------
# 7. The HTTP opponent, against a tiny local server
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


def serve(behaviour):
    """Start a chat-completions server on a free port; behaviour(prompt) -> (status, reply text)."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            status, text = behaviour(body["messages"][-1]["content"])
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1", seen


def first_legal_move(prompt):
    line = next(line for line in prompt.split("\n") if line.startswith("Legal moves:"))
    return 200, format_answer(re.search(r"\(\d,\d\)", line).group(0))


def test_http_opponent_plays_tictactoe():
    server, url, seen = serve(first_legal_move)
    try:
        env = make_env("tictactoe", opponent=games.OpenAIChatOpponent(url, "test-model", timeout=2.0))
        env.reset(seed=0)
        _, _, _, info = env.step(format_answer(env.legal_actions()[-1]))
        assert info["opponent_action"] is not None and info["outcome"] in ("ongoing", "win", "draw", "loss")
        assert seen[0]["model"] == "test-model" and seen[0]["max_tokens"] == 200
    finally:
        server.shutdown()


def test_http_opponent_retries_on_500_then_gives_up():
    server, url, seen = serve(lambda prompt: (500, "boom"))
    try:
        opponent = games.OpenAIChatOpponent(url, "m", timeout=1.0, retries=3, backoff_s=0.01)
        env = make_env("tictactoe", opponent=opponent, opponent_tries=1)
        env.reset(seed=0)
        _, reward, done, info = env.step(format_answer(env.legal_actions()[0]))
        assert (reward, done, info["outcome"]) == (0.0, True, "opponent_error")
        assert len(seen) == 3 and "500" in opponent.last_error
    finally:
        server.shutdown()


def test_http_opponent_times_out():
    server, url, _ = serve(lambda prompt: (time.sleep(1.0), (200, format_answer("(1,1)")))[1])
    try:
        opponent = games.OpenAIChatOpponent(url, "m", timeout=0.2, retries=2, backoff_s=0.01)
        env = make_env("tictactoe", opponent=opponent, opponent_tries=1)
        env.reset(seed=0)
        start = time.perf_counter()
        _, _, done, info = env.step(format_answer(env.legal_actions()[0]))
        assert done and info["outcome"] == "opponent_error" and time.perf_counter() - start < 1.5
        assert opponent.last_error and "timed out" in opponent.last_error.lower()
    finally:
        server.shutdown()
