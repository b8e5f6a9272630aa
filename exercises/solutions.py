"""
exercises/solutions.py -- the teacher's reference answers to the graded exercises.

What it is: small, independent re-implementations of the functions the exercises ask students to write,
with exactly the semantics of the repository's own code. They are written differently on purpose (no
copy-paste from grpo.py, nested.py, glow_sft.py), so that when both pass the same hand-computed tests,
the tests -- not a shared bug -- are what they agree on.

How it is used: `EXERCISE_SOLUTIONS=1 python -m pytest exercises/` grades THIS file instead of the
student's code in the repository (exercises/conftest.py picks the target). A teacher runs it to check
that the tests themselves are right. Students: read it only after your own attempt passes.

    exercise 01  group_advantages, grpo_loss          (grpo.py sections 1 and 4)
    exercise 02  grpo_loss again (its four aggregations)
    exercise 03  ConnectFourEnv                        (a new game behind games.py's interface)
    exercise 04  joint_reward                          (nested.py section 1)
    exercise 05  glow_weights                          (glow_sft.py section 5)
    exercise 06  selfplay_plan                         (grpo.py command lines, round after round)
    exercise 07  turn_weights                          (experiments/blocking.py)
"""
import math
import os
import sys

import torch

# The repository root holds games.py and grpo.py; it is on sys.path under pytest (exercises/conftest.py),
# and this line puts it there when the file runs as a script.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import games  # noqa: E402

# -----------------------------------------------------------------------------
# Exercise 01: group-relative advantages
#
#     A_i = (R_i - mean_g R) / (std_g R + eps)      std with Bessel's correction (divide by G - 1)
#
# A group whose rewards are all equal (std <= eps) gets A = 0 exactly; a group of one has no spread.
ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(rewards, group_size, scale="group", eps=1e-6):
    """rewards: (N,), the G members of each group adjacent. Returns A: (N,)."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    r = rewards.reshape(-1, group_size)                                   # (groups, G)
    deviation = r - r.mean(dim=1, keepdim=True)                           # (groups, G)
    if group_size > 1:
        spread = torch.sqrt((deviation ** 2).sum(dim=1, keepdim=True) / (group_size - 1))   # (groups, 1)
    else:
        spread = torch.zeros_like(r[:, :1])
    if scale == "group":
        divisor = spread + eps
    elif scale == "batch":
        divisor = rewards.std() + eps                                     # unbiased, over all N rewards
    else:
        divisor = torch.ones_like(spread)
    advantages = deviation / divisor
    flat = spread <= eps                                                  # (groups, 1): no signal in the group
    return advantages.masked_fill(flat.expand_as(advantages), 0.0).reshape(-1)


# -----------------------------------------------------------------------------
# Exercises 01-02: the clipped GRPO loss and its four aggregations
#
#     ratio_t = exp(logp_t - old_t)
#     l_t     = -min(ratio_t A, clip(ratio_t, 1 - eps_low, 1 + eps_high) A) + beta k3_t
#     k3_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
#
#     grpo     mean over sequences of each sequence's token mean      (/ num_sequences)
#     bnpo     masked sum / num_tokens                                   (num_tokens: this call's, or given)
#     dapo     the same formula as bnpo; the caller passes the tokens of the whole step / k (k optimiser
#              steps per rollout, TRL's normaliser)
#     dr_grpo  masked sum / (num_sequences * L_max)                      (L_max: given, else T)
#
# grpo.py's grpo_loss also takes entropy=None, entropy_coef=0.0 (the entropy bonus, part of l_t, and an
# "entropy" stat). The grading tests never pass them, so this reference leaves them out.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, beta=0.0, eps_low=0.2, eps_high=0.2,
              loss_type="grpo", max_completion_length=None, num_sequences=None, num_tokens=None):
    """logps, old_logps, mask, ref_logps: (B, T); advantages: (B,). Returns (loss, stats)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta > 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps")
    m = mask.to(logps.dtype)                                              # (B, T)
    A = advantages.reshape(-1, 1)                                         # (B, 1)
    ratio = (logps - old_logps).exp()                                     # (B, T)
    unclipped = ratio * A
    clipped = ratio.clamp(min=1.0 - eps_low, max=1.0 + eps_high) * A
    per_token = -torch.where(clipped < unclipped, clipped, unclipped)     # -min(.,.)
    if beta > 0.0:
        log_r = ref_logps - logps
        kl = log_r.exp() - log_r - 1.0                                    # k3 >= 0
        per_token = per_token + beta * kl
    else:
        kl = torch.zeros_like(logps)

    B, T = logps.shape
    sequences = num_sequences if num_sequences else B
    tokens = num_tokens if num_tokens else torch.clamp(m.sum(), min=1.0)
    masked = per_token * m
    if loss_type == "grpo":
        lengths = torch.clamp(m.sum(dim=1), min=1.0)                      # (B,)
        loss = (masked.sum(dim=1) / lengths).sum() / sequences
    elif loss_type == "dr_grpo":
        loss = masked.sum() / (sequences * (max_completion_length if max_completion_length else T))
    else:                                                                 # bnpo, dapo
        loss = masked.sum() / tokens

    with torch.no_grad():
        n = torch.clamp(m.sum(), min=1.0)
        low = ((ratio < 1.0 - eps_low) & (A < 0)).to(m.dtype)
        high = ((ratio > 1.0 + eps_high) & (A > 0)).to(m.dtype)
        stats = {"kl": float((kl * m).sum() / n), "clip_low": float((low * m).sum() / n),
                 "clip_high": float((high * m).sum() / n), "ratio": float((ratio * m).sum() / n),
                 "tokens": float(m.sum())}
    return loss, stats


