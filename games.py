"""
games.py -- the GIFT training games as small text environments, plus an arithmetic stand-in for MATH.

What it is: make_env(name, **options) builds one of ENV_NAMES (matrix, tictactoe, spy, arith, math_jsonl).
env.reset(seed) gives the first observation; env.step(reply) reads the last <answer>...</answer> out of the
model's raw reply, plays every other player itself and returns (observation, reward, done, info). The same
seed and replies give the same episode. No torch: grpo.py, nested.py, glow_sft.py and evaluate.py drive
these envs with any policy. Compact observations (compact=True, every env) are a few short lines that a tiny
byte-level model can read, such as "you:x\nx.o\n.x.\n..o" in TicTacToe; each render() shows its own.

Rewards (GIFT, arXiv 2601.05633, App. B.3): success 1, failure 0, TicTacToe draw 0.5. A reply that does not
END with a complete <answer>...</answer>, or holds an illegal answer, gets -0.1, uses up the turn and leaves
the state unchanged; once the turns run out the episode ends as "truncated" (no extra reward). The
single-turn games (matrix, arith, math_jsonl) therefore end at once on a bad answer.

What we simplified or changed vs GIFT (and why), one line each; each section says more:
- Matrix target: our own equilibrium rule, stated in the prompt; GIFT's argmax of nashpy's LAST one differs.
- The reply must end with its answer, as GIFT's parser demands; unlike GIFT, no <think> block is required.
- Matrix invalid answers cost -0.1 (GIFT's env gives 0); the same rule then holds for every game.
- TicTacToe: "x" always moves first (GIFT's Player 1 is "O"); random, minimax or LLM opponents (GIFT: Qwen3-14B).
- Spy: clue-list bots (data/spy_words.json, ours) stand in for Qwen3-14B; the vote instruction is the same
  for every role (GIFT's differs, which gives the role away).
- MATH is replaced by "arith", seeded integer word problems a tiny model can learn, with an "ood" split that
  differs in kind; "math_jsonl" reads real problems from a file of question/answer lines.

Run:  python games.py demo                                   # one bot-vs-bot episode per game
      python games.py play tictactoe --opponent minimax      # you play, in the terminal
      python games.py play spy | matrix | arith  [--seed N]
"""
import argparse
import fractions
import functools
import inspect
import itertools
import json
import operator
import os
import random
import re
import time
import urllib.error
import urllib.request

import numpy as np

# -----------------------------------------------------------------------------
# Constants, each with its source
REWARD_SUCCESS = 1.0       # win / correct answer (GIFT App. B.3)
REWARD_FAILURE = 0.0       # loss / wrong answer / out of turns / opponent broke down
REWARD_DRAW = 0.5          # TicTacToe draw (GIFT App. B.3)
REWARD_INVALID = -0.1      # unparseable or illegal answer; GIFT's format penalty (App. B.3)
MAX_ANSWER_CHARS = 400     # longer answers are invalid: moves, votes, clues and numbers are short
MATRIX_OFFSETS = (0, 100, -100)  # added to every payoff, drawn uniformly (GIFT App. A.1 and code)
MATRIX_NEGATE_PROB = 0.5         # chance to multiply both payoff matrices by -1 (GIFT App. A.1)
MATRIX_NEGATE_BELOW_ID = 7       # GIFT's code negates only games 0..6; we do the same for the classics
NASH_TOL = 1e-9                  # numerical slack in the support-enumeration checks
TTT_MAX_TURNS = 5                # learner moves per game; the game always ends by then (GIFT App. B.3)
TTT_OPPONENT_TRIES = 3           # tries a callable opponent gets for a legal move (GIFT code: 3)
SPY_PLAYERS = 4                  # seats, exactly one spy (GIFT App. A.3)
SPY_ROUNDS = 2                   # description rounds before the single vote (GIFT App. A.3)
SPY_MAX_TURNS = 3                # 2 descriptions + 1 vote (GIFT App. A, B.3)
SPY_OPPONENT_TRIES = 2           # tries a callable opponent gets (GIFT code default in nested envs)
SPY_WORDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "spy_words.json")
ARITH_MUL_FACTORS = (2, 3)       # multiplication only by small factors, in both splits
ARITH_DIVISORS = (2, 3, 4, 5)    # exact division: the operation that only the ood split uses
ARITH_OOD_EXTRA_STEPS = 2        # ood problems have this many more operations than train
ARITH_OOD_SCALE = 5              # ood numbers go up to max_operand * ARITH_OOD_SCALE
ARITH_TRIES = 1000               # rejection-sampling budget for one ood problem (division must be exact)
CHECK_TOL = 1e-6                 # relative tolerance of check_answer for non-integer answers
OPPONENT_BACKOFF_S = 0.5         # wait before the first HTTP retry; it doubles each retry (GIFT code)
# One sentence that every full prompt ends with: the reply format of GIFT's wrapper, our wording.
FORMAT_RULE = "Reason inside <think> </think>, then give only your final answer inside <answer> </answer>."


# -----------------------------------------------------------------------------
# 1. The answer format (GIFT App. A; its parser in the official code)
#
#     reply = "<think> reasoning </think> <answer> action </answer>"
#
# Two rules, one for reading the answer and one for when a reply counts:
#   - READ: the content of the LAST complete <answer>...</answer> pair, because a model that "corrects itself"
#     writes the final answer last. Chatter before the tags is fine (GIFT also demands a <think> block; we do not).
#   - COUNT (game turns only, `answer_ends_reply`): nothing but whitespace may follow that pair. GIFT's regex
#     ends in "</answer>$" for the same reason: a reply that runs on after its answer has not finished. Without
#     this rule the tiny model's answers drifted to "<answer>(2,2)</answer></answer></answer>..." up to the
#     token limit, since the drift cost no reward (docs/LOG.md, 2026-12-02). Benchmark replies (evaluate.py)
#     are only READ, so there trailing text is allowed.
#
# The scan is one pass over the tags, so 1 MB of text costs 1 MB of work. A pattern such as
# "<answer>(.*?)</answer>" would rescan to the end of the text from every unclosed <answer>: quadratic.
# An opening tag remembers where content starts (a later opening tag replaces it); a closing tag after an
# opening tag makes a complete pair; a closing tag with no open tag before it is ignored. So
# "<answer><answer>1</answer></answer>" gives "1" (innermost pair), "<answer>1</answer><answer>2" gives "1"
# (2 is never closed), and an empty last pair gives None.
ANSWER_RE = re.compile(r"<(/?)answer>", re.IGNORECASE | re.ASCII)   # one opening or closing tag


def _last_pair(text):
    """(content, end): the raw content of the last complete pair and where its closing tag ends."""
    if not isinstance(text, str):
        raise TypeError(f"parse_answer expects a str, got {type(text).__name__}")
    content, start, end = None, None, None
    for tag in ANSWER_RE.finditer(text):
        if not tag.group(1):                          # <answer>
            start = tag.end()
        elif start is not None:                       # </answer> closing an open tag
            content, start, end = text[start:tag.start()], None, tag.end()
    return content, end


def parse_answer(text):
    """Content of the last complete <answer>...</answer> pair, stripped; None if there is none or it is empty."""
    content, _ = _last_pair(text)
    return None if content is None else content.strip() or None


def answer_ends_reply(text):
    """True if a complete answer pair exists and only whitespace follows it (the COUNT rule above)."""
    content, end = _last_pair(text)
    return content is not None and not text[end:].strip()


def format_answer(action, think=None):
    """What a bot or a teacher "says": the answer wrapped in our tags, with optional reasoning first."""
    answer = f"<answer>{action}</answer>"
    return answer if think is None else f"<think>{think}</think> {answer}"


