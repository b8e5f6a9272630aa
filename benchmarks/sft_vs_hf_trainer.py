"""
benchmarks/sft_vs_hf_trainer.py -- is our hand-written SFT loop as fast as transformers.Trainer?

Same tiny model (same initial weights), same trajectories, same batch size, same padding (our collate,
right padding to the longest row of each batch), same optimiser settings (AdamW, cosine with 10% warmup,
grad clip 1.0), on the CPU. Ours is glow_sft.train_step with --weighting none; theirs is Trainer.train().
We count the real (non-padding) tokens of the batches each one trained on, after a few warm-up steps,
and print tokens/s for both and the ratio. The runs alternate (ours, theirs, ours, theirs ...) so a
neighbour's load on a shared machine hits both alike; we report the median of the repeats. We also
report tokens per CPU-second of this process (time.process_time): on a busy shared machine wall time
mostly measures the neighbours, CPU time still measures the work each loop does.

Trainer needs the `accelerate` package, which glow_sft.py does not: this script is the only place that
imports Trainer. Without accelerate it says how to install it and exits 0.

Run:  python benchmarks/sft_vs_hf_trainer.py                 # ~1-2 minutes on 2 CPU cores
      python benchmarks/sft_vs_hf_trainer.py --steps 100 --batch-size 64 --threads 2
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch                                                    # noqa: E402

import glow_sft                                                 # noqa: E402
import grpo                                                     # noqa: E402

WARMUP_STEPS = 3            # steps not timed: first-call allocations and lazy initialisation


def fresh_model(seed=0):
    """tiny's architecture with fresh weights (glow_sft's "scratch" model), the same for both loops."""
    return glow_sft.load_model(glow_sft.Settings(seed=seed))[0]


def make_examples(n_questions, seed):
    """Tokenised (ids, n_prompt) pairs of the arithmetic data set, positives and negatives."""
    tokenizer = grpo.load_policy("tiny")[1]
    with tempfile.TemporaryDirectory() as d:
        files = glow_sft.make_data(d, n_questions, 10, seed)
        trajectories = glow_sft.read_trajectories(files["train"])
    return tokenizer, [glow_sft.encode_trajectory(tokenizer, t) for t in trajectories]


def batches(examples, batch_size, steps, seed):
    """The batches of `steps` steps, epoch after epoch in glow_sft's shuffled order."""
    out, epoch = [], 0
    while len(out) < steps:
        order = glow_sft.epoch_order(len(examples), seed, epoch)
        out += [[examples[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
        epoch += 1
    return out[:steps]


def run_ours(tokenizer, examples, args):
    model = fresh_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, fused=True)
    scheduler = glow_sft.cosine_with_warmup(optimizer, args.steps, round(0.1 * args.steps))
    cfg = glow_sft.Settings(weighting="none", micro_batch_size=args.batch_size)
    tokens, t0, c0 = 0, None, None
    for step, rows in enumerate(batches(examples, args.batch_size, args.steps, 0)):
        if step == WARMUP_STEPS:
            t0, c0 = time.perf_counter(), time.process_time()
        batch = glow_sft.collate(rows, tokenizer.pad_token_id)      # collation is part of the timed work
        glow_sft.train_step(model, optimizer, scheduler, batch, cfg)
        if step >= WARMUP_STEPS:
            tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - t0), tokens / (time.process_time() - c0)


def run_trainer(tokenizer, examples, args):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = fresh_model()
    dataset = [{"ids": ids, "n_prompt": n} for ids, n in examples]
    seen_tokens = []                                                # real tokens of each collated batch, in order

    def collator(features):
        batch = glow_sft.collate([(f["ids"], f["n_prompt"]) for f in features], tokenizer.pad_token_id)
        seen_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    class Clock(TrainerCallback):
        start = end = cpu_start = cpu_end = None

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step == WARMUP_STEPS:
                Clock.start, Clock.cpu_start = time.perf_counter(), time.process_time()
            Clock.end, Clock.cpu_end = time.perf_counter(), time.process_time()

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                                  learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=round(0.1 * args.steps),
                                  weight_decay=0.0, max_grad_norm=1.0, logging_strategy="no", save_strategy="no",
                                  report_to=[], use_cpu=True, dataloader_num_workers=0,
                                  remove_unused_columns=False, disable_tqdm=True, seed=0)
        Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator,
                callbacks=[Clock()]).train()
    # The data loader may collate one batch ahead; count exactly the batches of the timed steps.
    tokens = sum(seen_tokens[WARMUP_STEPS:args.steps])
    return tokens / (Clock.end - Clock.start), tokens / (Clock.cpu_end - Clock.cpu_start)


def main(argv=None):
    p = argparse.ArgumentParser(description="tokens/s of glow_sft.train_step vs transformers.Trainer, tiny model, CPU")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run (default 60)")
    p.add_argument("--batch-size", type=int, default=32, help="trajectories per step (default 32)")
    p.add_argument("--questions", type=int, default=500, help="arithmetic questions, 2 trajectories each (default 500)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each loop; the median counts (default 2)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default (default 0)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("accelerate") is None:
        print("transformers.Trainer needs the `accelerate` package, which is not installed.\n"
              "Install it just for this benchmark:  pip install accelerate\n"
              "(glow_sft.py itself does not need it.) Nothing was measured.")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, examples = make_examples(args.questions, 0)
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(run_ours(tokenizer, examples, args))
        theirs.append(run_trainer(tokenizer, examples, args))
        print(f"repeat {r + 1}: ours {ours[-1][0]:,.0f} tokens/s ({ours[-1][1]:,.0f} per CPU-s)   "
              f"Trainer {theirs[-1][0]:,.0f} tokens/s ({theirs[-1][1]:,.0f} per CPU-s)")
    a, b = statistics.median(o[0] for o in ours), statistics.median(t[0] for t in theirs)
    ca, cb = statistics.median(o[1] for o in ours), statistics.median(t[1] for t in theirs)
    print(f"\nbatch {args.batch_size}, {args.steps} steps ({WARMUP_STEPS} untimed), {torch.get_num_threads()} threads, "
          f"mean sequence {sum(len(i) for i, _ in examples) / len(examples):.0f} tokens")
    print(f"glow_sft.train_step : {a:,.0f} tokens/s   {ca:,.0f} tokens per CPU-second")
    print(f"transformers.Trainer: {b:,.0f} tokens/s   {cb:,.0f} tokens per CPU-second")
    print(f"ratio ours / Trainer: {a / b:.2f}x wall   {ca / cb:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
