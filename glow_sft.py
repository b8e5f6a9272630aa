"""
glow_sft.py -- supervised fine-tuning on UNFILTERED chain-of-thought data, with GLOW loss weighting.

What GLOW is (Tian et al., "Learning from Mistakes: Negative Reasoning Samples Enhance Out-of-Domain
Generalization", arXiv 2601.04992): the usual recipe distils reasoning traces from a teacher and keeps
only the ones whose final answer is right. GLOW keeps all of them. A "negative" trajectory has a wrong
final answer but mostly valid steps (one slip, then correct work from the slipped value), and the paper
reports that training on such negatives helps out-of-domain accuracy and raises the policy's entropy.
On top of the unfiltered data GLOW re-weights every sample by how much its loss fell since the last
time it was seen:
    gain_i = loss_i(previous epoch) - loss_i(now)          w_i = alpha * (1 - sigmoid(beta * gain_i))
so samples the model is no longer learning from (small or negative gain) weigh more. This file does
all of it on torch + transformers: data checks, the arithmetic data set, distillation from a teacher,
the training loop, accuracy and entropy, and the pos / neg / all / all+GLOW experiment.

What we simplified or changed (and why), one line each:
  - Task: seeded arithmetic word problems (games.make_arith_problem) stand in for OpenMathReasoning and
    MMLU; the teacher's trajectories are replaced by the generator's correct solution (positive) and
    one realistic slip (negative). `distill` is the paper's real pipeline for real models.
  - History keys: a unique string id per trajectory. The official code keys by row index per file,
    so positive k and negative k overwrite each other when they come from two files (glow.md 1.1).
  - The loss history is saved in checkpoints, so --resume continues GLOW exactly; the official history
    lives in RAM and is lost on restart (its ids then all fall back to the batch mean).
  - The model is a 0.8M-parameter Qwen2 trained from scratch, not Qwen2.5-3B/7B fine-tuned, so the
    learning rate is ~100x the official 1e-5 and "SFT" here also teaches the format from nothing.
  - Entropy: the paper does not say how it measures it; we define it (section 9) and say so.
  - OOD here is the generator's held-out split (division, 2 more steps, larger numbers), not other
    benchmarks; we also report a "near" split (one more step, same operations) -- see section 2.
  - The experiment matches conditions in optimiser steps (all: E epochs, pos/neg: 2E), not epochs:
    a model trained from scratch is compute-starved and would otherwise reward "all" for its extra steps.
  - Every condition, GLOW or not, averages a token mean per sample (as the official loss does); plain
    SFT would average over all tokens of the batch.

Run:  python glow_sft.py experiment --quick            # pos/neg/all/all+GLOW x 3 seeds, a smoke test: 10.4 min
      python glow_sft.py experiment                    # the full table: 24.7 min (both on a busy 2-core machine)
      python glow_sft.py make-data --out data/glow_arith
      python glow_sft.py train --train data/glow_arith/train.jsonl --data all --weighting glow \\
          --test-id data/glow_arith/test_id.jsonl --test-ood data/glow_arith/test_ood.jsonl --out runs/glow
      python glow_sft.py train --resume runs/glow      # after Ctrl-C: continues exactly
      python glow_sft.py eval --model runs/glow/checkpoint --questions data/glow_arith/test_ood.jsonl
      python glow_sft.py distill --teacher Qwen/Qwen2.5-1.5B-Instruct --questions q.jsonl -k 4 \\
          --out traj.jsonl --device cuda --dtype bfloat16
"""

import argparse
import json
import math
import os
import random
import signal
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import games
import grpo

# -----------------------------------------------------------------------------
# Hyperparameters: the defaults of `python glow_sft.py train`. Each is also a --flag (see --help).
# Sized for the tiny model trained from scratch on 2 CPU cores; the official values are in comments
# (official = github.com/Eureka-Maggie/GLOW, LLaMA-Factory yamls for Qwen2.5-3B, glow.md section 2).
model_name = "scratch"       # scratch = fresh random tiny Qwen2; "tiny" (grpo's warm start), hub name or dir
data_mode = "all"            # pos | neg | all: which trajectories to train on (paper: all three + GLOW)
weighting = "glow"           # none | glow: per-sample loss weights (section 5)
alpha = 1.0                  # GLOW alpha; official default 1.0 (the yamls try 1 and 2)
beta = 20.0                  # GLOW beta, sensitivity to the gain; official default 20 (yamls: 10..30)
w_min = 0.5                  # lower clamp of the weight; official, hard-coded 0.5
w_max = 5.0                  # upper clamp of the weight; official, hard-coded 5
glow_offset = False          # w = 1 + alpha(1 - sigmoid(beta*gain)); a commented-out line in the official code
epochs = 10                  # passes over the training set; official 3B yamls run 20
batch_size = 32              # trajectories per optimiser step; official 4 per GPU, GPU count unknown
micro_batch_size = 32        # trajectories per forward/backward (gradients accumulate; the result is the same)
lr = 3e-3                    # peak AdamW learning rate; official 1e-5 (3B, pretrained); tiny from scratch wants ~1e-3
warmup_ratio = 0.1           # share of steps with linear warmup, then cosine to 0; official 0.1, cosine
weight_decay = 0.0           # AdamW weight decay; official: HF default 0
grad_clip = 1.0              # max global grad norm; official: HF default 1.0
max_length = 256             # tokens per trajectory (prompt + response + EOS); official cutoff_len 32000
max_new_tokens = 128         # generation budget at evaluation; our OOD solutions need up to ~100 tokens
eval_batch_size = 256        # prompts per generate call at evaluation
seed = 0                     # torch, numpy, python, data order and the scratch model's init
out_dir = "runs/glow"        # log.jsonl, args.json, eval.json, checkpoint/

# make-data: the arithmetic data set (games.make_arith_problem)
n_train = 1000               # training questions; each gives one positive and one negative trajectory
n_test = 200                 # questions in each test file
arith_steps = 2              # operations per in-domain problem (OOD gets games' +2, near-OOD +1)
arith_max_operand = 9        # numbers up to this in-domain (OOD starts above it, up to 5x); games' default is 20,
                             # but with 9 a scratch model gets ~50% in-domain in 600 steps instead of ~20%

# distill: the paper's data pipeline (teacher samples, answer checker labels)
distill_k = 4                # samples per question
distill_temperature = 1.0    # teacher sampling temperature; the paper's value is unknown (glow.md 3.1)
distill_top_p = 1.0          # nucleus sampling for the teacher; 1.0 = off

# Conditions of the experiment (section 11): (name, --data, --weighting)
CONDITIONS = (("pos", "pos", "none"), ("neg", "neg", "none"), ("all", "all", "none"), ("all+GLOW", "all", "glow"))
IGNORE = -100                # label of tokens that do not count in the loss (the HF convention)