# -----------------------------------------------------------------------------
# 2. What every env shares: turns, invalid answers, the info dict
#
# GIFT App. B.3 and its code: a bad answer costs -0.1, the turn is gone, the state is unchanged, and the
# player sees the same state again with a note. The only other thing all games share is the shape of info.
# Each game also offers legal_actions() (where the choices are finite) and random_action(rng). The second
# exists for the behaviour-cloning warm start (data/make_tiny.py): transcripts of random legal play teach a
# fresh model the answer FORMAT of every game without teaching it any strategy.
class TextEnv:
    name = "base"
    max_turns = 1

    def __init__(self, compact=False):
        self.compact = bool(compact)
        self.turn, self.done, self.outcome = 0, True, "ongoing"   # turn: learner turns used so far

    def _begin(self, seed):
        # One private RNG per env: the same seed always gives the same episode, whatever else runs.
        self.seed = operator.index(seed)             # accepts int and numpy ints, refuses 1.5 and "3"
        self.rng = random.Random(self.seed)
        self.turn, self.done, self.outcome = 0, False, "ongoing"

    def _take_turn(self, response):
        """Start a learner turn: check the episode is running and pull the answer out of the reply.
        Returns (answer, error); error is None when the reply holds a usable answer."""
        if self.done:                                # also before the first reset(): __init__ sets done
            raise RuntimeError(f"{self.name}: no episode is running; call reset(seed) to start one")
        answer = parse_answer(response)              # a reply that is not a str raises TypeError here
        self.turn += 1
        if answer is None:
            return None, "no <answer>...</answer> with content found"
        if not answer_ends_reply(response):
            return answer, "text after the last </answer>: the reply must end with its answer"
        if len(answer) > MAX_ANSWER_CHARS:
            return answer[:MAX_ANSWER_CHARS], f"the answer is longer than {MAX_ANSWER_CHARS} characters"
        return answer, None

    def _result(self, obs, reward, valid, outcome, answer, **extra):
        self.outcome, self.done = outcome, outcome != "ongoing"
        info = {"valid": valid, "outcome": outcome, "success": outcome in ("win", "success"),
                "turn": self.turn, "answer": answer, **extra}
        return obs, float(reward), self.done, info

    def _end(self, headline, outcome, answer, reward=REWARD_FAILURE, valid=True, **extra):
        """The last step of an episode: the headline, then the final state."""
        return self._result(self._final_text(headline), reward, valid, outcome, answer, **extra)

    def _invalid(self, reason, answer, **extra):
        # The -0.1 is paid even on the last turn; the episode then ends as "truncated".
        if self.turn >= self.max_turns:
            return self._end(f"Invalid answer ({reason}) and no turns left.", "truncated", answer, REWARD_INVALID,
                             False, **extra)
        note = "invalid" if self.compact else f"Your last answer was invalid: {reason}. Nothing changed; try again."
        return self._result(note + "\n" + self._observation(), REWARD_INVALID, False, "ongoing", answer, **extra)

    def _final_text(self, headline):
        return headline + "\n" + self.render()

    def _observation(self):
        # What the learner sees: the short state for a tiny model, else the full prompt with the rules.
        return self.render() if self.compact else self._prompt()

    def legal_actions(self):
        raise NotImplementedError(f"{self.name}: answers are free text; use random_action()")

    def random_action(self, rng):
        return rng.choice(self.legal_actions())


# -----------------------------------------------------------------------------
# 3. Matrix games (GIFT App. A.1): one-shot, "pick your Nash equilibrium action"
#
# The nine games of Hua et al. 2024 as GIFT uses them. A is Player 1's payoff, B is Player 2's; rows are
# Player 1's actions, columns Player 2's, both numbered from 1 in the prompts.
MATRIX_GAMES = [
    ("Prisoner's Dilemma", [[3, 0], [5, 1]], [[3, 5], [0, 1]]),
    ("Battle of the Sexes", [[2, 0], [0, 1]], [[1, 0], [0, 2]]),
    ("Game of Chicken", [[-10, 1], [-1, 0]], [[-10, -1], [1, 0]]),
    ("Stag Hunt", [[3, 0], [1, 1]], [[3, 1], [0, 1]]),
    ("Radio Station", [[25, 50, 50], [30, 15, 30], [20, 20, 10]], [[25, 30, 20], [50, 15, 20], [50, 30, 10]]),
    ("IESDS", [[13, 1, 7], [4, 3, 6], [-1, 2, 8]], [[3, 4, 3], [1, 3, 2], [2, 3, -1]]),
    ("Duopolistic Competition",
     [[0] * 6, [9, 7, 5, 3, 1, -1], [14, 10, 6, 2, -2, -2], [15, 9, 3, -3, -3, -3],
      [12, 4, -4, -4, -4, -4], [5, -5, -5, -5, -5, -5]],
     [[0, 9, 14, 15, 12, 5], [0, 7, 10, 9, 4, -5], [0, 5, 6, 3, -4, -5], [0, 3, 2, -3, -4, -5],
      [0, 1, -2, -3, -4, -5], [0, -1, -2, -3, -4, -5]]),
    ("GAME", [[1, -1, 5, 1], [2, 1, 3, 5], [1, 0, 1, 0]], [[1, 2, 0, 1], [3, 2, 0, 1], [1, 5, 7, 1]]),
    ("Weakly Dominated Game", [[5, 4], [6, 3], [6, 4]], [[1, 0], [0, 1], [4, 1]]),
]


# 3a. Pure equilibria: a cell where each player's payoff is the best in its line,
#
#     A[i, j] = max_i' A[i', j]   (row i is a best response to column j)
#     B[i, j] = max_j' B[i, j']   (column j is a best response to row i)
def pure_equilibria(A, B):
    """All pure Nash equilibria as 0-indexed (row, col), in row-major order."""
    A, B = np.asarray(A), np.asarray(B)
    best_row = A == A.max(axis=0, keepdims=True)            # (m, n): row i is a best reply to column j
    best_col = B == B.max(axis=1, keepdims=True)            # (m, n): column j is a best reply to row i
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(best_row & best_col))]


# 3b. Mixed equilibria by support enumeration (our own, in place of nashpy). Guess the supports I (rows) and
# J (columns), of equal size k. Player 2's mix y on J must make Player 1 indifferent between the rows of I,
# and the other way round:
#
#     A[I, J] y_J = v 1,   sum(y_J) = 1        B[I, J]^T x_I = u 1,   sum(x_I) = 1
#
# Keep (x, y) if both mixes are nonnegative and no action outside the supports pays more. Nondegenerate
# games always have an equilibrium with equal-size supports; k = 1 finds the pure ones.
def _indifference_mix(M):
    """Mix over the columns of the square M that gives every row the same payoff; None if there is none."""
    k = M.shape[0]
    system = np.zeros((k + 1, k + 1))
    system[:k, :k], system[:k, k], system[k, :k] = M, -1.0, 1.0  # M y - v = 0, sum(y) = 1
    try:
        mix = np.linalg.solve(system, np.eye(k + 1)[k])[:k]       # right-hand side (0, ..., 0, 1)
    except np.linalg.LinAlgError:                                  # singular: no unique mix
        return None
    return None if (mix < -NASH_TOL).any() else np.clip(mix, 0.0, None)


def mixed_equilibria(A, B):
    """Every equilibrium with equal-size supports, smallest supports first, then lexicographic."""
    A, B = np.asarray(A, dtype=float), np.asarray(B, dtype=float)
    (m, n), found = A.shape, []
    for k in range(1, min(m, n) + 1):
        for I, J in itertools.product(itertools.combinations(range(m), k), itertools.combinations(range(n), k)):
            I, J = list(I), list(J)
            y_J = _indifference_mix(A[np.ix_(I, J)])        # Player 2 keeps Player 1 indifferent on I
            x_I = _indifference_mix(B[np.ix_(I, J)].T)      # Player 1 keeps Player 2 indifferent on J
            if y_J is None or x_I is None:
                continue
            x, y = np.zeros(m), np.zeros(n)
            x[I], y[J] = x_I, y_J
            row_pay, col_pay = A @ y, x @ B                  # (m,), (n,): payoff of every pure reply
            if row_pay.max() <= row_pay[I].min() + NASH_TOL and col_pay.max() <= col_pay[J].min() + NASH_TOL:
                found.append((x, y))
    return found