# -----------------------------------------------------------------------------
# Exercise 03: Connect Four on a 4x4 board, behind games.py's interface
#
# Cells are numbered row-major with row 0 at the TOP: cell = 4 * row + col. A move names a column 1..4;
# the piece falls to the lowest empty cell of that column. "x" moves first. Four of one mark in a row,
# column or diagonal wins; a full board without such a line is a draw.
C4_SIZE = 4
C4_CELLS = C4_SIZE * C4_SIZE
C4_MAX_TURNS = C4_CELLS // 2            # the learner places at most 8 pieces on a 16-cell board
C4_OPPONENT_TRIES = 3                   # as TicTacToe's callable opponent
C4_LINES = tuple(
    [tuple(C4_SIZE * r + c for c in range(C4_SIZE)) for r in range(C4_SIZE)]            # rows
    + [tuple(C4_SIZE * r + c for r in range(C4_SIZE)) for c in range(C4_SIZE)]          # columns
    + [tuple(C4_SIZE * i + i for i in range(C4_SIZE)),                                  # diagonal
       tuple(C4_SIZE * i + (C4_SIZE - 1 - i) for i in range(C4_SIZE))])                 # anti-diagonal
C4_INTRO = ("Connect Four on a 4x4 grid. Players take turns dropping their mark into a column; it falls "
            "to the lowest empty cell. Four marks in a line (a row, a column or a diagonal) win. A full "
            "grid without such a line is a draw.")


def c4_winner(board):
    for line in C4_LINES:
        first = board[line[0]]
        if first != games.EMPTY and all(board[k] == first for k in line):
            return first
    return None


def c4_drop_cell(board, col):
    """The cell a piece dropped into column col (0-based) lands in, or None if the column is full."""
    for row in range(C4_SIZE - 1, -1, -1):
        if board[C4_SIZE * row + col] == games.EMPTY:
            return C4_SIZE * row + col
    return None


def c4_legal_columns(board):
    return [] if c4_winner(board) else [c for c in range(C4_SIZE) if c4_drop_cell(board, c) is not None]


def c4_parse_column(answer):
    """0..3 for an answer that is exactly one column number 1..4 (spaces around allowed), else None."""
    text = (answer or "").strip()
    return int(text) - 1 if text in {str(c + 1) for c in range(C4_SIZE)} else None


