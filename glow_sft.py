"""
glow_sft.py -- supervised fine-tuning on UNFILTERED chain-of-thought data, with GLOW loss weighting.

What GLOW is (GLOW, arXiv 2601.04992): the usual recipe distils reasoning traces from a teacher and keeps
only those whose final answer is right. GLOW keeps them all. A "negative" trace has a wrong final answer
but mostly valid steps, and the paper reports that training on negatives helps out-of-domain accuracy and
raises the policy's entropy. On top of the unfiltered data GLOW re-weights every sample by how much its
loss fell since the last time it was seen:
    gain_i = loss_i(previous epoch) - loss_i(now)          w_i = alpha * (1 - sigmoid(beta * gain_i))
so samples the model is no longer learning from (small or negative gain) weigh more.

What we simplified or changed (and why), one line each (docs/PAPERS.md):
  - Task: seeded arithmetic problems (games.make_arith_problem) stand in for the paper's math and MMLU
    data; its correct solution is the positive, one realistic slip the negative. `distill` makes real data.
  - History keys: a unique id per trajectory (the official code keys by row per file, so a positive and a
    negative overwrite each other); the history is saved in checkpoints, so --resume continues GLOW exactly.
  - The experiment's model is the tiny architecture trained from scratch (not Qwen2.5-3B/7B fine-tuned), so
    the learning rate is ~100x the official 1e-5, and conditions are matched in optimiser steps.
  - Entropy: the paper does not say how it measures it; we define it (section 6).

Run:  python glow_sft.py experiment --quick     # pos/neg/all/all+GLOW x 3 seeds, a smoke test (~10 min)
      python glow_sft.py experiment             # the full table (docs/RESULTS.md has the measured one)
      python glow_sft.py make-data --out-dir data/glow_arith
      python glow_sft.py train --train data/glow_arith/train.jsonl --data all --weighting glow \\
          --tests data/glow_arith/test_id.jsonl,data/glow_arith/test_ood.jsonl --out-dir runs/glow
      python glow_sft.py eval --model runs/glow/checkpoint --tests data/glow_arith/test_ood.jsonl
      python glow_sft.py distill --model Qwen/Qwen2.5-1.5B-Instruct --questions q.jsonl --k 4 --out-dir runs/dist \\
          --device cuda --precision bf16
"""
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
from tqdm import tqdm

import games
import grpo
from grpo import flag

COMMANDS = ("train", "eval", "make-data", "distill", "experiment")
W_MIN, W_MAX = 0.5, 5.0      # clamp of the GLOW weight; official, hard-coded
IGNORE = -100                # label of tokens that do not count in the loss (the HF convention)
EVAL_BATCH = 256             # prompts per generate call at evaluation


# -----------------------------------------------------------------------------
# Settings: the defaults of `python glow_sft.py train`, sized for tiny from scratch on 2 CPU cores. The
# official values (github.com/Eureka-Maggie/GLOW, its LLaMA-Factory recipes for Qwen2.5-3B) in the help.
@dataclass
class Settings:
    model: str = flag("scratch", "scratch (tiny's architecture, fresh weights), tiny, a hub name or a folder")
    data: str = flag("all", "pos (correct trajectories), neg (wrong answer), all (unfiltered)", ("pos", "neg", "all"))
    weighting: str = flag("glow", "per-sample loss weights: none, or glow (from epoch 1)", ("none", "glow"))
    alpha: float = flag(1.0, "GLOW alpha; official 1.0 (recipes try 1 and 2)")
    beta: float = flag(20.0, "GLOW beta, how sharply the weight reacts to the gain; official 20 (10-30)")
    epochs: int = flag(10, "passes over the training trajectories; official 20")
    batch_size: int = flag(32, "trajectories per optimiser step; official 4 per GPU")
    micro_batch_size: int = flag(32, "trajectories per forward/backward; the result is the same")
    lr: float = flag(3e-3, "peak AdamW learning rate; official 1e-5 (pretrained 3B); tiny from scratch ~1e-3")
    warmup_ratio: float = flag(0.1, "share of steps of linear warm-up, then cosine to 0; official 0.1")
    max_length: int = flag(256, "tokens per trajectory (prompt + response + EOS); longer ones are cut, with a note")
    max_new_tokens: int = flag(128, "generation budget per answer at evaluation")
    seed: int = flag(0, "torch, numpy, python, the data order and the scratch model's initialisation")
    out_dir: str = flag("runs/glow", "log.jsonl, args.json, eval.json, checkpoint/ (distill: traj.jsonl)")
    train: str = flag("", "trajectory JSONL: id, prompt|messages, response, correct (make one with make-data)")
    tests: str = flag("", "comma-separated question files (prompt|messages + answer), scored after training")
    resume: bool = flag(False, "continue the run in --out-dir exactly (weights, optimiser, GLOW history)")
    overwrite: bool = flag(False, "start afresh in an --out-dir that already holds a run, deleting it")
    device: str = flag("cpu", "cpu | cuda | cuda:1 ...")
    precision: str = flag("fp32", "bf16: autocast over fp32 weights (frozen base in bf16 with LoRA)", ("fp32", "bf16"))
    gradient_checkpointing: bool = flag(False, "recompute activations in backward: less memory, more time")
    lora_rank: int = flag(0, "LoRA adapters of this rank (grpo.py section 5b); 0 = train all weights")
    lora_alpha: float = flag(16.0, "LoRA scale alpha")
    threads: int = flag(0, "torch CPU threads; 0 = torch's default")
    n_train: int = flag(1000, "make-data: training questions, two trajectories each")
    n_test: int = flag(200, "make-data: questions per test file")
    wording: str = flag("compact", "make-data: the bare expression (tiny) or a word problem", ("compact", "full"))
    questions: str = flag("", "distill: question JSONL to sample answers for")
    k: int = flag(4, "distill: samples per question")
    temperature: float = flag(1.0, "distill: teacher sampling temperature; the paper does not give it")
    quick: bool = flag(False, "experiment: the smaller smoke-test size")