# 3c. The target action. The prompt states the same rule, so the label is learnable:
#   1. pure equilibria exist: take the one with the largest A + B (payoff dominance), then the lowest (row, col);
#   2. none: take the first mixed equilibrium of 3b and the role's most likely action (lowest on ties).
# GIFT instead takes nashpy's LAST support-enumeration equilibrium and its argmax. For games with several
# equilibria that is often the mixed one, so some labels differ (GIFT's column: nashpy 0.0.43 run on the
# official code's games, docs/PAPERS.md; ours pinned by tests/test_games.py):
#
#     game                      ours P1,P2  negated       GIFT P1,P2  negated
#     Prisoner's Dilemma        2,2         1,1           2,2         1,1
#     Battle of the Sexes       1,1         1,2           1,2         1,2
#     Game of Chicken           1,2         1,1           2,2         2,2
#     Stag Hunt                 1,1         1,2           2,2         2,2
#     Radio Station             1,2         3,3           1,1         2,2
#     IESDS                     2,2         2,3 (mixed)   2,2         2,3
#     Duopolistic Competition   3,3         6,6           3,3         1,1
#     GAME                      2,1         never negated 2,1
#     Weakly Dominated Game     3,1         never negated 3,1
def matrix_target(A, B, role):
    """The 1-indexed action of `role` (1 or 2) under the rule above."""
    A, B = np.asarray(A), np.asarray(B)
    pure = pure_equilibria(A, B)
    if pure:
        return max(pure, key=lambda cell: (A[cell] + B[cell], -cell[0], -cell[1]))[role - 1] + 1
    mixed = mixed_equilibria(A, B)
    if not mixed:
        raise ValueError("no equilibrium with equal-size supports: the game is degenerate; "
                         f"A={A.tolist()} B={B.tolist()}")
    strategy = mixed[0][role - 1]
    return int(np.flatnonzero(strategy >= strategy.max() - NASH_TOL)[0]) + 1


# 3d. Prompt templates: the same game in three layouts, so the model learns the game and not one table format
# (GIFT's code has 12 layouts; these are ours). Each gets (A, B, role) and returns the description; the role
# line and the question are added around it.
def _cells(A, B):
    return [(i + 1, j + 1, int(A[i, j]), int(B[i, j])) for i in range(A.shape[0]) for j in range(A.shape[1])]


def _tpl_joint_table(A, B, role):
    """A Markdown table: rows are Player 1's actions, columns Player 2's."""
    m, n = A.shape
    lines = ["|   | " + " | ".join(str(j + 1) for j in range(n)) + " |", "|---|" + "---|" * n]
    lines += [f"| {i + 1} | " + " | ".join(f"({A[i, j]}, {B[i, j]})" for j in range(n)) + " |" for i in range(m)]
    return ("Rows are Player 1's actions, columns are Player 2's actions. "
            "Each cell shows (payoff of Player 1, payoff of Player 2).\n\n" + "\n".join(lines))


def _tpl_outcomes(A, B, role):
    lines = [f"- Player 1 plays {i}, Player 2 plays {j}: Player 1 gets {a}, Player 2 gets {b}"
             for i, j, a, b in _cells(A, B)]
    return "Both players choose at once. The possible outcomes are:\n" + "\n".join(lines)


def _tpl_your_view(A, B, role):
    lines = []
    for i, j, a, b in _cells(A, B):
        mine, theirs, you, them = (i, j, a, b) if role == 1 else (j, i, b, a)
        lines.append(f"- you play {mine} and the other player plays {theirs}: you get {you}, they get {them}")
    return "From your side of the table:\n" + "\n".join(sorted(lines))


MATRIX_TEMPLATES = (_tpl_joint_table, _tpl_outcomes, _tpl_your_view)
MATRIX_RULE = ("Choose the action you would play in a Nash equilibrium: a pair of actions where neither player "
               "can do better by changing only their own action. If there are several, use the one with the "
               "largest total payoff of both players (then the lowest action numbers). If there is none, use "
               "the action you play most often in a mixed equilibrium.")


class MatrixEnv(TextEnv):
    """One-shot matrix game: answer with your action number (a bare integer, whitespace allowed).
    Option: transform (GIFT's sign flip and offset; False shows the classic payoffs)."""
    name = "matrix"

    def __init__(self, transform=True, compact=False):
        super().__init__(compact)
        self.transform = bool(transform)

    def reset(self, seed):
        self._begin(seed)
        rng = self.rng
        game_id = rng.randrange(len(MATRIX_GAMES))
        self.game_name, A, B = MATRIX_GAMES[game_id]
        # GIFT's code: flip signs with p=1/2 only for game ids < 7 (not GAME, not Weakly Dominated).
        self.negated = self.transform and game_id < MATRIX_NEGATE_BELOW_ID and rng.random() < MATRIX_NEGATE_PROB
        # The offset moves every payoff by the same amount: equilibria stay, the numbers look new.
        self.offset = rng.choice(MATRIX_OFFSETS) if self.transform else 0
        sign = -1 if self.negated else 1
        self.A, self.B = sign * np.array(A) + self.offset, sign * np.array(B) + self.offset
        self.template = rng.randrange(len(MATRIX_TEMPLATES))
        self.role = rng.choice((1, 2))
        self.target = matrix_target(self.A, self.B, self.role)   # on the transformed game: a sign flip relabels
        return self._observation()

    def legal_actions(self):
        return [str(a + 1) for a in range(self.A.shape[self.role - 1])]

    def render(self):
        if self.compact:   # "you:p1", then one line per row with cells "a,b"
            rows = [" ".join(f"{a},{b}" for a, b in zip(ra, rb)) for ra, rb in zip(self.A.tolist(), self.B.tolist())]
            return f"you:p{self.role}\n" + "\n".join(rows)
        side = "the row" if self.role == 1 else "the column"
        return f"You are Player {self.role} (you choose {side}).\n\n" + MATRIX_TEMPLATES[self.template](
            self.A, self.B, self.role)

    def _prompt(self):
        # The example shows the format with a placeholder: a real action number would bias the choice.
        return (f"{self.render()}\n\n{MATRIX_RULE}\nYour actions: {', '.join(self.legal_actions())}. "
                f"{FORMAT_RULE} Write the action number only, as <answer>N</answer>.")

    def step(self, response):
        answer, error = self._take_turn(response)
        extra = {"game": self.game_name, "role": f"P{self.role}", "target": str(self.target),
                 "negated": self.negated, "offset": self.offset}
        # A bare number only: "2" and " 2 " count, "Action 2" and "02" are format errors.
        if error is None and answer not in self.legal_actions():
            error = f"{answer!r} is not one of your actions {', '.join(self.legal_actions())}"
        if error:
            return self._invalid(error, answer, **extra)
        won = int(answer) == self.target
        return self._end(f"You played {answer}; the equilibrium action is {self.target}.",
                         "success" if won else "failure", answer, REWARD_SUCCESS if won else REWARD_FAILURE, **extra)


# -----------------------------------------------------------------------------
# 4. TicTacToe (GIFT App. A.2): multi-turn against a fixed opponent
#
# A board is a tuple of 9 cells "x", "o" or "." in row-major order; cell k is (row k//3+1, col k%3+1).
# "x" always moves first, so whose turn it is follows from the counts.
TTT_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
EMPTY = "."
# A move is two digits 1-3: "(2,3)", "2,3" and "2 3" all work; the first such pair in the answer counts.
# The look-behind stops a long run of digits from being retried at every position.
MOVE_RE = re.compile(r"(?<![0-9])([0-9]+)\s*(?:,\s*|\s)\s*([0-9]+)")


def ttt_winner(board):
    """"x" or "o" if that mark has three in a line, else None."""
    return next((board[a] for a, b, c in TTT_LINES if board[a] != EMPTY and board[a] == board[b] == board[c]), None)


