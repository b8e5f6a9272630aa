"""
experiments/tictactoe_tactics.py -- what did a TicTacToe policy learn? Tactics in play, a probe over every
position, and the best result any policy can get against the random opponent.

Measurements of one question (docs/LOG.md, "the blocking study"):
  in play   TacticsTicTacToe counts, on every legal move of the learner, whether it could win at once and
            did ("took_win"), and whether the opponent threatened to win and it blocked ("blocked").
  probe     one greedy move in EVERY unfinished position that holds a tactic: 2,358 with a win to take and
            976 with a single threat to block, not only the positions a policy meets in its own games.
  optimum   the expectimax value of TicTacToe against the uniformly random opponent, under grpo.py's
            evaluation protocol (empty board, random first player) and GIFT's rewards (win 1, draw 0.5):
            the scale for "wins 80%" -- perfect (minimax) play is NOT it, since it does not exploit mistakes.
  orders    the same exact values for fixed-order players (the first empty cell of one order of the cells),
            with or without taking wins and blocking first: what a board-blind policy can reach; and with
            --model, the one order that best explains the policy's greedy moves in all 4,520 positions.

Run:  python experiments/tictactoe_tactics.py --optimum                          # exact, a few seconds
      python experiments/tictactoe_tactics.py --orders 3000                      # fixed-order players, ~1.5 min
      python experiments/tictactoe_tactics.py --model runs/grpo/checkpoint      # in play (200 games) + probe
"""
import argparse
import functools
import itertools
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import games  # noqa: E402
import grpo  # noqa: E402

EMPTY = games.EMPTY


def winning_cells(board, mark):
    """The empty cells where `mark` completes a line at once (a win to take, or a threat to block)."""
    return [k for k in games.ttt_legal_moves(board) if games.ttt_winner(games._place(board, k, mark)) == mark]


# Every position of the game. A board with no line and x = o or x = o + 1 pieces is always reachable (no prefix
# of its moves can hold a line either), so these are all 4,520 unfinished positions: the 5,478 legal positions
# of TicTacToe minus its 958 finished ones.
@functools.lru_cache(maxsize=None)
def positions():
    """((board, mark to move), ...) for every unfinished position, in a fixed order."""
    return tuple((cells, "x" if cells.count("x") == cells.count("o") else "o")
                 for cells in itertools.product("xo" + EMPTY, repeat=9)
                 if cells.count("x") - cells.count("o") in (0, 1) and EMPTY in cells and games.ttt_winner(cells) is None)


@functools.lru_cache(maxsize=None)
def tactic_positions():
    """((board, mark, kind, cells), ...): "win" where `mark` can win at once (cells: where), else "block" where
    the opponent threatens exactly one cell (two threats cannot both be blocked, so they are left out)."""
    probe = []
    for board, mark in positions():
        wins, threats = winning_cells(board, mark), winning_cells(board, games._other(mark))
        if wins:
            probe.append((board, mark, "win", wins))
        elif len(threats) == 1:
            probe.append((board, mark, "block", threats))
    return tuple(probe)


class TacticsTicTacToe(games.TicTacToeEnv):
    """TicTacToe that counts the learner's tactics in info: win_chances, wins_taken, block_chances, blocks_made."""

    def reset(self, seed):
        self.tactics = dict.fromkeys(("win_chances", "wins_taken", "block_chances", "blocks_made"), 0)
        return super().reset(seed)

    def step(self, response):
        wins, threats = winning_cells(self.board, self.mark), winning_cells(self.board, self.opponent_mark)
        obs, reward, done, info = super().step(response)
        if info["valid"]:
            cell = games.parse_ttt_move(info["action"])
            if wins:
                self.tactics["win_chances"] += 1
                self.tactics["wins_taken"] += cell in wins
            elif threats:
                self.tactics["block_chances"] += 1
                self.tactics["blocks_made"] += cell in threats
        return obs, reward, done, {**info, **self.tactics}


def tactic_rates(episodes):
    """took_win and blocked over a list of finished TacticsTicTacToe episodes."""
    total = {k: sum(ep.info.get(k, 0) for ep in episodes) for k in ("win_chances", "wins_taken", "block_chances", "blocks_made")}
    return {"took_win": total["wins_taken"] / max(1, total["win_chances"]),
            "blocked": total["blocks_made"] / max(1, total["block_chances"]), **total}


def greedy_moves(model, tokenizer, cases, max_new=24):
    """The greedy cell (0..8, or None if unreadable) in each (board, mark, ...) of `cases`, as a first turn."""
    env = games.make_env("tictactoe", compact=grpo.is_compact(model))
    env.reset(grpo.EVAL_SEED_BASE)
    system = None if grpo.is_compact(model) else grpo.SYSTEM_PROMPT
    prompts = [grpo.start_episode(tokenizer, _Fixed(env, case[0], case[1]), 0, 0, system).ids for case in cases]
    config, stops = grpo.generation_config(model, tokenizer, 0.0, max_new), set(grpo.stop_ids(tokenizer, model))
    texts = [tokenizer.decode(grpo.cut_at_stop(new, stops)[0], skip_special_tokens=True)
             for new in grpo.generate_batch(model, tokenizer, prompts, config)]
    return [games.parse_ttt_move(games.parse_answer(text) or "") for text in texts]


