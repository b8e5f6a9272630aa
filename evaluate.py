"""
evaluate.py -- how good is a checkpoint? Games, benchmark files, entropy, and the papers' results table.

What it measures:
  games       N episodes per game from fixed evaluation seeds (the same seeds for every checkpoint), greedy
              by default, against a chosen opponent. Win / draw / loss / success rates with Wilson 95%
              intervals, the share of invalid answers, and for nested settings the joint success (every
              sub-task succeeded). GIFT section 4.1 plays 100 games per game; so do we by default.
  benchmarks  multiple-choice and free-answer questions from local JSONL files (nothing can be downloaded
              here; the README shows how to export MMLU, MMLU-Pro, SocialIQA and MATH-500 elsewhere).
              Per-subject and micro-averaged accuracy; with --samples k also pass@k and maj@k (GLOW 6.6).
  entropy     mean token entropy of the model's own replies (GLOW section 5; glow_sft.py's measure), --entropy.
  tactics     TicTacToe: one greedy move in each of the 3,334 positions with a win to take or a threat to
              block, not only those met in the model's own games (--tactics); matrix: success by game.
  plot        training curves from our log.jsonl files: `python evaluate.py plot runs/x/log.jsonl --out DIR`.

What we simplified vs the papers (and why), one line each:
  - Free answers are checked with games.check_answer (exact numbers, fractions, relative tolerance 1e-6,
    else normalised strings), not Math-Verify / sympy: no extra dependency, and nothing is ever executed.
    LaTeX answers such as "\\frac{\\sqrt{3}}{2}" only match when written the same way.
  - The answer is the last complete <answer>...</answer>; without one we accept "The answer is (B)" or a
    bare letter / \\boxed{} number. GIFT needs the tag ("strict"); GLOW takes the last \\boxed{}.
  - GIFT samples its evaluation at temperature 0.5 with no seed; we default to greedy decoding and fixed
    seeds, so two runs of the same checkpoint give the same numbers.
  - Opponents: GIFT plays TicTacToe and Spy against Gemini-2.5-Flash / Qwen3-14B. The default here is the
    games' own bots (random TicTacToe, the Spy clue bots); --opponent http://... plugs in a served LLM.
  - CommonGen (an LLM-judged benchmark) is left out: it needs a GPT-4o judge.
  - The "avg" column is the mean of every column in the table. GIFT's Avg covers MMLU, MMLU-Pro, CommonGen
    and SocialIQA only: pass exactly those files with --bench (and no --games) to get its definition.

Run:  python evaluate.py              # tiny: matrix, tictactoe, spy x 100 games + both demo files, ~20 s on 2 cores
      python evaluate.py --model runs/grpo/checkpoint --games none --bench data/bench_mc_demo.jsonl
      python evaluate.py --compare tiny runs/grpo/checkpoint --games matrix,tictactoe,nested:matrix+tictactoe \\
          --entropy --json out/compare.json        # one row per model; nested games cost ~5x a plain game
      python evaluate.py --model Qwen/Qwen2.5-1.5B-Instruct --device cuda --dtype bfloat16 --games none \\
          --bench mmlu.jsonl,mmlu_pro.jsonl,siqa.jsonl,math500.jsonl --samples 8 --temperature 0.6
      python evaluate.py plot runs/grpo/log.jsonl runs/nested/log.jsonl --out out/curves
"""

import argparse
import collections
import csv
import json
import math
import os
import re
import sys
import time
import unicodedata

import torch
from tqdm import tqdm

import games
import grpo

# -----------------------------------------------------------------------------
# Settings: the defaults of `python evaluate.py`. Each is also a --flag (see --help).
GAMES = "matrix,tictactoe,spy"   # games to play; GIFT evaluates these three (gift.md 4.1)
BENCH = "data/bench_mc_demo.jsonl,data/bench_math_demo.jsonl"   # our own small demo files
N_GAMES = 100                    # episodes per game; GIFT plays 100 (gift.md 4.1)
EVAL_SEED_BASE = 10_000          # episode i uses seed 10_000 + i, as grpo.play_games and nested.py (never trained on)
OPPONENT = "random"              # TicTacToe opponent; Spy uses its clue bots unless this is a model
SAMPLE_TEMPERATURE = 0.6         # temperature when --samples > 1 and none is given (GLOW's eval, glow.md 6.1)
MAX_NEW_TINY = 24                # tokens per answer for the tiny model: "<answer>(2,3)</answer>" is 8
MAX_NEW_REAL = 600               # tokens per answer for real models; GIFT's max_tokens (gift.md 4.1)
SYSTEM_PROMPT = "You are a helpful assistant."   # real models only; GIFT's system prompt, reworded
BATCH_SIZE = 32                  # prompts per generate call
THREADS = 1                      # torch CPU threads: the tiny model's matrices are too small to split (as nested.py)
ENTROPY_PROMPTS = 64             # prompts per task for --entropy (first turns of the first games / questions)
ENTROPY_MICRO_BATCH = 4          # rows per entropy forward pass: Qwen2.5's fp32 logits take 0.6 GB per 1k tokens
Z95 = 1.959963984540054          # the standard normal quantile of 0.975: a two-sided 95% interval
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"   # option labels; MMLU uses A-D, MMLU-Pro A-J
PLOT_METRICS = ("reward_mean", "*/reward", "rate_success", "*/success", "eval_success",   # the curves `plot`
                "entropy", "*/entropy", "grad_norm", "*/grad_norm")                        # draws by default