def ttt_legal_moves(board):
    """Empty cell indices 0..8; none once somebody has won."""
    return [] if ttt_winner(board) else [k for k in range(9) if board[k] == EMPTY]


def ttt_to_move(board):
    return "x" if sum(c != EMPTY for c in board) % 2 == 0 else "o"


def ttt_move_str(cell):
    return f"({cell // 3 + 1},{cell % 3 + 1})"


def _other(mark):
    return "o" if mark == "x" else "x"


def _place(board, cell, mark):
    return tuple(board[:cell]) + (mark,) + tuple(board[cell + 1:])


# Perfect play by negamax: the value of a position for the player to move is
#
#     V(s) = +1 win, 0 draw, -1 loss;    V(s) = max over moves m of -V(s after m)
#
# There are only 5,478 reachable positions, so the cache holds the whole game tree after one game.
@functools.lru_cache(maxsize=None)
def _negamax(board, to_move):
    winner = ttt_winner(board)
    if winner:
        return 1 if winner == to_move else -1
    moves = ttt_legal_moves(board)          # none left and no winner: a draw
    return max((-_negamax(_place(board, m, to_move), _other(to_move)) for m in moves), default=0)


def minimax_values(board, to_move):
    """{cell: value for to_move of playing there} with values +1 / 0 / -1 under perfect play."""
    board = tuple(board)
    return {m: -_negamax(_place(board, m, to_move), _other(to_move)) for m in ttt_legal_moves(board)}


# The FIRST pair counts (GIFT's parser does the same), so "(1,1) or maybe (2,2)" plays (1,1). That is how we
# read an opponent's reply. The LEARNER's answer must be exactly one move (ONE_MOVE_RE): otherwise text such
# as "(2,2)(2,2)(2,2)" would cost nothing, and GRPO's sampling noise would let answers grow (docs/LOG.md).
ONE_MOVE_RE = re.compile(r"\(?\s*[1-3]\s*(?:,\s*|\s)\s*[1-3]\s*\)?")


def parse_ttt_move(answer):
    """0..8 for the first "(row,col)" in the answer, or None; out-of-range digits give None."""
    found = MOVE_RE.search(answer or "")
    if not found or len(found.group(1)) > 1 or len(found.group(2)) > 1:
        return None
    row, col = int(found.group(1)), int(found.group(2))
    return (row - 1) * 3 + (col - 1) if 1 <= row <= 3 and 1 <= col <= 3 else None


TTT_INTROS = (
    "Tic-Tac-Toe on a 3x3 grid. Two players take turns putting their mark in an empty cell. The first player "
    "with three marks in a line (a row, a column or a diagonal) wins. If the grid fills up without such a "
    "line, the game is a draw.",
    "Noughts and crosses: players alternate, each claiming one empty square per move. Three of your marks in a "
    "straight line, across, down or corner to corner, win the game; a full board with no line is a draw.",
)   # GIFT has 4 intros and redraws one every turn; we draw one per episode
# Built-in opponents; any callable prompt -> reply is an opponent too. (Research opponents -- greedy, noisy
# minimax -- live in experiments/blocking.py.)
TTT_BOTS = ("random", "minimax")


class TicTacToeEnv(TextEnv):
    """TicTacToe against a random, minimax or callable opponent. Answer "(row,col)", 1-indexed.
    Options: opponent, opponent_tries (for a callable), random_start (GIFT's training starts), max_turns."""
    name = "tictactoe"

    def __init__(self, opponent="random", opponent_tries=TTT_OPPONENT_TRIES, random_start=False,
                 max_turns=TTT_MAX_TURNS, compact=False):
        super().__init__(compact)
        if opponent not in TTT_BOTS and not callable(opponent):
            raise ValueError(f"tictactoe: opponent must be 'random', 'minimax' or a callable, got {opponent!r}")
        self.opponent, self.opponent_tries = opponent, int(opponent_tries)
        self.random_start, self.max_turns = bool(random_start), int(max_turns)

    # Start states (GIFT code, tictactoe/env.py): the learner moves first with p = 1/2; with random_start
    # (training), with p = 1/2 each side first places one random piece; if the opponent moves first, its
    # opening is a random cell, in training and evaluation. So a callable opponent is never asked in reset().
    def reset(self, seed):
        self._begin(seed)
        rng = self.rng
        self.intro = rng.randrange(len(TTT_INTROS))
        learner_first = rng.random() < 0.5
        self.mark, self.opponent_mark = ("x", "o") if learner_first else ("o", "x")
        self.board = (EMPTY,) * 9
        if self.random_start and rng.random() < 0.5:
            for mark in ("x", "o"):
                self.board = _place(self.board, rng.choice(ttt_legal_moves(self.board)), mark)
        if not learner_first:
            self.board = _place(self.board, rng.choice(ttt_legal_moves(self.board)), self.opponent_mark)
        return self._observation()

    def set_position(self, board, mark):
        """Puts the game (after reset) in any position with `mark` to move; returns its observation."""
        self.board, self.mark, self.opponent_mark = tuple(board), mark, _other(mark)
        return self._observation()

    def legal_actions(self):
        return [ttt_move_str(k) for k in ttt_legal_moves(self.board)]

    def render(self):
        return self._board_text(self.mark, self.compact)

    def _board_text(self, mark, compact):
        rows = ["".join(self.board[3 * r:3 * r + 3]) for r in range(3)]
        # Compact: your mark, then three lines of x / o / . The board comes LAST so that every cell sits at a
        # fixed distance from the answer: the tiny model learns legality by looking a fixed number of tokens
        # back. (With a list of legal moves after the board, a 0.8M model had to find and copy a move from a
        # list of varying length; it still played 35% illegal moves after 800 warm-start steps.)
        if compact:
            return f"you:{mark}\n" + "\n".join(rows)
        # Full text numbers rows and columns, so the model can read coordinates off the board.
        grid = ["    1 2 3"] + [f" {r + 1}  " + " ".join(rows[r]) for r in range(3)]
        return (f"You play \"{mark}\", your opponent plays \"{_other(mark)}\".\n"
                "Board (rows numbered on the left, columns on top):\n" + "\n".join(grid))

    def _prompt(self, mark=None, for_opponent=False):
        """The full prompt for whoever plays `mark`: the learner (default), or a callable opponent."""
        # A callable opponent (an LLM) gets the same text from its own side, but is asked for the bare answer,
        # as GIFT asks its Qwen3-14B opponent; the learner is asked to reason first.
        mark = mark or self.mark
        ending = (f"Turns left: {self.max_turns - self.turn}. {FORMAT_RULE}" if not for_opponent
                  else "Reply with only your move inside <answer> </answer> and no other text.")
        return (f"{TTT_INTROS[self.intro]}\n\n{self._board_text(mark, compact=False)}\n\nLegal moves: "
                f"{' '.join(self.legal_actions())}\nGive your move as <answer>(row,col)</answer>, row and "
                f"column from 1 to 3. {ending}")

    def _opponent_move(self):
        """A cell for the opponent, or None if a callable opponent failed every try."""
        moves = ttt_legal_moves(self.board)
        if self.opponent == "random":
            return self.rng.choice(moves)
        if self.opponent == "minimax":        # perfect, and random among equally good moves: games differ
            values = minimax_values(self.board, self.opponent_mark)
            return self.rng.choice([m for m in moves if values[m] == max(values.values())])
        for _ in range(self.opponent_tries):
            cell = parse_ttt_move(parse_answer(self.opponent(self._prompt(self.opponent_mark, for_opponent=True))))
            if cell in moves:
                return cell
        return None

    def _game_over(self, answer, extra):
        """(obs, reward, done, info) if the board is finished, else None."""
        winner = ttt_winner(self.board)
        if winner is None and EMPTY in self.board:
            return None
        outcome, reward = (("draw", REWARD_DRAW) if winner is None else
                           ("win", REWARD_SUCCESS) if winner == self.mark else ("loss", REWARD_FAILURE))
        return self._end(f"Game over: {outcome}.", outcome, answer, reward, **extra)

    # One learner turn is: the learner's move, then (if the game goes on) the opponent's reply.
    # Rewards come only at the end of the game; in between every step pays 0 (GIFT App. B.3).
    def step(self, response):
        answer, error = self._take_turn(response)
        cell = parse_ttt_move(answer) if error is None else None
        if error is None and (cell is None or not ONE_MOVE_RE.fullmatch(answer)):
            cell, error = None, f"{answer!r} is not one move (row,col) with row and col in 1..3"
        elif error is None and self.board[cell] != EMPTY:
            error = f"cell {ttt_move_str(cell)} is already taken"
        extra = {"action": None if cell is None else ttt_move_str(cell), "opponent_action": None, "mark": self.mark}
        if error:
            return self._invalid(error, answer, board="".join(self.board), **extra)
        self.board = _place(self.board, cell, self.mark)
        over = self._game_over(answer, {**extra, "board": "".join(self.board)})
        if over:
            return over
        reply = self._opponent_move()
        if reply is None:   # GIFT: an opponent with no legal move after its tries ends the game, reward 0
            return self._end("The opponent failed to give a legal move.", "opponent_error", answer,
                             board="".join(self.board), **extra)
        self.board = _place(self.board, reply, self.opponent_mark)
        extra.update(opponent_action=ttt_move_str(reply), board="".join(self.board))
        over = self._game_over(answer, extra)
        if over:
            return over
        # Only reachable after invalid answers (or max_turns < 5): 5 legal moves always finish a game.
        if self.turn >= self.max_turns:
            return self._end("Out of turns.", "truncated", answer, **extra)
        obs = self._observation() if self.compact else \
            f"Your opponent played {extra['opponent_action']}.\n\n" + self._observation()
        return self._result(obs, 0.0, True, "ongoing", answer, **extra)


