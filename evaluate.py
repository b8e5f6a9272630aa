"""
evaluate.py -- how good is a checkpoint? Games, benchmark files, entropy, one table laid out like the papers'.

What it measures:
  games       N episodes per game from fixed evaluation seeds (the same for every checkpoint), greedy by
              default: win / draw / loss / success rates with Wilson 95% intervals, the share of invalid
              answers, and for nested settings the joint success (every sub-task succeeded). GIFT
              (arXiv 2601.05633) §4.1 plays 100 games per game; so do we.
  benchmarks  multiple-choice and free-answer questions from local JSONL files (nothing can be downloaded
              here; docs/RESULTS.md shows how to export MMLU, MMLU-Pro, SocialIQA and MATH-500 elsewhere):
              per-subject and micro-averaged accuracy; with --samples k also pass@k and maj@k.
  entropy     mean token entropy of the model's own replies (--entropy; glow_sft.py's definition).

What we simplified vs the papers (and why), one line each:
  - Free answers are checked by games.check_answer (exact numbers, fractions, else normalised text), not
    Math-Verify: no extra dependency, nothing executed; LaTeX answers match only when written alike.
  - GIFT samples its evaluation at T = 0.5 with no seed; we default to greedy with fixed seeds, so two
    runs of one checkpoint give the same numbers. Opponents are the games' bots unless --opponent names one.
  - CommonGen is left out (it needs a GPT-4o judge). "avg" is the mean of every column shown; GIFT's Avg
    covers MMLU, MMLU-Pro, CommonGen and SocialIQA: pass just those files for its definition.

Run:  python evaluate.py              # tiny: matrix, tictactoe, spy x 100 games + both demo files (~20 s)
      python evaluate.py --models tiny,runs/grpo/checkpoint --games matrix,tictactoe,nested:matrix+tictactoe
      python evaluate.py --models Qwen/Qwen2.5-1.5B-Instruct --device cuda --precision bf16 --games none \\
          --bench mmlu.jsonl,mmlu_pro.jsonl,siqa.jsonl,math500.jsonl --samples 8 --temperature 0.6
"""
import collections
import json
import math
import os
import re
import time
import unicodedata
from dataclasses import dataclass

import torch
from tqdm import tqdm

import games
import glow_sft
import grpo
import nested
from grpo import flag

SAMPLE_TEMPERATURE = 0.6         # benchmark temperature when --samples > 1 and none is given (GLOW's eval)
Z95 = 1.959963984540054          # the standard normal quantile of 0.975: a two-sided 95% interval
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"   # option labels; MMLU uses A-D, MMLU-Pro A-J
BATCH = 32                       # prompts per generate call
ENTROPY_PROMPTS = 64             # prompts per task for --entropy (first turns of the first games / questions)
INDENT = "\n" + " " * 27         # a printed task's second line (by game, by subject) starts under its numbers


# -----------------------------------------------------------------------------
# Settings: every one is a flag (--help lists them with their defaults): GIFT's 100 games per game (§4.1) and its
# 600-token budget for a real model's reply, greedy on fixed seeds (docstring); --samples > 1 samples like GLOW.
@dataclass
class Settings:
    models: str = flag("tiny", "comma-separated checkpoints: tiny, hub names, folders; one table row each")
    games: str = flag("matrix,tictactoe,spy", "games (matrix, tictactoe, spy, arith) or nested:A+B; none = skip")
    n: int = flag(100, "episodes per game, from seeds 10000, 10001, ...; GIFT plays 100")
    opponent: str = flag("random", "TicTacToe (and, if a model, Spy) opponent: random|minimax|model:PATH|http://...")
    bench: str = flag("data/bench_mc_demo.jsonl,data/bench_math_demo.jsonl", "benchmark JSONL files; none = skip")
    samples: int = flag(1, "replies per question; > 1 adds pass@k and maj@k for k = 1, 2, 4, ...")
    temperature: float = flag(-1.0, f"sampling temperature; default greedy, {SAMPLE_TEMPERATURE} with --samples > 1")
    max_new_tokens: int = flag(0, "tokens per reply (0 = 24 for tiny, 600 for real models: GIFT's budget)")
    entropy: bool = flag(False, "also the mean token entropy of the T=1 distribution over the model's own replies")
    seed: int = flag(0, "torch seed for sampled replies")
    threads: int = flag(1, "torch CPU threads (0 = torch's default); 1 suits tiny")
    device: str = flag("cpu", "cpu | cuda | cuda:1 ...")
    precision: str = flag("fp32", "fp32 | bf16 (weights stored in bf16: evaluation trains nothing)", ("fp32", "bf16"))
    json: str = flag("", "also write the table and every number behind it to this JSON file")