# -----------------------------------------------------------------------------
# 1. Confidence intervals, pass@k and maj@k
#
# Wilson score interval (Wilson 1927) for k successes in n trials, p = k/n, z = 1.96:
#
#     center = (p + z^2 / 2n) / (1 + z^2 / n)
#     half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
#
# Why not p +- 1.96 sqrt(p(1-p)/n): at 0/100 or 100/100 that interval has width zero, and a model that
# won 0 of 100 games has not been shown to win never. Wilson stays inside [0, 1] and is honest at the edges.
# With 100 games the half-width near p = 0.5 is about 0.1: differences of a few points are noise.
def wilson_interval(k, n, z=Z95):
    """(low, high) of the Wilson score interval; (0, 1) when there are no trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def rate_with_interval(k, n):
    low, high = wilson_interval(k, n)
    return {"rate": k / n if n else 0.0, "low": low, "high": high, "count": k, "n": n}


# pass@k (Chen et al. 2021), unbiased: draw n >= k samples of which c are correct; the chance that a random
# subset of k contains at least one correct sample is
#
#     pass@k = 1 - C(n - c, k) / C(n, k)
#
# Just taking "any of the first k correct" is also unbiased but noisier; this uses all n samples.
def pass_at_k(n, c, k):
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# maj@k (self-consistency): take the first k answers, drop the ones we could not read, vote, and score the
# winner. Ties go to the answer that appeared first. Answers count as equal when their keys are equal
# (the letter for multiple choice; the number, or the normalised text, for free answers).
def majority_correct(keys, correct, k):
    """keys[i]: the comparable answer of sample i (None = unreadable); correct[i]: bool. Returns bool."""
    votes = collections.Counter(key for key in keys[:k] if key is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(key for key in keys[:k] if key is not None and votes[key] == top)
    return bool(correct[keys.index(winner)])


def k_values(samples):
    """1, 2, 4, ... up to samples, and samples itself."""
    ks = [k for k in (2 ** i for i in range(samples.bit_length())) if k <= samples]
    return ks + ([samples] if ks[-1] != samples else [])


# -----------------------------------------------------------------------------
# 2. Games
#
# grpo.play_games advances every episode of a game together: one batched `generate` per turn. Episode i
# starts from seed EVAL_SEED_BASE + i, so every checkpoint meets the same matrices, first players and
# secret words. TicTacToe starts from the empty board with a random first player (random_start=False in
# grpo.env_options_for), as in GIFT's evaluation.
#
# A task is a plain game name ("tictactoe") or a nested setting ("nested:matrix+tictactoe", nested.py's
# NestedEnv): one episode plays the sub-games in order, every sub-game reset with the episode's seed, and it
# is a joint success only if every sub-game succeeded.
PLAYABLE = tuple(name for name in games.ENV_NAMES if name != "math_jsonl")   # math_jsonl needs a file: --bench


def parse_task(spec):
    """"tictactoe" -> ("tictactoe", None); "nested:matrix+tictactoe" -> (spec, ["matrix", "tictactoe"])."""
    if spec.startswith("nested:"):
        parts = [p for p in spec[len("nested:"):].split("+") if p]
        bad = [p for p in parts if p not in PLAYABLE]
        if len(parts) < 2 or bad or len(set(parts)) < len(parts):
            raise ValueError(f"--games: {spec!r} must be nested:GAME+GAME[+...] with different games from "
                             f"{', '.join(PLAYABLE)}")
        return spec, parts
    if spec not in PLAYABLE:
        raise ValueError(f"--games: unknown game {spec!r}; valid: {', '.join(PLAYABLE)} or nested:A+B "
                         "(question files go to --bench)")
    return spec, None


def import_nested():
    try:
        import nested
    except ImportError as e:
        raise SystemExit(f"--games nested:...: nested.py could not be imported ({e}); "
                         "play the games one by one instead") from None
    return nested


def make_task_envs(spec, tokenizer, opponent, n):
    """n fresh environments for one task, with the evaluation options (see grpo.env_options_for)."""
    name, parts = parse_task(spec)
    if parts is None:
        options = grpo.env_options_for(name, tokenizer, opponent, training=False)
        return [games.make_env(name, **options) for _ in range(n)]
    nested = import_nested()
    return [nested.make_task_env(parts, tokenizer, opponent, training=False) for _ in range(n)]


# This is grpo.play_games, generalised to nested settings: the same seeds, options and batched rollout.
def play_task(model, tokenizer, spec, n, opponent, temperature, max_new, system_prompt, top_p=1.0,
              seed_base=EVAL_SEED_BASE):
    """Plays n episodes of one task; returns (report, episodes)."""
    envs = make_task_envs(spec, tokenizer, opponent, n)
    seeds = [seed_base + i for i in range(n)]
    episodes = grpo.rollout(model, tokenizer, envs, seeds, temperature=temperature, top_p=top_p, max_new=max_new,
                            system_prompt=system_prompt, progress=True)
    return game_report(spec, episodes), episodes


# The rates come from grpo.summarize_outcomes, so evaluation and the training logs share one definition
# (invalid = invalid turns / all turns). Counts are recovered as rate * n for the Wilson intervals.
# The invalid interval treats turns as independent, which they are not within one game: read it as rough.
def game_report(spec, episodes):
    n = len(episodes)
    turns = sum(ep.turns for ep in episodes)
    rates = grpo.summarize_outcomes(episodes)
    report = {"task": spec, "n": n, "turns": turns, "mean_return": rates["mean_return"],
              "success": rate_with_interval(round(rates["success"] * n), n),
              "invalid": rate_with_interval(round(rates["invalid"] * turns), turns),
              "outcomes": {k: rate_with_interval(round(v * n), n) for k, v in sorted(rates.items())
                           if k not in ("success", "invalid", "mean_return", "took_win", "blocked")}}
    # TicTacToe tactics: rates over the chances (moves that could win at once / had to block), not games.
    count = grpo.tactic_counts(episodes)
    if count:
        report["tactics"] = {"took_win": rate_with_interval(count["wins_taken"], count["win_chances"]),
                             "blocked": rate_with_interval(count["blocks_made"], count["block_chances"])}
    # Matrix games: success per classic game and role ("Stag Hunt P2"), where a policy that collapsed onto
    # one wrong action for a game shows as 0/n (README, matrix results).
    if episodes and all("game" in ep.info and "role" in ep.info for ep in episodes):
        by = collections.defaultdict(list)
        for ep in episodes:
            by[f"{ep.info['game']} {ep.info['role']}"].append(bool(ep.info.get("success")))
        report["by_game"] = {k: rate_with_interval(sum(v), len(v)) for k, v in sorted(by.items())}
    # nested.NestedEnv already reports success = "every sub-task succeeded" (the joint metric), and
    # lists each finished sub-task in info["subtasks"], from which we read the sub-task successes.
    parts = parse_task(spec)[1]
    if parts is not None:
        report["joint_success"] = report["success"]
        report["sub_success"] = {name: rate_with_interval(sum(bool(ep.info["subtasks"][k]["success"])
                                                              for ep in episodes), n)
                                 for k, name in enumerate(parts)}
    return report


# -----------------------------------------------------------------------------
# 3. Benchmark files
#
# One JSON object per line; blank lines are skipped. Two kinds, told apart by the fields:
#     multiple choice:  {"question": str, "choices": [str, ...], "answer": "B" | 1, "subject": str (optional)}
#     free answer:      {"question": str, "answer": 42 | "3/4" | "x+1", "subject": str (optional)}
# "answer" of a multiple-choice line is a letter or a 0-based index into choices (MMLU's convention).
# A file holds one kind; anything malformed stops the run with the file, the line and the field.
jsonl_objects = games.jsonl_objects   # (line number, dict) per line; stops with file:line


def load_bench(path, limit=None):
    """{"name", "path", "kind": "mc" | "free", "items": [...]}; items carry the gold letter or answer."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    items, kind = [], None
    for number, row in jsonl_objects(path):
        where = f"{path}:{number}"
        line_kind = "mc" if "choices" in row else "free"
        if kind is None:
            kind, first = line_kind, number
        elif line_kind != kind:
            raise ValueError(f"{where}: this line is {'multiple choice' if line_kind == 'mc' else 'free answer'} "
                             f"but line {first} is not; put each kind in its own file")
        items.append(check_item(row, kind, where) | {"line": number})
        if limit and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{path}: no questions in the file")
    name = os.path.splitext(os.path.basename(path))[0]
    return {"name": name[len("bench_"):] if name.startswith("bench_") else name, "path": path,
            "kind": kind, "items": items}