class ConnectFourEnv(games.TextEnv):
    """Connect Four 4x4 against a random or callable opponent. Answer a column number 1-4."""
    name = "connect4"

    def __init__(self, opponent="random", opponent_tries=C4_OPPONENT_TRIES, max_turns=C4_MAX_TURNS, compact=False):
        super().__init__(compact)
        if opponent != "random" and not callable(opponent):
            raise ValueError(f"connect4: opponent must be 'random' or a callable, got {opponent!r}")
        self.opponent, self.opponent_tries, self.max_turns = opponent, int(opponent_tries), int(max_turns)

    # The learner moves first with p = 1/2. Otherwise the opponent's opening is a random column, so a
    # callable opponent is never asked during reset (as TicTacToe).
    def reset(self, seed):
        self._begin(seed)
        learner_first = self.rng.random() < 0.5
        self.mark = "x" if learner_first else "o"
        self.opponent_mark = "o" if learner_first else "x"
        self.board = (games.EMPTY,) * C4_CELLS
        if not learner_first:
            self._drop(self.rng.choice(c4_legal_columns(self.board)), self.opponent_mark)
        return self._observation()

    def _drop(self, col, mark):
        cell = c4_drop_cell(self.board, col)
        self.board = self.board[:cell] + (mark,) + self.board[cell + 1:]

    def legal_actions(self):
        return [str(c + 1) for c in c4_legal_columns(self.board)]

    def random_action(self, rng):
        return rng.choice(self.legal_actions())

    def _rows(self):
        return ["".join(self.board[C4_SIZE * r:C4_SIZE * r + C4_SIZE]) for r in range(C4_SIZE)]

    def render(self):
        return self._board_text(self.mark, self.compact)

    def _board_text(self, mark, compact):
        if compact:   # four rows, top first; your mark; the legal columns
            return "\n".join(self._rows()) + f"\nyou:{mark}\n" + "".join(self.legal_actions())
        other = "o" if mark == "x" else "x"
        grid = [" ".join(str(c + 1) for c in range(C4_SIZE))] + [" ".join(row) for row in self._rows()]
        return (f"You play \"{mark}\", your opponent plays \"{other}\".\n"
                "Board (column numbers on top, the bottom row last):\n" + "\n".join(grid))

    def _prompt(self, mark, for_opponent):
        ending = (f"Turns left: {self.max_turns - self.turn}. {games.FORMAT_RULE}" if not for_opponent
                  else "Reply with only your column inside <answer> </answer> and no other text.")
        return (f"{C4_INTRO}\n\n{self._board_text(mark, compact=False)}\n\nLegal columns: "
                f"{' '.join(self.legal_actions())}\nGive your move as <answer>N</answer>, N a column from 1 to 4. "
                f"{ending}")

    def _observation(self):
        return self.render() if self.compact else self._prompt(self.mark, for_opponent=False)

    def _opponent_column(self):
        legal = c4_legal_columns(self.board)
        if self.opponent == "random":
            return self.rng.choice(legal)
        for _ in range(self.opponent_tries):
            col = c4_parse_column(games.parse_answer(self.opponent(self._prompt(self.opponent_mark, True)) or ""))
            if col in legal:
                return col
        return None

    def _game_over(self, answer, extra):
        winner = c4_winner(self.board)
        if winner is None and games.EMPTY in self.board:
            return None
        outcome, reward = (("draw", games.REWARD_DRAW) if winner is None else
                           ("win", games.REWARD_SUCCESS) if winner == self.mark else ("loss", games.REWARD_FAILURE))
        return self._result(self._final_text(f"Game over: {outcome}."), reward, True, outcome, answer, **extra)

    def step(self, response):
        answer, error = self._take_turn(response)
        col = c4_parse_column(answer) if error is None else None
        extra = {"action": None if col is None else str(col + 1), "opponent_action": None, "mark": self.mark}
        if error is None and col is None:
            error = f"{answer!r} is not a column number 1..{C4_SIZE}"
        elif error is None and col not in c4_legal_columns(self.board):
            error = f"column {col + 1} is full"
        if error:
            return self._invalid(error, answer, board="".join(self.board), **extra)
        self._drop(col, self.mark)
        over = self._game_over(answer, {**extra, "board": "".join(self.board)})
        if over:
            return over
        reply = self._opponent_column()
        if reply is None:
            return self._result(self._final_text("The opponent failed to give a legal move."),
                                games.REWARD_FAILURE, True, "opponent_error", answer, board="".join(self.board), **extra)
        self._drop(reply, self.opponent_mark)
        extra.update(opponent_action=str(reply + 1), board="".join(self.board))
        over = self._game_over(answer, extra)
        if over:
            return over
        if self.turn >= self.max_turns:
            return self._result(self._final_text("Out of turns."), games.REWARD_FAILURE, True, "truncated",
                                answer, **extra)
        obs = self._observation() if self.compact else \
            f"Your opponent played column {reply + 1}.\n\n" + self._observation()
        return self._result(obs, 0.0, True, "ongoing", answer, **extra)