# -----------------------------------------------------------------------------
# 1. Trajectories on disk: one JSON object per line, checked strictly
#
#     {"id": "q17-neg", "prompt": "13-1-9=?", "response": "Step 1: ...<answer>21</answer>",
#      "correct": false, "source": "arith-train"}
#
# `prompt` (one user message) or `messages` (a chat, ending before the response), and `response` (without
# the EOS: we add it). Every problem stops the program with "file:line: what is wrong": a silently dropped
# negative would change the experiment.
class DataError(ValueError):
    """A bad line in an input file; the message starts with 'path:line:'."""


def _check_chat(row, where):
    if ("prompt" in row) == ("messages" in row):
        raise DataError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (a list of chat turns)")
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string, got {row['prompt']!r:.60}")
        return
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{'role', 'content'}} string objects")
    if msgs[-1]["role"] == "assistant":     # the response IS the assistant turn after them; it would train twice
        raise DataError(f"{where}: 'messages' must end before the response (last role is 'assistant')")


def _check_trajectory(row, where):
    if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool) or row.get("id") == "":
        raise DataError(f"{where}: field 'id' is missing or not a non-empty string/integer")
    _check_chat(row, where)
    if not isinstance(row.get("response"), str):
        raise DataError(f"{where}: field 'response' is missing or not a string")
    if not isinstance(row.get("correct"), bool):
        raise DataError(f"{where}: field 'correct' is missing or not true/false, got {row.get('correct')!r}")


def _check_question(row, where):
    _check_chat(row, where)
    if not isinstance(row.get("answer"), (str, int, float)) or isinstance(row.get("answer"), bool):
        raise DataError(f"{where}: field 'answer' (the gold answer) is missing or not a string/number")