# -----------------------------------------------------------------------------
# 5. Who's the Spy (GIFT App. A.3): 4 players, 1 spy, 2 description rounds, 1 vote
#
# Three civilians share a word; the spy has a related one. Nobody is told their role. Players describe
# their word in seat order for two rounds, then all vote at once; the most-voted player is out (ties at
# random). Civilians win iff the spy is out. The learner wins iff its side wins.
#
# GIFT's opponents are Qwen3-14B. Our built-in bots need no LLM: each word has a list of honest clue words
# (data/spy_words.json). A bot
#   - describes with one of its clues that nobody has said yet (any of its clues if none is left);
#   - votes for the other player whose words fit its OWN word least:
#         fit(p) = number of words p said that are in clues(own word) + {own word}
#     ties at random. The spy bot uses the same rule, which makes it vote for a civilian whose clues differ
#     from its word, a reasonable way to blend in.
WORD_RE = re.compile(r"[a-z]+")
SPY_INTROS = (
    "Game: Who's the Spy, 4 players. Every player has a secret word. Three players share the same word; one "
    "player, the spy, has a different but related word. Nobody is told whether they are the spy. In each of 2 "
    "rounds, every player in turn describes their own word in a few words without saying it. Then everyone "
    "votes at the same time for one other player, and the player with the most votes is out (a tie is broken "
    "at random). If the spy is voted out, the other three win; otherwise the spy wins.",
    "Who's the Spy: four players each got a secret word. Three of the words are the same and one is a related "
    "word held by the spy, but no one knows which one they got. Players take turns giving short descriptions "
    "of their word, never the word itself, for two rounds, then all vote at once to send one other player "
    "out, with ties settled by chance. The spy's opponents win if the spy is sent out; if anyone else is "
    "sent out, the spy wins.",
)   # GIFT has 4 rule texts redrawn every turn; we draw one per episode