def check_item(row, kind, where):
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    subject = row.get("subject", "all")
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"{where}: field 'subject' must be a non-empty string when present")
    if "answer" not in row:
        raise ValueError(f"{where}: field 'answer' is missing")
    answer = row["answer"]
    if kind == "free":
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
            raise ValueError(f"{where}: field 'answer' must be a number or a non-empty string")
        return {"question": question, "choices": None, "gold": str(answer), "subject": subject}
    choices = row["choices"]
    if (not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise ValueError(f"{where}: field 'choices' must be a list of 2 to {len(LETTERS)} non-empty strings")
    valid = LETTERS[:len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        gold = valid[answer]
    elif isinstance(answer, str) and answer.strip().upper() in valid and len(answer.strip()) == 1:
        gold = answer.strip().upper()
    else:
        raise ValueError(f"{where}: field 'answer' must be a letter {valid[0]}-{valid[-1]} or a 0-based index "
                         f"0-{len(choices) - 1}, got {answer!r}")
    return {"question": question, "choices": choices, "gold": gold, "subject": subject}


# -----------------------------------------------------------------------------
# 4. Prompts
#
# As in both papers: the question, then "reason first, answer in a fixed place". GIFT asks for
# <think>...</think><answer>...</answer> (gift.md 4.1); we reuse games.FORMAT_RULE, the sentence every
# game prompt ends with, so a model trained on the games sees the same instruction here.
# The tiny model gets only the question and the options: it has never seen an instruction and has a
# character-level vocabulary. It scores about chance, which is the expected result.
def bench_prompt(item, compact):
    if item["choices"] is None:
        if compact:
            return item["question"]
        return (f"Solve the problem.\n\n{item['question']}\n\n{games.FORMAT_RULE} "
                "Put only the final answer inside the answer tags, for example <answer>42</answer>.")
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    if compact:
        return f"{item['question']}\n{options}"
    return (f"Answer the multiple-choice question.\n\n{item['question']}\n\n{options}\n\n{games.FORMAT_RULE} "
            f"Put only the letter of the correct option inside the answer tags, "
            f"for example <answer>{LETTERS[len(item['choices']) - 1]}</answer>.")


# -----------------------------------------------------------------------------
# 5. Answer extraction: regular expressions only, model text is never executed
#
# Text is first NFKC-normalised, so a full-width "Ｂ" or "（B）" reads as "B" / "(B)". Then, in order:
#   multiple choice                                   free answer
#   1. the last complete <answer>...</answer>         1. the same (games.parse_answer: one linear pass)
#   2. a reply that is only a letter: b, (B), **B**   2. the last \boxed{...}, braces matched
#   3. the last "answer is (B)" / "Answer: B"         3. the last "answer is 42" / "Answer: 3/4"
#                                                     4. a reply that is only a number
# Inside the tags a letter is read the same way (2, 3), then as an option prefix "B. Paris", and last as
# the first lone capital that is a valid option (GIFT's rule): "<answer>I pick C</answer>" gives C of four.
# A letter must stand alone, with no word character on either side: "Because" is not B, nor is "éB".
# Outside the tags it must also be upper case or bracketed: "the answer is a trick" is not A.
# Every pattern is matched left to right once, with bounded repeats, so 1 MB of text costs little.
LONE_CAPITAL = re.compile(r"(?<!\w)([A-Z])(?!\w)")
BARE_LETTER = re.compile(r"[\s*_(\[]*([A-Za-z])[\s*_)\].:]*")
OPTION_PREFIX = re.compile(r"\s*[(\[]?([A-Z])[).:\]](?!\w)")
ANSWER_WORDS = r"(?i:answer)(?:\s{1,3}(?i:is))?\s{0,3}[:=]?\s{0,3}"
ANSWER_LETTER = re.compile(ANSWER_WORDS + r"(?:\(([A-Za-z])\)|\[([A-Za-z])\]|\*\*([A-Za-z])\*\*|([A-Z])(?!\w))")
ANSWER_NUMBER = re.compile(ANSWER_WORDS + r"\$?((?:" + games.NUMBER_RE.pattern + r")(?:\s*/\s*[0-9]+)?)")
BOXED = "\\boxed{"
BRACE = re.compile(r"[{}]")


def last_match(pattern, text):
    found = None
    for found in pattern.finditer(text):
        pass
    return found


def letter_from_phrase(text):
    m = last_match(ANSWER_LETTER, text)
    return next(g for g in m.groups() if g).upper() if m else None


def extract_choice(text, n_choices):
    """The option letter a reply commits to, or None."""
    text = unicodedata.normalize("NFKC", text)
    tagged = games.parse_answer(text)
    if tagged is None:
        bare = BARE_LETTER.fullmatch(text)
        return bare.group(1).upper() if bare else letter_from_phrase(text)
    bare = BARE_LETTER.fullmatch(tagged)
    if bare:
        return bare.group(1).upper()
    found = letter_from_phrase(tagged)
    if found:
        return found
    prefix = OPTION_PREFIX.match(tagged)
    if prefix:
        return prefix.group(1)
    return next((m.group(1) for m in LONE_CAPITAL.finditer(tagged) if m.group(1) in LETTERS[:n_choices]), None)


def last_boxed(text):
    """The content of the last \\boxed{...}, braces matched; None if there is none or it is unclosed."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOXED)
    for brace in BRACE.finditer(text, begin):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return text[begin:brace.start()].strip() or None
    return None


def extract_free(text):
    """The final answer of a free-answer reply as a string, or None."""
    text = unicodedata.normalize("NFKC", text)
    for found in (games.parse_answer(text), last_boxed(text)):
        if found is not None:
            return found
    phrase = last_match(ANSWER_NUMBER, text)
    if phrase:
        return phrase.group(1)
    return text.strip() if games.parse_number(text) is not None else None


def answer_key(answer):
    """What maj@k compares: the exact number if the answer is one, else lower case without spaces."""
    if answer is None:
        return None
    number = games.parse_number(answer)
    return number if number is not None else re.sub(r"\s+", "", answer).lower()


# -----------------------------------------------------------------------------
# 6. Scoring a benchmark with any generator
#
# score_bench only needs `generate_fn(prompts) -> replies` (lists of strings, same length and order), so a
# test can pass a function that always answers the gold letter, and a real run passes model_generate_fn.
# With samples = n, every question is asked n times; accuracy is then the mean of c_i / n_i over questions,
# which is the unbiased estimate of pass@1.
def score_bench(bench, generate_fn, samples=1, compact=False):
    """Returns (metrics, records); records hold every reply's extracted answer and correctness."""
    items = bench["items"]
    prompts = [bench_prompt(item, compact) for item in items for _ in range(samples)]
    replies = generate_fn(prompts)
    if len(replies) != len(prompts):
        raise ValueError(f"generate_fn returned {len(replies)} replies for {len(prompts)} prompts")
    records = []
    for i, item in enumerate(items):
        mine = replies[i * samples:(i + 1) * samples]
        if item["choices"] is None:
            answers = [extract_free(r) for r in mine]
            correct = [a is not None and games.check_answer(a, item["gold"]) for a in answers]
            keys = [answer_key(a) for a in answers]
        else:
            answers = [extract_choice(r, len(item["choices"])) for r in mine]
            correct = [a == item["gold"] for a in answers]
            keys = answers
        records.append({"line": item["line"], "subject": item["subject"], "gold": item["gold"],
                        "answers": answers, "correct": correct, "keys": keys})
    return bench_metrics(bench["name"], records, samples), records


def bench_metrics(name, records, samples):
    n = len(records)
    per_item = [sum(r["correct"]) / samples for r in records]
    m = {"bench": name, "n": n, "samples": samples, "accuracy": sum(per_item) / n,
         "unanswered": sum(a is None for r in records for a in r["answers"]) / (n * samples)}
    if samples == 1:
        m["interval"] = wilson_interval(sum(r["correct"][0] for r in records), n)
    subjects = collections.defaultdict(list)
    for r, acc in zip(records, per_item):
        subjects[r["subject"]].append(acc)
    m["subjects"] = {s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(subjects.items())}
    m["macro_accuracy"] = sum(s["accuracy"] for s in m["subjects"].values()) / len(m["subjects"])
    if samples > 1:
        m["pass@k"] = {k: sum(pass_at_k(samples, sum(r["correct"]), k) for r in records) / n
                       for k in k_values(samples)}
        m["maj@k"] = {k: sum(majority_correct(r["keys"], r["correct"], k) for r in records) / n
                      for k in k_values(samples)}
    return m


# -----------------------------------------------------------------------------
# 7. Generating with a model
#
# Prompts are rendered with the model's own chat template, sorted by length (rows of similar length share
# a batch, so there is little padding), generated with grpo.generate_batch, cut at the first stop token,
# and put back in their original order.
def chat(prompt, system_prompt):
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]


def prompt_ids(tokenizer, prompt, system_prompt):
    text = grpo.render(tokenizer, chat(prompt, system_prompt), add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cut_at_stop(ids, stops):
    """ids through the first stop token (inclusive); all of them if the model never stopped."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i + 1]
    return ids


def model_generate_fn(model, tokenizer, temperature, top_p, max_new, system_prompt, batch_size, desc):
    config = grpo.generation_config(tokenizer, model, temperature, top_p, max_new)
    stops = set(config.eos_token_id)

    def generate(prompts):
        ids = [prompt_ids(tokenizer, p, system_prompt) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        replies = [None] * len(ids)
        model.eval()
        with tqdm(total=len(ids), desc=desc, unit="reply", leave=False) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                for i, new in zip(chunk, grpo.generate_batch(model, tokenizer, [ids[i] for i in chunk], config,
                                                             batch_size=batch_size)):
                    replies[i] = tokenizer.decode(cut_at_stop(new, stops), skip_special_tokens=True)
                bar.update(len(chunk))
        return replies
    return generate


# -----------------------------------------------------------------------------
# 8. Entropy of the model's own generations (GLOW section 5; glow.md names the formula, not the details)
#
#     H_t = - sum_v p(v | x, y_<t) log p(v | x, y_<t),      p = softmax(logits), temperature 1
#     entropy of a task = sum over prompts and generated tokens of H_t / number of generated tokens
#
# The paper does not say how it measures this, so we use glow_sft.py's definition, and its code, so the
# two scripts report the same number for the same model: the model writes its own reply to each prompt
# with the evaluation's decoding (greedy by default: no sampling noise); H_t is the entropy of the full
# T = 1 distribution at every generated token, the stop token included (stopping is a choice too); the
# mean is per token, so long replies weigh more. The prompts are the first turns of the first
# --entropy-prompts evaluation games (for a nested setting: its first sub-game's) and the first
# --entropy-prompts questions of each benchmark. "all" in the table is the mean of the tasks' entropies.
@torch.no_grad()
def generation_entropy(model, tokenizer, prompts, max_new, temperature=0.0, batch_size=BATCH_SIZE):
    """prompts: lists of token ids. Returns the mean T=1 entropy (nats) over the generated tokens."""
    import glow_sft                     # here, not at the top: only --entropy needs it

    config = grpo.generation_config(tokenizer, model, temperature, 1.0, max_new)
    stops = set(config.eos_token_id)
    news = grpo.generate_batch(model, tokenizer, prompts, config, batch_size)
    pairs = [(p, cut_at_stop(new, stops)) for p, new in zip(prompts, news)]
    return glow_sft.entropy_of_generations(model, tokenizer, pairs, batch_size=ENTROPY_MICRO_BATCH)


def game_prompts(tokenizer, spec, opponent, system_prompt, n):
    envs = make_task_envs(spec, tokenizer, opponent, n)
    return [grpo.start_episode(tokenizer, env, EVAL_SEED_BASE + i, i, system_prompt).ids for i, env in enumerate(envs)]


def bench_prompts(tokenizer, bench, system_prompt, n):
    compact = grpo.is_tiny(tokenizer)
    return [prompt_ids(tokenizer, bench_prompt(item, compact), system_prompt) for item in bench["items"][:n]]


# -----------------------------------------------------------------------------
# 8b. The TicTacToe tactics probe (--tactics)
#
# took_win / blocked in played games count the chances the policy met in its OWN games, so a policy that
# learned one style of play can score well there and know nothing elsewhere. The probe asks for one move in
# EVERY unfinished position that holds a tactic (games.ttt_tactic_positions: 2,358 with a win to take,
# 976 with exactly one threat to block), greedy, and counts the right moves. The README shows the gap:
# a GRPO-trained tiny takes 79% of its wins in play, but 49% of the wins on the probe.
def tactics_probe(tokenizer, generate, opponent):
    """{"took_win", "blocked"}: rates with intervals over every probe position of that kind."""
    env = games.make_env("tictactoe", **grpo.env_options_for("tictactoe", tokenizer, opponent, training=False))
    env.reset(EVAL_SEED_BASE)
    positions = games.ttt_tactic_positions()
    replies = generate([env.set_position(board, mark) for board, mark, _, _ in positions])
    hits = collections.Counter()
    for (_, _, kind, cells), reply in zip(positions, replies):
        hits[kind, "n"] += 1
        hits[kind, "hit"] += games.parse_ttt_move(games.parse_answer(reply)) in cells
    return {name: rate_with_interval(hits[kind, "hit"], hits[kind, "n"])
            for name, kind in (("took_win", "win"), ("blocked", "block"))}


# -----------------------------------------------------------------------------
# 9. One checkpoint, several checkpoints, and the table
def evaluate_model(name, args, benches):
    """Everything for one checkpoint: {"model", "games": {task: report}, "bench": {name: metrics}, ...}."""
    t0 = time.time()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tokenizer = grpo.load_policy(name, args.device, dtype)
    model.eval()
    tiny = grpo.is_tiny(tokenizer)
    system_prompt = None if tiny else args.system_prompt
    max_new = args.max_new_tokens or (MAX_NEW_TINY if tiny else MAX_NEW_REAL)
    opponent = grpo.make_opponent(args.opponent, grpo.load_policy_path(name), args.device, dtype, max_new)
    result = {"model": name, "games": {}, "bench": {}}
    for spec in args.games:
        torch.manual_seed(args.seed)       # sampling (--temperature > 0) does not depend on task order
        result["games"][spec], _ = play_task(model, tokenizer, spec, args.n, opponent, args.game_temperature,
                                             max_new, system_prompt, args.top_p)
        print(f"  {spec:<24} {format_game(result['games'][spec])}")
    for bench in benches:
        torch.manual_seed(args.seed)
        generate = model_generate_fn(model, tokenizer, args.temperature, args.top_p, max_new, system_prompt,
                                     args.batch_size, desc=bench["name"])
        result["bench"][bench["name"]], _ = score_bench(bench, generate, args.samples, compact=tiny)
        print(f"  {bench['name']:<24} {format_bench(result['bench'][bench['name']])}")
    if args.tactics:
        generate = model_generate_fn(model, tokenizer, args.game_temperature, args.top_p, max_new, system_prompt,
                                     args.batch_size, desc="tactics probe")
        result["tactics"] = tactics_probe(tokenizer, generate, opponent)
        print(f"  {'tactics probe':<24} " + "  ".join(f"{k} {v['count']}/{v['n']} = {100 * v['rate']:.1f}%"
                                                      for k, v in result["tactics"].items()))
    if args.entropy:
        torch.manual_seed(args.seed)
        jobs = {spec: (game_prompts(tokenizer, spec, opponent, system_prompt, args.entropy_prompts),
                       args.game_temperature) for spec in args.games}
        jobs |= {b["name"]: (bench_prompts(tokenizer, b, system_prompt, args.entropy_prompts), args.temperature)
                 for b in benches}
        result["entropy"] = {task: generation_entropy(model, tokenizer, prompts, max_new, temperature, args.batch_size)
                             for task, (prompts, temperature) in tqdm(jobs.items(), desc="entropy", leave=False)}
        result["entropy"]["all"] = sum(result["entropy"].values()) / len(result["entropy"])
        print(f"  {'entropy (nats/token)':<24} " + "  ".join(f"{k} {v:.3f}" for k, v in result["entropy"].items()))
    result["seconds"] = time.time() - t0
    return result


def format_game(report):
    """success [95% interval], then every outcome, then the invalid-answer rate, on one line."""
    def rate(name, v):
        return f"{name} {100 * v['rate']:.1f}% [{100 * v['low']:.1f}, {100 * v['high']:.1f}]"
    parts = [rate("joint success" if "joint_success" in report else "success", report["success"])]
    parts += [rate(k, v) for k, v in report.get("sub_success", {}).items()]
    parts += [f"{k} {100 * v['rate']:.1f}%" for k, v in report["outcomes"].items()]
    inv = report["invalid"]
    parts.append(f"invalid {100 * inv['rate']:.1f}% of {inv['n']} turns")
    parts += [f"{k} {v['count']}/{v['n']}" for k, v in report.get("tactics", {}).items()]
    if "by_game" in report:
        parts.append("\n  " + " " * 24 + " by game: " + ", ".join(f"{k} {v['count']}/{v['n']}"
                                                                   for k, v in report["by_game"].items()))
    return "  ".join(parts)


def format_bench(m):
    text = f"accuracy {100 * m['accuracy']:.1f}% (n={m['n']}"
    text += f", 95% [{100 * m['interval'][0]:.1f}, {100 * m['interval'][1]:.1f}])" if "interval" in m else ")"
    text += f"  unanswered {100 * m['unanswered']:.1f}%"
    text += "".join(f"  pass@{k} {100 * v:.1f}%" for k, v in m.get("pass@k", {}).items())
    text += "".join(f"  maj@{k} {100 * v:.1f}%" for k, v in m.get("maj@k", {}).items())
    subjects = "  ".join(f"{s} {100 * v['accuracy']:.1f}%" for s, v in m["subjects"].items())
    return text + (f"\n  {'':<24} by subject: {subjects}" if len(m["subjects"]) > 1 else "")


# The papers' layout: one row per model, one column per task (game success %, benchmark accuracy %), then
# the average of those columns, then the entropy if it was measured (not averaged: it is not a score), then
# the tactics probe's rates if it ran (not averaged either: it is a diagnostic).
def results_table(results):
    """(columns, rows): rows are lists of the model name and one number (or None) per column."""
    tasks = list(dict.fromkeys(t for r in results for t in r["games"]))
    benches = list(dict.fromkeys(b for r in results for b in r["bench"]))
    has_entropy = any("entropy" in r for r in results)
    probe = list(dict.fromkeys(k for r in results for k in r.get("tactics", {})))
    columns = (["model"] + tasks + benches + ["avg"] + (["entropy"] if has_entropy else [])
               + [f"probe {k}" for k in probe])
    rows = []
    for r in results:
        scores = [100 * r["games"][t]["success"]["rate"] if t in r["games"] else None for t in tasks]
        scores += [100 * r["bench"][b]["accuracy"] if b in r["bench"] else None for b in benches]
        present = [s for s in scores if s is not None]
        row = [r["model"]] + scores + [sum(present) / len(present) if present else None]
        row += [r.get("entropy", {}).get("all")] if has_entropy else []
        rows.append(row + [100 * r["tactics"][k]["rate"] if k in r.get("tactics", {}) else None for k in probe])
    return columns, rows


def markdown_table(columns, rows):
    def cell(v, column):
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        return f"{v:.3f}" if column == "entropy" else f"{v:.2f}"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, columns)) + " |" for row in rows]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# 10. Training curves: `python evaluate.py plot LOG [LOG ...] --out DIR`
#
# A log is one JSON object per line with a "step" and numbers (grpo.py's log.jsonl, nested.py's, ...).
# Every run is named after the folder of its log. One figure per metric, one line per run; a metric
# pattern "*/success" means every per-task key such as "matrix/success". A CSV per metric (step x run)
# is always written; the PNG needs matplotlib, which is optional: without it we say so and stop at the CSV.
def read_log(path):
    """[{"step": int, metric: float, ...}] in file order; bad lines stop with file and line."""
    records = []
    for number, row in jsonl_objects(path):
        if not isinstance(row.get("step"), (int, float)):
            raise ValueError(f"{path}:{number}: no numeric 'step' in this line")
        records.append({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not records:
        raise ValueError(f"{path}: no log lines")
    return records


def run_names(paths):
    """The folder of each log ("runs/grpo/log.jsonl" -> "grpo"); the full path where folders repeat."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(p))) or p for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def pick_metrics(logs, patterns):
    keys = list(dict.fromkeys(k for log in logs for rec in log for k in rec if k != "step"))
    chosen = []
    for pattern in patterns:
        if pattern == "all":
            chosen += keys
        elif pattern.startswith("*/"):
            chosen += [k for k in keys if k.endswith(pattern[1:])]
        elif pattern in keys:
            chosen.append(pattern)
    return list(dict.fromkeys(chosen))


def plot_logs(paths, out_dir, patterns=PLOT_METRICS):
    """Writes DIR/<metric>.csv (and .png with matplotlib). Returns the list of files written."""
    logs = [read_log(p) for p in paths]
    names = run_names(paths)
    metrics = pick_metrics(logs, patterns)
    if not metrics:
        raise ValueError(f"none of the metrics {', '.join(patterns)} is in {', '.join(paths)}")
    os.makedirs(out_dir, exist_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")                  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        print("matplotlib is not installed: writing one CSV per metric instead of PNG "
              "(pip install matplotlib for the figures)")
    written = []
    for metric in tqdm(metrics, desc="plotting", leave=False):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)
        series = {name: {rec["step"]: rec[metric] for rec in log if metric in rec} for name, log in zip(names, logs)}
        steps = sorted({s for points in series.values() for s in points})
        path = os.path.join(out_dir, safe + ".csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step"] + names)
            writer.writerows([[s] + [series[n].get(s, "") for n in names] for s in steps])
        written.append(path)
        if plt is not None:
            fig, ax = plt.subplots(figsize=(6, 4))
            for name, points in series.items():
                if points:
                    xs = sorted(points)
                    ax.plot(xs, [points[x] for x in xs], label=name)
            ax.set_xlabel("step")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(os.path.join(out_dir, safe + ".png"), dpi=120)
            plt.close(fig)
            written.append(os.path.join(out_dir, safe + ".png"))
    return written