def _read_jsonl(path, check, kind, need_id=True):
    """Parse and check every line of `path` (games.jsonl_objects); any problem stops with 'path:line:'."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file ({kind} file)")
    records, first_line_of_id = [], {}
    try:
        for number, row in games.jsonl_objects(path):                    # blank lines skipped
            where = f"{path}:{number}"
            check(row, where)
            key = str(row["id"]) if "id" in row or need_id else f"line{number}"
            if key in first_line_of_id:
                raise DataError(f"{where}: duplicate id {key!r} (first used on line {first_line_of_id[key]})")
            first_line_of_id[key], row["id"], row["_where"] = number, key, where
            records.append(row)
    except ValueError as e:                      # games' JSON errors too become ours, with their path:line
        raise DataError(str(e)) from None
    if not records:
        raise DataError(f"{path}: no {kind} records in the file")
    return records


def read_trajectories(path):
    return _read_jsonl(path, _check_trajectory, "trajectory")


def read_questions(path):
    """Questions with gold answers (`prompt`|`messages` + `answer`, optional unique `id`)."""
    return _read_jsonl(path, _check_question, "question", need_id=False)


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


# -----------------------------------------------------------------------------
# 2. The arithmetic data set (make-data)
#
# One question gives a PAIR of trajectories: the correct step-by-step solution (positive) and the one-slip
# solution (negative: later steps right from the slipped value, only the final answer wrong), the paper's
# "wrong answer, mostly valid reasoning". Three test files, none sharing a problem with training:
#   test_id    the training distribution
#   test_ood   games' "ood" split: a division (never in training), 2 more steps, numbers up to 5x
#   test_near  ours: the training operations and numbers with ONE more step. A model trained from scratch
#              scores ~0 on test_ood whatever the condition; "near" is where conditions can differ at all.
ARITH_STEPS, ARITH_MAX_OPERAND = 2, 9      # in-domain problem size; with 9, tiny reaches ~50% in 600 steps
FULL_WORDING = "{question}\nWork it out step by step, then write the final number as <answer>N</answer>."


def make_data(out, n_train, n_test, seed=0, steps=ARITH_STEPS, max_operand=ARITH_MAX_OPERAND, wording="compact"):
    """Writes train.jsonl, test_id.jsonl, test_near.jsonl, test_ood.jsonl into `out`; returns their paths."""
    seen = set()                                     # compact expressions used so far: no test leaks into train

    def draw(name, split, steps_, n):
        rng, rows = random.Random(f"glow-{name}-{seed}"), []     # one RNG per file: --n-test keeps train fixed
        for _ in range(50 * n + 1000):
            p = games.make_arith_problem(rng, steps=steps_, max_operand=max_operand, split=split)
            if p["expression"] not in seen:
                seen.add(p["expression"])
                rows.append(p)
            if len(rows) == n:
                return rows
        raise RuntimeError(f"make-data: could not draw {n} distinct {name} problems; raise the operand size")

    prompt = lambda p: p["expression"] if wording == "compact" else FULL_WORDING.format(question=p["question"])
    # Tests first: small numbers leave few distinct problems, and drawn first a test set is an honest sample.
    tests = {"test_id": draw("id", "train", steps, n_test), "test_near": draw("near", "train", steps + 1, n_test),
             "test_ood": draw("ood", "ood", steps, n_test)}
    rows = []
    for i, p in enumerate(draw("train", "train", steps, n_train)):
        common = {"prompt": prompt(p), "answer": p["answer"], "source": "arith-train"}
        rows += [{"id": f"q{i}-pos", **common, "response": p["solution"], "correct": True},
                 {"id": f"q{i}-neg", **common, "response": p["wrong_solution"], "correct": False, "slip": p["slip"]}]
    write_jsonl(os.path.join(out, "train.jsonl"), rows)
    for name, problems in tests.items():
        write_jsonl(os.path.join(out, f"{name}.jsonl"),
                    [{"id": f"{name}-{i}", "prompt": prompt(p), "answer": p["answer"]} for i, p in enumerate(problems)])
    return {name: os.path.join(out, f"{name}.jsonl") for name in ("train", *tests)}


# -----------------------------------------------------------------------------
# 3. Token ids: the prompt through the chat template, then the response and the EOS that closes it
#
#     ids    = [ chat template + prompt | response tokens | EOS ]
#     labels = [ -100 ... -100          | response tokens | EOS ]       (HF convention: unshifted)
#
# The prompt is tokenised on its own, exactly as at generation time, and the response appended: training
# sees the prompt ids the model will see when it answers. We supervise the EOS so that the model stops.
def prompt_ids(tokenizer, record):
    messages = record["messages"] if "messages" in record else [{"role": "user", "content": record["prompt"]}]
    text = grpo.render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_trajectory(tokenizer, record, max_length=256):
    """(ids, n_prompt): the token ids of one trajectory and how many belong to the prompt."""
    prompt = prompt_ids(tokenizer, record)
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) >= max_length:
        raise DataError(f"{record.get('_where', record['id'])}: the prompt alone has {len(prompt)} tokens, "
                        f"--max-length is {max_length}")
    return (prompt + response)[:max_length], len(prompt)


def collate(examples, pad_id):
    """examples: (ids, n_prompt) pairs. Right padding. Returns input_ids, attention_mask, labels: (B, T)."""
    B, T = len(examples), max(len(ids) for ids, _ in examples)
    batch = {"input_ids": torch.full((B, T), pad_id), "attention_mask": torch.zeros((B, T), dtype=torch.long),
             "labels": torch.full((B, T), IGNORE)}
    for row, (ids, n_prompt) in enumerate(examples):
        batch["input_ids"][row, :len(ids)] = torch.tensor(ids)
        batch["attention_mask"][row, :len(ids)] = 1
        batch["labels"][row, n_prompt:len(ids)] = batch["input_ids"][row, n_prompt:len(ids)]
    return batch


# -----------------------------------------------------------------------------
# 4. Per-sample loss: the token-mean cross-entropy over each sample's response tokens
#
#     l_i = ( sum_t m_it * -log pi(y_it | y_i,<t) ) / sum_t m_it        m_it = 1 on response tokens + EOS
#
# A mean PER SAMPLE, then (section 5) a mean over samples: a 10-token and a 100-token response weigh the same. That is
# what the official code does, even in its unweighted first epoch (standard SFT averages over all tokens of the batch,
# where long responses count more); we use it for every condition so that only the data and the weights differ. The
# log-probs come from grpo.token_logps_and_entropy, which never holds the (B, T, V) logits at once.
def per_sample_loss(model, batch):
    """batch: input_ids, attention_mask, labels (B, T). Returns l: (B,), with gradient."""
    logps, _ = grpo.token_logps_and_entropy(model, batch["input_ids"], batch["attention_mask"], with_entropy=False)
    mask = (batch["labels"][:, 1:] != IGNORE).to(logps.dtype)                  # (B, T-1), aligned with logps
    return -(logps * mask).sum(1) / mask.sum(1).clamp(min=1)                   # (B,)


# -----------------------------------------------------------------------------
# 5. GLOW weights and one optimiser step (official trainer's compute_loss)
#
#     gain_i = l_i(prev) - l_i(now)                   > 0: the loss went DOWN since the last visit
#     w_i    = clamp( alpha * (1 - sigmoid(beta * gain_i)), 0.5, 5 )
#     L      = (1/B) sum_i w_i * l_i                  w_i detached
#
# 1 - sigmoid(x) falls from 1 to 0 as x grows: a sample still improving fast gets a small weight, one that
# stalled or got worse a large one. Know what the defaults do: with alpha = 1, w = max(0.5, sigmoid(-beta
# gain)) <= 1, so EVERY sample whose loss did not rise gets exactly 0.5 and the clamp 5 is never reached:
# GLOW at the official defaults halves the learning rate of the improving samples from epoch 1 on. With
# alpha = 2 the weight is 1 at gain 0; offset=True (a commented-out official variant) adds 1.
# l_i(prev) is the sample's loss at its previous visit, from the TRAINING forward before that step's
# update, as in the official code. An id not seen before (NaN) gets the current batch mean, as the
# official `loss_history.get(sid, batch_mean)` does. Epoch 0 is unweighted (official: epoch < 1).
def glow_weights(prev_loss, curr_loss, alpha=1.0, beta=20.0, w_min=W_MIN, w_max=W_MAX, offset=False):
    """prev_loss, curr_loss: (B,); prev_loss may hold NaN for unseen ids. Returns w: (B,), no gradient."""
    curr = curr_loss.detach().float()
    prev = prev_loss.to(curr.device, torch.float32)
    gain = torch.where(torch.isnan(prev), curr.mean(), prev) - curr             # (B,)
    return (offset + alpha * (1 - torch.sigmoid(beta * gain))).clamp(w_min, w_max)


def train_step(model, optimizer, scheduler, batch, cfg, epoch=0, history=None, sample_ids=None, correct=None):
    """One AdamW step on a collated batch. history: id -> last loss, updated in place. Returns its stats.

    With micro-batches each adds sum_{i in mb} w_i l_i / B to the gradient, so their sum is the full loss.
    After the step every sample's pre-update loss is recorded under its id, for --weighting none too (it
    costs nothing and gives every condition the "share of samples whose loss rose" diagnostic).
    """
    device, B = next(model.parameters()).device, batch["input_ids"].shape[0]
    history = {} if history is None else history
    ids = sample_ids if sample_ids is not None else [None] * B
    prev = torch.tensor([history.get(i, float("nan")) for i in ids])            # (B,), NaN = never seen
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses, weights, glow = [], [], cfg.weighting == "glow" and epoch > 0
    for sl in grpo.micro_slices(B, cfg.micro_batch_size or B):
        width = int(batch["attention_mask"][sl].sum(1).max())                    # trim the right padding
        with grpo.autocast(cfg.precision, device):
            l = per_sample_loss(model, {k: v[sl, :width].to(device) for k, v in batch.items()})   # (b,)
        w = glow_weights(prev[sl], l, cfg.alpha, cfg.beta) if glow else torch.ones_like(l.detach())
        ((l * w).sum() / B).backward()
        losses.append(l.detach().float().cpu())
        weights.append(w.float().cpu())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grpo.GRAD_CLIP))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    l, w = torch.cat(losses), torch.cat(weights)                                 # (B,), (B,)
    history.update((i, v) for i, v in zip(ids, l.tolist()) if i is not None)
    seen, mean = ~torch.isnan(prev), lambda x: float(x.mean()) if len(x) else None   # None: nothing to average
    stats = {"loss": float((l * w).mean()), "loss_unweighted": float(l.mean()), "w_mean": float(w.mean()),
             "w_min": float(w.min()), "w_max": float(w.max()), "grad_norm": grad_norm, "n": B,
             "tokens": int(batch["attention_mask"].sum()), "rose": mean((l[seen] > prev[seen]).float())}  # gain < 0
    if correct is not None:
        c = torch.tensor(correct, dtype=torch.bool)
        stats.update(pos_loss=mean(l[c]), neg_loss=mean(l[~c]))
    return stats


# Linear warm-up, then cosine to 0 (HF's "cosine", the official schedule):
#     lr(s) = lr (s + 1) / (S_w + 1)  for s < S_w;   lr 0.5 (1 + cos(pi (s - S_w) / (S - S_w)))  afterwards
def cosine_with_warmup(optimizer, total_steps, warmup_steps):
    def factor(s):
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)                       # never exactly 0: the first step moves
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -----------------------------------------------------------------------------
# 6. What the paper measures: accuracy, and the entropy of the policy on its own generations
#
# Accuracy: greedy decoding, graded by games.check_answer (the one answer checker of the repository).
# Entropy (the paper reports +35.67% for negatives but does not define it; our definition):
#     H_t = - sum_v p(v | x, y_<t) log p(v | x, y_<t)      p = softmax(logits), temperature 1
#     H   = (sum over prompts and generated tokens t of H_t) / (number of generated tokens)
# over the model's own greedy answers (no sampling noise, which matters with 3 seeds), every new token
# through the first stop id included. A TOKEN-level mean: long answers weigh more. evaluate.py uses it too.
def generate(model, tokenizer, prompts, max_new, temperature=0.0):
    """One answer per prompt (token ids). Returns (prompt_ids, new_ids) pairs, new_ids cut after the first stop."""
    config, stops = grpo.generation_config(model, tokenizer, temperature, max_new), set(grpo.stop_ids(tokenizer, model))
    model.eval()
    news = grpo.generate_batch(model, tokenizer, prompts, config, EVAL_BATCH)
    return [(p, grpo.cut_at_stop(n, stops)[0]) for p, n in zip(prompts, news)]


@torch.no_grad()
def entropy_of_generations(model, tokenizer, generations, batch_size=16):
    """Token-level mean T=1 entropy over the generated tokens of (prompt_ids, new_ids) pairs (see above)."""
    device, total, count = next(model.parameters()).device, 0.0, 0
    model.eval()
    pairs = [(p, n) for p, n in generations if n]
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        width = max(len(p) + len(n) for p, n in chunk)
        ids, attn = torch.full((len(chunk), width), tokenizer.pad_token_id), torch.zeros(len(chunk), width).long()
        mask = torch.zeros((len(chunk), width - 1))                             # aligned with ids[:, 1:]
        for row, (p, n) in enumerate(chunk):
            ids[row, :len(p) + len(n)], attn[row, :len(p) + len(n)] = torch.tensor(p + n), 1
            mask[row, len(p) - 1:len(p) - 1 + len(n)] = 1                       # the positions predicting y_1..y_n
        _, entropy = grpo.token_logps_and_entropy(model, ids.to(device), attn.to(device))
        total, count = total + float((entropy.float().cpu() * mask).sum()), count + int(mask.sum())
    return total / max(1, count)


def evaluate_accuracy(model, tokenizer, questions, max_new):
    """Greedy accuracy, entropy, mean answer length, share that never stopped, and a few samples."""
    gens = generate(model, tokenizer, [prompt_ids(tokenizer, q) for q in questions], max_new)
    texts = [tokenizer.decode(new, skip_special_tokens=True) for _, new in gens]
    right = [games.check_answer(t, q["answer"]) for t, q in zip(texts, questions)]
    stops, n = set(grpo.stop_ids(tokenizer, model)), len(gens)
    return {"accuracy": sum(right) / n, "n": n, "entropy": entropy_of_generations(model, tokenizer, gens),
            "mean_new_tokens": sum(len(new) for _, new in gens) / n,
            "unfinished": sum(not new or new[-1] not in stops for _, new in gens) / n,   # raise --max-new-tokens?
            "samples": [{"prompt": q.get("prompt", q.get("messages")), "answer": q["answer"], "response": t,
                         "correct": r} for q, t, r in list(zip(questions, texts, right))[:5]]}


# -----------------------------------------------------------------------------
# 7. The training loop: epochs of shuffled batches, a checkpoint every epoch, exact resume
#
# The data order of epoch e is a permutation seeded by (seed, e), so a run stopped mid-epoch skips the
# batches it did and goes on with the same batches, weights and GLOW history as one that never stopped.
def load_model(cfg, resume_dir=None):
    """(model, tokenizer) to train. scratch: tiny's tokenizer and config with fresh weights (seed)."""
    from transformers import AutoModelForCausalLM
    if cfg.model != "scratch" or resume_dir:
        return grpo.load_trainable(cfg, resume_dir)
    model, tokenizer = grpo.load_policy("tiny", cfg.device)
    torch.manual_seed(cfg.seed)
    fresh = AutoModelForCausalLM.from_config(model.config).to(cfg.device)
    fresh.generation_config = model.generation_config
    return fresh, tokenizer


