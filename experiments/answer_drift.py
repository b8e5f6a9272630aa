"""
experiments/answer_drift.py -- why did the tiny model's answers drift to "<answer>(2,2)</answer></answer>..."?

Before 2026-12-02 a reply counted if it held an answer anywhere, so text after "</answer>" cost nothing. Runs
of `python grpo.py` then drifted, at a random step, from 4-token answers to the 24-token limit (docs/LOG.md).
Two measurements of the cause, on one batch of games played by a policy:

  1. No restoring force. Within a group, does stopping after "</answer>" pay? We compare the GRPO advantage
     of the games in which some answer ran on past "</answer>" with the games in which none did, under the
     old rule (tolerant: trailing text is fine) and the current one (games.answer_ends_reply: trailing text
     makes the turn invalid, -0.1, as GIFT's parser does).
  2. A push away from stopping. At the position right after "</answer>", the entropy bonus moves the stop
     token's logit z_s by c * dH/dz_s, and for a softmax
         dH/dz_s = -p_s (log p_s + H)       < 0 whenever p_s > exp(-H), i.e. whenever stopping is likely
     so the bonus lowers the stop logit at every confident stop, in every step, whatever the reward says.
Under the old rule nothing pushes back (1), so the bonus (2) and the sampling noise of small groups walk the
stop probability down until turns run on to the limit, where the appended stop token has mask 0 and is never
reinforced again.

Run:  python experiments/answer_drift.py                   # shipped tiny, 16 groups x 16 games, T = 1.3
      python experiments/answer_drift.py --model runs/grpo/checkpoint --temperature 1.0
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import games  # noqa: E402
import grpo  # noqa: E402


class Tolerant(games.TicTacToeEnv):
    """The old rule: any complete answer counts, whatever follows it."""

    def _take_turn(self, response):
        real, games.answer_ends_reply = games.answer_ends_reply, lambda text: True
        try:
            return super()._take_turn(response)
        finally:
            games.answer_ends_reply = real


def ran_on(tokenizer, ep, close_id):
    """True if some sampled turn of the episode holds tokens after its "</answer>" (besides the stop)."""
    turns, current = [], []
    for t, m in zip(ep.ids, ep.mask):
        if m:
            current.append(t)
        elif current:
            turns, current = turns + [current], []
    turns += [current] if current else []
    return any(close_id in turn and len(turn) - 1 - turn.index(close_id) > 1 for turn in turns)


def advantage_gap(model, tokenizer, env_class, args):
    """Mean advantage of the games that ran on past "</answer>", minus that of the games that did not."""
    close_id = tokenizer.convert_tokens_to_ids("</answer>")
    n = args.groups * args.group_size
    envs = [env_class(compact=grpo.is_compact(model), random_start=True) for _ in range(n)]
    seeds = [s for s in grpo.train_seeds(args.seed, 0, args.groups) for _ in range(args.group_size)]
    torch.manual_seed(args.seed)
    episodes = grpo.rollout(model, tokenizer, envs, seeds, temperature=args.temperature, progress=True)
    adv = grpo.group_advantages(torch.tensor([ep.reward for ep in episodes]), args.group_size)
    drift = torch.tensor([ran_on(tokenizer, ep, close_id) for ep in episodes])
    if drift.all() or not drift.any():
        return {"ran_on": int(drift.sum()), "games": n, "gap": float("nan")}
    return {"ran_on": int(drift.sum()), "games": n, "gap": float(adv[drift].mean() - adv[~drift].mean())}


@torch.no_grad()
def entropy_push(model, tokenizer, args):
    """dH/dz_stop at the positions right after "</answer>" in the model's own greedy turns."""
    close_id, stop_id = tokenizer.convert_tokens_to_ids("</answer>"), tokenizer.eos_token_id
    envs = [games.make_env("tictactoe", compact=grpo.is_compact(model)) for _ in range(args.groups * args.group_size)]
    _, episodes = grpo.play(model, tokenizer, envs, progress=False)
    pushes = []
    for ep in episodes:
        ids = torch.tensor([ep.ids])
        logits = model(input_ids=ids).logits[0].float()                          # (T, V)
        logp = torch.log_softmax(logits, -1)
        H = -(logp.exp() * logp).sum(-1)                                          # (T,)
        for t in range(len(ep.ids) - 1):
            if ep.ids[t] == close_id and ep.mask[t]:
                p_s = logp[t, stop_id].exp()
                pushes.append(float(-p_s * (logp[t, stop_id] + H[t])))           # dH/dz_stop at position t
    pushes = torch.tensor(pushes)
    return {"positions": len(pushes), "negative_share": float((pushes < 0).float().mean()),
            "mean_dH_dz_stop": float(pushes.mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--model", default="tiny", help="tiny, or a checkpoint folder (default: tiny)")
    p.add_argument("--groups", type=int, default=16, help="start states (default 16)")
    p.add_argument("--group-size", type=int, default=16, help="games per start state (default 16)")
    p.add_argument("--temperature", type=float, default=1.3, help="sampling temperature: above 1, more run-on answers")
    p.add_argument("--seed", type=int, default=0, help="seed of the start states and the sampling")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = grpo.load_policy(args.model)
    for name, env_class in (("old rule: trailing text allowed", Tolerant), ("current rule: reply ends with answer",
                                                                           games.TicTacToeEnv)):
        r = advantage_gap(model, tokenizer, env_class, args)
        print(f"{name}: {r['ran_on']} of {r['games']} games ran on past </answer>; their mean advantage minus "
              f"the others' = {r['gap']:+.3f}")
    push = entropy_push(model, tokenizer, args)
    print(f"entropy bonus at {push['positions']} greedy stops after </answer>: dH/dz_stop < 0 at "
          f"{100 * push['negative_share']:.1f}% of them, mean {push['mean_dH_dz_stop']:+.4f}")
    return push


if __name__ == "__main__":
    main()
