"""
experiments/blocking.py -- can GRPO learn to BLOCK at TicTacToe? The instruments of the blocking study.

`python grpo.py` learns to take its wins but blocks an immediate threat no more often than the warm start
(docs/LOG.md). Each idea below was a flag of grpo.py until commit 6f9ef47; each was measured and none
brought the losses down (docs/RESULTS.md, "Blocking study"), so they live here, on grpo.train's hooks:
  --bot greedy | greedy:P | minimax:P   opponents that punish a missed block: greedy completes a line when it
                                        can (else random); X:P plays bot X with probability P, else random
  --tactic-start P                      a share P of training games starts in a position with a win to take or
                                        a single threat to block, so a whole group faces the same decision
  --turn-discount g                     per-turn credit: a move k learner turns before the end gets g^k of A
  --env-rng per-game                    the G games of a group share the start but not the opponent's dice
Evaluation is always the default's: 200 greedy games against the random bot, plus tactics in play.

Run:  python experiments/blocking.py --tactic-start 0.5 --bot greedy --out-dir runs/blocking
      python experiments/blocking.py --turn-discount 0.5      # exercise 07 grades turn_weights below
"""
import os
import random
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import games  # noqa: E402
import grpo  # noqa: E402
from grpo import flag  # noqa: E402
from tictactoe_tactics import TacticsTicTacToe, tactic_positions, tactic_rates, winning_cells  # noqa: E402


@dataclass
class Settings(grpo.Settings):
    bot: str = flag("random", "training opponent: random | minimax | greedy | greedy:P | minimax:P")
    tactic_start: float = flag(0.0, "chance that a training game starts in a tactic position")
    turn_discount: float = flag(1.0, "gamma: a move k learner turns before the end gets gamma^k of A (1 = GIFT)")
    env_rng: str = flag("shared", "shared | per-game: do the games of a group share the opponent's dice?", ("shared", "per-game"))
    out_dir: str = flag("runs/blocking", "as grpo.py")


def parse_bot(spec):
    """(bot, P): "greedy" -> ("greedy", None), "minimax:0.5" -> ("minimax", 0.5). A bad spec is an error."""
    name, sep, p = spec.partition(":")
    if name not in ("random", "greedy", "minimax") or (sep and name == "random"):
        raise ValueError(f"--bot: expected random, minimax, greedy, greedy:P or minimax:P, got {spec!r}")
    try:
        prob = float(p) if sep else None
    except ValueError:
        prob = -1.0
    if prob is not None and not 0.0 <= prob <= 1.0:
        raise ValueError(f"--bot {spec!r}: P must be a number in [0, 1]")
    return name, prob


class StudyTicTacToe(TacticsTicTacToe):
    """TicTacToe with the study's opponents, tactic starts and per-game dice (stream k of the group)."""

    def __init__(self, bot="random", tactic_start=0.0, stream=None, **options):
        super().__init__(opponent="random", **options)
        self.bot, self.tactic_start, self.stream = parse_bot(bot), tactic_start, stream

    def reset(self, seed):
        obs = super().reset(seed)
        if self.tactic_start and self.rng.random() < self.tactic_start:
            board, mark, _, _ = self.rng.choice(tactic_positions())
            obs = self.set_position(board, mark)
        if self.stream is not None:                     # the start stays the seed's; the dice become the game's own
            self.rng = random.Random(f"{seed}/{self.stream}")
        return obs

    def _opponent_move(self):
        name, p = self.bot
        moves = games.ttt_legal_moves(self.board)
        if name == "random" or (p is not None and self.rng.random() >= p):
            return self.rng.choice(moves)
        if name == "greedy":
            return self.rng.choice(winning_cells(self.board, self.opponent_mark) or moves)
        values = games.minimax_values(self.board, self.opponent_mark)
        return self.rng.choice([m for m in moves if values[m] == max(values.values())])


# Turn discount (exercise 07). With a reward only at the end, every move of a lost game is blamed alike,
# although the move that lost it is usually the last one (a missed block). The REINFORCE discount on the
# return, applied to the group advantage:
#     A_{i,t} = gamma^k(t) * A_i      k(t) = learner turns of episode i after the turn of token t
# Turns are the runs of 1s in the loss mask: the env always writes tokens between two turns.
def turn_weights(mask, gamma):
    """(N, T) float mask -> (N, T) weights gamma^k on sampled tokens (1 on the others, which are masked)."""
    sampled = mask > 0
    previous = torch.zeros_like(sampled)
    previous[:, 1:] = sampled[:, :-1]
    starts = (sampled & ~previous).to(torch.float32)                       # (N, T): 1 where a turn begins
    turns_after = starts.sum(dim=1, keepdim=True) - starts.cumsum(dim=1)    # (N, T)
    weights = torch.pow(torch.tensor(float(gamma)), turns_after)
    return torch.where(sampled, weights, torch.ones_like(weights))


def run(cfg):
    parse_bot(cfg.bot)
    if not 0.0 < cfg.turn_discount <= 1.0 or not 0.0 <= cfg.tactic_start <= 1.0:
        raise ValueError("--turn-discount must be in (0, 1] and --tactic-start in [0, 1]")

    def make_envs(step, compact, opponent):
        return [StudyTicTacToe(cfg.bot, cfg.tactic_start, k if cfg.env_rng == "per-game" else None,
                               compact=compact, random_start=True)
                for _ in range(cfg.num_groups) for k in range(cfg.group_size)]

    def evaluate(model, tokenizer, opponent, progress=True):
        envs = [TacticsTicTacToe(compact=grpo.is_compact(model)) for _ in range(cfg.eval_games)]
        rates, episodes = grpo.play(model, tokenizer, envs, 0.0, cfg.max_new_tokens, None, progress)
        return {**rates, **{k: v for k, v in tactic_rates(episodes).items() if k in ("took_win", "blocked")}}

    def discount(advantages, episodes, mask):
        return advantages[:, None] * turn_weights(mask, cfg.turn_discount)      # (N,) -> (N, T)

    return grpo.train(cfg, make_envs=make_envs, evaluate_fn=evaluate,
                      advantage_fn=discount if cfg.turn_discount < 1.0 else None)


if __name__ == "__main__":
    settings = grpo.parse_settings(Settings, sys.argv[1:], __doc__.split("\n\n")[0].strip(), skip=("game", "opponent"))
    torch.set_num_threads(settings.threads or torch.get_num_threads())
    before, after = run(settings)
    print("before:", grpo.format_rates(before), "\nafter: ", grpo.format_rates(after))
