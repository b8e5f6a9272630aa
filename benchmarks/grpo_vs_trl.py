"""
benchmarks/grpo_vs_trl.py -- is grpo.py's loss TRL's loss, and is its loop as fast as TRL's GRPOTrainer?

Part 1, parity. We build a real trl.GRPOTrainer around the tiny model and hand its own `_compute_loss`
one batch of prompts + completions, random advantages and "old" log-probs a little off the current ones
(so ratios differ from 1 and some are clipped). We compute grpo.grpo_loss on the same tensors, with the
log-probs from grpo.token_logps_and_entropy, and print both numbers for every loss type. They must agree
to float precision: that is the claim in grpo.py's section 7 comment, checked against TRL's own code.

Part 2, speed. The same tiny model (same weights), a single-turn task (games.py "arith", compact
prompts), the same group size, number of groups, completion length, learning rate and number of steps,
trained by grpo.train and by GRPOTrainer.train. We time every step (generation + reward + update) and
print the median seconds per step of each and the ratio ours / TRL. The first WARMUP_STEPS steps are
not counted (lazy initialisation). Both run on 1 CPU thread unless --threads says otherwise.

TRL is NOT a dependency of the core scripts; it is pinned, with what it needs, in scale/requirements.txt:
    pip install -r scale/requirements.txt
    python benchmarks/grpo_vs_trl.py
Without trl it prints those lines and exits 0.

Run:  python benchmarks/grpo_vs_trl.py                 # ~3-5 minutes on 2 CPU cores
      python benchmarks/grpo_vs_trl.py --steps 30 --group-size 8 --num-groups 8 --threads 1
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch                                                    # noqa: E402

import games                                                    # noqa: E402
import grpo                                                     # noqa: E402

WARMUP_STEPS = 2            # steps not timed: first-call allocations and lazy initialisation
TRL_VERSION = "1.16.0"      # the version grpo.py's loss comment names


def install_hint():
    print(f"trl is not installed. The core does not need it; this benchmark and scale/ do (trl=={TRL_VERSION}):\n"
          "    pip install -r scale/requirements.txt\n"
          "    python benchmarks/grpo_vs_trl.py")


def arith_rows(n, seed):
    """Prompts of the single-turn task: TRL's conversational format plus the env seed for the reward."""
    rows = []
    for i in range(n):
        env = games.make_env("arith", compact=True)
        rows.append({"prompt": [{"role": "user", "content": env.reset(seed + i)}], "env_seed": seed + i})
    return rows


def arith_reward(completions, env_seed, **_):
    """TRL reward function: replay each completion in a fresh env with the prompt's seed (same rule as ours)."""
    out = []
    for completion, s in zip(completions, env_seed):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        env = games.make_env("arith", compact=True)
        env.reset(s)
        out.append(env.step(text)[1])
    return out


def trl_config(args, out, **extra):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=out, per_device_train_batch_size=args.num_groups * args.group_size,
                      num_generations=args.group_size, max_completion_length=args.max_new_tokens,
                      max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                      warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.0, epsilon=0.2,
                      epsilon_high=0.28, temperature=1.0, top_k=0, top_p=1.0, num_iterations=1,
                      gradient_accumulation_steps=1, logging_steps=1, save_strategy="no", report_to="none",
                      use_cpu=True, bf16=False, seed=args.seed, disable_tqdm=True,
                      gradient_checkpointing=False, **extra)          # grpo.py does not recompute activations either