def load_spy_words(path=SPY_WORDS_FILE):
    """(pairs, clues): [[spy_word, civilian_word], ...] and {word: [clue, ...]}, checked by tests/test_games.py."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data["pairs"], data["clues"]


def says_word(text, word):
    """True if `word` appears in `text` as a whole word, case-insensitive."""
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


# The first "Player N" counts ("Player 3, because Player 2 was vague" votes 3); a bare "3" counts only if no
# "Player N" appears. A vote for yourself or a missing seat is a format error.
def parse_vote(answer, voter, players):
    """The seat voted for ("Player 3", "player 3" or a bare "3"); None unless it is another player."""
    found = (re.search(r"player\s*([0-9]+)", answer or "", re.IGNORECASE)
             or re.search(r"(?<![0-9])([0-9]{1,3})(?![0-9])", answer or ""))
    seat = int(found.group(1)[:3]) if found else None
    return seat if seat in players and seat != voter else None


def spy_eliminate(votes, rng):
    """The seat with most votes, ties broken with rng. votes: {voter: seat voted for}."""
    counts = {seat: list(votes.values()).count(seat) for seat in votes.values()}
    return rng.choice(sorted(seat for seat, c in counts.items() if c == max(counts.values())))


class SpyEnv(TextEnv):
    """Who's the Spy from the learner's seat. Answers: a short description, then "Player k". Options:
    opponent (None: the clue bots; a callable plays every other seat), opponent_tries, max_turns."""
    name = "spy"

    def __init__(self, opponent=None, opponent_tries=SPY_OPPONENT_TRIES, max_turns=SPY_MAX_TURNS, compact=False):
        super().__init__(compact)
        self.pairs, self.clues = load_spy_words()
        if opponent is not None and not callable(opponent):
            raise ValueError(f"spy: opponent must be None (built-in bots) or a callable, got {opponent!r}")
        self.opponent, self.opponent_tries, self.max_turns = opponent, int(opponent_tries), int(max_turns)
        self.players = list(range(1, SPY_PLAYERS + 1))

    def reset(self, seed):
        self._begin(seed)
        rng = self.rng
        spy_word, civilian_word = rng.choice(self.pairs)
        # Seats drawn independently, so the learner is the spy 1 time in 4 (GIFT code).
        self.learner_seat, self.spy_seat = rng.choice(self.players), rng.choice(self.players)
        self.words = {p: spy_word if p == self.spy_seat else civilian_word for p in self.players}
        self.intro = rng.randrange(len(SPY_INTROS))
        self.descriptions, self.votes = [], {}        # descriptions: (round, seat, text) in speaking order
        self.speaking_order = [(r, p) for r in range(1, SPY_ROUNDS + 1) for p in self.players]
        self.next_slot = 0
        # Bots seated before the learner speak now. A callable that fails here ends the episode at the
        # learner's first step (reset() must return an observation, so it cannot end the game itself).
        self.broken = not self._others_speak()
        return self._observation()

    @property
    def phase(self):
        return "describe" if self.next_slot < len(self.speaking_order) else "vote"

    # --- what the other players do ----------------------------------------------------------
    def _bot_describe(self, seat, rng):
        # A fresh clue each time, as the rules ask for something new; repeats only when all are used.
        used = {w for _, _, text in self.descriptions for w in WORD_RE.findall(text.lower())}
        clues = self.clues[self.words[seat]]
        return rng.choice([c for c in clues if c not in used] or clues)

    def _bot_vote(self, seat):
        fits = set(self.clues[self.words[seat]]) | {self.words[seat].lower()}
        fit = {p: sum(w in fits for _, s, text in self.descriptions if s == p for w in WORD_RE.findall(text.lower()))
               for p in self.players if p != seat}
        return self.rng.choice([p for p in sorted(fit) if fit[p] == min(fit.values())])

    def _ask_opponent(self, seat):
        """A description (str) or vote (int) from a callable opponent; None after its tries fail.
        Opponents obey the learner's rules: no secret word, a vote for another seat."""
        for _ in range(self.opponent_tries):
            answer = parse_answer(self.opponent(self._prompt(seat, for_opponent=True)))
            if self.phase == "vote":
                vote = parse_vote(answer, seat, self.players)
                if vote is not None:
                    return vote
            elif answer and len(answer) <= MAX_ANSWER_CHARS and not says_word(answer, self.words[seat]):
                return answer
        return None

    def _others_speak(self):
        """Let everyone before the learner's next slot describe. False if a callable opponent failed."""
        while self.phase == "describe":
            round_, seat = self.speaking_order[self.next_slot]
            if seat == self.learner_seat:
                return True
            text = self._bot_describe(seat, self.rng) if self.opponent is None else self._ask_opponent(seat)
            if text is None:
                return False
            self.descriptions.append((round_, seat, text))
            self.next_slot += 1
        return True

    # --- what the learner sees --------------------------------------------------------------
    def legal_actions(self):
        if self.phase != "vote":
            raise NotImplementedError("spy: descriptions are free text; use random_action() for a bot-style one")
        return [f"Player {p}" for p in self.players if p != self.learner_seat]

    def random_action(self, rng):
        return rng.choice(self.legal_actions()) if self.phase == "vote" else self._bot_describe(self.learner_seat, rng)

    def render(self):
        return self._view(self.learner_seat, self.compact)

    def _view(self, seat, compact):
        said = {p: [text for _, s, text in self.descriptions if s == p] for p in self.players}
        if compact:   # "you:2 word:coffee", one line per seat "3:bean/mug", then "say" or "vote"
            lines = [f"you:{seat} word:{self.words[seat]}"] + [f"{p}:" + "/".join(said[p]) for p in self.players]
            return "\n".join(lines + ["say" if self.phase == "describe" else "vote"])
        history = "\n".join(f"Player {p}: " + ("; ".join(f'"{t}"' for t in said[p]) or "(nothing yet)")
                            for p in self.players)
        return f"You are Player {seat}. Your secret word is \"{self.words[seat]}\".\n\nDescriptions so far:\n{history}"

    def _prompt(self, seat=None, for_opponent=False):
        seat = seat or self.learner_seat
        if self.phase == "describe":
            task = (f"Your task now: describe your word in a few words (round {self.speaking_order[self.next_slot][0]} "
                    f"of {SPY_ROUNDS}). Do not say the word itself, and say something new.")
            example = "a short description"
        else:
            choices = ", ".join(f"Player {p}" for p in self.players if p != seat)
            task = f"Your task now: vote for the player you think is the spy. You can vote for: {choices}."
            example = "Player N"                      # a placeholder, so no seat is suggested
        ending = (f"Turns left: {self.max_turns - self.turn}. {FORMAT_RULE}" if not for_opponent
                  else "Reply with only your answer inside <answer> </answer> and no other text.")
        return (f"{SPY_INTROS[self.intro]}\n\n{self._view(seat, compact=False)}\n\n{task}\n"
                f"For example <answer>{example}</answer>. {ending}")

    def _info_extra(self):
        return {"phase": self.phase, "learner_seat": self.learner_seat, "spy_seat": self.spy_seat,
                "role": "spy" if self.learner_seat == self.spy_seat else "civilian"}

    # One learner turn is a description (then the others speak up to the learner's next slot) or, in the
    # end, the vote (then everyone else votes and the game is decided).
    def step(self, response):
        answer, error = self._take_turn(response)
        extra, vote = self._info_extra(), None
        if error is None and self.phase == "describe" and says_word(answer, self.words[self.learner_seat]):
            error = "the description contains your secret word"
        if error is None and self.phase == "vote":
            vote = parse_vote(answer, self.learner_seat, self.players)
            if vote is None:
                error = f"{answer!r} is not a vote for another player (1-{SPY_PLAYERS}, not yourself)"
        if self.broken:                                    # an opponent already failed during reset()
            return self._end("An opponent failed to answer; the game is void.", "opponent_error", answer,
                             valid=error is None, **extra)
        if error:
            return self._invalid(error, answer, **extra)
        if vote is None:                                   # a valid description
            self.descriptions.append((self.speaking_order[self.next_slot][0], self.learner_seat, answer))
            self.next_slot += 1
            if not self._others_speak():
                return self._end("An opponent failed to answer; the game is void.", "opponent_error", answer, **extra)
            # With the default 3 turns, one invalid answer leaves no turn for the vote: truncated.
            if self.turn >= self.max_turns:
                return self._end("Out of turns.", "truncated", answer, **self._info_extra())
            return self._result(self._observation(), 0.0, True, "ongoing", answer, **self._info_extra())
        # The vote: the others decide from the descriptions alone, so votes are simultaneous.
        self.votes = {self.learner_seat: vote}
        for seat in self.players:
            if seat != self.learner_seat:
                self.votes[seat] = self._bot_vote(seat) if self.opponent is None else self._ask_opponent(seat)
                if self.votes[seat] is None:
                    return self._end("An opponent failed to vote; the game is void.", "opponent_error", answer, **extra)
        self.eliminated = spy_eliminate(self.votes, self.rng)
        # A single vote ends the game (GIFT code): the civilians win iff the spy is out.
        civilians_win = self.eliminated == self.spy_seat
        won = civilians_win != (self.learner_seat == self.spy_seat)
        return self._end(f"Votes: {self.votes}. Player {self.eliminated} is out. Player {self.spy_seat} was the spy "
                         f"(\"{self.words[self.spy_seat]}\"); the {'civilians' if civilians_win else 'spy'} win.",
                         "win" if won else "loss", answer, REWARD_SUCCESS if won else REWARD_FAILURE,
                         votes=dict(self.votes), eliminated=self.eliminated, **extra)


# -----------------------------------------------------------------------------
# 6. Arithmetic: the formal task, standing in for MATH (GIFT §4.1.1)
#
# GIFT's formal task is MATH level 3-5, checked by math_verify. A tiny model cannot touch that, so "arith"
# gives seeded integer word problems with a known step-by-step solution:
#
#     start, then `steps` operations applied left to right:  ((7 + 5) * 2) - 3 = 21
#
# split="train": + - and * (by 2 or 3), numbers up to max_operand, the TRAIN wordings and nouns.
# split="ood":   held-out wordings and nouns, exact division (never in train, once per problem),
#                steps + 2 operations, and a start above max_operand (up to 5x). Different in kind.
#
# Each problem also carries a wrong solution with ONE realistic slip (for contrastive or error-weighted
# losses, glow_sft.py): later steps are done right from the slipped value, so the chain reads as valid after
# the slip, and its final answer differs from the true one.
ARITH_TEXT = {
    "train": {
        "who": ("Sam", "Mia", "Leo", "Ana", "Ben", "Zoe"),
        "nouns": ("apples", "marbles", "stickers", "coins", "pencils", "shells"),
        "start": ("{name} has {n} {noun}.", "{name} starts the day with {n} {noun}."),
        "+": ("{name} gets {n} more.", "A friend gives {name} {n} more."),
        "-": ("{name} gives away {n}.", "{name} loses {n}."),
        "*": ("{name} ends up with {n} times as many.", "Now {name} has {n} times as many {noun} as before."),
        "question": ("How many {noun} does {name} have now?",),
    },
    "ood": {
        "who": ("warehouse", "library", "farm", "bakery"),
        "nouns": ("crates", "books", "eggs", "bottles"),
        "start": ("A {name} holds {n} {noun}.", "At dawn the {name} stores {n} {noun}."),
        "+": ("A delivery brings {n} more.", "Another {n} arrive."),
        "-": ("Then {n} are sent away.", "{n} of them are sold."),
        "*": ("The stock becomes {n} times larger.",),
        "/": ("Everything is split into {n} equal parts and only one part stays.",
              "The stock is shared equally among {n} branches and this one keeps its share."),
        "question": ("How many {noun} does the {name} hold at the end?",),
    },
}
ARITH_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def _apply(a, op, n):
    """a op n, or None when a division would not come out exact."""
    return None if op == "/" and (n == 0 or a % n) else ARITH_OPS[op](a, n)