# -----------------------------------------------------------------------------
# 1. Confidence intervals, pass@k and maj@k
#
# Wilson score interval (Wilson 1927) for k successes in n trials, p = k/n, z = 1.96:
#     center = (p + z^2 / 2n) / (1 + z^2 / n)
#     half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
# Why not p +- 1.96 sqrt(p(1-p)/n): at 0/100 that interval has width zero, and a model that won 0 of 100
# games has not been shown never to win. At 100 games the half-width near 50% is ~10 points: read gaps so.
def wilson_interval(k, n, z=Z95):
    if n == 0:
        return 0.0, 1.0
    p, denom = k / n, 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


# pass@k (Chen et al. 2021), unbiased: n >= k samples of which c are correct; the chance that k of them,
# drawn at random, hold at least one correct:     pass@k = 1 - C(n - c, k) / C(n, k)
def pass_at_k(n, c, k):
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# maj@k (self-consistency): the first k readable answers vote; a tie goes to the answer that came first
# (Counter.most_common keeps first-seen order among equal counts).
def majority_correct(keys, correct, k):
    """keys[i]: the comparable answer of sample i (None = unreadable); correct[i]: bool."""
    votes = collections.Counter(key for key in keys[:k] if key is not None)
    return bool(votes) and bool(correct[keys.index(votes.most_common(1)[0][0])])


def k_values(samples):
    """1, 2, 4, ... up to samples, and samples itself."""
    return sorted({2 ** i for i in range(samples.bit_length())} | {samples})


# -----------------------------------------------------------------------------
# 2. Games
#
# grpo.play advances every episode of a game together, episode i from seed EVAL_SEED_BASE + i, so every
# checkpoint meets the same matrices, first players and secret words; TicTacToe starts from the empty board
# (grpo.env_options). "nested:matrix+tictactoe" plays nested.py's NestedEnv; a joint success needs every
# sub-game. Rates come from grpo.summarize_outcomes, so evaluation and training logs share one definition.
PLAYABLE = tuple(name for name in games.ENV_NAMES if name != "math_jsonl")   # math_jsonl needs a file: --bench


def parse_task(spec):
    """"tictactoe" -> ("tictactoe", None); "nested:matrix+tictactoe" -> (spec, ["matrix", "tictactoe"])."""
    parts = [p for p in spec[len("nested:"):].split("+") if p] if spec.startswith("nested:") else None
    if parts is None and spec not in PLAYABLE:
        raise ValueError(f"--games: unknown game {spec!r}; valid: {', '.join(PLAYABLE)} or nested:A+B (files: --bench)")
    if parts is not None and (len(parts) < 2 or set(parts) - set(PLAYABLE) or len(set(parts)) < len(parts)):
        raise ValueError(f"--games: {spec!r} must be nested:A+B[+...] of different games from {', '.join(PLAYABLE)}")
    return spec, parts


def make_task_envs(spec, compact, opponent, n):
    name, parts = parse_task(spec)
    return [nested.make_task_env(parts or [name], compact, opponent, training=False) for _ in range(n)]