# -----------------------------------------------------------------------------
# 1. Trajectories on disk: one JSON object per line, checked strictly
#
#     {"id": "q17-neg", "prompt": "13-1-9=?", "response": "Step 1: ...<answer>21</answer>",
#      "correct": false, "source": "arith-train"}
#
# `prompt` (one user message) or `messages` (a whole chat, ending before the response) and `response`
# (the assistant's reply, without the EOS token: we add it). Every problem stops the program with
# "file:line: what is wrong" -- a silently dropped negative would change the experiment. The only way to
# go on past a bad line is --skip-bad-lines, and then we print how many lines were skipped and why.
# Each record remembers where it came from in "_where" (never written back to disk).
class DataError(ValueError):
    """A bad line in an input file; the message starts with 'path:line:'."""


def _check_chat(row, where):
    """The prompt side of a record: exactly one of a non-empty `prompt` or a valid `messages` list."""
    if ("prompt" in row) == ("messages" in row):
        raise DataError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (a list of chat turns)")
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string, got {row['prompt']!r:.60}")
        return
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for k, m in enumerate(msgs):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: messages[{k}] must be an object with string 'role' and 'content'")
    if msgs[-1]["role"] == "assistant":
        # The response IS the assistant turn that follows the messages; a trailing one would be trained twice.
        raise DataError(f"{where}: 'messages' must end before the response (last role is 'assistant')")


def _check_trajectory(row, where):
    if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool) or row.get("id") == "":
        raise DataError(f"{where}: field 'id' is missing or not a non-empty string/integer")
    _check_chat(row, where)
    if not isinstance(row.get("response"), str):
        raise DataError(f"{where}: field 'response' is missing or not a string")
    if not isinstance(row.get("correct"), bool):
        raise DataError(f"{where}: field 'correct' is missing or not true/false, got {row.get('correct')!r}")
    if "source" in row and not isinstance(row["source"], str):
        raise DataError(f"{where}: optional field 'source' must be a string")


def _check_question(row, where):
    if "id" in row and (not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool)):
        raise DataError(f"{where}: optional field 'id' must be a string or an integer")
    _check_chat(row, where)
    if not isinstance(row.get("answer"), (str, int, float)) or isinstance(row.get("answer"), bool):
        raise DataError(f"{where}: field 'answer' (the gold answer) is missing or not a string/number")


def _read_jsonl(path, check, kind, skip_bad_lines=False, need_id=True):
    """Parse and check every line of `path`. Returns (records, skipped_lines)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file ({kind} file)")
    records, first_line_of_id, bad = [], {}, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue                                       # blank lines carry no data
            where = f"{path}:{number}"
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                check(row, where)
                if "id" in row or need_id:
                    key = str(row["id"])
                    if key in first_line_of_id:
                        raise DataError(f"{where}: duplicate id {key!r} (first used on line {first_line_of_id[key]})")
                    first_line_of_id[key] = number
                    row["id"] = key
                else:
                    row["id"] = f"line{number}"
            except DataError as e:
                if not skip_bad_lines:
                    raise
                bad.append(str(e))
                continue
            row["_where"] = where
            records.append(row)
    if bad:
        print(f"[data] {path}: skipped {len(bad)} bad line(s) (--skip-bad-lines); first: {bad[0]}")
    if not records:
        raise DataError(f"{path}: no {kind} records in the file")
    return records, len(bad)


def read_trajectories(path, skip_bad_lines=False):
    """The training trajectories of a JSONL file, checked (see the section comment). Returns a list of dicts."""
    return _read_jsonl(path, _check_trajectory, "trajectory", skip_bad_lines)[0]


def read_questions(path, skip_bad_lines=False):
    """Questions with gold answers (`prompt`|`messages` + `answer`, optional unique `id`)."""
    return _read_jsonl(path, _check_question, "question", skip_bad_lines, need_id=False)[0]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}) + "\n")


def select(trajectories, mode):
    """--data: pos keeps correct ones, neg the wrong ones, all keeps everything (the unfiltered set)."""
    if mode not in ("pos", "neg", "all"):
        raise ValueError(f"--data must be pos, neg or all, got {mode!r}")
    return [t for t in trajectories if mode == "all" or t["correct"] == (mode == "pos")]


# -----------------------------------------------------------------------------
# 2. The arithmetic data set (make-data)
#
# One question gives a PAIR of trajectories: the generator's correct step-by-step solution (positive)
# and its one-slip solution (negative: the later steps are right from the slipped value, only the final
# answer is wrong) -- the paper's "wrong answer, mostly valid reasoning". Three test files:
#   test_id    same distribution as training (fresh questions, none seen in training)
#   test_ood   games' "ood" split: a division (never in training), 2 more steps, numbers up to 5x
#   test_near  ours, not in the paper: training operations and numbers, but ONE more step. A model
#              trained from scratch on 2-step problems scores ~0 on test_ood, whatever the condition;
#              "near" is where the conditions can differ at all at this scale.
# The tiny model reads the compact form ("(7+5)*2-3=?"); --wording full gives real models the word
# problem plus an instruction about the answer format.
FULL_WORDING = "{question}\nWork it out step by step, then write the final number as <answer>N</answer>."


def _prompt_text(problem, wording):
    if wording == "compact":
        return problem["expression"]
    if wording == "full":
        return FULL_WORDING.format(question=problem["question"])
    raise ValueError(f"--wording must be compact or full, got {wording!r}")


def make_data(out, n_train_=n_train, n_test_=n_test, seed_=seed, steps=arith_steps, max_operand=arith_max_operand,
              wording="compact"):
    """Write train.jsonl, train_questions.jsonl, test_id.jsonl, test_near.jsonl, test_ood.jsonl into `out`."""
    # One RNG per file, so changing --n-test does not change the training set.
    seen = set()                                     # compact expressions already used: no test leaks into train

    def draw(rng, split, steps_, prefix, n):
        out_rows, tries = [], 0
        while len(out_rows) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise RuntimeError(f"make-data: could not draw {n} distinct {prefix} problems; raise --max-operand")
            p = games.make_arith_problem(rng, steps=steps_, max_operand=max_operand, split=split)
            if p["expression"] in seen:
                continue
            seen.add(p["expression"])
            out_rows.append(p)
        return out_rows

    # The tests are drawn FIRST: with small numbers the training set takes most of the distinct problems,
    # and the leftovers (the rare ones) would make a biased test set. Drawn first, test_id is an honest
    # sample of the generator, and training simply never gets those problems.
    tests = {"test_id": draw(random.Random(f"glow-id-{seed_}"), "train", steps, "test_id", n_test_),
             "test_near": draw(random.Random(f"glow-near-{seed_}"), "train", steps + 1, "test_near", n_test_),
             "test_ood": draw(random.Random(f"glow-ood-{seed_}"), "ood", steps, "test_ood", n_test_)}
    train = draw(random.Random(f"glow-train-{seed_}"), "train", steps, "train", n_train_)
    rows, questions = [], []
    for i, p in enumerate(train):
        prompt = _prompt_text(p, wording)
        common = {"prompt": prompt, "answer": p["answer"], "source": "arith-train"}
        rows.append({"id": f"q{i}-pos", **common, "response": p["solution"], "correct": True})
        rows.append({"id": f"q{i}-neg", **common, "response": p["wrong_solution"], "correct": False,
                     "slip": p["slip"]})
        questions.append({"id": f"q{i}", "prompt": prompt, "answer": p["answer"]})
    write_jsonl(os.path.join(out, "train.jsonl"), rows)
    write_jsonl(os.path.join(out, "train_questions.jsonl"), questions)
    for name, problems in tests.items():
        write_jsonl(os.path.join(out, f"{name}.jsonl"),
                    [{"id": f"{name}-{i}", "prompt": _prompt_text(p, wording), "answer": p["answer"],
                      "split": p["split"]} for i, p in enumerate(problems)])
    return {name: os.path.join(out, f"{name}.jsonl") for name in ("train", "train_questions", *tests)}


# -----------------------------------------------------------------------------
# 3. Token ids: the prompt through the chat template, then the response and the EOS that closes it
#
#     ids    = [ chat template + prompt | response tokens | EOS ]
#     labels = [ -100 ... -100          | response tokens | EOS ]       (HF convention: unshifted)
#
# The prompt is tokenised on its own, exactly as at generation time (section 8), and the response is
# tokenised separately and appended: training then sees the same prompt ids the model will see when it
# answers. We supervise the EOS so that the model learns to stop. (LLaMA-Factory's Qwen template also
# supervises the "\n" after <|im_end|>; we stop at the EOS.)
def prompt_messages(record):
    return record["messages"] if "messages" in record else [{"role": "user", "content": record["prompt"]}]


def encode_prompt(tokenizer, record):
    text = grpo.render(tokenizer, prompt_messages(record), add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_trajectory(tokenizer, record, max_length_=max_length):
    """(ids, n_prompt): the token ids of one trajectory and how many of them belong to the prompt."""
    prompt = encode_prompt(tokenizer, record)
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) >= max_length_:
        raise DataError(f"{record.get('_where', record['id'])}: the prompt alone has {len(prompt)} tokens, "
                        f"--max-length is {max_length_}")
    return (prompt + response)[:max_length_], len(prompt)


def collate(examples, pad_id):
    """examples: list of (ids, n_prompt). Right padding. Returns input_ids, attention_mask, labels: (B, T)."""
    B, T = len(examples), max(len(ids) for ids, _ in examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        labels[row, n_prompt:len(ids)] = input_ids[row, n_prompt:len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# -----------------------------------------------------------------------------
# 4. Per-sample loss: the token-mean cross-entropy over each sample's response tokens
#
#     l_i = ( sum_t m_it * CE(logits_i,t-1, y_i,t) ) / sum_t m_it        m_it = 1 on response tokens + EOS
#
# The logits at position t-1 predict token t, hence the shift. Note what this average is: a mean PER
# SAMPLE, then (section 6) a mean over samples -- so a 10-token and a 100-token response weigh the same.
# That is what the official code does even in its unweighted first epoch; standard SFT would instead
# average over all response tokens of the batch, where long responses count more. We use the per-sample
# mean for every condition (pos, neg, all, GLOW) so that only the data and the weights differ.
def per_sample_loss(model, batch):
    """batch: input_ids, attention_mask, labels (B, T). Returns l: (B,), with gradient."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()  # (B, T, V)
    # Shift the LABELS left instead of slicing the logits: same pairs (logits_t-1, y_t), but no copy of the
    # (B, T, V) logits -- that tensor is the biggest one in memory for a 150k-token vocabulary.
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)               # (B, T): targets_t = y_t+1
    per_token = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                ignore_index=IGNORE, reduction="none").view(targets.shape)  # (B, T), 0 where ignored
    mask = (targets != IGNORE).to(per_token.dtype)                                # (B, T)
    return (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)                   # (B,)