def probe_rates(move_at):
    """{"took_win": rate, "blocked": rate} from move_at[(board, mark)], a greedy cell for each tactic position."""
    hits = {"win": [0, 0], "block": [0, 0]}
    for board, mark, kind, cells in tactic_positions():
        hits[kind][0] += move_at[board, mark] in cells
        hits[kind][1] += 1
    return {"took_win": hits["win"][0] / hits["win"][1], "blocked": hits["block"][0] / hits["block"][1]}


def probe(model, tokenizer, max_new=24):
    """Greedy move in every tactic position: {"took_win": rate, "blocked": rate}."""
    cases = tactic_positions()
    return probe_rates({case[:2]: move for case, move in zip(cases, greedy_moves(model, tokenizer, cases, max_new))})


# How board-blind is a policy? Fit one order of the cells to its greedy moves in every position, greedily: the
# next cell of the order is the one the policy plays most often where every earlier cell of the order is taken.
# Agreement = the share of positions where its move is the first empty cell of that order (1.0: a pure order).
def fit_order(boards, moves):
    """(order, agreement) for the moves (cell or None) a policy makes on the boards."""
    order = []
    for _ in range(9):
        reached = [(board, move) for board, move in zip(boards, moves) if all(board[k] != EMPTY for k in order)]
        order.append(max((c for c in range(9) if c not in order),
                         key=lambda c: sum(move == c and board[c] == EMPTY for board, move in reached)))
    first = [next(k for k in order if board[k] == EMPTY) for board in boards]
    return tuple(order), sum(f == move for f, move in zip(first, moves)) / len(boards)


class _Fixed:
    """An env whose reset shows one given position (so grpo.start_episode renders it like a game's first turn)."""
    def __init__(self, env, board, mark):
        self.env, self.board, self.mark, self.name = env, board, mark, env.name

    def reset(self, seed):
        return self.env.set_position(self.board, self.mark)


# The best policy against the uniformly random opponent, by expectimax over the whole game tree:
#     V(s) = max over my moves m of E[ V(s after m and a random reply) ],  terminal: win 1, draw 0.5, loss 0
# The value is unique; the split into wins and draws is not: moves of equal value can trade a little win
# probability for fewer losses. `prefer` breaks those ties: "wins" (more wins) or "safety" (fewer losses).
@functools.lru_cache(maxsize=None)
def _best(board, me, prefer):
    """Outcome probabilities (win, draw, loss) of a best policy for `me`, with `me` to move."""
    best = None
    for m in games.ttt_legal_moves(board):
        after = games._place(board, m, me)
        if games.ttt_winner(after) == me:
            result = (1.0, 0.0, 0.0)
        elif EMPTY not in after:
            result = (0.0, 1.0, 0.0)
        else:
            result = _reply(after, me, prefer)
        key = (round(result[0] + 0.5 * result[1], 12), result[0] if prefer == "wins" else -result[2])
        if best is None or key > best[0]:
            best = (key, result)
    return best[1]


@functools.lru_cache(maxsize=None)
def _reply(board, me, prefer):
    """(win, draw, loss) when the random opponent moves now."""
    them, moves, total = games._other(me), games.ttt_legal_moves(board), [0.0, 0.0, 0.0]
    for m in moves:
        after = games._place(board, m, them)
        result = (0.0, 0.0, 1.0) if games.ttt_winner(after) == them else (0.0, 1.0, 0.0) if EMPTY not in after \
            else _minimax_player(after, me) if prefer == "minimax" else _best(after, me, prefer)
        total = [t + r / len(moves) for t, r in zip(total, result)]
    return tuple(total)


# For comparison, perfect play in the game-theory sense: a minimax player (uniform among its optimal moves)
# never loses, but it treats every move that cannot lose as equally good, where the best policy against
# random picks the ones that give the opponent the most chances to blunder.
@functools.lru_cache(maxsize=None)
def _minimax_player(board, me):
    values = games.minimax_values(board, me)
    moves = [m for m, v in values.items() if v == max(values.values())]
    total = [0.0, 0.0, 0.0]
    for m in moves:
        after = games._place(board, m, me)
        result = (1.0, 0.0, 0.0) if games.ttt_winner(after) == me else (0.0, 1.0, 0.0) if EMPTY not in after \
            else _reply(after, me, "minimax")
        total = [t + r / len(moves) for t, r in zip(total, result)]
    return tuple(total)


def optimum(prefer="wins"):
    """(win, draw, loss) vs random: we move first with p 1/2 (as x), else after a random x. prefer: "wins" or
    "safety" (a best policy, its ties broken so), or "minimax" (the game-theoretic perfect player)."""
    first = (_minimax_player if prefer == "minimax" else lambda b, m: _best(b, m, prefer))((EMPTY,) * 9, "x")
    second = _reply((EMPTY,) * 9, "o", prefer)
    return tuple(0.5 * a + 0.5 * b for a, b in zip(first, second))