def game_report(spec, episodes):
    """Rates with intervals; counts are rate * n. The invalid interval treats turns as independent: rough."""
    def rate(k, n):
        low, high = wilson_interval(k, n)
        return {"rate": k / n if n else 0.0, "low": low, "high": high, "count": k, "n": n}
    n, turns, rates = len(episodes), sum(ep.turns for ep in episodes), grpo.summarize_outcomes(episodes)
    report = {"task": spec, "n": n, "turns": turns, "mean_return": rates["mean_return"],
              "success": rate(round(rates["success"] * n), n), "invalid": rate(round(rates["invalid"] * turns), turns),
              "outcomes": {k: rate(round(v * n), n) for k, v in sorted(rates.items())
                           if k not in ("success", "invalid", "mean_return")}}
    # Matrix games: success per game and role ("Stag Hunt P2"); a policy stuck on one wrong action shows 0/n.
    if episodes and all("game" in ep.info and "role" in ep.info for ep in episodes):
        by = collections.defaultdict(list)
        for ep in episodes:
            by[f"{ep.info['game']} {ep.info['role']}"].append(bool(ep.info.get("success")))
        report["by_game"] = {k: rate(sum(v), len(v)) for k, v in sorted(by.items())}
    if parts := parse_task(spec)[1]:          # nested: success is the joint one; each sub-game's beside it
        report["joint_success"] = report["success"]
        report["sub_success"] = {name: rate(sum(bool(ep.info["subtasks"][k]["success"]) for ep in episodes), n)
                                 for k, name in enumerate(parts)}
    return report


# -----------------------------------------------------------------------------
# 3. Benchmark files, one JSON object per line, one kind per file:
#     multiple choice:  {"question": str, "choices": [str, ...], "answer": "B" | 1, "subject": str (optional)}
#     free answer:      {"question": str, "answer": 42 | "3/4" | "x+1", "subject": str (optional)}
# "answer" of a multiple-choice line is a letter or a 0-based index into choices (MMLU's convention).
# Anything malformed stops the run with the file, the line and the field.
def load_bench(path):
    """{"name", "path", "kind": "mc" | "free", "items": [...]}; items carry the gold letter or answer."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    items, kind = [], None
    for number, row in games.jsonl_objects(path):
        where, line_kind = f"{path}:{number}", "mc" if "choices" in row else "free"
        kind = kind or line_kind                                # the first line decides the file's kind
        if line_kind != kind:
            raise ValueError(f"{where}: a {line_kind} question in a file of {kind} ones; put each kind in its own file")
        items.append(check_item(row, kind, where) | {"line": number})
    if not items:
        raise ValueError(f"{path}: no questions in the file")
    return {"name": os.path.splitext(os.path.basename(path))[0].removeprefix("bench_"), "path": path, "kind": kind,
            "items": items}


def check_item(row, kind, where):
    question, subject, answer = row.get("question"), row.get("subject", "all"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"{where}: field 'subject' must be a non-empty string when present")
    if "answer" not in row:
        raise ValueError(f"{where}: field 'answer' is missing")
    if kind == "free":
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
            raise ValueError(f"{where}: field 'answer' must be a number or a non-empty string")
        return {"question": question, "choices": None, "gold": str(answer), "subject": subject}
    choices = row["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or \
            not all(isinstance(c, str) and c.strip() for c in choices):
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


# The prompt, as in both papers: the question, then "reason first, answer in a fixed place", with the
# sentence every game prompt ends with (games.FORMAT_RULE). tiny gets the bare question and options: it
# has never seen an instruction, and scores about chance, which is the expected result.
def bench_prompt(item, compact):
    choices = item["choices"]
    options = "" if choices is None else "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    if compact:
        return f"{item['question']}\n{options}".strip()
    if choices is None:
        return (f"Solve the problem.\n\n{item['question']}\n\n{games.FORMAT_RULE} "
                "Put only the final answer inside the answer tags, for example <answer>42</answer>.")
    return (f"Answer the multiple-choice question.\n\n{item['question']}\n\n{options}\n\n{games.FORMAT_RULE} Put only "
            f"the letter of the correct option inside the answer tags, for example <answer>{LETTERS[len(choices) - 1]}"
            "</answer>.")


# -----------------------------------------------------------------------------
# 4. Answer extraction: regular expressions only, model text is never executed
#
# NFKC first ("Ｂ" reads as "B"). Then, in order:
#   multiple choice                                   free answer
#   1. the last complete <answer>...</answer>         1. the same (games.parse_answer: one linear pass)
#   2. a reply that is only a letter: b, (B), **B**   2. the last \boxed{...}, braces matched
#   3. the last "answer is (B)" / "Answer: B"         3. the last "answer is 42" / "Answer: 3/4"
#                                                     4. a reply that is only a number
# Inside the tags a letter is read the same way, then as an option prefix "B. Paris", and last as the first
# lone capital that is a valid option: "<answer>I pick C</answer>" gives C. A letter must stand alone
# ("Because" is not B); outside the tags it must also be upper case or bracketed. Every pattern runs once,
# left to right, with bounded repeats, so 1 MB of text costs little.
LONE_CAPITAL = re.compile(r"(?<!\w)([A-Z])(?!\w)")
BARE_LETTER = re.compile(r"[\s*_(\[]*([A-Za-z])[\s*_)\].:]*")
OPTION_PREFIX = re.compile(r"\s*[(\[]?([A-Z])[).:\]](?!\w)")
ANSWER_WORDS = r"(?i:answer)(?:\s{1,3}(?i:is))?\s{0,3}[:=]?\s{0,3}"
ANSWER_LETTER = re.compile(ANSWER_WORDS + r"(?:\(([A-Za-z])\)|\[([A-Za-z])\]|\*\*([A-Za-z])\*\*|([A-Z])(?!\w))")
ANSWER_NUMBER = re.compile(ANSWER_WORDS + r"\$?((?:" + games.NUMBER_RE.pattern + r")(?:\s*/\s*[0-9]+)?)")


def last_match(pattern, text):
    """The last match of `pattern` in `text`, or None: one pass of finditer, keeping only the latest."""
    found = None
    for found in pattern.finditer(text):
        pass
    return found


def letter_from_phrase(text):
    return next(g for g in m.groups() if g).upper() if (m := last_match(ANSWER_LETTER, text)) else None


def extract_choice(text, n_choices):
    """The option letter a reply commits to, or None."""
    text = unicodedata.normalize("NFKC", text)
    tagged = games.parse_answer(text)
    if bare := BARE_LETTER.fullmatch(text if tagged is None else tagged):
        return bare.group(1).upper()
    if tagged is None:
        return letter_from_phrase(text)
    prefix = OPTION_PREFIX.match(tagged)
    return letter_from_phrase(tagged) or (prefix.group(1) if prefix else None) or \
        next((m.group(1) for m in LONE_CAPITAL.finditer(tagged) if m.group(1) in LETTERS[:n_choices]), None)


def last_boxed(text):
    """The content of the last \\boxed{...}, braces matched; None if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for brace in re.finditer(r"[{}]", text[begin:]):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return text[begin:begin + brace.start()].strip() or None
    return None