# -----------------------------------------------------------------------------
# 5. GLOW weights (official trainer.py compute_loss; glow.md 1.3-1.5)
#
#     gain_i = l_i(prev) - l_i(now)                   > 0: the loss went DOWN since the last visit
#     w_i    = clamp( alpha * (1 - sigmoid(beta * gain_i)), w_min, w_max )        (official)
#     w_i    = clamp( 1 + alpha * (1 - sigmoid(beta * gain_i)), w_min, w_max )    (--glow-offset)
#
# 1 - sigmoid(x) falls from 1 to 0 as x grows: a sample that is still improving fast gets a small
# weight, one that stalled or got worse gets a large one ("derivative manipulation": hard, under-learned
# samples are pushed). The weights are not normalised and never carry gradient.
#
# Know what the defaults do. With alpha = 1, w = max(0.5, sigmoid(-beta * gain)) <= 1, so EVERY sample
# whose loss did not rise (gain >= 0) gets exactly 0.5, samples whose loss rose get between 0.5 and 1,
# and the upper clamp 5 is never reached (glow.md 1.5). In practice GLOW with the official defaults
# halves the learning rate of the improving samples from epoch 1 on. With alpha = 2 the weight is 1 at
# gain = 0; with the offset variant it lies in (1, 1 + alpha) and the clamp never binds.
#
# l_i(prev) is the loss of the same sample at its previous visit (previous epoch), from the TRAINING
# forward pass, before that step's update -- as the official code does, not from a separate evaluation
# pass. An id never seen before (prev = NaN) gets the current batch mean as its previous loss, as the
# official `loss_history.get(sid, batch_mean)` does; then gain_i = mean(l) - l_i.
def glow_weights(prev_loss, curr_loss, alpha=alpha, beta=beta, w_min=w_min, w_max=w_max, offset=False):
    """prev_loss, curr_loss: (B,) tensors; prev_loss may hold NaN for unseen ids. Returns w: (B,), no grad."""
    curr = curr_loss.detach().float()
    prev = prev_loss.to(curr.device, torch.float32)
    prev = torch.where(torch.isnan(prev), curr.mean(), prev)                   # official default for unseen ids
    gain = prev - curr                                                         # (B,)
    w = alpha * (1 - torch.sigmoid(beta * gain))
    if offset:
        w = 1 + w
    return w.clamp(w_min, w_max)


def sample_weights(weighting_, epoch, prev_loss, curr_loss, hp):
    """The weights one step uses: all ones without GLOW and in epoch 0 (official: state.epoch < 1)."""
    if weighting_ == "none" or epoch == 0:
        return torch.ones_like(curr_loss.detach())
    if weighting_ != "glow":
        raise ValueError(f"--weighting must be none or glow, got {weighting_!r}")
    return glow_weights(prev_loss, curr_loss, hp["alpha"], hp["beta"], hp["w_min"], hp["w_max"], hp["glow_offset"])