def epoch_order(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def train(cfg):
    """Train one run; returns a summary (status "done" or "interrupted" by Ctrl-C, which saves first)."""
    out, log_path = cfg.out_dir, os.path.join(cfg.out_dir, "log.jsonl")
    if not cfg.train:
        raise SystemExit("train: --train FILE is required (make one with: python glow_sft.py make-data --out-dir DIR)")
    # The whole file is read and checked before any training: a bad line never costs a half-run.
    data = [t for t in read_trajectories(cfg.train) if cfg.data == "all" or t["correct"] == (cfg.data == "pos")]
    if not data:
        raise DataError(f"{cfg.train}: no trajectories left after --data {cfg.data}")
    tests = {os.path.splitext(os.path.basename(p))[0]: read_questions(p) for p in cfg.tests.split(",") if p}
    grpo.claim_run_dir(out, asdict(cfg), cfg.resume, cfg.overwrite)
    grpo.seed_everything(cfg.seed)
    model, tokenizer = load_model(cfg, out if cfg.resume else None)
    # Tokenise once: every epoch reuses the ids (the tokenizer is the slow part of a tiny-model step).
    encoded = [encode_trajectory(tokenizer, t, cfg.max_length) for t in tqdm(data, desc="tokenising", leave=False)]
    if cut := sum(len(ids) == cfg.max_length for ids, _ in encoded):
        print(f"[data] {cut} of {len(encoded)} trajectories reach --max-length {cfg.max_length}: cut at the end")
    # The last batch of an epoch may be short: every sample is visited once per epoch (GLOW compares visits).
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0,
                                  fused=model.device.type == "cpu" or None)   # one kernel for all weights
    scheduler = cosine_with_warmup(optimizer, total_steps, round(cfg.warmup_ratio * total_steps))
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_history": {}}
    if cfg.resume:
        state = grpo.load_checkpoint(out, model)
        optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
        grpo.truncate_log(log_path, state["global_step"])
        print(f"resumed {out} at epoch {state['epoch']}, step {state['step_in_epoch']} of {steps_per_epoch}")
    save = lambda: grpo.save_checkpoint(out, model, tokenizer, {**state, "optimizer": optimizer.state_dict(),
                                                                "scheduler": scheduler.state_dict()})
    history, status = state["loss_history"], "done"
    bar = tqdm(total=total_steps, initial=state["global_step"], desc=f"SFT {cfg.data}/{cfg.weighting}")
    with grpo.ctrl_c_finishes_step() as ctrl_c:
        for epoch in range(state["epoch"], cfg.epochs):
            order = epoch_order(len(data), cfg.seed, epoch)
            for s in range(state["step_in_epoch"], steps_per_epoch):        # a resumed run starts mid-epoch
                t0, rows = time.time(), order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                batch = collate([encoded[r] for r in rows], tokenizer.pad_token_id)
                stats = train_step(model, optimizer, scheduler, batch, cfg, epoch, history,
                                   [data[r]["id"] for r in rows], [data[r]["correct"] for r in rows])
                state.update(step_in_epoch=s + 1, global_step=state["global_step"] + 1)
                grpo.log_line(log_path, {"step": state["global_step"], "epoch": epoch, **stats,
                                         "lr": scheduler.get_last_lr()[0], "seconds": time.time() - t0})
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss_unweighted']:.3f}", w=f"{stats['w_mean']:.2f}")
                if ctrl_c["stop"]:
                    break
            if state["step_in_epoch"] == steps_per_epoch:
                state.update(epoch=epoch + 1, step_in_epoch=0)
            save()                                                          # every epoch, and on Ctrl-C
            if ctrl_c["stop"] and state["global_step"] < total_steps:
                status = "interrupted"
                break
    bar.close()
    summary = {"status": status, "steps": state["global_step"], "out_dir": out}
    if status == "interrupted":
        print(f"\ninterrupted: saved {out}/checkpoint at step {state['global_step']}; continue with --resume")
        return summary
    # The unweighted loss of the last epoch: under GLOW the weighted one is mostly 0.5 x this.
    last = [r for r in grpo.read_log(log_path) if r["epoch"] == cfg.epochs - 1]
    summary["final_train_loss"] = sum(r["loss_unweighted"] * r["n"] for r in last) / sum(r["n"] for r in last)
    summary["eval"] = {name: evaluate_accuracy(model, tokenizer, q, cfg.max_new_tokens) for name, q in tests.items()}
    json.dump({"final_train_loss": summary["final_train_loss"], **summary["eval"]}, open(f"{out}/eval.json", "w"),
              indent=1)
    return summary