# -----------------------------------------------------------------------------
# Part 1: our grpo_loss against TRL's _compute_loss on the same tensors
def parity(args, tiny_dir):
    from datasets import Dataset
    from trl import GRPOTrainer

    model, tok = grpo.load_policy(tiny_dir)
    print("\nPart 1: loss parity with trl.GRPOTrainer._compute_loss (same model, same tensors)")
    print(f"{'loss_type':>9} | {'ours':>12} | {'TRL':>12} | abs diff")
    gen = torch.Generator().manual_seed(args.seed)
    B, P, C = 8, 12, 6
    prompt_ids = torch.randint(20, len(tok), (B, P), generator=gen)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[:3, :4] = 0                                      # some left padding, as TRL's prompts have
    completion_ids = torch.randint(20, len(tok), (B, C), generator=gen)
    completion_mask = torch.ones(B, C, dtype=torch.long)
    completion_mask[2, 3:] = 0                                   # completions of different lengths
    completion_mask[5, 1:] = 0
    advantages = torch.randn(B, generator=gen)
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logps, _ = grpo.token_logps_and_entropy(model, ids, attn)
    logps = logps[:, P - 1:]                                     # the completion tokens only: (B, C)
    old = logps + 0.3 * torch.randn(B, C, generator=gen)         # ratios off 1: some get clipped
    worst = 0.0
    with tempfile.TemporaryDirectory() as out:
        for loss_type in grpo.LOSS_TYPES:
            trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=arith_reward,
                                  args=trl_config(args, out, loss_type=loss_type),
                                  train_dataset=Dataset.from_list(arith_rows(16, 0)))
            trainer.model.train()
            trainer.current_gradient_accumulation_steps = 1
            inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                      "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
                      "num_items_in_batch": completion_mask.sum()}
            with torch.no_grad():
                theirs = float(trainer._compute_loss(trainer.model, inputs))
                ours, _ = grpo.grpo_loss(logps, old, advantages, completion_mask.float(), eps_low=0.2,
                                         eps_high=0.28, loss_type=loss_type,
                                         max_completion_length=args.max_new_tokens)
            diff = abs(float(ours) - theirs)
            worst = max(worst, diff)
            print(f"{loss_type:>9} | {float(ours):12.8f} | {theirs:12.8f} | {diff:.1e}")
    return worst


# -----------------------------------------------------------------------------
# Part 2: seconds per step, our loop against GRPOTrainer
def time_ours(args, tiny_dir):
    with tempfile.TemporaryDirectory() as out:
        grpo.train(grpo.Settings(model=tiny_dir, game="arith", steps=args.steps, num_groups=args.num_groups,
                                 group_size=args.group_size, max_new_tokens=args.max_new_tokens, lr=args.lr,
                                 eval_games=0, seed=args.seed, out_dir=out, threads=args.threads, entropy_coef=0.0,
                                 overwrite=True))
        with open(os.path.join(out, "log.jsonl")) as f:
            return [json.loads(line)["seconds"] for line in f]


def time_trl(args, tiny_dir):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

    model, tok = grpo.load_policy(tiny_dir)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        rows = arith_rows(args.steps * args.num_groups, 1_000_000)
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=arith_reward,
                              args=trl_config(args, out), train_dataset=Dataset.from_list(rows),
                              callbacks=[timer])
        trainer.train()
    return timer.seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="optimiser steps of each run (the first 2 are not timed)")
    p.add_argument("--num-groups", type=int, default=8, help="prompts (GRPO groups) per step")
    p.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=16, help="completion length limit")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (constant) for both")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    p.add_argument("--seed", type=int, default=0, help="seed of the tensors and of both runs")
    p.add_argument("--skip-speed", action="store_true", help="only run the loss parity check")
    args = p.parse_args(argv)
    if importlib.util.find_spec("trl") is None:
        install_hint()
        return 0
    import trl

    torch.set_num_threads(args.threads)
    tiny_dir = grpo.TINY_DIR                                    # data/tiny, shipped
    print(f"trl {trl.__version__} (grpo.py's comment names {TRL_VERSION}); torch {torch.__version__}; "
          f"{args.threads} thread(s)")
    worst = parity(args, tiny_dir)
    print(f"largest difference: {worst:.1e} ({'equal' if worst < 1e-6 else 'DIFFERENT'})")
    if args.skip_speed:
        return 0
    print(f"\nPart 2: arith, {args.num_groups} groups x {args.group_size}, {args.max_new_tokens} new tokens, "
          f"{args.steps} steps each")
    ours = time_ours(args, tiny_dir)[WARMUP_STEPS:]
    theirs = time_trl(args, tiny_dir)[WARMUP_STEPS:]
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"grpo.py  median {mo:.3f} s/step over {len(ours)} steps")
    print(f"TRL      median {mt:.3f} s/step over {len(theirs)} steps")
    print(f"ratio ours / TRL = {mo / mt:.2f}x  (target <= 0.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