def previous_losses(history, sample_ids):
    """(B,) tensor of the recorded losses, NaN for ids that have no history yet."""
    return torch.tensor([history.get(i, float("nan")) for i in sample_ids], dtype=torch.float32)


# -----------------------------------------------------------------------------
# 6. One optimiser step
#
#     L = (1/B) sum_i w_i * l_i           w_i detached (official: mean over the micro-batch of l_i * w_i)
#
# With micro-batches each one adds sum_{i in mb} w_i l_i / B to the gradient, so the sum over
# micro-batches is exactly the full-batch loss. After the step we record every sample's (pre-update)
# loss under its id: the history GLOW reads at the next visit. We record it for --weighting none too:
# it costs nothing and gives the "share of samples whose loss rose" diagnostic for every condition.
def micro_slices(n, size):
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def train_step(model, optimizer, scheduler, batch, hp, epoch=0, history=None, sample_ids=None, correct=None):
    """One AdamW step on a collated batch (input_ids, attention_mask, labels: (B, T)).

    hp: weighting, alpha, beta, w_min, w_max, glow_offset, micro_batch_size, grad_clip.
    history: dict id -> last loss (updated in place); sample_ids, correct: per-row lists, or None.
    Returns a dict of step statistics (the log line, less timings).
    """
    device = next(model.parameters()).device
    B = batch["input_ids"].shape[0]
    history = {} if history is None else history
    sample_ids = sample_ids if sample_ids is not None else [None] * B
    prev = previous_losses(history, sample_ids)                                  # (B,) NaN = never seen
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses, weights = [], []
    for sl in micro_slices(B, hp.get("micro_batch_size") or B):
        # Trim this micro-batch's right padding: nothing to compute past its longest row.
        width = int(batch["attention_mask"][sl].sum(1).max())
        mb = {k: v[sl, :width].to(device) for k, v in batch.items()}
        l = per_sample_loss(model, mb)                                           # (b,)
        # Unseen ids default to the mean of THIS micro-batch, like the official per-device batch mean.
        w = sample_weights(hp["weighting"], epoch, prev[sl], l, hp)              # (b,)
        ((l * w).sum() / B).backward()
        losses.append(l.detach().float().cpu())
        weights.append(w.float().cpu())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"]))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    l, w = torch.cat(losses), torch.cat(weights)                                 # (B,), (B,)
    for i, value in zip(sample_ids, l.tolist()):
        if i is not None:
            history[i] = value
    seen = ~torch.isnan(prev)
    # "rose": share of samples (with a previous visit) whose loss went UP since then, i.e. gain < 0.
    rose = float((l[seen] > prev[seen]).float().mean()) if seen.any() else None
    stats = {"loss": float((l * w).mean()), "loss_unweighted": float(l.mean()), "w_mean": float(w.mean()),
             "w_min": float(w.min()), "w_max": float(w.max()), "rose": rose, "grad_norm": grad_norm,
             "n": B, "tokens": int(batch["attention_mask"].sum())}
    if correct is not None:
        c = torch.tensor(correct, dtype=torch.bool)
        stats["pos_loss"] = float(l[c].mean()) if c.any() else None
        stats["neg_loss"] = float(l[~c].mean()) if (~c).any() else None
        stats["n_pos"] = int(c.sum())
    return stats


def make_optimizer(model, lr_, weight_decay_):
    """AdamW with the HF defaults (betas 0.9/0.999, eps 1e-8), as the official recipe.

    fused=True updates all parameters in one kernel instead of a Python-level loop; it is what
    transformers.Trainer uses by default, and the update rule is the same. Older torch builds lack it
    on the CPU; there we use the plain implementation (only the speed differs) and say so.
    """
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr_, weight_decay=weight_decay_, fused=True)
    except (RuntimeError, TypeError) as e:
        print(f"[optim] fused AdamW unavailable here ({e}); using the standard implementation")
        return torch.optim.AdamW(model.parameters(), lr=lr_, weight_decay=weight_decay_)


# -----------------------------------------------------------------------------
# 7. Learning-rate schedule: linear warmup, then cosine decay to 0 (HF "cosine", the official setting)
#
#     lr(s) = lr * s / S_w                                         s < S_w
#     lr(s) = lr * 0.5 * (1 + cos(pi * (s - S_w) / (S - S_w)))     otherwise      S = total steps
def cosine_with_warmup(optimizer, total_steps, warmup_steps):
    def factor(s):
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)      # never exactly 0, so the first step moves
        progress = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -----------------------------------------------------------------------------
# 8. Checkpoints: everything needed to continue exactly
#
# save_pretrained (weights + tokenizer) plus trainer_state.pt: optimiser, scheduler, epoch, step within
# the epoch, every RNG state and the GLOW loss history. The data order of epoch e is a permutation
# seeded by (seed, e), so a run stopped mid-epoch skips the batches it already did and goes on with
# the very same batches, weights and history as a run that was never stopped.
def save_checkpoint(out, model, tokenizer, optimizer, scheduler, state):
    from transformers.utils import logging as hf_logging

    tmp, final = os.path.join(out, "checkpoint.tmp"), os.path.join(out, "checkpoint")
    # save_pretrained draws a progress bar per save; one per epoch would bury our own bar.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if bars_were_on:
        hf_logging.enable_progress_bar()
    torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}},
               os.path.join(tmp, "trainer_state.pt"))
    # Written into a temporary folder and swapped in, so a crash while saving never destroys the last one.
    grpo.swap_folder(tmp, final)