# -----------------------------------------------------------------------------
# 8. The experiment: pos / neg / all / all+GLOW, a fresh tiny model per run, 3 seeds
#
# Every run trains the same random initialisation (seed = run seed) on the same data for the same number of
# OPTIMISER STEPS: "all" has twice the trajectories of "pos" or "neg", so it runs half the epochs. A model
# trained from scratch is starved for compute; with equal epochs "all" would win by taking twice the steps.
# (The paper fine-tunes pretrained models and does not say how it matched conditions.) The paper's claims
# to compare with: negatives and GLOW raise OOD accuracy (+5.51% for GLOW over positives on Qwen2.5-7B) and
# negatives raise the policy's entropy by 35.67% (GLOW, abstract).
CONDITIONS = (("pos", "pos", "none"), ("neg", "neg", "none"), ("all", "all", "none"), ("all+GLOW", "all", "glow"))
EXPERIMENT = {"full": dict(n_train=2000, n_test=200, epochs=4), "quick": dict(n_train=500, n_test=100, epochs=4)}
SEEDS = (0, 1, 2)
COLUMNS = (("in-domain acc %", "test_id", "accuracy", 100), ("near-OOD acc %", "test_near", "accuracy", 100),
           ("OOD acc %", "test_ood", "accuracy", 100), ("OOD entropy", "test_ood", "entropy", 1),
           ("final train loss", None, "final_train_loss", 1))