def extract_free(text):
    """The final answer of a free-answer reply as a string, or None."""
    text = unicodedata.normalize("NFKC", text)
    found = games.parse_answer(text) or last_boxed(text)
    if found is None and (phrase := last_match(ANSWER_NUMBER, text)):
        found = phrase.group(1)
    return found if found is not None else text.strip() if games.parse_number(text) is not None else None


def answer_key(answer):
    """What maj@k compares: the exact number if the answer is one, else lower case without spaces."""
    if answer is None:
        return None
    number = games.parse_number(answer)
    return number if number is not None else re.sub(r"\s+", "", answer).lower()


# -----------------------------------------------------------------------------
# 5. Scoring a benchmark with any generator `generate_fn(prompts) -> replies`
#
#     accuracy = (1/Q) sum_i c_i / n      c_i of the n replies to question i correct (n = --samples)
#     macro    = the mean over subjects of their accuracy
#
# With n > 1 the accuracy is the unbiased estimate of pass@1: it does not hang on which sample came first.
# Micro accuracy weighs every question alike (MMLU's headline number); macro weighs every subject alike, so
# a large subject cannot hide a weak small one. A test passes a generator that answers the gold letter:
# scoring needs no model, and a model is only one more generate_fn (model_generate_fn below).
def score_bench(bench, generate_fn, samples=1, compact=False):
    """Returns (metrics, records); records hold every reply's extracted answer and correctness."""
    items = bench["items"]
    replies = generate_fn([bench_prompt(item, compact) for item in items for _ in range(samples)])
    if len(replies) != len(items) * samples:
        raise ValueError(f"generate_fn returned {len(replies)} replies for {len(items) * samples} prompts")
    records = []
    for i, item in enumerate(items):
        mine = replies[i * samples:(i + 1) * samples]                  # question i's samples are adjacent
        free = item["choices"] is None
        answers = [extract_free(r) if free else extract_choice(r, len(item["choices"])) for r in mine]
        correct = [a is not None and (games.check_answer(a, item["gold"]) if free else a == item["gold"])
                   for a in answers]
        keys = [answer_key(a) for a in answers] if free else answers    # maj@k votes on these
        records.append({"line": item["line"], "subject": item["subject"], "gold": item["gold"],
                        "answers": answers, "correct": correct, "keys": keys})
    n, per_item = len(records), [sum(r["correct"]) / samples for r in records]
    m = {"bench": bench["name"], "n": n, "samples": samples, "accuracy": sum(per_item) / n,
         "unanswered": sum(a is None for r in records for a in r["answers"]) / (n * samples)}
    if samples == 1:
        m["interval"] = wilson_interval(sum(r["correct"][0] for r in records), n)
    subjects = collections.defaultdict(list)
    for r, acc in zip(records, per_item):
        subjects[r["subject"]].append(acc)
    m["subjects"] = {s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(subjects.items())}
    m["macro_accuracy"] = sum(s["accuracy"] for s in m["subjects"].values()) / len(m["subjects"])
    if samples > 1:
        ks = k_values(samples)
        m["pass@k"] = {k: sum(pass_at_k(samples, sum(r["correct"]), k) for r in records) / n for k in ks}
        m["maj@k"] = {k: sum(majority_correct(r["keys"], r["correct"], k) for r in records) / n for k in ks}
    return m, records