def _chain(value, ops):
    """[(op, n, result)] of the left-to-right computation from value; None once a division is not exact."""
    chain = []
    for op, n in ops:
        value = _apply(value, op, n)
        if value is None:
            return None
        chain.append((op, n, value))
    return chain


def _solution_text(start, chain):
    """ "Step k: a op n = r" lines, each a starting from the previous r, then the answer line."""
    values = [start] + [result for _, _, result in chain]
    lines = [f"Step {k}: {values[k - 1]} {op} {n} = {result}" for k, (op, n, result) in enumerate(chain, 1)]
    return "\n".join(lines + [format_answer(str(values[-1]))]), values[-1]


# The slips a person really makes, one per wrong solution:
#   off_by_one  the result of one step is 1 too high or too low
#   carry       a forgotten carry (+) or borrow (-): 10 off
#   sign        + read as - or the other way round
#   operand     another number of the problem copied in (for * and / another small factor)
# The step is written as the person did it; every later step is then done RIGHT from the slipped
# value, so the only error in the text is the slip itself.
def _slips(start, ops):
    """Every one-slip chain as (kind, step index, [(op, n, result)]) whose final answer is wrong."""
    right = _chain(start, ops)
    numbers = sorted({start} | {n for _, n in ops})
    candidates = []
    for s, (op, n, result) in enumerate(right):
        before = right[s - 1][2] if s else start
        options = [("off_by_one", op, n, result + 1), ("off_by_one", op, n, result - 1)]
        if op == "+" and before % 10 + n % 10 >= 10:
            options.append(("carry", op, n, result - 10))
        if op == "-" and before % 10 < n % 10:
            options.append(("carry", op, n, result + 10))
        if op in "+-":
            swapped = "-" if op == "+" else "+"
            options.append(("sign", swapped, n, _apply(before, swapped, n)))
        pool = numbers if op in "+-" else ARITH_MUL_FACTORS if op == "*" else ARITH_DIVISORS
        options += [("operand", op, m, _apply(before, op, m)) for m in pool
                    if m != n and _apply(before, op, m) is not None]
        for kind, shown_op, shown_n, slipped in options:
            rest = _chain(slipped, ops[s + 1:])           # None if a later division no longer comes out exact
            chain = None if rest is None else right[:s] + [(shown_op, shown_n, slipped)] + rest
            if chain and chain[-1][2] != right[-1][2]:
                candidates.append((kind, s, chain))
    return candidates


def make_arith_problem(rng, steps=2, max_operand=20, split="train"):
    """A seeded multi-step integer word problem: {"question", "answer", "solution", "wrong_solution",
    "wrong_answer", "split", "expression" (compact form), "slip" (which slip, which step)}.
    Both solutions end with the answer line "<answer>N</answer>"."""
    if split not in ARITH_TEXT:
        raise ValueError(f"arith: split must be 'train' or 'ood', got {split!r}")
    if steps < 1 or max_operand < 2:
        raise ValueError(f"arith: need steps >= 1 and max_operand >= 2, got steps={steps}, max_operand={max_operand}")
    ood, text = split == "ood", ARITH_TEXT[split]
    steps = steps + ARITH_OOD_EXTRA_STEPS if ood else steps
    high = max_operand * ARITH_OOD_SCALE if ood else max_operand
    # Draw the numbers; an ood problem whose division step finds no exact divisor is drawn again.
    for _ in range(ARITH_TRIES):
        start = rng.randint(max_operand + 1, high) if ood else rng.randint(1, high)
        divide_at = rng.randrange(steps) if ood else None
        ops, value = [], start
        for s in range(steps):
            op = "/" if s == divide_at else rng.choice("+-*")
            if op == "-" and value < 1:
                op = "+"                                    # counts stay >= 0, so nothing to take away
            n = (rng.choice([d for d in ARITH_DIVISORS if value % d == 0] or [0]) if op == "/" else
                 rng.choice(ARITH_MUL_FACTORS) if op == "*" else
                 rng.randint(1, value) if op == "-" else rng.randint(1, high))
            if op == "/" and (n == 0 or value == 0):
                break                                       # no exact divisor here: draw a new problem
            ops.append((op, n))
            value = _apply(value, op, n)
        if len(ops) == steps:
            break
    else:
        raise RuntimeError(f"arith: no problem with exact division in {ARITH_TRIES} tries")

    name, noun = rng.choice(text["who"]), rng.choice(text["nouns"])
    sentences = [rng.choice(text["start"]).format(name=name, n=start, noun=noun)]
    sentences += [rng.choice(text[op]).format(name=name, n=n, noun=noun) for op, n in ops]
    sentences.append(rng.choice(text["question"]).format(name=name, noun=noun))
    # The compact form: left-to-right order made explicit with brackets, e.g. "(7+5)*2-3=?".
    expression, additive = str(start), False
    for op, n in ops:
        if op in "*/" and additive:
            expression = f"({expression})"
        expression, additive = f"{expression}{op}{n}", op in "+-"

    solution, answer = _solution_text(start, _chain(start, ops))
    # Never empty: an off-by-one in the last step always changes the final answer.
    kind, slip_step, wrong_chain = rng.choice(_slips(start, ops))
    wrong_solution, wrong_answer = _solution_text(start, wrong_chain)
    return {"question": " ".join(sentences), "answer": answer, "solution": solution,
            "wrong_solution": wrong_solution, "wrong_answer": wrong_answer, "split": split,
            "expression": expression + "=?", "slip": f"{kind} at step {slip_step + 1}"}


# 6a. One checker for every free-form answer (arith, math_jsonl, glow_sft.py, evaluate.py).
# Numbers are read exactly as fractions: "12", " 12 ", "12.0", "-3", "1,200", "3/4", "\frac{3}{4}",
# "\boxed{12}". Never eval(). Non-numbers fall back to comparing normalised strings.
NUMBER_RE = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|[+-]?\.[0-9]+")
FRACTION_RE = re.compile(r"([+-]?[0-9]+)\s*/\s*([0-9]+)|\\d?frac\{([+-]?[0-9]+)\}\{([0-9]+)\}")
BOXED_RE = re.compile(r"\\boxed\{(.*)\}")


def parse_number(text):
    """A fractions.Fraction for a plain number, fraction or \\boxed{number}; None otherwise."""
    text = text.strip().strip("$").strip()
    boxed = BOXED_RE.fullmatch(text)
    text = boxed.group(1).strip() if boxed else text
    if NUMBER_RE.fullmatch(text):
        return fractions.Fraction(text.replace(",", ""))
    frac = FRACTION_RE.fullmatch(text)
    if not frac:
        return None
    top, bottom = (frac.group(1), frac.group(2)) if frac.group(1) else (frac.group(3), frac.group(4))
    return fractions.Fraction(int(top), int(bottom)) if int(bottom) else None


def check_answer(response_or_answer, gold):
    """True if the answer equals gold. A reply with <answer> tags is parsed first; a string without
    tags is taken whole as the answer. Numbers compare exactly, or within CHECK_TOL relative."""
    text = str(response_or_answer)
    parsed = parse_answer(text)
    answer = parsed if parsed is not None else text.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return False
    numeric_gold = isinstance(gold, (int, float)) and not isinstance(gold, bool) and np.isfinite(gold)
    got, want = parse_number(answer), fractions.Fraction(gold) if numeric_gold else parse_number(str(gold))
    if got is not None and want is not None:
        return got == want or abs(float(got - want)) <= CHECK_TOL * max(1.0, abs(float(want)))
    # Runs of whitespace become one space; removing them would make "1 2" equal "12".
    answer, gold = (re.sub(r"\s+", " ", s.strip().strip("$").rstrip(".").strip()).lower() for s in (answer, str(gold)))
    return answer == gold