def load_trainer_state(out, optimizer, scheduler):
    state = torch.load(os.path.join(out, "checkpoint", "trainer_state.pt"), weights_only=False)
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def seed_everything(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# The from-scratch model of the experiment is grpo's tiny architecture (0.8M parameters), the size the
# README's default table was measured with; pass other sizes to grpo.build_tiny_model to scale it.
SCRATCH_SIZES = grpo.TINY_CONFIG


def load_model(name, device="cpu", dtype="float32", seed_=0):
    """(model, tokenizer). "scratch": a fresh random tiny Qwen2 (init from seed_); anything else via grpo."""
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if name == "scratch":
        tokenizer = grpo.build_tiny_tokenizer()
        tokenizer.padding_side = "left"              # as grpo.load_policy: generation pads on the left
        model = grpo.build_tiny_model(tokenizer, seed=seed_, sizes=SCRATCH_SIZES).to(device=device, dtype=torch_dtype)
        return model, tokenizer
    return grpo.load_policy(name, device, torch_dtype)


# -----------------------------------------------------------------------------
# 9. What the paper measures: accuracy, and the entropy of the policy on its own generations
#
# Accuracy: greedy decoding (grpo.generate_batch, temperature 0), graded by games.check_answer, the one
# answer checker of the repository (last <answer>..</answer>, numbers compared exactly).
#
# Entropy (the paper reports +35.67% for negatives but does not say how it measures it; our definition):
#     H_t = - sum_v p(v | x, y_<t) log p(v | x, y_<t)      p = softmax(logits), temperature 1
#     H   = (sum over prompts, sum over generated tokens t of H_t) / (number of generated tokens)
# The generations are the model's own greedy answers to the prompts (the same ones accuracy grades);
# "generated tokens" are every new token up to and including the first EOS (or all max_new_tokens if
# it never stops). It is a TOKEN-level mean, so long answers weigh more than short ones; the
# distribution is the raw T=1 policy, whatever decoding produced the tokens. Greedy rather than sampled
# generations: the number then has no sampling noise, which matters with 3 seeds.
def as_records(questions):
    """Accept question dicts or bare prompt strings."""
    return [{"prompt": q} if isinstance(q, str) else q for q in questions]


def generate(model, tokenizer, questions, max_new_tokens_=max_new_tokens, temperature=0.0, top_p=1.0,
             batch_size=eval_batch_size):
    """One answer per question. Returns a list of (prompt_ids, new_ids), new_ids cut after the first EOS."""
    prompts = [encode_prompt(tokenizer, q) for q in as_records(questions)]
    config = grpo.generation_config(tokenizer, model, temperature, top_p, max_new_tokens_)
    stops = set(config.eos_token_id) if isinstance(config.eos_token_id, list) else {config.eos_token_id}
    was_training = model.training
    model.eval()
    outs = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", leave=False,
                      disable=len(prompts) <= batch_size):
        outs += grpo.generate_batch(model, tokenizer, prompts[start:start + batch_size], config, batch_size)
    model.train(was_training)
    cut = []
    for new in outs:
        end = next((k + 1 for k, t in enumerate(new) if t in stops), len(new))
        cut.append(new[:end])
    return list(zip(prompts, cut))


@torch.no_grad()
def entropy_of_generations(model, tokenizer, generations, batch_size=64):
    """Token-level mean T=1 entropy over the generated tokens of (prompt_ids, new_ids) pairs (see above)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(generations), batch_size):
        chunk = [(p, n) for p, n in generations[start:start + batch_size] if n]
        if not chunk:
            continue
        width = max(len(p) + len(n) for p, n in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        mask = torch.zeros((len(chunk), width - 1))                           # aligned with ids[:, 1:]
        for row, (p, n) in enumerate(chunk):
            ids[row, :len(p) + len(n)] = torch.tensor(p + n)
            attn[row, :len(p) + len(n)] = 1
            mask[row, len(p) - 1:len(p) - 1 + len(n)] = 1                     # positions that predict y_1..y_n
        _, entropy = grpo.token_logps_and_entropy(model, ids.to(device), attn.to(device), temperature=1.0)
        total += float((entropy.float().cpu() * mask).sum())                  # entropy: (b, width-1)
        count += int(mask.sum())
    model.train(was_training)
    return total / max(1, count)


def mean_generation_entropy(model, tokenizer, questions, max_new_tokens_=max_new_tokens, temperature=0.0,
                            batch_size=eval_batch_size):
    """Mean token entropy of the policy over its own generations on `questions` (dicts or prompt strings)."""
    gens = generate(model, tokenizer, questions, max_new_tokens_, temperature, batch_size=batch_size)
    return entropy_of_generations(model, tokenizer, gens)


def evaluate_accuracy(model, tokenizer, questions, max_new_tokens_=max_new_tokens, batch_size=eval_batch_size,
                      generations=None, with_entropy=True):
    """Greedy accuracy on question dicts (prompt|messages + answer). Returns accuracy, entropy, lengths, samples."""
    gens = generations or generate(model, tokenizer, questions, max_new_tokens_, 0.0, batch_size=batch_size)
    # skip_special_tokens drops the EOS and pads; <answer> tags are ordinary tokens and survive.
    texts = [tokenizer.decode(new, skip_special_tokens=True) for _, new in gens]
    right = [games.check_answer(t, q["answer"]) for t, q in zip(texts, questions)]
    # "unfinished": answers that ran out of max_new_tokens; a high rate means the budget is too small.
    stopped = [bool(new) and new[-1] == tokenizer.eos_token_id for _, new in gens]
    result = {"accuracy": sum(right) / len(right), "n": len(right),
              "mean_new_tokens": sum(len(new) for _, new in gens) / len(gens),
              "unfinished": 1 - sum(stopped) / len(stopped),
              "samples": [{"prompt": q.get("prompt", q.get("messages")), "answer": q["answer"], "response": t,
                           "correct": r} for q, t, r in list(zip(questions, texts, right))[:5]]}
    if with_entropy:
        result["entropy"] = entropy_of_generations(model, tokenizer, gens)
    return result


# -----------------------------------------------------------------------------
# 10. The training loop
def log_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def epoch_order(n, seed_, epoch):
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch), so resuming repeats it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed_ * 1_000_003 + epoch)).tolist()


def final_train_loss(log_path):
    """Mean unweighted per-sample loss over the last epoch's training steps (from log.jsonl)."""
    rows = [json.loads(x) for x in open(log_path)]
    last = [r for r in rows if r["epoch"] == rows[-1]["epoch"]]
    return sum(r["loss_unweighted"] * r["n"] for r in last) / sum(r["n"] for r in last)