# Scripted players that bracket what GRPO learns (docs/LOG.md, 2026-12-06), valued exactly against the random
# opponent. They take a win when there is one ("win"), then block the opponent's win ("win+block"), else move:
#   rule player         uniformly at random among the legal moves. Taking wins alone caps what a policy that
#                       only learned to take its wins can reach; blocking is worth the difference.
#   fixed-order player  to the first empty cell of one fixed order of the 9 cells, whatever the board: no board
#                       reading beyond legality, the shape of what GRPO converges to here.
@functools.lru_cache(maxsize=None)
def _scripted(board, to_move, me, order, tactics):
    """(win, draw, loss) for `me` playing `tactics` ("", "win" or "win+block"), then `order` (None: uniformly
    at random), the opponent uniformly at random, `to_move` to move."""
    winner, moves = games.ttt_winner(board), games.ttt_legal_moves(board)
    if winner or not moves:
        return (0.0, 1.0, 0.0) if not winner else (1.0, 0.0, 0.0) if winner == me else (0.0, 0.0, 1.0)
    if to_move == me:
        wins = winning_cells(board, me) if tactics else []
        threats = winning_cells(board, games._other(me)) if tactics == "win+block" else []
        moves = wins or threats or moves
        moves = moves if order is None else [next(k for k in order if k in moves)]
    results = [_scripted(games._place(board, m, to_move), games._other(to_move), me, order, tactics) for m in moves]
    return tuple(sum(r[i] for r in results) / len(results) for i in range(3))


def _scripted_protocol(order, tactics):
    """(win, draw, loss) under the evaluation protocol: the random opponent moves first half the time."""
    return tuple(0.5 * a + 0.5 * b for a, b in zip(_scripted((EMPTY,) * 9, "x", "x", order, tactics),
                                                   _scripted((EMPTY,) * 9, "x", "o", order, tactics)))


def rule_player(block):
    """(win, draw, loss) of the rule player that takes wins (and blocks, if `block`), else moves at random."""
    return _scripted_protocol(None, "win+block" if block else "win")


def order_player(order, tactics=""):
    """(win, draw, loss) of the fixed-order player with `tactics` ("", "win" or "win+block")."""
    return _scripted_protocol(tuple(order), tactics)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--model", default="", help="a checkpoint to measure in play and on the probe")
    p.add_argument("--games", type=int, default=200, help="evaluation games against random (default 200)")
    p.add_argument("--optimum", action="store_true", help="print the best possible result against random")
    p.add_argument("--orders", type=int, default=0, help="fixed-order players: the best of N random orders (seed 0)")
    args = p.parse_args(argv)
    if args.orders:
        orders = random.Random(0).sample(list(itertools.permutations(range(9))), args.orders)
        for tactics in ("", "win", "win+block"):
            wins = sorted(order_player(o, tactics)[0] for o in orders)
            print(f"fixed order{', ' + tactics + ' first' if tactics else ''}: best of {args.orders} random orders "
                  f"wins {100 * wins[-1]:.1f}%, the median order {100 * wins[len(wins) // 2]:.1f}%")
    if args.optimum:
        for prefer in ("wins", "safety", "minimax"):
            win, draw, loss = optimum(prefer)
            print(f"{'minimax play' if prefer == 'minimax' else f'best policy (ties: {prefer})'} vs random: expected reward "
                  f"{win + 0.5 * draw:.4f}, wins {100 * win:.1f}%, draws {100 * draw:.1f}%, losses {100 * loss:.1f}%")
        for block in (False, True):
            win, draw, loss = rule_player(block)
            print(f"rule: take a win{', else block' if block else ''}, else random: wins {100 * win:.1f}%, "
                  f"draws {100 * draw:.1f}%, losses {100 * loss:.1f}%")
    if args.model:
        model, tokenizer = grpo.load_policy(args.model)
        envs = [TacticsTicTacToe(compact=grpo.is_compact(model)) for _ in range(args.games)]
        rates, episodes = grpo.play(model, tokenizer, envs)
        moves = greedy_moves(model, tokenizer, positions())         # every position, once: probe and order fit
        in_play, on_probe = tactic_rates(episodes), probe_rates(dict(zip(positions(), moves)))
        print(f"{args.model}: wins {100 * rates.get('win', 0):.1f}%, losses {100 * rates.get('loss', 0):.1f}%; in play "
              f"took_win {in_play['wins_taken']}/{in_play['win_chances']}, blocked {in_play['blocks_made']}/"
              f"{in_play['block_chances']}; probe took_win {100 * on_probe['took_win']:.1f}%, blocked {100 * on_probe['blocked']:.1f}%")
        order, agreement = fit_order([board for board, _ in positions()], moves)
        print(f"its greedy move is the first empty cell of the order {order} in {100 * agreement:.1f}% of all "
              f"{len(positions())} positions; that order alone wins {100 * order_player(order)[0]:.1f}%, and "
              f"{100 * order_player(order, 'win')[0]:.1f}% taking its wins first")


if __name__ == "__main__":
    main()