# -----------------------------------------------------------------------------
# Exercise 04: the joint reward of a nested trajectory
#
#     mean  (1/K) sum_k R_k        min  min_k R_k        product  prod_k R_k
JOINT_RULES = ("mean", "min", "product")


def joint_reward(rewards, rule="mean"):
    rewards = list(rewards)
    if not rewards:
        raise ValueError("joint_reward: no sub-task rewards")
    if rule not in JOINT_RULES:
        raise ValueError(f"joint must be one of {JOINT_RULES}, got {rule!r}")
    if rule == "mean":
        return math.fsum(rewards) / len(rewards)
    if rule == "min":
        return min(rewards)
    total = 1.0
    for r in rewards:
        total *= r
    return total


# -----------------------------------------------------------------------------
# Exercise 05: GLOW sample weights
#
#     gain_i = prev_i - curr_i       (prev_i = NaN, an unseen id: the batch mean of curr instead)
#     w_i    = clamp(alpha (1 - sigmoid(beta gain_i)), w_min, w_max)          (+1 inside with offset)
GLOW_ALPHA, GLOW_BETA, GLOW_W_MIN, GLOW_W_MAX = 1.0, 20.0, 0.5, 5.0      # the official defaults


def glow_weights(prev_loss, curr_loss, alpha=GLOW_ALPHA, beta=GLOW_BETA, w_min=GLOW_W_MIN, w_max=GLOW_W_MAX,
                 offset=False):
    """prev_loss, curr_loss: (B,); prev may hold NaN. Returns w: (B,), no gradient."""
    with torch.no_grad():
        curr = curr_loss.detach().to(torch.float32)
        prev = prev_loss.detach().to(device=curr.device, dtype=torch.float32)
        prev = torch.where(prev.isnan(), torch.full_like(prev, float(curr.mean())), prev)
        gain = prev - curr
        w = alpha / (1.0 + torch.exp(beta * gain))                      # 1 - sigmoid(x) = 1 / (1 + e^x)
        if offset:
            w = w + 1.0
        return torch.clamp(w, min=w_min, max=w_max)


# -----------------------------------------------------------------------------
# Exercise 06: a self-play schedule of grpo.py runs
#
# Round 0 trains the starting model against `first_opponent`. Round r >= 1 starts from round r-1's
# checkpoint and plays against a frozen copy of that same checkpoint (--opponent model:PATH).
def round_dir(out_dir, r):
    return os.path.join(out_dir, f"round{r}")


def selfplay_plan(rounds, steps_per_round, out_dir, start_model="tiny", first_opponent="random", extra_args=()):
    """A list of `rounds` argument lists for grpo.main (grpo.parse_settings reads each), one per round."""
    if int(rounds) < 1:
        raise ValueError(f"selfplay_plan: rounds must be at least 1, got {rounds!r}")
    plan = []
    for r in range(int(rounds)):
        previous = os.path.join(round_dir(out_dir, r - 1), "checkpoint") if r else None
        plan.append(["--model", previous or start_model,
                     "--opponent", f"model:{previous}" if previous else first_opponent,
                     "--steps", str(int(steps_per_round)),
                     "--seed", str(r),
                     "--out-dir", round_dir(out_dir, r), *map(str, extra_args)])
    return plan


def main():
    """Runs the plan: python exercises/solutions.py ROUNDS STEPS OUT_DIR [grpo flags] (a demo; it trains)."""
    import grpo
    rounds, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    for argv in selfplay_plan(rounds, steps, out, extra_args=sys.argv[4:]):
        print("python grpo.py " + " ".join(argv))
        grpo.main(argv)


if __name__ == "__main__":
    main()


# -----------------------------------------------------------------------------
# Exercise 07: the turn discount. Walk each row from the END: a run of 1s is a turn; the weight of a turn
# is gamma to the number of turns already passed on the way back.
def turn_weights(mask, gamma):
    weights = torch.ones_like(mask, dtype=torch.float32)
    for row in range(mask.shape[0]):
        turns_behind, inside = 0, False
        for t in range(mask.shape[1] - 1, -1, -1):
            sampled = bool(mask[row, t] > 0)
            if sampled:
                weights[row, t] = gamma ** turns_behind
            elif inside:                     # we just walked out of a turn (backwards)
                turns_behind += 1
            inside = sampled
    return weights