# A question reaches the model the way training prompts do: through the chat template (glow_sft.prompt_ids), after
# the system prompt real chat models get (grpo.SYSTEM_PROMPT) and tiny never saw. grpo.generate_batch pads every
# row on the LEFT to the longest prompt of its batch, so prompts go in length order, which keeps that padding
# small; each reply is cut at its first stop id, as in training, and comes back in the prompts' order.
def prompt_ids(tokenizer, prompt, system_prompt):
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return glow_sft.prompt_ids(tokenizer, {"messages": system + [{"role": "user", "content": prompt}]})


def model_generate_fn(model, tokenizer, temperature, max_new, system_prompt, desc):
    """Replies in the prompts' order, generated in batches of BATCH prompts of similar length."""
    config, stops = grpo.generation_config(model, tokenizer, temperature, max_new), set(grpo.stop_ids(tokenizer, model))

    def generate(prompts):
        ids = [prompt_ids(tokenizer, p, system_prompt) for p in prompts]
        order, replies = sorted(range(len(ids)), key=lambda i: len(ids[i])), [None] * len(ids)
        for start in tqdm(range(0, len(order), BATCH), desc=desc, leave=False):
            chunk = order[start:start + BATCH]
            for i, new in zip(chunk, grpo.generate_batch(model, tokenizer, [ids[i] for i in chunk], config, BATCH)):
                replies[i] = tokenizer.decode(grpo.cut_at_stop(new, stops)[0], skip_special_tokens=True)
        return replies
    return generate


