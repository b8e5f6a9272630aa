"""Exercise 03: a 4x4 Connect Four behind games.py's interface, as "connect4" in games.make_env.

The tests check the interface and the rules stated in exercises/03_connect_four.md, with scripted
games whose every position is worked out in the comments. Until games.make_env knows "connect4" they
are skipped ("exercise 03 not started").
Run:  python -m pytest exercises/test_03_connect_four.py -q
"""
import random

import pytest

import games
import grpo

BOARD = 4                       # rows and columns
MAX_TURNS = 8                   # 16 cells, the learner places at most 8 pieces


@pytest.fixture
def make(target):
    """make(**options) -> a fresh Connect Four env of the graded target."""
    if target.name == "repo":
        if "connect4" not in games.ENV_CLASSES:
            pytest.skip("exercise 03 not started: games.make_env does not know 'connect4' yet "
                        "(see exercises/03_connect_four.md)")
        return lambda **options: games.make_env("connect4", **options)
    cls = target.get("games", "ConnectFourEnv")
    return lambda **options: cls(**options)


def scripted(columns):
    """A callable opponent that answers the given columns in order (and counts its calls)."""
    moves = iter(columns)

    def opponent(prompt):
        opponent.calls += 1
        assert isinstance(prompt, str) and prompt
        return games.format_answer(str(next(moves)))
    opponent.calls = 0
    return opponent


def constant(column):
    return scripted([column] * 100)


def parse(obs):
    """(rows top first, mark, legal columns) from a compact observation; a leading "invalid" line is skipped."""
    lines = obs.split("\n")
    k = next(i for i, line in enumerate(lines) if line.startswith("you:"))
    rows, mark, legal = lines[k - BOARD:k], lines[k][len("you:"):], lines[k + 1] if k + 1 < len(lines) else ""
    assert len(rows) == BOARD and all(len(r) == BOARD and set(r) <= set("xo.") for r in rows), obs
    return rows, mark, legal


def learner_first(make, **options):
    """An env reset to a seed where the learner is "x" and moves first, and its observation."""
    for seed in range(200):
        env = make(compact=True, **options)
        obs = env.reset(seed)
        if parse(obs)[1] == "x":
            return env, obs
    raise AssertionError("in 200 seeds the learner never moved first; it should with probability 1/2")


def play(env, columns):
    """Steps the learner's columns in order; returns the list of (obs, reward, done, info)."""
    return [env.step(games.format_answer(str(c))) for c in columns]


def test_interface(make):
    env = make(compact=True)
    assert env.name == "connect4" and env.max_turns == MAX_TURNS
    obs = env.reset(3)
    assert isinstance(obs, str)
    assert set(env.legal_actions()) <= {"1", "2", "3", "4"} and env.legal_actions()
    assert env.random_action(random.Random(0)) in env.legal_actions()
    full = make().reset(3)
    assert "<answer>" in full and len(full) > len(obs)         # full prompts explain the rules to real models


def test_start_states(make):
    seen = set()
    for seed in range(40):
        rows, mark, legal = parse(make(compact=True).reset(seed))
        seen.add(mark)
        pieces = "".join(rows).replace(".", "")
        if mark == "x":             # the learner moves first: empty board, every column open
            assert pieces == "" and legal == "1234"
        else:                       # the opponent ("x") opened with one piece, which fell to the bottom row
            assert mark == "o" and pieces == "x" and "x" in rows[-1]
    assert seen == {"x", "o"}


def test_same_seed_same_game(make):
    def transcript():
        env, rng, out = make(compact=True), random.Random(7), []
        out.append(env.reset(11))
        done = False
        while not done:
            obs, reward, done, info = env.step(games.format_answer(env.random_action(rng)))
            out.append((obs, reward, info["outcome"]))
        return out
    assert transcript() == transcript()


def test_pieces_fall_to_the_bottom(make):
    env, _ = learner_first(make, opponent=constant(2))
    obs, reward, done, info = env.step(games.format_answer("2"))
    # x drops into column 2 -> bottom row; the opponent answers column 2 -> the cell above it
    rows, mark, legal = parse(obs)
    assert rows == ["....", "....", ".o..", ".x.."]
    assert (reward, done, info["valid"], info["outcome"]) == (0.0, False, True, "ongoing")


def test_vertical_four_wins(make):
    env, _ = learner_first(make, opponent=constant(1))
    steps = play(env, [2, 2, 2, 2])
    # x stacks column 2, o stacks column 1; x's fourth piece completes the column before o's fourth
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0, 1.0]
    assert [s[2] for s in steps] == [False, False, False, True]
    assert steps[-1][3]["outcome"] == "win" and steps[-1][3]["success"] is True


def test_horizontal_four_wins(make):
    env, _ = learner_first(make, opponent=scripted([1, 2, 3]))
    steps = play(env, [1, 2, 3, 4])
    # x fills the bottom row left to right; o stacks on x's first three pieces (three in a row, one short)
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0, 1.0]
    assert steps[-1][3]["outcome"] == "win"
    assert parse(steps[-1][0])[0] == ["....", "....", "ooo.", "xxxx"]