def experiment(cfg):
    size = EXPERIMENT["quick" if cfg.quick else "full"]
    root = os.path.join(cfg.out_dir, "experiment-quick" if cfg.quick else "experiment")   # never mixes the two
    files = make_data(os.path.join(root, "data"), size["n_train"], size["n_test"])
    t0, results = time.time(), {}
    for (name, mode, weighting), s in tqdm([(c, s) for s in SEEDS for c in CONDITIONS], desc="experiment runs"):
        run = replace(cfg, model="scratch", data=mode, weighting=weighting, seed=s, train=files["train"],
                      epochs=size["epochs"] * (1 if mode == "all" else 2), batch_size=32, micro_batch_size=32,
                      tests=",".join(files[k] for k in ("test_id", "test_near", "test_ood")),
                      out_dir=os.path.join(root, f"{name}_s{s}"), resume=False, overwrite=True)
        if (summary := train(run))["status"] != "done":
            print("experiment interrupted; results so far are in the run folders")
            return None
        results.setdefault(name, {})[s] = {"final_train_loss": summary["final_train_loss"], **summary["eval"]}
    minutes = (time.time() - t0) / 60
    json.dump({"settings": size, "minutes": minutes, "results": results}, open(f"{root}/results.json", "w"), indent=1)

    def cell(runs, split, key, scale):
        values = [scale * (r[split][key] if split else r[key]) for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{1 if scale == 100 else 3}f} ± {sd:.{1 if scale == 100 else 3}f}"
    rows = [[name] + [cell(list(per_seed.values()), *c[1:]) for c in COLUMNS] for name, per_seed in results.items()]
    base = statistics.mean(r["test_ood"]["entropy"] for r in results["pos"].values())
    rel = ", ".join(f"{n} {100 * (statistics.mean(r['test_ood']['entropy'] for r in v.values()) / base - 1):+.1f}%"
                    for n, v in results.items() if n != "pos")
    smoke = "--quick is a smoke test of the pipeline: too small to show the full table's direction.\n" * cfg.quick
    print(f"\n{len(SEEDS) * len(CONDITIONS)} runs in {minutes:.1f} min; logs: {root}/<condition>_s<seed>/log.jsonl"
          f"\n{smoke}\n"
          + grpo.markdown_table(["condition"] + [c[0] for c in COLUMNS], rows)
          + f"\n\nOOD entropy relative to pos: {rel} (paper: negatives +35.67%)")
    return results