def train(cfg, on_step=None):
    """Train one run. cfg: the hyperparameters above (see parse_args). Returns a summary dict.

    on_step(global_step, stats): optional hook, called after every step (tests use it to press Ctrl-C).
    The summary has status "done" or "interrupted" (Ctrl-C: the step in flight finished, then we saved).
    """
    out = cfg["out_dir"]
    os.makedirs(out, exist_ok=True)
    seed_everything(cfg["seed"])
    ckpt = os.path.join(out, "checkpoint")
    resuming = bool(cfg.get("resume")) and os.path.exists(os.path.join(ckpt, "trainer_state.pt"))
    if cfg.get("resume") and not resuming:
        raise FileNotFoundError(f"--resume {out}: no checkpoint/trainer_state.pt to continue from")
    if resuming:
        model, tokenizer = load_model(ckpt, cfg["device"], cfg["dtype"])
    else:
        model, tokenizer = load_model(cfg["model"], cfg["device"], cfg["dtype"], seed_=cfg["seed"])
    if cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()

    # The whole file is read and checked before any training, so a bad line never costs a half-run.
    data = select(read_trajectories(cfg["train"], cfg.get("skip_bad_lines", False)), cfg["data"])
    if not data:
        raise DataError(f"{cfg['train']}: no trajectories left after --data {cfg['data']}")
    # Tokenise once: every epoch reuses the same ids (the tokenizer is the slow part of a tiny-model step).
    encoded = [encode_trajectory(tokenizer, t, cfg["max_length"]) for t in tqdm(data, desc="tokenising", leave=False)]
    cut = sum(len(ids) == cfg["max_length"] for ids, _ in encoded)
    if cut:
        print(f"[data] {cut} of {len(encoded)} trajectories reach --max-length {cfg['max_length']} and were cut at the end")
    # The last batch of an epoch may be short; we keep it, so every sample is visited once per epoch
    # (GLOW's gain compares consecutive visits, and a dropped sample would skip one).
    steps_per_epoch = math.ceil(len(data) / cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]

    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    scheduler = cosine_with_warmup(optimizer, total_steps, round(cfg["warmup_ratio"] * total_steps))
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_history": {}}
    log_path = os.path.join(out, "log.jsonl")
    if resuming:
        state = load_trainer_state(out, optimizer, scheduler)
        print(f"resumed {out} at epoch {state['epoch']}, step {state['step_in_epoch']} of {steps_per_epoch}")
    # Fresh: clear an old run's files, write args.json. Resumed: drop log lines past the checkpoint.
    grpo.prepare_out_dir(out, cfg, state["global_step"] if resuming else None, ("log.jsonl", "eval.json"))
    history = state["loss_history"]
    hp = {k: cfg[k] for k in ("weighting", "alpha", "beta", "w_min", "w_max", "glow_offset", "micro_batch_size",
                              "grad_clip")}

    # Ctrl-C does not kill the step in flight: it sets a flag, the step finishes, we save and stop,
    # so a checkpoint always sits between two steps and --resume continues the same run.
    stop = {"asked": False}
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(asked=True))
    bar = tqdm(total=total_steps, initial=state["global_step"], desc=f"SFT {cfg['data']}/{cfg['weighting']}",
               disable=cfg.get("quiet", False))
    status = "done"
    try:
        for epoch in range(state["epoch"], cfg["epochs"]):
            order = epoch_order(len(data), cfg["seed"], epoch)
            # A resumed run starts mid-epoch: same order, the batches it already did are skipped.
            for s in range(state["step_in_epoch"], steps_per_epoch):
                t0 = time.time()
                rows = order[s * cfg["batch_size"]:(s + 1) * cfg["batch_size"]]
                batch = collate([encoded[r] for r in rows], tokenizer.pad_token_id)
                stats = train_step(model, optimizer, scheduler, batch, hp, epoch, history,
                                   [data[r]["id"] for r in rows], [data[r]["correct"] for r in rows])
                state.update(step_in_epoch=s + 1, global_step=state["global_step"] + 1)
                seconds = time.time() - t0
                record = {"step": state["global_step"], "epoch": epoch, **stats,
                          "lr": scheduler.get_last_lr()[0], "seconds": seconds,
                          "tokens_per_s": stats["tokens"] / max(1e-9, seconds)}
                log_line(log_path, record)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss_unweighted']:.3f}", w=f"{stats['w_mean']:.2f}")
                if on_step:
                    on_step(state["global_step"], record)
                if stop["asked"]:
                    break
            if stop["asked"] and state["step_in_epoch"] < steps_per_epoch:
                save_checkpoint(out, model, tokenizer, optimizer, scheduler, state)
                status = "interrupted"
                break
            state.update(epoch=epoch + 1, step_in_epoch=0)
            save_checkpoint(out, model, tokenizer, optimizer, scheduler, state)     # every epoch
            if stop["asked"] and epoch + 1 < cfg["epochs"]:
                status = "interrupted"
                break
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        bar.close()
    summary = {"status": status, "steps": state["global_step"], "out_dir": out}
    if status == "interrupted":
        print(f"\ninterrupted: saved {out}/checkpoint at step {state['global_step']}; continue with "
              f"python glow_sft.py train --resume {out}")
        return summary
    # "Final train loss" is the unweighted loss of the last epoch's training forward passes: under GLOW
    # the weighted loss is mostly 0.5 x this, which says nothing about how well the data is fitted.
    summary["final_train_loss"] = final_train_loss(log_path)
    evals = {}
    for key in ("test_id", "test_near", "test_ood"):
        if cfg.get(key):
            evals[key] = evaluate_accuracy(model, tokenizer, read_questions(cfg[key]), cfg["max_new_tokens"],
                                           cfg["eval_batch_size"])
    if evals:
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump({"final_train_loss": summary["final_train_loss"], **evals}, f, indent=1)
        summary["eval"] = evals
    return summary


# -----------------------------------------------------------------------------
# 11. The experiment: pos / neg / all / all+GLOW, a fresh tiny model per run, 3 seeds
#
# Every run trains the same randomly initialised architecture (init seed = run seed) on the same data
# for the same number of OPTIMISER STEPS: "all" has twice the trajectories of "pos" or "neg", so it
# runs half the epochs (pos/neg: 2E epochs over N trajectories, all: E epochs over 2N). A model trained
# from scratch is starved for compute, and with equal epochs "all" would win simply by taking twice the
# steps. (The paper fine-tunes pretrained models; it does not say how it matched its conditions.)
# Then greedy accuracy on test_id / test_near / test_ood and the generation entropy on test_ood.
# The paper's claims to compare with (glow.md section 4): negatives and GLOW improve OOD accuracy
# (+5.51% for GLOW vs positive-only, Qwen2.5-7B) and negatives raise the policy entropy by 35.67%.
# epochs = the epochs of "all"; pos and neg run twice as many (same number of steps).
EXPERIMENT = {"full": dict(n_train=2000, max_operand=arith_max_operand, epochs=4, batch_size=32, n_test=200),
              "quick": dict(n_train=500, max_operand=arith_max_operand, epochs=4, batch_size=32, n_test=100)}


def experiment(cfg):
    size = dict(EXPERIMENT["quick" if cfg["quick"] else "full"])
    if cfg.get("experiment_epochs"):
        size["epochs"] = cfg["experiment_epochs"]
    # --quick gets its own folder, so that it never overwrites (or mixes with) a full experiment's runs.
    root = os.path.join(cfg["out_dir"], "experiment-quick" if cfg["quick"] else "experiment")
    files = make_data(os.path.join(root, "data"), size["n_train"], size["n_test"], 0, max_operand=size["max_operand"])
    print(f"data: {root}/data ({size['n_train']} questions -> {2 * size['n_train']} trajectories)")
    t_start = time.time()
    results = {}
    runs = [(c, s) for s in cfg["seeds"] for c in CONDITIONS]
    # Seeds outside, conditions inside: if you stop early, the finished seeds have every condition.
    for (name, mode, weighting_), s in tqdm(runs, desc="experiment runs"):
        run_cfg = dict(cfg, model="scratch", data=mode, weighting=weighting_, seed=s, train=files["train"],
                       epochs=size["epochs"] * (1 if mode == "all" else 2), batch_size=size["batch_size"],
                       micro_batch_size=min(cfg["micro_batch_size"], size["batch_size"]),
                       test_id=files["test_id"], test_near=files["test_near"], test_ood=files["test_ood"],
                       out_dir=os.path.join(root, f"{name}_s{s}"), resume=None, quiet=True)
        t0 = time.time()
        summary = train(run_cfg)
        if summary["status"] != "done":
            print("experiment interrupted; results so far are in the run folders")
            return None
        ev = summary["eval"]
        results.setdefault(name, {})[s] = {
            "id_acc": ev["test_id"]["accuracy"], "near_acc": ev["test_near"]["accuracy"],
            "ood_acc": ev["test_ood"]["accuracy"], "ood_entropy": ev["test_ood"]["entropy"],
            "id_entropy": ev["test_id"]["entropy"], "final_train_loss": summary["final_train_loss"],
            "steps": summary["steps"], "seconds": time.time() - t0}
    minutes = (time.time() - t_start) / 60
    with open(os.path.join(root, "results.json"), "w") as f:
        json.dump({"settings": size, "minutes": minutes, "results": results}, f, indent=1)
    print(f"\n{len(runs)} runs in {minutes:.1f} min; logs: {root}/<cond>_s<seed>/log.jsonl; results: {root}/results.json\n")
    print(results_table(results))
    return results