# -----------------------------------------------------------------------------
# 6. One checkpoint: games, benchmarks, and the entropy of its own replies
#
# Storage: --precision bf16 keeps the WEIGHTS in bf16 here, since evaluation trains nothing (grpo.py keeps
# fp32 weights under bf16 compute only because bf16 would round GIFT's 1e-6 updates away). Reply budget:
# tiny's answers take a few tokens (24 is ample), a real model reasons first and gets GIFT's 600. The torch
# seed is reset before every task, so a sampled task's replies do not depend on the tasks before it.
# Entropy (--entropy) is GLOW's measure as glow_sft.py section 6 defines it, the T = 1 next-token entropy
# averaged over the tokens of the model's own replies, on the first turns of the first ENTROPY_PROMPTS games
# and questions of each task, decoded as that task was: GLOW reports negatives raising it by 35.67%
# (abstract), and a policy collapsed onto a few replies has a low one.
def evaluate_model(name, cfg, benches):
    print(f"== {name}")
    t0 = time.time()
    model, tokenizer = grpo.load_policy(name, cfg.device, torch.bfloat16 if cfg.precision == "bf16" else torch.float32)
    compact = grpo.is_compact(model)
    system_prompt, max_new = None if compact else grpo.SYSTEM_PROMPT, cfg.max_new_tokens or (24 if compact else 600)
    # model:self plays against the checkpoint itself, hence its path (tiny's is its folder)
    opponent = grpo.make_opponent(cfg.opponent, grpo.TINY_DIR if name == "tiny" else name, cfg.device, max_new)
    result, entropy_prompts = {"model": name, "games": {}, "bench": {}}, {}     # task -> (prompt ids, temperature)
    for spec in cfg.game_list:
        torch.manual_seed(cfg.seed)
        envs = make_task_envs(spec, compact, opponent, cfg.n)
        _, episodes = grpo.play(model, tokenizer, envs, cfg.game_temperature, max_new, system_prompt)
        result["games"][spec] = game_report(spec, episodes)
        print(f"  {spec:<24} {format_game(result['games'][spec])}")
        entropy_prompts[spec] = ([grpo.start_episode(tokenizer, env, grpo.EVAL_SEED_BASE + i, i, system_prompt).ids
                                  for i, env in enumerate(make_task_envs(spec, compact, opponent, ENTROPY_PROMPTS))],
                                 cfg.game_temperature)
    for bench in benches:
        torch.manual_seed(cfg.seed)
        generate = model_generate_fn(model, tokenizer, cfg.bench_temperature, max_new, system_prompt, bench["name"])
        result["bench"][bench["name"]], _ = score_bench(bench, generate, cfg.samples, compact)
        print(f"  {bench['name']:<24} {format_bench(result['bench'][bench['name']])}")
        entropy_prompts[bench["name"]] = ([prompt_ids(tokenizer, bench_prompt(item, compact), system_prompt)
                                           for item in bench["items"][:ENTROPY_PROMPTS]], cfg.bench_temperature)
    if cfg.entropy:
        torch.manual_seed(cfg.seed)
        result["entropy"] = {task: glow_sft.entropy_of_generations(model, tokenizer, glow_sft.generate(
            model, tokenizer, prompts, max_new, temperature)) for task, (prompts, temperature)
                             in entropy_prompts.items()}
        result["entropy"]["all"] = sum(result["entropy"].values()) / len(result["entropy"])
        print(f"  {'entropy (nats/token)':<24} " + "  ".join(f"{k} {v:.3f}" for k, v in result["entropy"].items()))
    return result | {"seconds": time.time() - t0}


# The printed lines: a task's name in a column of 24, then its numbers, each game rate with its Wilson 95%
# interval (section 1: read a gap between two models against it); a second line (by game, by subject) starts
# under the numbers, hence the indent of 27 = 2 + 24 + 1.
def format_game(report):
    rate = lambda name, v: f"{name} {100 * v['rate']:.1f}% [{100 * v['low']:.1f}, {100 * v['high']:.1f}]"
    parts = [rate("joint success" if "joint_success" in report else "success", report["success"])]
    parts += [rate(k, v) for k, v in report.get("sub_success", {}).items()]
    parts += [f"{k} {100 * v['rate']:.1f}%" for k, v in report["outcomes"].items()]
    parts.append(f"invalid {100 * report['invalid']['rate']:.1f}% of {report['invalid']['n']} turns")
    if "by_game" in report:
        parts += [f"{INDENT}by game: " + ", ".join(f"{k} {v['count']}/{v['n']}" for k, v in report["by_game"].items())]
    return "  ".join(parts)


def format_bench(m):
    ci = f", 95% [{100 * m['interval'][0]:.1f}, {100 * m['interval'][1]:.1f}]" if "interval" in m else ""
    text = f"accuracy {100 * m['accuracy']:.1f}% (n={m['n']}{ci})  unanswered {100 * m['unanswered']:.1f}%"
    for kind in ("pass", "maj"):
        text += "".join(f"  {kind}@{k} {100 * v:.1f}%" for k, v in m.get(f"{kind}@k", {}).items())
    if len(m["subjects"]) > 1:
        text += f"{INDENT}by subject: " + "  ".join(f"{s} {100 * v['accuracy']:.1f}%" for s, v in m["subjects"].items())
    return text