# 6b. The single-answer envs share one step(): the answer is checked against self.problem["answer"]. Arith
# answers must be numbers: a non-number is a format error (-0.1), a wrong number a plain failure (0).
# math_jsonl answers may be words or formulas, so there any non-empty answer is valid.
class ProblemEnv(TextEnv):
    """One problem, one answer. Subclasses draw it (_new_problem), render it and say if only numbers count."""
    numbers_only = False

    def reset(self, seed):
        self._begin(seed)
        self.problem = self._new_problem()
        return self._observation()

    def _prompt(self):
        return (f"Solve the problem.\n\n{self.render()}\n\n{FORMAT_RULE} "
                "Put only the final answer inside the answer tags, as <answer>...</answer>.")

    def step(self, response):
        answer, error = self._take_turn(response)
        gold = self.problem["answer"]
        if error is None and self.numbers_only and parse_number(answer) is None:
            error = f"{answer!r} is not a number"
        if error:
            return self._invalid(error, answer, target=str(gold))
        right = check_answer(answer, gold)
        return self._end(f"The answer is {gold}.", "success" if right else "failure", answer,
                         REWARD_SUCCESS if right else REWARD_FAILURE, target=str(gold))


class ArithEnv(ProblemEnv):
    """One arithmetic word problem; answer with the number. Options: steps, max_operand, split ("train"|"ood")."""
    name = "arith"
    numbers_only = True

    def __init__(self, steps=2, max_operand=20, split="train", compact=False):
        super().__init__(compact)
        make_arith_problem(random.Random(0), steps, max_operand, split)     # fail now on bad options
        self.steps, self.max_operand, self.split = steps, max_operand, split

    def _new_problem(self):
        return make_arith_problem(self.rng, self.steps, self.max_operand, self.split)

    def random_action(self, rng):
        # An integer in the range the problem lives in: the right format, rarely the right value.
        return str(rng.randint(0, 2 * max(self.problem["answer"], self.max_operand)))

    def render(self):
        return self.problem["expression"] if self.compact else self.problem["question"]


def parse_jsonl_line(line, where):
    """One line of a JSONL file as a dict (None if blank); anything else is a ValueError naming `where`."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def jsonl_objects(path):
    """(line number, dict) for every non-blank line; a bad line stops with file:line. The JSONL reader of
    math_jsonl here, evaluate.py's benchmark files, grpo.read_log and (line by line) glow_sft.py's data."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            row = parse_jsonl_line(line, f"{path}:{number}")
            if row is not None:
                yield number, row


class MathJsonlEnv(ProblemEnv):
    """Problems from a file (option path) of {"question": ..., "answer": ...} lines. Any answer text is valid."""
    name = "math_jsonl"

    def __init__(self, path, compact=False):
        super().__init__(compact)
        self.path, self.problems = path, []
        for number, row in jsonl_objects(path):
            if not isinstance(row.get("question"), str) or not row["question"].strip():
                raise ValueError(f"{path}:{number}: field 'question' must be a non-empty string")
            if not isinstance(row.get("answer"), (str, int, float)) or isinstance(row["answer"], bool):
                raise ValueError(f"{path}:{number}: field 'answer' must be a string or a number")
            self.problems.append(row)
        if not self.problems:
            raise ValueError(f"{path}: no problems in the file")

    def _new_problem(self):
        return self.rng.choice(self.problems)

    def random_action(self, rng):
        return str(rng.randint(0, 100))

    def render(self):
        return self.problem["question"]


# -----------------------------------------------------------------------------
# 7. An LLM opponent over HTTP (GIFT App. A.2-A.3: Qwen3-14B behind vLLM's OpenAI API)
#
# Any OpenAI-compatible server works (vLLM, llama.cpp, ...). Standard library only. As in GIFT's code: a
# timeout per call, retries with exponential backoff, and "" after the last failure, which the env counts
# as a failed opponent try (outcome "opponent_error" once the tries are spent).
class OpenAIChatOpponent:
    """opponent(prompt) -> reply text, or "" if the server never answered (see .last_error)."""

    def __init__(self, base_url, model, timeout=10.0, retries=3, temperature=0.5, max_tokens=200,
                 backoff_s=OPPONENT_BACKOFF_S):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries = model, float(timeout), max(1, int(retries))
        self.temperature, self.max_tokens, self.backoff_s = temperature, max_tokens, backoff_s
        self.last_error = None

    def __call__(self, prompt):
        # No system prompt and one user message, as GIFT calls its opponents.
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
        for attempt in range(self.retries):                   # `retries` = attempts in all
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return json.loads(reply.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                self.last_error = f"HTTP {e.code} from {self.url}"
                if e.code < 500:
                    return ""                                 # our request is wrong: retrying will not help
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:   # socket.timeout is TimeoutError
                self.last_error = f"{type(e).__name__}: {e}"
            except (ValueError, KeyError, IndexError, TypeError) as e:            # not the JSON of a chat reply
                self.last_error = f"malformed reply from {self.url}: {e!r}"
            if attempt + 1 < self.retries:                     # a busy server gets time to recover
                time.sleep(self.backoff_s * 2 ** attempt)
        return ""


# -----------------------------------------------------------------------------
# 8. make_env: one entry point for every script
ENV_CLASSES = {"matrix": MatrixEnv, "tictactoe": TicTacToeEnv, "spy": SpyEnv, "arith": ArithEnv,
               "math_jsonl": MathJsonlEnv}
ENV_NAMES = tuple(ENV_CLASSES)


# A typo such as make_env("tictactoe", oponent="minimax") must not silently play the default opponent, so
# every option is checked against the class signature before anything is built.
def make_env(name, **options):
    """make_env("tictactoe", opponent="minimax", compact=True). Unknown names and options fail loudly."""
    if name not in ENV_CLASSES:
        raise ValueError(f"unknown env {name!r}; valid names: {', '.join(ENV_NAMES)}")
    allowed = list(inspect.signature(ENV_CLASSES[name]).parameters)
    for key in options:
        if key not in allowed:
            raise TypeError(f"make_env({name!r}): unknown option {key!r}; options are: {', '.join(allowed)}")
    return ENV_CLASSES[name](**options)


# -----------------------------------------------------------------------------
# 9. Command line: a demo and playing by hand. The demo's learner is a random legal bot (the warm-start policy);
# in arith it answers with the worked solution: a whole solution is a valid reply, as it ends with its answer.
# In play a person types just the answer ("2,3", "Player 2", "12") and we add the tags; Ctrl-D stops.
def main(argv=None):
    parser = argparse.ArgumentParser(description="The GIFT games as text environments (see the top of games.py).")
    parser.add_argument("command", choices=("demo", "play"), help="demo: one bot-vs-bot episode of each game")
    parser.add_argument("game", nargs="?", default="tictactoe", choices=("tictactoe", "spy", "matrix", "arith"))
    parser.add_argument("--seed", type=int, default=1, help="the episode seed")
    parser.add_argument("--opponent", choices=TTT_BOTS, default="minimax", help="tictactoe's opponent")
    args = parser.parse_args(argv)
    play, rng = args.command == "play", random.Random(0)
    for name in [args.game] if play else ["matrix", "tictactoe", "spy", "arith"]:
        options = {"opponent": args.opponent} if name == "tictactoe" else {}
        print(f"\n{'=' * 30} {name} {options or ''} (compact view below) {'=' * 30}")
        print(make_env(name, compact=True, **options).reset(args.seed))
        env = make_env(name, **options)
        obs, done, total = env.reset(args.seed), False, 0.0
        while not done:
            print("\n--- observation ---\n" + obs)
            response = (format_answer(input("\nyour answer> ").strip()) if play else
                        env.problem["solution"] if name == "arith" else
                        format_answer(env.random_action(rng), think="a random legal move"))
            obs, reward, done, info = env.step(response)
            total += reward
            print(f"--- answer --- {response!r}\n    reward {reward:+.1f}  outcome {info['outcome']}")
        print("--- final ---\n" + obs + f"\nreturn {total:+.1f}")


if __name__ == "__main__":
    try:
        main()
    except EOFError:                                       # Ctrl-D while playing
        pass
