"""
experiments/supervised_ceiling.py -- can the tiny model learn what GRPO did not teach it? A supervised check.

GRPO teaches `tiny` to take its wins at TicTacToe but not to block, and to pick the equilibrium action in
only about 60% of the matrix games (docs/LOG.md). Is that the model's size or the method?
This script trains a fresh copy of the model by plain cross-entropy on the RIGHT answer, the most direct
signal there is, and prints how fast its greedy accuracy rises:

  block    the 976 positions with a single threat to block (tictactoe_tactics.tactic_positions); 400 held out
  win      the 2,358 positions with a win to take; 400 held out
  matrix   the 96 compact observations of the nine classic matrix games and their equilibrium action
           (memorisation: every one is trained on and tested)

The loss is on the answer's first token after "<answer>" (the move token for TicTacToe, the action digit for
matrix games), against the candidates of that task only:

    loss = - mean over the batch of log softmax(logits[candidates])[right answer]      (B,) -> scalar

A task it learns here in a few hundred steps is within the model's reach; GRPO then has a problem of
signal or exploration, not of capacity. Tiny-style tokenizers only (one token per move or digit).

Run:  python experiments/supervised_ceiling.py --task block        # about 1 min on one core
      python experiments/supervised_ceiling.py --task matrix --lr 2e-4 --steps 400
"""
import argparse
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import games  # noqa: E402
import grpo  # noqa: E402
from tictactoe_tactics import tactic_positions  # noqa: E402

TASKS = ("block", "win", "matrix")
HELD_OUT = 400          # TicTacToe positions kept out of training, to test that a rule was learned
MATRIX_SEEDS = 5000     # resets of the matrix env that reach all 96 distinct compact observations


def first_answer_token(tokenizer, answer):
    return tokenizer(answer, add_special_tokens=False)["input_ids"][0]


def prompt_ids(tokenizer, observation):
    text = grpo.render(tokenizer, [{"role": "user", "content": observation}], True) + "<answer>"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def examples(task, tokenizer):
    """[(prompt ids, candidate token ids, set of right token ids)] for one task."""
    out = []
    if task == "matrix":
        # The candidates are the actions 1..6 of the largest game in every row, so rows stack; a number
        # past a game's own actions is simply a wrong answer.
        env, seen = games.make_env("matrix", compact=True), set()
        most = max(max(len(A), len(A[0])) for _, A, _ in games.MATRIX_GAMES)                # 6 actions
        digits = [first_answer_token(tokenizer, str(a)) for a in range(1, most + 1)]
        for seed in range(MATRIX_SEEDS):
            obs = env.reset(seed)
            if obs not in seen:
                seen.add(obs)
                out.append((prompt_ids(tokenizer, obs), digits, {digits[env.target - 1]}))
        return out
    env = games.make_env("tictactoe", compact=True)
    env.reset(0)
    moves = [first_answer_token(tokenizer, games.ttt_move_str(k)) for k in range(9)]
    for board, mark, kind, cells in tactic_positions():
        if kind == task:
            out.append((prompt_ids(tokenizer, env.set_position(board, mark)), moves, {moves[c] for c in cells}))
    return out


def left_pad(rows, pad_id):
    """Left padding, so the last column is the answer slot of every row. -> ids, attention (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        attn[i, width - len(r):] = 1
    return ids, attn


def answer_logits(model, tokenizer, batch):
    """(B, C) logits of the candidates at the answer slot."""
    ids, attn = left_pad([p for p, _, _ in batch], tokenizer.pad_token_id)
    last = model(input_ids=ids, attention_mask=attn).logits[:, -1]                  # (B, V)
    return torch.stack([last[i, c] for i, (_, c, _) in enumerate(batch)])          # (B, C)


@torch.no_grad()
def accuracy(model, tokenizer, items, chunk=256):
    model.eval()
    hits = 0
    for s in range(0, len(items), chunk):
        batch = items[s:s + chunk]
        best = answer_logits(model, tokenizer, batch).argmax(dim=1)
        hits += sum(c[int(b)] in right for b, (_, c, right) in zip(best, batch))
    model.train()
    return hits / len(items)


def run(task, model_name="tiny", steps=600, batch=64, lr=7e-4, seed=0, every=100):
    """Trains and returns [(step, loss, accuracy)], accuracy on the held-out set (all 96 for matrix)."""
    torch.manual_seed(seed)
    model, tokenizer = grpo.load_policy(model_name)
    items = examples(task, tokenizer)
    random.Random(seed).shuffle(items)
    test, train = (items, items) if task == "matrix" else (items[:HELD_OUT], items[HELD_OUT:])
    print(f"{task}: {len(items)} examples, {len(train)} trained on, {len(test)} tested")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng, history, t0 = random.Random(seed), [(0, None, accuracy(model, tokenizer, test))], time.time()
    print(f"step 0: accuracy {history[0][2]:.3f}")
    for step in range(1, steps + 1):
        chunk = rng.sample(train, min(batch, len(train)))
        logits = answer_logits(model, tokenizer, chunk)                             # (B, C)
        # Several right cells (two ways to win) share the target mass equally.
        target = torch.tensor([[float(c in right) for c in cands] for _, cands, right in chunk])
        target = target / target.sum(dim=1, keepdim=True)                           # (B, C)
        loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            history.append((step, float(loss.detach()), accuracy(model, tokenizer, test)))
            print(f"step {step}: loss {history[-1][1]:.3f}  accuracy {history[-1][2]:.3f}  ({time.time() - t0:.0f} s)")
    return history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--task", choices=TASKS, default="block", help="what to learn (default: block)")
    p.add_argument("--model", default="tiny", help="tiny or a folder with a tiny-style tokenizer (default: tiny)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps (default: 600)")
    p.add_argument("--batch", type=int, default=64, help="examples per step (default: 64)")
    p.add_argument("--lr", type=float, default=7e-4, help="AdamW learning rate; grpo.py's default (default: 7e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the batches and torch (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return run(args.task, args.model, args.steps, args.batch, args.lr, args.seed)


if __name__ == "__main__":
    main()