# GIFT's layout (Tables 2 and 4): one row per model, one column per task (game success %, benchmark accuracy %),
# their average ("avg": see the docstring for GIFT's Avg, §4.1.3), then the entropy if measured (not averaged:
# it is not a score).
def results_table(results):
    """(columns, rows): rows are lists of the model name and one number (or None) per column."""
    tasks = list(dict.fromkeys(t for r in results for t in r["games"]))
    benches = list(dict.fromkeys(b for r in results for b in r["bench"]))
    has_entropy = any("entropy" in r for r in results)
    rows = []
    for r in results:
        scores = [100 * r["games"][t]["success"]["rate"] if t in r["games"] else None for t in tasks]
        scores += [100 * r["bench"][b]["accuracy"] if b in r["bench"] else None for b in benches]
        present = [s for s in scores if s is not None]                # a task a model skipped is not averaged
        rows.append([r["model"]] + scores + [sum(present) / len(present) if present else None]
                    + ([r.get("entropy", {}).get("all")] if has_entropy else []))
    return ["model"] + tasks + benches + ["avg"] + (["entropy"] if has_entropy else []), rows


# -----------------------------------------------------------------------------
# 7. Command line
#
# Every check that needs no model runs in parse_args, so a typo stops the run before minutes of loading.
# Decoding: games are greedy unless --temperature is given (GIFT samples at 0.5, §4.1.3: pass it to match);
# benchmarks too, except that --samples > 1 defaults to SAMPLE_TEMPERATURE, GLOW's evaluation temperature
# (its official vLLM settings), since k greedy replies would be one reply k times and pass@k = maj@k = pass@1.
def split_list(text):
    """"a, b" -> ["a", "b"]; "" and "none" -> [] (so --games none skips the games)."""
    return [] if text.strip().lower() in ("", "none") else [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    cfg = grpo.parse_settings(Settings, argv, __doc__.split("\n\n")[0].strip())
    try:
        cfg.game_list = [parse_task(t)[0] for t in split_list(cfg.games)]
        grpo.make_opponent(cfg.opponent)
        cfg.benches = [load_bench(path) for path in split_list(cfg.bench)]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not cfg.game_list and not cfg.benches:
        raise SystemExit("error: nothing to evaluate: give --games and/or --bench")
    names = [b["name"] for b in cfg.benches] + cfg.game_list        # the table's columns: each name once
    if len(set(names)) < len(names):
        raise SystemExit(f"error: two tasks would share a column name: {', '.join(names)}; rename a file")
    if min(cfg.n, cfg.samples) < 1:
        raise SystemExit("error: --n and --samples must be at least 1")
    cfg.game_temperature = max(cfg.temperature, 0.0)
    cfg.bench_temperature = cfg.temperature if cfg.temperature >= 0 else SAMPLE_TEMPERATURE if cfg.samples > 1 else 0.0
    if cfg.samples > 1 and cfg.bench_temperature == 0:
        raise SystemExit("error: --samples > 1 with --temperature 0 would repeat one greedy reply; give one > 0")
    return cfg


def main(argv=None):
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())            # 0: torch's default
    results = [evaluate_model(name, cfg, cfg.benches) for name in split_list(cfg.models)]
    columns, rows = results_table(results)
    how = lambda t: "greedy" if t == 0 else f"temperature {t}"
    setup = [f"{cfg.n} games per game ({how(cfg.game_temperature)}, opponent {cfg.opponent})"] * bool(cfg.game_list)
    setup += [f"{cfg.samples} replies per question ({how(cfg.bench_temperature)})"] * bool(cfg.benches)
    print(f"\nsuccess / accuracy in %; {'; '.join(setup)}; {sum(r['seconds'] for r in results):.0f} s\n")
    print(grpo.markdown_table(columns, rows))
    if cfg.json:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
        settings = vars(cfg) | {"benches": [b["path"] for b in cfg.benches]}       # the paths, not the questions
        json.dump(dict(columns=columns, rows=rows, results=results, settings=settings), open(cfg.json, "w"), indent=1)
        print(f"\nwrote {cfg.json}")
    return results


if __name__ == "__main__":
    main()