@pytest.mark.parametrize("mine, theirs, final", [
    # x climbs the diagonal from column 1's bottom to column 4's top; o fills the cells under it.
    # x: 1 2 1 3 1 2 4,  o: 2 3 3 4 4 4.  Before x's last move: x has three in column 1 (not four),
    # the rows "xxo."/"xxxo" have no four, o has three in column 4 -> nobody had won earlier.
    ([1, 2, 1, 3, 1, 2, 4], [2, 3, 3, 4, 4, 4], ["...x", "xxxo", "xxoo", "xooo"]),
    # the mirror image (column c -> 5 - c): the other diagonal
    ([4, 3, 4, 2, 4, 3, 1], [3, 2, 2, 1, 1, 1], ["x...", "oxxx", "ooxx", "ooox"]),
])
def test_diagonal_four_wins(make, mine, theirs, final):
    env, _ = learner_first(make, opponent=scripted(theirs))
    steps = play(env, mine)
    assert [s[1] for s in steps] == [0.0] * 6 + [1.0]
    assert steps[-1][3]["outcome"] == "win"
    assert parse(steps[-1][0])[0] == final


def test_opponent_four_loses(make):
    env, _ = learner_first(make, opponent=constant(3))
    steps = play(env, [1, 2, 1, 2])
    # x: 1, 2, 1, 2 (two pieces in each, no line); o: 3, 3, 3, 3 -> four in column 3 on its 4th move
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0, 0.0]
    assert steps[-1][2] is True
    assert steps[-1][3]["outcome"] == "loss" and steps[-1][3]["success"] is False


def test_full_board_without_a_line_is_a_draw(make):
    # The final board (top row first) has no four in a row, column or diagonal:
    #     o o x x        columns  1: x o x o   2: x o x o   3: o x o x   4: o x o x  (bottom up)
    #     x x o o        rows     2-2 each;  diagonals x o o x and o x x o
    #     o o x x
    #     x x o o        lines only grow, so no earlier position had one either
    env, _ = learner_first(make, opponent=scripted([3, 4, 1, 2, 3, 4, 1, 2]))
    steps = play(env, [1, 2, 3, 4, 1, 2, 3, 4])
    assert [s[1] for s in steps] == [0.0] * 7 + [0.5]
    assert steps[-1][2] is True and steps[-1][3]["outcome"] == "draw"
    assert parse(steps[-1][0])[0] == ["ooxx", "xxoo", "ooxx", "xxoo"]


def test_invalid_answers_cost_a_turn_and_change_nothing(make):
    env, obs = learner_first(make, opponent=constant(2))
    for reply in ("<answer>7</answer>", "I drop it in column 2", "<answer>column 2</answer>"):
        new_obs, reward, done, info = env.step(reply)
        # -0.1, the state is unchanged, and the compact view says "invalid" first
        assert (reward, done, info["valid"], info["outcome"]) == (games.REWARD_INVALID, False, False, "ongoing")
        assert new_obs == "invalid\n" + obs
    assert info["turn"] == 3                                 # each bad answer used up a turn


def test_a_full_column_is_illegal(make):
    env, _ = learner_first(make, opponent=constant(2))
    steps = play(env, [2, 2])               # column 2 from the bottom: x o x o -> full, no line
    assert parse(steps[-1][0])[0] == [".o..", ".x..", ".o..", ".x.."]
    assert "2" not in env.legal_actions()
    obs, reward, done, info = env.step(games.format_answer("2"))
    assert (reward, done, info["valid"]) == (games.REWARD_INVALID, False, False)


def test_out_of_turns_is_truncated(make):
    env, _ = learner_first(make, max_turns=1)
    obs, reward, done, info = env.step("no answer here")
    assert (reward, done, info["outcome"]) == (games.REWARD_INVALID, True, "truncated")


def test_an_opponent_that_never_answers_legally_ends_the_game(make):
    calls = {"n": 0}

    def mute(prompt):
        calls["n"] += 1
        return "I'd rather not."
    env, _ = learner_first(make, opponent=mute)
    obs, reward, done, info = env.step(games.format_answer("1"))
    assert (reward, done, info["outcome"], info["success"]) == (0.0, True, "opponent_error", False)
    assert calls["n"] == 3                                   # opponent_tries, as TicTacToe


def test_random_games_end_properly(make):
    outcomes = set()
    for seed in range(30):
        env, rng = make(compact=True), random.Random(seed)
        env.reset(seed)
        rewards, done = [], False
        while not done:
            assert set(env.legal_actions()) <= {"1", "2", "3", "4"}
            obs, reward, done, info = env.step(games.format_answer(env.random_action(rng)))
            assert info["valid"] and info["turn"] <= MAX_TURNS
            rewards.append(reward)
        outcomes.add(info["outcome"])
        assert info["outcome"] in ("win", "draw", "loss")
        assert rewards[:-1] == [0.0] * (len(rewards) - 1)
        assert rewards[-1] == {"win": 1.0, "draw": 0.5, "loss": 0.0}[info["outcome"]]
        assert info["success"] == (info["outcome"] == "win")
    assert {"win", "loss"} <= outcomes                        # random play both wins and loses in 30 games


def test_registered_for_training(target, make, monkeypatch):
    # grpo.py --game accepts any name of games.ENV_CLASSES, evaluate.py plays every name of games.ENV_NAMES.
    if target.name != "repo":
        monkeypatch.setitem(games.ENV_CLASSES, "connect4", target.get("games", "ConnectFourEnv"))
        monkeypatch.setattr(games, "ENV_NAMES", tuple(games.ENV_CLASSES))
    assert "connect4" in games.ENV_NAMES
    assert games.make_env("connect4", compact=True, opponent="random").name == "connect4"
    assert grpo.parse_settings(grpo.Settings, ["--game", "connect4"]).game == "connect4"
    assert "connect4" in games.ENV_CLASSES