# -----------------------------------------------------------------------------
# 9. Distillation: the paper's data pipeline for real models
#
# For every question, sample k answers from a teacher (--model) at --temperature and label each with the
# shared checker: correct = games.check_answer(response, gold). Nothing is filtered: that is GLOW's point.
# An answer that hit --max-new-tokens without a stop id is kept, labelled (usually wrong) and marked
# "truncated": true, so you can count or drop such lines yourself.
def distill(cfg):
    grpo.seed_everything(cfg.seed)
    model, tokenizer = grpo.load_policy("tiny" if cfg.model == "scratch" else cfg.model, cfg.device)
    repeated = [q for q in read_questions(cfg.questions) for _ in range(cfg.k)]   # k adjacent copies, k answers
    with grpo.autocast(cfg.precision, cfg.device):
        gens = generate(model, tokenizer, [prompt_ids(tokenizer, q) for q in repeated], cfg.max_new_tokens,
                        cfg.temperature)
    stops, rows = set(grpo.stop_ids(tokenizer, model)), []
    for j, (q, (_, new)) in enumerate(zip(repeated, gens)):
        text = tokenizer.decode(new, skip_special_tokens=True)  # stored without the EOS: training adds it
        chat = {"messages": q["messages"]} if "messages" in q else {"prompt": q["prompt"]}
        rows.append({"id": f"{q['id']}-s{j % cfg.k}", **chat, "response": text, "answer": q["answer"],
                     "correct": games.check_answer(text, q["answer"]), "source": f"distill:{cfg.model}",
                     "truncated": not new or new[-1] not in stops})
    write_jsonl(path := os.path.join(cfg.out_dir, "traj.jsonl"), rows)
    n_pos = sum(r["correct"] for r in rows)
    print(f"wrote {len(rows)} trajectories to {path}: {n_pos} correct, {len(rows) - n_pos} wrong, "
          f"{sum(r['truncated'] for r in rows)} truncated (kept)")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python glow_sft.py {{{','.join(COMMANDS)}}} [--flags] (COMMAND --help lists them)")
    command = argv[0]
    cfg = grpo.parse_settings(Settings, argv[1:], f"glow_sft.py {command}: " + __doc__.split("\n\n")[0].strip())
    torch.set_num_threads(cfg.threads or torch.get_num_threads())              # 0: torch's default
    t0 = time.time()
    try:
        if command == "make-data":
            for name, path in make_data(cfg.out_dir, cfg.n_train, cfg.n_test, cfg.seed, wording=cfg.wording).items():
                print(f"{name:10s} {path}  ({sum(1 for _ in open(path))} lines)")
        elif command == "distill":
            distill(cfg)
        elif command == "experiment":
            experiment(cfg)
        elif command == "eval":
            model, tokenizer = grpo.load_policy("tiny" if cfg.model == "scratch" else cfg.model, cfg.device)
            for path in [p for p in cfg.tests.split(",") if p]:
                r = evaluate_accuracy(model, tokenizer, read_questions(path), cfg.max_new_tokens)
                print(f"{path}: accuracy {100 * r['accuracy']:.1f}% of {r['n']}, entropy {r['entropy']:.3f}, "
                      f"mean answer {r['mean_new_tokens']:.1f} tokens, unfinished {100 * r['unfinished']:.1f}%")
        else:
            summary = train(cfg)
            if summary["status"] == "interrupted":
                sys.exit(130)
            print(f"done in {(time.time() - t0) / 60:.1f} min; final train loss {summary['final_train_loss']:.4f}")
            for name, r in summary["eval"].items():
                print(f"{name}: accuracy {100 * r['accuracy']:.1f}%  entropy {r['entropy']:.3f}")
    except DataError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