def _mean_std(values, scale=1.0):
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}" if scale == 100 else f"{m:.3f} ± {s:.3f}"


def results_table(results):
    """One markdown row per condition: mean ± std over seeds (sample std, n-1)."""
    cols = (("in-domain acc %", "id_acc", 100), ("near-OOD acc %", "near_acc", 100), ("OOD acc %", "ood_acc", 100),
            ("OOD entropy", "ood_entropy", 1), ("final train loss", "final_train_loss", 1))
    lines = ["| condition | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, per_seed in results.items():
        runs = list(per_seed.values())
        lines.append(f"| {name} | " + " | ".join(_mean_std([r[k] for r in runs], sc) for _, k, sc in cols) + " |")
    if "pos" in results:
        base = statistics.mean(r["ood_entropy"] for r in results["pos"].values())
        rel = [f"{name} {100 * (statistics.mean(r['ood_entropy'] for r in v.values()) / base - 1):+.1f}%"
               for name, v in results.items() if name != "pos"]
        lines.append(f"\nOOD entropy relative to pos: {', '.join(rel)} (paper: negatives +35.67%)")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# 12. Distillation: the paper's data pipeline for real models
#
# For every question, sample k answers from a teacher at temperature T, and label each one with the
# shared answer checker: correct = games.check_answer(response, gold). Nothing is filtered -- that is
# the point of GLOW. An answer that hits max_new_tokens without EOS is kept, labelled by the checker
# (usually negative) and marked "truncated": true; --drop-truncated removes them and says how many.
def distill(teacher, questions_path, k, out, temperature=distill_temperature, top_p=distill_top_p,
            max_new=max_new_tokens, device="cpu", dtype="float32", seed_=seed, batch_size=eval_batch_size,
            drop_truncated=False):
    seed_everything(seed_)
    model, tokenizer = load_model(teacher, device, dtype)
    model.eval()
    questions = read_questions(questions_path)
    # k copies of each prompt, adjacent, in ONE list: generate_batch pads and samples them all together,
    # and with temperature > 0 each copy draws its own answer.
    repeated = [q for q in questions for _ in range(k)]
    gens = generate(model, tokenizer, repeated, max_new, temperature, top_p, batch_size)
    rows, dropped = [], 0
    for j, (q, (_, new)) in enumerate(zip(repeated, gens)):
        truncated = not new or new[-1] != tokenizer.eos_token_id
        if truncated and drop_truncated:
            dropped += 1
            continue
        # The stored response is text without the EOS: training appends the EOS itself (section 3).
        text = tokenizer.decode(new, skip_special_tokens=True)
        chat = {"messages": q["messages"]} if "messages" in q else {"prompt": q["prompt"]}
        rows.append({"id": f"{q['id']}-s{j % k}", **chat, "response": text,
                     "correct": games.check_answer(text, q["answer"]), "answer": q["answer"],
                     "source": f"distill:{teacher}", "truncated": truncated})
    write_jsonl(out, rows)
    n_pos = sum(r["correct"] for r in rows)
    print(f"wrote {len(rows)} trajectories to {out}: {n_pos} correct, {len(rows) - n_pos} wrong"
          + (f"; dropped {dropped} truncated (--drop-truncated)" if drop_truncated else
             f"; {sum(r['truncated'] for r in rows)} truncated (kept)"))
    return rows


# -----------------------------------------------------------------------------
# 13. Command line
HELP = {
    "model": "scratch (fresh random tiny Qwen2), tiny (grpo's warm-started tiny), a hub name or a local directory",
    "data": "which trajectories to train on: pos (correct), neg (wrong final answer) or all (unfiltered)",
    "weighting": "per-sample loss weights: none, or glow (from epoch 1, weights from the loss gain)",
    "alpha": "GLOW alpha: w = alpha * (1 - sigmoid(beta * gain)) (official default 1.0)",
    "beta": "GLOW beta: how sharply the weight reacts to the gain (official default 20)",
    "w_min": "GLOW lower weight clamp (official 0.5)",
    "w_max": "GLOW upper weight clamp (official 5)",
    "epochs": "passes over the training trajectories (official 20)",
    "batch_size": "trajectories per optimiser step",
    "micro_batch_size": "trajectories per forward/backward; gradients accumulate to batch-size (same result)",
    "lr": "peak AdamW learning rate (official 1e-5 for pretrained 3B; ~1e-3 for tiny from scratch)",
    "warmup_ratio": "share of steps with linear warmup before the cosine decay (official 0.1)",
    "weight_decay": "AdamW weight decay (official 0)",
    "grad_clip": "max global gradient norm (official 1.0)",
    "max_length": "max tokens per trajectory (prompt + response + EOS); longer ones are cut at the end, with a note",
    "max_new_tokens": "generation budget per answer at evaluation",
    "eval_batch_size": "prompts per generate call at evaluation",
    "seed": "seed of torch/numpy/python, the data order and the scratch model's initialisation",
    "out_dir": "output folder: log.jsonl, args.json, eval.json, checkpoint/",
}


def defaults():
    g = globals()
    return {"model": model_name, "data": data_mode, **{k: g[k] for k in HELP if k in g},
            "weighting": weighting, "glow_offset": glow_offset, "device": "cpu", "dtype": "float32",
            "gradient_checkpointing": False, "train": None, "test_id": None, "test_near": None, "test_ood": None,
            "skip_bad_lines": False, "resume": None, "quick": False, "seeds": [0, 1, 2], "threads": 0}


THREADS_HELP = ("torch CPU threads; 0 = torch's default (all cores). On a machine shared with other jobs, "
                "1 is often faster: threads that wait for a busy core stall every step (default: 0)")


def add_train_flags(p):
    d = defaults()
    choices = {"data": ("pos", "neg", "all"), "weighting": ("none", "glow")}
    for key, text in HELP.items():
        names = ["--out-dir", "--out"] if key == "out_dir" else ["--" + key.replace("_", "-")]
        p.add_argument(*names, dest=key, type=type(d[key]), default=None,
                       choices=choices.get(key), help=f"{text} (default: {d[key]})")
    p.add_argument("--glow-offset", action="store_true", default=None,
                   help="use w = 1 + alpha * (1 - sigmoid(beta * gain)) (commented-out variant of the official code)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="weights dtype; bfloat16 halves memory for real models on a GPU (default: float32)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward: less memory, ~30%% more time (real models)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--skip-bad-lines", action="store_true", default=None,
                   help="skip malformed input lines (and print how many) instead of stopping at the first")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Run:"):].rstrip() +
                                "\n\nEach subcommand has its own --help. Defaults fit the tiny model on a 2-core CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="SFT on a trajectory file (pos/neg/all, with or without GLOW)")
    t.add_argument("--train", default=None, help="trajectory JSONL: id, prompt|messages, response, correct")
    t.add_argument("--test-id", default=None, help="question JSONL (prompt|messages + answer) scored after training")
    t.add_argument("--test-near", default=None, help="a second question file scored after training")
    t.add_argument("--test-ood", default=None, help="out-of-domain question file scored after training (+ entropy)")
    t.add_argument("--resume", metavar="OUT", default=None,
                   help="continue the run in OUT exactly, with its args.json (weights, optimiser, GLOW history)")
    add_train_flags(t)

    m = sub.add_parser("make-data", help="write the arithmetic train/test files (section 2)")
    m.add_argument("--out", required=True, help="folder for train.jsonl, train_questions.jsonl and test_*.jsonl")
    m.add_argument("--n-train", type=int, default=n_train, help=f"training questions, 2 trajectories each (default {n_train})")
    m.add_argument("--n-test", type=int, default=n_test, help=f"questions per test file (default {n_test})")
    m.add_argument("--seed", type=int, default=seed, help="data seed (default 0)")
    m.add_argument("--steps", type=int, default=arith_steps, help=f"operations per in-domain problem (default {arith_steps})")
    m.add_argument("--max-operand", type=int, default=arith_max_operand,
                   help=f"largest in-domain number (default {arith_max_operand})")
    m.add_argument("--wording", choices=("compact", "full"), default="compact",
                   help="compact expression for the tiny model, or the word problem with instructions for real models")

    dl = sub.add_parser("distill", help="sample k answers per question from a teacher, label them with games.check_answer")
    dl.add_argument("--teacher", required=True, help="hub name or local directory of the teacher model (or tiny)")
    dl.add_argument("--questions", required=True, help="question JSONL: prompt|messages + answer (+ optional id)")
    dl.add_argument("-k", type=int, default=distill_k, help=f"samples per question (default {distill_k})")
    dl.add_argument("--out", required=True, help="trajectory JSONL to write")
    dl.add_argument("--temperature", type=float, default=distill_temperature, help="sampling temperature (default 1.0)")
    dl.add_argument("--top-p", type=float, default=distill_top_p, help="nucleus sampling, 1.0 = off (default 1.0)")
    dl.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"per answer (default {max_new_tokens})")
    dl.add_argument("--batch-size", type=int, default=eval_batch_size, help="prompts per generate call")
    dl.add_argument("--drop-truncated", action="store_true", help="drop answers that never reached EOS (counted)")
    dl.add_argument("--device", default="cpu", help="cpu | cuda ...")
    dl.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="teacher weights dtype")
    dl.add_argument("--seed", type=int, default=seed, help="sampling seed")

    e = sub.add_parser("eval", help="greedy accuracy and generation entropy of a model on a question file")
    e.add_argument("--model", required=True, help="a checkpoint folder, hub name, or tiny")
    e.add_argument("--questions", required=True, nargs="+", help="one or more question JSONL files")
    e.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="generation budget per answer")
    e.add_argument("--batch-size", type=int, default=eval_batch_size, help="prompts per generate call")
    e.add_argument("--device", default="cpu", help="cpu | cuda ...")
    e.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights dtype")

    x = sub.add_parser("experiment", help="pos / neg / all / all+GLOW from scratch, 3 seeds, one markdown table")
    x.add_argument("--quick", action="store_true",
                   help="smaller data and fewer steps (a smoke test, accuracies near 0): ~5-7 minutes on 2 idle CPU cores")
    x.add_argument("--seeds", type=int, nargs="+", default=None, help="run seeds (default 0 1 2)")
    x.add_argument("--out-dir", "--out", dest="out_dir", default=None, help=f"results go to OUT/experiment (default {out_dir})")
    x.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {lr})")
    x.add_argument("--epochs", dest="experiment_epochs", type=int, default=None,
                   help=f"epochs of 'all'; pos and neg run twice as many, so steps match "
                        f"(default {EXPERIMENT['full']['epochs']}, --quick {EXPERIMENT['quick']['epochs']})")
    x.add_argument("--device", default=None, help="cpu | cuda ...")
    x.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        if args.command == "make-data":
            files = make_data(args.out, args.n_train, args.n_test, args.seed, args.steps, args.max_operand, args.wording)
            for name, path in files.items():
                print(f"{name:16s} {path}  ({sum(1 for _ in open(path))} lines)")
        elif args.command == "distill":
            distill(args.teacher, args.questions, args.k, args.out, args.temperature, args.top_p, args.max_new_tokens,
                    args.device, args.dtype, args.seed, args.batch_size, args.drop_truncated)
        elif args.command == "eval":
            model, tokenizer = load_model(args.model, args.device, args.dtype)
            for path in args.questions:
                r = evaluate_accuracy(model, tokenizer, read_questions(path), args.max_new_tokens, args.batch_size)
                print(f"{path}: accuracy {100 * r['accuracy']:.1f}% of {r['n']}, entropy {r['entropy']:.3f}, "
                      f"mean answer {r['mean_new_tokens']:.1f} tokens, unfinished {100 * r['unfinished']:.1f}%")
        elif args.command == "experiment":
            cfg = defaults()
            cfg.update({k: v for k, v in vars(args).items() if v is not None and k != "command"})
            experiment(cfg)
        else:
            given = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
            cfg = defaults()
            if given.get("resume"):
                with open(os.path.join(given["resume"], "args.json")) as f:
                    cfg.update(json.load(f))
                cfg.update(out_dir=given["resume"], resume=given["resume"])
            else:
                cfg.update(given)
                if not cfg["train"]:
                    raise SystemExit("train: --train FILE is required (make one with: python glow_sft.py make-data --out DIR)")
            summary = train(cfg)
            if summary["status"] == "interrupted":
                sys.exit(130)
            print(f"done in {(time.time() - t0) / 60:.1f} min; log: {cfg['out_dir']}/log.jsonl, "
                  f"model: {cfg['out_dir']}/checkpoint; final train loss {summary['final_train_loss']:.4f}")
            for key, r in summary.get("eval", {}).items():
                print(f"{key}: accuracy {100 * r['accuracy']:.1f}%  entropy {r['entropy']:.3f}")
    except DataError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