# -----------------------------------------------------------------------------
# 11. Command line
def decoding(temperature):
    return "greedy" if temperature == 0 else f"temperature {temperature}"


def split_list(text):
    return [] if text.strip().lower() in ("", "none") else [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Training curves: python evaluate.py plot LOG [LOG ...] --out DIR  (see: evaluate.py plot --help)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--model", default="tiny",
                     help="checkpoint to evaluate: tiny (built in code), a hub name or a local folder (default: tiny)")
    who.add_argument("--compare", nargs="+", metavar="MODEL",
                     help="evaluate several checkpoints the same way and print one table, one row per model")
    p.add_argument("--games", default=GAMES,
                   help=f"comma-separated games ({', '.join(PLAYABLE)}) or nested settings such as "
                        f"nested:matrix+tictactoe; 'none' skips the games (default: {GAMES})")
    p.add_argument("--n", type=int, default=N_GAMES, help=f"episodes per game, from seeds {EVAL_SEED_BASE}, "
                   f"{EVAL_SEED_BASE + 1}, ... (default: {N_GAMES})")
    p.add_argument("--opponent", default=OPPONENT,
                   help="TicTacToe opponent: random | greedy | minimax | greedy:P | minimax:P | model:PATH | model:self | http://host:port/v1#name. "
                        "A model or http opponent also plays the other Spy seats; otherwise Spy uses its clue "
                        f"bots (default: {OPPONENT})")
    p.add_argument("--bench", default=BENCH,
                   help="comma-separated JSONL files; multiple choice (question, choices, answer) or free answer "
                        f"(question, answer), told apart per file; 'none' skips them (default: {BENCH})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions of each file")
    p.add_argument("--samples", type=int, default=1,
                   help="replies per question; > 1 adds pass@k and maj@k for k = 1, 2, 4, ..., samples (default: 1)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"sampling temperature for games and replies; default 0 (greedy), and {SAMPLE_TEMPERATURE} "
                        "for benchmark replies with --samples > 1 (GLOW's evaluation setting)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when sampling (default: 1.0, off)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"tokens per reply (default: {MAX_NEW_TINY} for tiny, {MAX_NEW_REAL} for real models)")
    p.add_argument("--tactics", action="store_true",
                   help="TicTacToe tactics probe: one greedy move in each of the 3,334 positions with a win to "
                        "take or a single threat to block (not only those the model meets in its own games)")
    p.add_argument("--entropy", action="store_true",
                   help="also measure the mean token entropy (T=1 distribution) over the model's own replies "
                        "(GLOW section 5; the definition of glow_sft.py)")
    p.add_argument("--entropy-prompts", type=int, default=ENTROPY_PROMPTS,
                   help=f"prompts per task for --entropy (default: {ENTROPY_PROMPTS})")
    p.add_argument("--system-prompt", default=SYSTEM_PROMPT,
                   help=f"system message for real chat models; tiny gets none (default: {SYSTEM_PROMPT!r})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"benchmark prompts per generate call (default: {BATCH_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="torch seed for sampled replies (default: 0)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help="torch CPU threads; 0 = torch's default (all cores). 1 suits the tiny model, above all on a "
                        f"machine shared with other jobs; a real model on CPU wants more (default: {THREADS})")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="weights dtype; bfloat16 for real models on a GPU (default: float32)")
    p.add_argument("--json", metavar="OUT.json", default=None,
                   help="also write the table and every number behind it to this JSON file")
    args = p.parse_args(argv)
    try:
        args.games = [parse_task(t)[0] for t in split_list(args.games)]
    except ValueError as e:
        p.error(str(e))
    if any(parse_task(t)[1] for t in args.games):
        import_nested()                      # fail before any model is loaded
    try:
        grpo.opponent_kind(args.opponent)       # fail before any model is loaded
    except ValueError as e:
        p.error(str(e))
    args.bench = split_list(args.bench)
    if not args.games and not args.bench and not args.tactics:
        p.error("nothing to evaluate: give --games, --bench and/or --tactics")
    if args.threads < 0:
        p.error("--threads must be 0 (torch's default) or more")
    for flag in ("n", "samples", "batch_size", "entropy_prompts"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    # Games are greedy unless a temperature is given; --samples only changes the benchmarks' default.
    args.game_temperature = args.temperature or 0.0
    if args.temperature is None:
        args.temperature = SAMPLE_TEMPERATURE if args.samples > 1 else 0.0
    if args.samples > 1 and args.temperature == 0:
        p.error("--samples > 1 with --temperature 0 would repeat one greedy reply; give a temperature > 0")
    args.models = args.compare or [args.model]
    return args


def plot_main(argv):
    p = argparse.ArgumentParser(prog="evaluate.py plot",
                                description="Training curves from log.jsonl files: one figure (PNG, needs "
                                            "matplotlib) and one CSV per metric, one line/column per run.")
    p.add_argument("logs", nargs="+", help="log.jsonl files, one JSON object per line with a 'step' key")
    p.add_argument("--out", required=True, help="folder for <metric>.png and <metric>.csv")
    p.add_argument("--metrics", default=",".join(PLOT_METRICS),
                   help="comma-separated keys; */success means every per-task key like matrix/success; "
                        f"'all' plots everything (default: {','.join(PLOT_METRICS)})")
    args = p.parse_args(argv)
    try:
        written = plot_logs(args.logs, args.out, split_list(args.metrics))
    except (OSError, ValueError) as e:
        raise SystemExit(f"plot: {e}") from None
    print(f"wrote {len(written)} files to {args.out}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:
        return plot_main(argv[1:])
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        benches = [load_bench(path, args.limit) for path in args.bench]
    except ValueError as e:
        raise SystemExit(f"--bench: {e}") from None
    names = [b["name"] for b in benches] + args.games
    if len(set(names)) < len(names):
        raise SystemExit(f"--bench: two tasks would share a column name: {', '.join(names)}; rename a file")
    t0 = time.time()
    results = []
    for name in args.models:
        print(f"== {name}")
        results.append(evaluate_model(name, args, benches))
    columns, rows = results_table(results)
    setup = []
    if args.games:
        setup.append(f"{args.n} games per game ({decoding(args.game_temperature)}, opponent {args.opponent})")
    if benches:
        setup.append(f"{args.samples} repl{'y' if args.samples == 1 else 'ies'} per question "
                     f"({decoding(args.temperature)})")
    print(f"\nsuccess / accuracy in %; {'; '.join(setup)}; {time.time() - t0:.0f} s\n")
    print(markdown_table(columns, rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"columns": columns, "rows": rows, "results": results,
                       "settings": {k: v for k, v in vars(args).items()}}, f, indent=1)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
