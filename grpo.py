"""
grpo.py -- Group Relative Policy Optimisation for multi-turn text games, from scratch.

What it does: plays G games from each start state with the current policy, scores every game with the
environment's reward, and pushes up the log-probability of the moves of games that beat their group's
average (DeepSeekMath GRPO; the GIFT paper's "StarPO*" variant, GIFT App. B.1-B.3). No value network:
the group mean is the baseline. Everything -- rollout, advantages, filtering, loss, optimiser step,
checkpoints -- is in this one file, on torch + transformers only (no TRL, no Trainer, no accelerate).

The loop, once per step:
  1. rollout   all episodes advance in lockstep; each turn is ONE batched `generate` over every
               unfinished episode. We keep the exact sampled token ids, and a loss mask that is 1 on
               sampled tokens and 0 on everything the environment or the chat template wrote.
  2. reward    R_i = sum of the turn rewards of episode i (success 1, draw 0.5, illegal move -0.1).
  3. advantage A_i = (R_i - mean_group R) / (std_group R + eps)           (section 4)
  4. filter    keep the groups with the largest reward std (StarPO*, GIFT App. B.3)  (section 5)
  5. update    clipped surrogate on every sampled token, one A_i per episode (section 7)

What we simplified (and why):
  - HF `generate` instead of vLLM: a dependency we may not take, and at our sizes generation is cheap.
  - Old log-probs are the training forward pass itself when --num-iterations is 1 (exactly on-policy,
    ratio = 1 in value); they are computed separately only for several PPO epochs.
  - No dual-clip (verl's c = 3 for negative advantages): with one PPO epoch the ratio never leaves 1.
  - The tiny default model sees compact observations (a 3-line board, not a paragraph of rules);
    the same environments give full natural-language prompts to real models.
  - We keep the token ids that were sampled; GIFT's code re-tokenises the reformatted text instead
    (gift.md 5.1). Ours is the cleaner choice: the ratio is always computed on what was sampled.
  - The G games of a group share the bots' dice by default (--env-rng shared); GIFT's LLM opponent
    samples afresh in every game (--env-rng per-game). Measured: shared won more games (section 3b).
  - Ours, off by default (README): --turn-discount (per-move credit), --tactic-start (games that start
    with a win or a threat on the board) and the "greedy" opponent. None of them taught blocking.

Run:  python grpo.py                        # tiny model, TicTacToe vs random, 2 CPU cores, 6.7 min:
                                            # greedy wins 52.5% -> 80.0%, losses 38.5% -> 15.5% (README)
      python grpo.py --game matrix --lr 2e-4 --steps 100   # nine matrix games: 44.0% -> 58.5% (README;
                                            # at lr 5e-4 it collapsed)
      python grpo.py --model Qwen/Qwen2.5-1.5B-Instruct --device cuda --group-size 16 --lr 1e-6 \
          --eps-high 0.28 --filter-ratio 0.25 --max-new-tokens 600 --num-groups 8 --micro-batch-size 4
"""

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import games

# -----------------------------------------------------------------------------
# Hyperparameters: the defaults of `python grpo.py`. Each is also a --flag (see --help).
# The defaults are sized for the tiny model on a 2-core CPU; the paper's values are in the comments.
model_name = "tiny"          # "tiny" (built in code, no download), a hub name, or a local directory
game = "tictactoe"           # which environment of games.py to train on
opponent = "random"          # random | greedy | minimax | greedy:P | minimax:P | model:PATH | model:self | http://...
eval_opponent = ""           # the opponent of the before/after evaluation; "" = the training opponent
steps = 200                  # optimiser steps; GIFT runs 100-300 (gift.md 3.6)
num_groups = 8               # start states (= GRPO groups) per step; GIFT uses 8
group_size = 16              # G: games per start state; GIFT uses 16 (8 measured worse, README)
filter_ratio = 1.0           # StarPO* keeps this top fraction of groups by reward std; GIFT uses 0.25
lr = 7e-4                    # AdamW learning rate; GIFT (verl default) uses 1e-6 for 1.5B/7B models
weight_decay = 0.0           # AdamW weight decay; verl uses 0.01
lr_warmup_steps = 0          # linear learning-rate warm-up over the first N steps; verl's default is 0
lr_decay = "none"            # none | cosine: after warm-up, keep lr (verl's constant default) or decay it to 0
grad_clip = 1.0              # max global grad norm (verl default 1.0)
eps_low = 0.2                # PPO clip below 1 ...
eps_high = 0.28              # ... and above 1: DAPO's "clip-higher", GIFT App. B.3 uses 0.2 / 0.28
beta = 0.0                   # k3 KL coefficient to a frozen reference; GIFT uses 0 (no reference model)
entropy_coef = 0.001         # entropy bonus; GIFT App. B.3 uses 0.001
loss_type = "grpo"           # grpo | bnpo | dr_grpo | dapo (section 7); GIFT's verl setup is "grpo"
scale_rewards = "group"      # group | batch | none: the std in the advantage (section 4)
env_rng = "shared"           # shared | per-game: the G games of a group share the start state; do they also share
                             # the bots' later random moves? (section 3b)
tactic_start = 0.0           # TicTacToe: chance that a training game starts in a position with a win to take or a
                             # threat to block (games.ttt_tactic_positions); 0 = GIFT's start states only
turn_discount = 1.0          # gamma: a move k learner turns before the game's end gets gamma^k of its game's
                             # advantage (section 4b); 1.0 = GIFT's trajectory-level credit
num_iterations = 1           # PPO epochs over each rollout batch; GIFT uses 1
minibatches = 1              # optimiser steps per PPO epoch (the batch is split); GIFT's verl config gives 1-2
micro_batch_size = 64        # episodes per forward/backward; gradients are accumulated over a step
temperature = 1.0            # sampling temperature for rollouts; GIFT trains at 1.0
top_p = 1.0                  # nucleus sampling; 1.0 = off (GIFT)
max_new_tokens = 24          # per turn; the tiny model answers "<answer>(2,3)</answer>" in 4 tokens; GIFT 600
eval_games = 200             # games before and after training (empty board, random first player)
eval_every = 0               # also evaluate every N steps (0 = only before and after)
save_every = 50              # checkpoint every N steps (and always on Ctrl-C and at the end)
sample_every = 25            # write a few decoded episodes to samples.jsonl every N steps
seed = 0                     # one seed for torch, numpy, python and the environments
threads = 1                  # torch CPU threads: the tiny model's small matrices gain little from more,
                             # and on a shared 2-core machine 2 threads per process run 3-5x slower
out_dir = "runs/grpo"        # log.jsonl, samples.jsonl, checkpoint/

# The tiny model (section 1). About 0.9M parameters: big enough to learn TicTacToe, small enough for a CPU.
TINY_CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
                   tie_word_embeddings=True)
TINY_DIR = os.environ.get("TINY_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "tiny"))
# The tiny base model is warm-started in two phases (section 10): TicTacToe alone first, because reading a
# board and answering a legal move takes far more practice than an answer format; then every game, with
# TicTacToe still half of the transcripts so that its legality is kept.
WARM_GAMES = ("tictactoe", "matrix", "tictactoe", "arith", "tictactoe", "spy")
WARM_STEPS = 400             # behaviour-cloning steps of EACH phase (section 10)
WARM_BATCH = 32              # episodes per behaviour-cloning step
WARM_LR = 2e-3               # behaviour-cloning learning rate of phase 1; phase 2 uses half
TINY_RECIPE_VERSION = 2      # bump when the tokenizer, observations or warm start change: old caches rebuild


# -----------------------------------------------------------------------------
# 1. Models
#
# `load_policy` is the only way a model gets into this codebase: AutoModelForCausalLM /
# AutoTokenizer.from_pretrained on a hub name or a local directory. The embedded default "tiny" is
# built in code once (a byte-level tokenizer and a small Qwen2-architecture model), saved with
# save_pretrained, and from then on loaded through exactly the same from_pretrained call.
#
# Why a byte-level tokenizer: nothing can be downloaded here, so we cannot borrow Qwen's
# vocabulary. Ours is Qwen2's own tokenizer design -- byte-level BPE -- with an EMPTY merge list: every
# byte is one token, so any text (unicode too) encodes, and transformers' Qwen2Tokenizer rebuilds it
# identically when from_pretrained sees model_type "qwen2" (transformers 5 re-creates the tokenizer
# from the model type; a tokenizer of another design would silently lose its newlines there -- a test
# guards this). The chat markers, the four format tags and the nine TicTacToe moves are single tokens.
TINY_SPECIAL = ["<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TINY_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
# One token per TicTacToe move, as a real BPE vocabulary has one token for a frequent string: each turn's
# decision is then ONE sampled token (the rest of "<answer>(2,3)</answer>" is format), which keeps the
# credit of a game's reward on the moves and halves the tokens a rollout generates.
TINY_MOVES = [f"({r},{c})" for r in (1, 2, 3) for c in (1, 2, 3)]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Qwen2's pre-tokenizer split (the GPT-4-style regex); with no merges it changes nothing but keeps the
# tokenizer identical to the one transformers rebuilds.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def byte_alphabet():
    """GPT-2's printable stand-in character for each of the 256 bytes (byte-level BPE's base vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    shifted, extra = {}, 0
    for b in range(256):
        if b in keep:
            shifted[b] = chr(b)
        else:
            shifted[b] = chr(256 + extra)
            extra += 1
    return [shifted[b] for b in range(256)]


def build_tiny_tokenizer():
    """A byte-level tokenizer (one token per byte) with our chat markers and format tags."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIAL + TINY_TAGS + byte_alphabet())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(TINY_SPECIAL)
    core.add_tokens(TINY_TAGS + TINY_MOVES)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<pad>",
                                   unk_token=None, chat_template=TINY_CHAT_TEMPLATE)


def build_tiny_model(tokenizer, seed=0, sizes=None):
    """A randomly initialised Qwen2ForCausalLM sized by TINY_CONFIG (or `sizes`, a dict like it)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **(sizes or TINY_CONFIG))
    return Qwen2ForCausalLM(config)


def load_policy(name_or_path, device="cpu", dtype=None):
    """(model, tokenizer) from a hub name or a local directory; "tiny" = the warm-started tiny model.

    dtype: None keeps float32 (what a CPU wants); pass torch.bfloat16 on a GPU for real models.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path == "tiny":
        name_or_path = ensure_tiny(TINY_DIR)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    # Generation pads on the left so every prompt ends where generation starts.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
    return model.to(device), tokenizer


def ensure_tiny(path, steps=WARM_STEPS, seed=0, game_names=WARM_GAMES):
    """Build + warm-start the tiny model into `path` unless it is already there; returns the path."""
    stamp = os.path.join(path, "tiny_recipe.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f).get("version") == TINY_RECIPE_VERSION:
                return path
    if os.path.exists(os.path.join(path, "config.json")):
        # A tiny model from an older recipe (other observations, other tokens) would silently play badly.
        print(f"[tiny] {path} holds an older tiny model (recipe != {TINY_RECIPE_VERSION}); rebuilding it")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    print(f"[tiny] building the warm-started tiny model in {path} (once; about 7 minutes on 2 cores) ...")
    # Phase 1, TicTacToe alone: with other games in the batch, the jump from "any move" to "a legal move"
    # came later than 750 steps (measured); alone it comes after about 300.
    if "tictactoe" in game_names:
        warm_start(model, tokenizer, ("tictactoe",), steps=steps, lr_=WARM_LR, seed=seed)
    # Phase 2, every game, at half the learning rate so that phase 1 is not undone.
    if set(game_names) != {"tictactoe"}:
        warm_start(model, tokenizer, game_names, steps=steps, lr_=WARM_LR / 2, seed=seed + 1)
    # Save next to the target and rename: a process that finds `path` always finds a whole model.
    tmp = f"{path}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "tiny_recipe.json"), "w") as f:
        json.dump({"version": TINY_RECIPE_VERSION, "steps_per_phase": steps, "seed": seed,
                   "games": list(game_names)}, f)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        import shutil
        shutil.rmtree(path)
    os.rename(tmp, path)
    return path


def is_tiny(tokenizer):
    """True for our byte-level tiny tokenizer: its environments use compact observations."""
    return tokenizer.chat_template == TINY_CHAT_TEMPLATE


# -----------------------------------------------------------------------------
# 2. Conversations as token ids
#
# A multi-turn episode is ONE growing token sequence:
#     [template + observation 1] [sampled answer 1 + EOS] [template + observation 2] [sampled answer 2 ...
#      mask 0 ...............     mask 1 ...............   mask 0 ...............    mask 1 ...
# The environment's text is tokenised as it arrives; the model's text is never re-tokenised (the ids
# are the ones it sampled), so the log-probs we train are the log-probs of what was actually played.
# To tokenise just the new environment part, we render the chat with and without the new message
# and tokenise the difference. That works with any chat template that only appends (Qwen2.5's does).

def render(tokenizer, messages, add_generation_prompt):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def env_turn_ids(tokenizer, messages, new_user_text):
    """Token ids of the chat-template text that follows the last EOS and ends at the generation prompt."""
    before = render(tokenizer, messages, add_generation_prompt=False) if messages else ""
    after = render(tokenizer, messages + [{"role": "user", "content": new_user_text}], add_generation_prompt=True)
    # The last sampled token was EOS; whatever the template writes after it (e.g. Qwen's "\n") is ours.
    cut = before.rfind(tokenizer.eos_token) + len(tokenizer.eos_token) if messages else 0
    if not after.startswith(before[:cut]):
        raise ValueError("the chat template rewrites earlier turns (e.g. strips <think>); "
                         "multi-turn training needs a template that only appends")
    return tokenizer(after[cut:], add_special_tokens=False)["input_ids"]


@dataclass
class Episode:
    """One game: the token sequence we train on, its loss mask, and what happened."""
    env: object
    seed: int
    group: int
    task: str = ""                                 # which task the episode belongs to (for per-task logs)
    messages: list = field(default_factory=list)   # the chat as text (for templates and samples.jsonl)
    ids: list = field(default_factory=list)        # every token of the episode, prompt included
    mask: list = field(default_factory=list)       # 1 where the policy sampled the token
    reward: float = 0.0                            # R_i: the sum of all turn rewards
    done: bool = False
    info: dict = field(default_factory=dict)       # the environment's last info
    turns: int = 0
    invalid_turns: int = 0                         # turns whose answer was unparseable or illegal
    cut_turns: int = 0                             # turns that hit max_new_tokens without EOS


def start_episode(tokenizer, env, seed, group, system_prompt=None, stream=None):
    ep = Episode(env=env, seed=seed, group=group, task=getattr(env, "name", ""))
    if system_prompt:
        ep.messages.append({"role": "system", "content": system_prompt})
    obs = env.reset(seed)
    if stream is not None:
        env.split_rng(stream)
    prefix = render(tokenizer, ep.messages, False) if ep.messages else ""
    full = render(tokenizer, ep.messages + [{"role": "user", "content": obs}], True)
    ep.ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full.startswith(prefix)
    ep.mask = [0] * len(ep.ids)
    ep.messages.append({"role": "user", "content": obs})
    return ep


def finish_turn(tokenizer, ep, sampled_ids):
    """Append one sampled answer (mask 1), step the environment, append its reply (mask 0)."""
    eos = tokenizer.eos_token_id
    if eos in sampled_ids:
        sampled_ids = sampled_ids[: sampled_ids.index(eos) + 1]   # through the first EOS, inclusive
        ep.ids += sampled_ids
        ep.mask += [1] * len(sampled_ids)
        text_ids = sampled_ids[:-1]
    else:
        # Hit max_new_tokens. We close the turn with an EOS the model did not sample (mask 0), so the
        # sequence stays a well-formed chat for the next turn.
        ep.cut_turns += 1
        ep.ids += sampled_ids + [eos]
        ep.mask += [1] * len(sampled_ids) + [0]
        text_ids = sampled_ids
    text = tokenizer.decode(text_ids, skip_special_tokens=False)
    for special in (tokenizer.pad_token, tokenizer.eos_token):
        text = text.replace(special, "")
    obs, reward, done, info = ep.env.step(text)
    ep.turns += 1
    ep.reward += reward
    ep.invalid_turns += 0 if info.get("valid", True) else 1
    ep.info, ep.done = info, done
    if not done:
        new_ids = env_turn_ids(tokenizer, ep.messages + [{"role": "assistant", "content": text}], obs)
        ep.ids += new_ids
        ep.mask += [0] * len(new_ids)
    ep.messages += [{"role": "assistant", "content": text}] + ([] if done else [{"role": "user", "content": obs}])
    return ep


# -----------------------------------------------------------------------------
# 3. Rollout: every episode advances in lockstep, one batched generate per turn
#
# Prompts of different lengths are padded on the LEFT so that all of them end at the same column and
# generation continues every row from its own last token. `generate` uses the KV cache, so each new
# token costs one forward over one position per row.
#
# top_k=0 matters: transformers' default sampling keeps only the 50 most likely tokens, which silently
# changes the distribution we sample from and breaks ratio = 1 against the training forward pass.

def generation_config(tokenizer, model, temperature, top_p, max_new):
    from transformers import GenerationConfig

    stop = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    stop |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    if temperature > 0:
        return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=sorted(stop))
    return GenerationConfig(do_sample=False, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=sorted(stop))


@torch.no_grad()
def generate_batch(model, tokenizer, prompts, gen_config, batch_size=256):
    """Sample one continuation per prompt (lists of ids). Returns the new ids of each row, unpadded."""
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(chunk):
            ids[row, width - len(p):] = torch.tensor(p)
            attn[row, width - len(p):] = 1
        seq = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                             generation_config=gen_config)
        outs += [row[width:].tolist() for row in seq.cpu()]
    return outs


# 3b. Whose randomness does a group share? A group's G games start from the same seed, so they share the
# start state -- that is what makes their rewards comparable. Our bots (TicTacToe's opponent, Spy's
# players) then draw their moves from the same seeded RNG, so by default (--env-rng shared) the G games
# also share the opponent's dice, and differ only where the policy's own samples differ. Once the policy
# is nearly deterministic, all G games are the same game: the group has zero reward variance and no
# signal (README: up to 63% such groups in steps 81-160 of the default run). GIFT's opponent is an LLM
# that samples afresh in every game, which is what --env-rng per-game gives: game k of a group draws
# from the stream (seed, k). It kept dead groups at 1-4% but did not win more games (README).
def rollout(model, tokenizer, envs, seeds, groups=None, temperature=1.0, top_p=1.0, max_new=24,
            system_prompt=None, progress=False, streams=None):
    """Play one episode per (env, seed) to the end; returns the list of Episodes.

    streams: one per env, or None. With a stream, the env's randomness after the start state is its own
    (games.TextEnv.split_rng); without, it follows the seed, so equal seeds give equal opponents' moves.
    """
    groups = groups if groups is not None else list(range(len(envs)))
    streams = streams if streams is not None else [None] * len(envs)
    episodes = [start_episode(tokenizer, env, s, g, system_prompt, k)
                for env, s, g, k in zip(envs, seeds, groups, streams)]
    config = generation_config(tokenizer, model, temperature, top_p, max_new)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(episodes), desc="playing", leave=False, disable=not progress)
    while True:
        active = [ep for ep in episodes if not ep.done]
        if not active:
            break
        answers = generate_batch(model, tokenizer, [ep.ids for ep in active], config)
        for ep, new_ids in zip(active, answers):
            finish_turn(tokenizer, ep, new_ids)
            bar.update(int(ep.done))
    bar.close()
    model.train(was_training)
    return episodes


def summarize_outcomes(episodes):
    """Outcome rates of a list of finished episodes: win/draw/loss/... plus invalid-answer rate."""
    n = max(1, len(episodes))
    out = {}
    for ep in episodes:
        key = ep.info.get("outcome", "unknown")
        out[key] = out.get(key, 0) + 1 / n
    out["success"] = sum(bool(ep.info.get("success")) for ep in episodes) / n
    out["invalid"] = sum(ep.invalid_turns for ep in episodes) / max(1, sum(ep.turns for ep in episodes))
    out["mean_return"] = sum(ep.reward for ep in episodes) / n
    # TicTacToe tactics (games.py): the share of chances to win at once that were taken, and of the
    # opponent's immediate threats (with no win of our own) that were blocked.
    total = tactic_counts(episodes)
    if total:
        out["took_win"] = total["wins_taken"] / max(1, total["win_chances"])
        out["blocked"] = total["blocks_made"] / max(1, total["block_chances"])
    return out


def tactic_counts(episodes):
    """TicTacToe's tactics counters summed over the episodes, or None for games that keep none."""
    if not any("win_chances" in ep.info for ep in episodes):
        return None
    return {k: sum(ep.info.get(k, 0) for ep in episodes)
            for k in ("win_chances", "wins_taken", "block_chances", "blocks_made")}


def play_games(model, tokenizer, game_name, n, seed_base=10_000, temperature=0.0, env_options=None,
               max_new=24, system_prompt=None, progress=True):
    """The evaluation helper training needs for its before/after numbers (evaluate.py builds on it).

    Evaluation seeds start at 10_000 so they never overlap the training start states (seed*1000+...).
    TicTacToe is played from the empty board with a random first player (random_start=False).
    """
    options = dict(env_options or {})
    envs = [games.make_env(game_name, **options) for _ in range(n)]
    seeds = [seed_base + i for i in range(n)]
    eps = rollout(model, tokenizer, envs, seeds, temperature=temperature, max_new=max_new,
                  system_prompt=system_prompt, progress=progress)
    return summarize_outcomes(eps), eps


# -----------------------------------------------------------------------------
# 4. Group-relative advantages (DeepSeekMath; GIFT App. B.1; TRL's `scale_rewards`)
#
#     A_i = (R_i - mean_g R) / (std_g R + eps)        std: unbiased (Bessel), as torch and TRL
#
# Every game in a group starts from the same state, so the group mean is a free baseline: no value
# network. A group whose games all scored the same carries no signal; we set its A to exactly 0
# (GIFT's code does the same when std <= 1e-6), so it cannot leak rounding noise / eps into the loss.
#   scale="batch": divide by the std of the whole batch instead (TRL's "Lite PPO" option)
#   scale="none":  no division at all (Dr. GRPO: the std makes easy and hard groups count alike)
def group_advantages(rewards, group_size, scale="group", eps=1e-6):
    """rewards: (N,) with the G members of each group adjacent. Returns A: (N,)."""
    r = rewards.view(-1, group_size)                              # (num_groups, G)
    centered = r - r.mean(dim=1, keepdim=True)                    # (num_groups, G)
    group_std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    if scale == "group":
        adv = centered / (group_std + eps)
    elif scale == "batch":
        adv = centered / (rewards.std() + eps)
    elif scale == "none":
        adv = centered
    else:
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    adv = torch.where(group_std <= eps, torch.zeros_like(adv), adv)
    return adv.reshape(-1)


# 4b. Turn discount (our addition; GIFT gives every move of a game the same advantage, gamma = 1).
#
# With a reward only at the end, every move of a lost game is blamed equally, although in TicTacToe
# the move that lost it is usually the last one (a missed block). The REINFORCE discount on the return,
# G_k = gamma^k R for a move k learner turns before the end, applied to the group advantage:
#
#     A_{i,t} = gamma^k(t) * A_i      k(t) = learner turns of episode i after the turn of token t
#
# Turns are the runs of 1s in the loss mask: the environment always writes tokens between two turns.
# Measured on TicTacToe with gamma 0.5: 19.0% losses against the default's 15.5% (README); exercise 07.
def turn_weights(mask, gamma):
    """(N, T) float mask -> (N, T) weights gamma^k on sampled tokens (1 on the others, which are masked)."""
    sampled = mask > 0
    previous = torch.zeros_like(sampled)
    previous[:, 1:] = sampled[:, :-1]
    starts = (sampled & ~previous).to(torch.float32)                       # (N, T): 1 where a turn begins
    turn_index = starts.cumsum(dim=1)                                      # (N, T): 1, 2, ... per turn
    turns_after = starts.sum(dim=1, keepdim=True) - turn_index            # (N, T)
    weights = torch.pow(torch.tensor(float(gamma)), turns_after)                # (N, T)
    return torch.where(sampled, weights, torch.ones_like(weights))


# -----------------------------------------------------------------------------
# 5. StarPO* filtering (GIFT App. B.3; RAGEN)
#
# Keep the fraction `ratio` of groups with the largest reward std, i.e. the start states on which the
# policy is most undecided. Zero-variance groups go first (they have A = 0 anyway). This selects
# GROUPS, not trajectories (gift.md 0.2.5). ratio = 1.0 keeps everything.
def filter_groups(rewards, group_size, ratio):
    """Returns the indices (into the flat batch) of the episodes of the kept groups, in order."""
    stds = rewards.view(-1, group_size).std(dim=1) if group_size > 1 else torch.zeros(len(rewards))
    num_groups = len(stds)
    keep = max(1, int(ratio * num_groups))
    # A stable sort: equal stds keep their order, so the selection is deterministic.
    order = sorted(range(num_groups), key=lambda g: -float(stds[g]))[:keep]
    return [g * group_size + j for g in sorted(order) for j in range(group_size)]


# -----------------------------------------------------------------------------
# 6. Per-token log-probabilities and entropy
#
#     log pi(y_t | y_<t) = log_softmax(logits_{t-1} / T)[y_t]
#
# Logits at position t-1 predict token t, hence the shift. We divide by the sampling temperature T,
# as TRL does: then the training distribution is exactly the one the tokens were sampled from.
#     H_t = - sum_v p_v log p_v      (the entropy of that same distribution, for the bonus and the logs)
def token_logps_and_entropy(model, ids, attention_mask, temperature=1.0):
    """ids, attention_mask: (B, T). Returns logps, entropy: (B, T-1), aligned with ids[:, 1:]."""
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1].float()  # (B, T-1, V)
    logp_all = F.log_softmax(logits / temperature, dim=-1)                               # (B, T-1, V)
    logps = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)                    # (B, T-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)                                       # (B, T-1)
    return logps, entropy


# -----------------------------------------------------------------------------
# 7. The GRPO loss (DeepSeekMath Eq. 3; DAPO; GIFT App. B.1 Eqs. 3-5)
#
#     ratio_t = exp(logp_t - logp_old_t)
#     l_t     = -min(ratio_t * A,  clip(ratio_t, 1 - eps_low, 1 + eps_high) * A)   (clipped surrogate)
#             + beta * k3_t,     k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1     (KL, if beta > 0)
#
# Only sampled tokens count (mask M). How the per-token l_t are averaged is the `loss_type`, with the
# same meaning as TRL 1.16.0 (`GRPOTrainer._compute_loss`, with use_bias_correction_kl=False):
#     grpo     (1/B) sum_i [ sum_t l M / sum_t M ]   mean over sequences of per-sequence token means
#                                                    (DeepSeekMath; short answers weigh more per token)
#     bnpo     sum l M / sum M                       token mean over the optimiser batch
#     dr_grpo  sum l M / (B * L_max)                 Dr. GRPO: a constant, so no length bias at all
#     dapo     sum l M / (tokens in the whole step)  token mean over the generation batch (DAPO)
# With micro-batches the normalisers are the GLOBAL counts (num_sequences, num_tokens, passed in by the
# loop), so the summed micro-batch losses equal the full-batch loss exactly. TRL divides each
# micro-batch by its own count and then by the number of micro-batches, which is not the same thing.
#
# Why the loss VALUE hovers near 0 while reward rises: on-policy, ratio = 1 and A has mean 0 within
# each group, so sum_t l_t is about -sum_i A_i * (its tokens) ~ 0. The GRADIENT, sum_i A_i grad log pi,
# is not zero. Watch reward and success, not the loss.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, beta=0.0, eps_low=0.2, eps_high=0.2,
              loss_type="grpo", max_completion_length=None, num_sequences=None, num_tokens=None):
    """logps, old_logps, mask, ref_logps: (B, T); advantages: (B,), or (B, T) per token. Returns (loss, stats).

    num_sequences / num_tokens: the normalisers when this call sees one micro-batch of a larger batch
    (default: this call's own B and mask.sum()). max_completion_length: L_max of dr_grpo (default T).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages         # (B, 1) or (B, T)
    ratio = torch.exp(logps - old_logps)                                           # (B, T)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)                             # (B, T)
    kl = torch.zeros_like(logps)
    if beta > 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1                                            # (B, T), k3 >= 0
        per_token = per_token + beta * kl

    B, T = logps.shape
    num_sequences = num_sequences or B
    total_tokens = num_tokens or mask.sum().clamp(min=1)
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)            # (B,)
        loss = per_seq.sum() / num_sequences
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / total_tokens
    else:  # dr_grpo
        loss = (per_token * mask).sum() / (num_sequences * (max_completion_length or T))

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        # Clip fractions: tokens where the clip is the active branch of the min.
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        stats = {"kl": float((kl * mask).sum() / n), "clip_low": float((low * mask).sum() / n),
                 "clip_high": float((high * mask).sum() / n), "ratio": float((ratio * mask).sum() / n),
                 "tokens": float(mask.sum())}
    return loss, stats


# -----------------------------------------------------------------------------
# 8. One optimiser step over a batch of episodes, in micro-batches
#
# The batch is padded on the right into (N, T) tensors. Environment tokens stay in the input -- the
# model must attend to the board -- but their mask is 0, so they receive exactly zero gradient.
def pad_batch(episodes, pad_id):
    width = max(len(ep.ids) for ep in episodes)
    ids = torch.full((len(episodes), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(episodes), width), dtype=torch.long)
    mask = torch.zeros((len(episodes), width), dtype=torch.float32)
    for row, ep in enumerate(episodes):
        ids[row, :len(ep.ids)] = torch.tensor(ep.ids)
        attn[row, :len(ep.ids)] = 1
        mask[row, :len(ep.mask)] = torch.tensor(ep.mask, dtype=torch.float32)
    return ids, attn, mask


def micro_slices(n, size):
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def bf16_autocast(device, enabled):
    """bf16 autocast on CUDA when `enabled` (--bf16), else a no-op context.

    Every forward pass of a step runs under the same context -- rollout, old and reference log-probs,
    the training forward -- so that the PPO ratio compares log-probs of the same precision: old
    log-probs in fp32 against training log-probs in bf16 would make the ratio differ from 1 by rounding
    alone. On an H200 it also makes generation 1.4x (0.5B) to 1.8x (1.5B) faster than fp32
    (benchmarks/gpu_steps.py, README).
    """
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulate_gradients(model, ids, attn, mask, advantages, cfg, old_logps=None, ref_logps=None,
                         step_tokens=None):
    """Forward/backward over micro-batches; leaves the summed gradient in .grad. Returns merged stats.

    ids, attn, mask: (N, T); advantages: (N,), or (N, T) aligned with ids (turn discount). mask[:, t] = 1
    where token t was sampled, so the target mask of the shifted log-probs is mask[:, 1:]. cfg needs:
    temperature, loss_type, beta, eps_low, eps_high, entropy_coef, micro_batch_size, max_completion_length.
    """
    device = next(model.parameters()).device
    target_mask = mask[:, 1:]                                                   # (N, T-1)
    num_sequences = ids.shape[0]
    batch_tokens = target_mask.sum().clamp(min=1)
    # dapo normalises by the tokens of the whole generation step; grpo/bnpo/dr_grpo by this batch.
    norm_tokens = step_tokens if (cfg["loss_type"] == "dapo" and step_tokens) else batch_tokens
    totals = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "ratio": 0.0}
    for sl in micro_slices(num_sequences, cfg["micro_batch_size"]):
        # Trim the right padding of this micro-batch: nothing to compute past its longest sequence.
        width = int(attn[sl].sum(1).max())
        mb_ids, mb_attn = ids[sl, :width].to(device), attn[sl, :width].to(device)
        mb_mask = target_mask[sl, :width - 1].to(device)
        with bf16_autocast(device, cfg.get("bf16")):
            logps, entropy = token_logps_and_entropy(model, mb_ids, mb_attn, cfg["temperature"])
        old = old_logps[sl, :width - 1].to(device) if old_logps is not None else logps.detach()
        ref = ref_logps[sl, :width - 1].to(device) if ref_logps is not None else None
        mb_adv = advantages[sl] if advantages.dim() == 1 else advantages[sl, 1:width]     # like the mask
        loss, stats = grpo_loss(logps, old, mb_adv.to(device), mb_mask, ref_logps=ref,
                                beta=cfg["beta"], eps_low=cfg["eps_low"], eps_high=cfg["eps_high"],
                                loss_type=cfg["loss_type"], max_completion_length=cfg.get("max_completion_length"),
                                num_sequences=num_sequences, num_tokens=norm_tokens)
        # Entropy bonus (GIFT App. B.3): a token mean over the same global count, subtracted.
        ent_mean = (entropy * mb_mask).sum() / batch_tokens
        (loss - cfg["entropy_coef"] * ent_mean).backward()
        totals["loss"] += float(loss.detach())
        totals["entropy"] += float(ent_mean.detach())
        share = stats["tokens"] / float(batch_tokens)
        for k in ("kl", "clip_low", "clip_high", "ratio"):
            totals[k] += stats[k] * share
    return totals


@torch.no_grad()
def batch_logps(model, ids, attn, cfg):
    """Log-probs of a whole batch without gradient: old policy (PPO epochs) or reference model."""
    device = next(model.parameters()).device
    outs = []
    for sl in micro_slices(ids.shape[0], cfg["micro_batch_size"]):
        with bf16_autocast(device, cfg.get("bf16")):
            logps, _ = token_logps_and_entropy(model, ids[sl].to(device), attn[sl].to(device), cfg["temperature"])
        outs.append(logps.cpu())
    return torch.cat(outs)


# -----------------------------------------------------------------------------
# 9. Opponents that are models (GIFT trains against a fixed Qwen3-14B served over HTTP, gift.md 3.6)
#
# games.py accepts any callable `prompt -> text` as an opponent. `model:PATH` wraps a local model,
# `model:self` a frozen copy of the starting policy, and `http://...` the OpenAI-compatible client of
# games.py, so a single-GPU user needs no opponent server.
def model_opponent(model, tokenizer, temperature=0.5, max_new=max_new_tokens):
    config = generation_config(tokenizer, model, temperature, 1.0, max_new)

    def respond(prompt):
        ids = tokenizer(render(tokenizer, [{"role": "user", "content": prompt}], True),
                        add_special_tokens=False)["input_ids"]
        new = generate_batch(model, tokenizer, [ids], config)[0]
        return tokenizer.decode(new, skip_special_tokens=True)
    return respond


def opponent_kind(spec):
    """"bot", "http" or "model" for an --opponent spec; a ValueError for anything else.

    Checks the spec without loading anything, so a command line can fail before any model is loaded.
    """
    if spec in (None, "") or games.bot_opponent(spec) is not None:   # raises on a P outside [0, 1]
        return "bot"
    if spec.startswith(("http://", "https://")):
        return "http"
    if spec.startswith("model:"):
        return "model"
    raise ValueError(f"--opponent: expected random, greedy, minimax, greedy:P, minimax:P, model:PATH, "
                     f"model:self or http://..., got {spec!r}")


def make_opponent(spec, policy_path, device, dtype, max_new):
    """--opponent: random | greedy | minimax | greedy:P | minimax:P | model:PATH | model:self |
    http://host:port/v1[#model-name]."""
    kind = opponent_kind(spec)
    if kind == "bot":
        return spec or None
    if kind == "http":
        url, _, name = spec.partition("#")
        return games.OpenAIChatOpponent(url, name or "default")
    path = policy_path if spec == "model:self" else spec[len("model:"):]
    opp_model, opp_tok = load_policy(path, device, dtype)
    opp_model.eval().requires_grad_(False)
    return model_opponent(opp_model, opp_tok, max_new=max_new)


def env_options_for(game_name, tokenizer, opponent_obj, training):
    """The environment options training and evaluation use for one game."""
    options = {"compact": is_tiny(tokenizer)}
    if game_name == "tictactoe":
        # Training starts from the paper's random start states; evaluation from the empty board.
        options.update(opponent=opponent_obj or "random", random_start=training)
    elif game_name == "spy" and callable(opponent_obj):
        options.update(opponent=opponent_obj)
    return options


# -----------------------------------------------------------------------------
# 10. Warm start of the tiny model: behaviour cloning on the games' own bots
#
# A randomly initialised model never writes "<answer>...</answer>", so every game scores -0.1, every
# group has zero reward variance, and GRPO has nothing to learn from. An instruct model starts with the
# format; our tiny model gets it from a short supervised pass on transcripts of random LEGAL play:
#     loss = - mean over answer tokens of log pi(y_t | y_<t)
# It learns the format and the legal moves, not the strategy. Sampled at T = 1 it plays about like the
# random bot; its greedy move (the most frequent move of random play in that position) happens to win
# 52.5% of our evaluation games against 43.9% for random legal play (measured, README). ensure_tiny runs two
# phases: TicTacToe alone, then every game (see WARM_GAMES).
def bot_transcripts(tokenizer, game_names, n, seed):
    rng = random.Random(seed)
    episodes = []
    for i in range(n):
        name = game_names[i % len(game_names)]
        options = {"compact": True}
        if name == "tictactoe":
            options.update(random_start=rng.random() < 0.5)
        env = games.make_env(name, **options)
        ep = start_episode(tokenizer, env, rng.randrange(10**9), i)
        while not ep.done:
            answer = games.format_answer(env.random_action(rng))
            finish_turn(tokenizer, ep, tokenizer(answer, add_special_tokens=False)["input_ids"]
                        + [tokenizer.eos_token_id])
        episodes.append(ep)
    return episodes


def warm_start(model, tokenizer, game_names, steps=WARM_STEPS, batch=WARM_BATCH, lr_=WARM_LR, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr_, weight_decay=0.0)
    model.train()
    for step in tqdm(range(steps), desc="warm start (behaviour cloning)"):
        eps = bot_transcripts(tokenizer, game_names, batch, seed * 100_003 + step)
        ids, attn, mask = pad_batch(eps, tokenizer.pad_token_id)
        logps, _ = token_logps_and_entropy(model, ids, attn)
        target = mask[:, 1:]
        loss = -(logps * target).sum() / target.sum()
        # A cosine decay to 0: the last steps polish the answer format instead of bouncing around it.
        for group in optimizer.param_groups:
            group["lr"] = lr_ * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    return float(loss.detach())


# -----------------------------------------------------------------------------
# 11. Checkpoints: everything needed to continue exactly (weights, optimiser, step, every RNG)
def save_checkpoint(out, model, tokenizer, optimizer, step, extra):
    tmp, final = os.path.join(out, "checkpoint.tmp"), os.path.join(out, "checkpoint")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "extra": extra,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}},
               os.path.join(tmp, "trainer_state.pt"))
    swap_folder(tmp, final)


def swap_folder(tmp, final):
    """Move a freshly written folder into place. Writing to `tmp` first means an interrupted save never
    destroys the last good checkpoint (glow_sft.py saves the same way)."""
    import shutil

    if os.path.exists(final):
        os.replace(final, final + ".old")
    os.replace(tmp, final)
    if os.path.exists(final + ".old"):
        shutil.rmtree(final + ".old")


def load_trainer_state(out, optimizer):
    state = torch.load(os.path.join(out, "checkpoint", "trainer_state.pt"), weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["extra"]


def prepare_out_dir(out, cfg, resumed_step=None, run_files=("log.jsonl",)):
    """A fresh run deletes the `run_files` an old run left and writes args.json. A resumed run drops the
    log lines past its checkpoint (written between the last save and a crash), so no step is logged twice.
    glow_sft.py prepares its folders the same way."""
    for name in run_files:
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        if resumed_step is None:
            os.remove(path)
        elif name.endswith(".jsonl"):
            with open(path) as f:
                rows = [line for line in f if json.loads(line)["step"] <= resumed_step]
            with open(path, "w") as f:
                f.writelines(rows)
    if resumed_step is None:
        with open(os.path.join(out, "args.json"), "w") as f:
            json.dump({k: v for k, v in cfg.items() if k != "resume"}, f, indent=1)


def seed_everything(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# -----------------------------------------------------------------------------
# 12. The training loop
def train_seeds(run_seed, step, n_groups):
    """Start states of one step. Disjoint from the evaluation seeds (10_000 + i) for any run seed."""
    return [1_000_000 * (run_seed + 1) + step * n_groups + g for g in range(n_groups)]


def log_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def episode_record(tokenizer, ep):
    return {"seed": ep.seed, "reward": ep.reward, "outcome": ep.info.get("outcome"),
            "messages": ep.messages}


def step_metrics(episodes, kept, group_size_, adv):
    rewards = torch.tensor([ep.reward for ep in episodes])
    stds = rewards.view(-1, group_size_).std(dim=1) if group_size_ > 1 else torch.zeros(1)
    turns = sum(ep.turns for ep in episodes)
    sampled = sum(sum(ep.mask) for ep in episodes)
    m = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
         "zero_std_groups": float((stds <= 1e-6).float().mean()),
         "truncated_turns": sum(ep.cut_turns for ep in episodes) / max(1, turns),
         "response_tokens": sampled / max(1, turns), "kept_episodes": len(kept),
         "adv_abs_mean": float(adv.abs().mean())}
    m.update({f"rate_{k}": v for k, v in summarize_outcomes(episodes).items()})
    tasks = sorted({ep.task for ep in episodes})
    if len(tasks) > 1:
        for t in tasks:
            mine = [ep for ep in episodes if ep.task == t]
            m[f"{t}/reward"] = sum(ep.reward for ep in mine) / len(mine)
            m[f"{t}/success"] = sum(bool(ep.info.get("success")) for ep in mine) / len(mine)
            m[f"{t}/kept"] = sum(episodes[i].task == t for i in kept) / max(1, len(kept))
    return m


# The learning rate of step s (0-based) of S, with W warm-up steps:
#     lr(s) = lr * (s + 1) / W                                    s < W
#     lr(s) = lr * 0.5 * (1 + cos(pi * (s - W) / (S - W)))        s >= W, --lr-decay cosine
#     lr(s) = lr                                                  s >= W, --lr-decay none
# A pure function of the step, not a scheduler object: --resume gets it right with no state to save
# (raising --steps on resume stretches the cosine from that step on).
# Why warm up at all: Adam's first updates have size ~lr in EVERY coordinate, whatever the gradient's
# scale (m / sqrt(v) = +-1 when one gradient has been seen), so a first step can move the policy far.
LR_DECAYS = ("none", "cosine")


def lr_at(step, cfg):
    warmup, total = cfg.get("lr_warmup_steps", 0), cfg["steps"]
    if step < warmup:
        return cfg["lr"] * (step + 1) / warmup
    if cfg.get("lr_decay", "none") == "cosine":
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return cfg["lr"]


def train(cfg, make_envs=None, evaluate_fn=None, extra_metrics=None):
    """cfg: a dict of the hyperparameters above (see main() for the CLI). Returns (before, after).

    nested.py reuses this loop with its own hooks (the defaults train on one game, cfg["game"]):
      make_envs(step, tokenizer, opponent) -> list of num_groups * group_size fresh envs, group-major
      evaluate_fn(model, tokenizer, opponent) -> dict of rates (before and after training)
      extra_metrics(model, episodes, kept, ids, attn, mask, adv, cfg) -> dict added to the step's log line
    """
    if not 0.0 < cfg.get("turn_discount", 1.0) <= 1.0:
        raise ValueError(f"--turn-discount must be in (0, 1], got {cfg['turn_discount']}")
    if cfg.get("tactic_start") and (cfg["game"] != "tictactoe" or not 0.0 <= cfg["tactic_start"] <= 1.0):
        raise ValueError(f"--tactic-start is a probability in [0, 1] for --game tictactoe, got "
                         f"{cfg['tactic_start']} for {cfg['game']}")
    out = cfg["out_dir"]
    os.makedirs(out, exist_ok=True)
    device = torch.device(cfg["device"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg["dtype"]]
    seed_everything(cfg["seed"])
    resuming = cfg.get("resume") and os.path.exists(os.path.join(out, "checkpoint", "trainer_state.pt"))
    start_path = load_policy_path(cfg["model"])
    model, tokenizer = load_policy(os.path.join(out, "checkpoint") if resuming else start_path, device, dtype)
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    opp = make_opponent(cfg["opponent"], start_path, device, dtype, cfg["max_new_tokens"])
    eval_opp = (make_opponent(cfg["eval_opponent"], start_path, device, dtype, cfg["max_new_tokens"])
                if cfg.get("eval_opponent") else opp)
    train_opts = env_options_for(cfg["game"], tokenizer, opp, training=True)
    if cfg.get("tactic_start"):
        train_opts["tactic_start"] = cfg["tactic_start"]
    eval_opts = env_options_for(cfg["game"], tokenizer, eval_opp, training=False)
    # The frozen reference exists only when the KL term does (beta > 0): it costs a full model copy.
    ref_model = None
    if cfg["beta"] > 0:
        ref_model, _ = load_policy(start_path, device, dtype)
        ref_model.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                  betas=(0.9, 0.999))
    sys_prompt = None if is_tiny(tokenizer) else cfg["system_prompt"]
    play = dict(max_new=cfg["max_new_tokens"], system_prompt=sys_prompt, env_options=eval_opts)
    if make_envs is None:
        def make_envs(step_, tokenizer_, opponent_):
            return [games.make_env(cfg["game"], **train_opts) for _ in range(cfg["num_groups"] * cfg["group_size"])]
    # dr_grpo's constant L_max: the most tokens one episode can sample.
    cfg = dict(cfg, max_completion_length=cfg["max_new_tokens"] * max(e.max_turns for e in make_envs(0, tokenizer, opp)))
    if evaluate_fn is None:
        def evaluate_fn(model_, tokenizer_, opponent_, progress=True):
            return play_games(model_, tokenizer_, cfg["game"], cfg["eval_games"], progress=progress, **play)[0]

    start_step, extra = 0, {}
    if resuming:
        start_step, extra = load_trainer_state(out, optimizer)
        print(f"resumed from {out}/checkpoint at step {start_step}")
    prepare_out_dir(out, cfg, start_step if resuming else None, ("log.jsonl", "samples.jsonl"))
    if not resuming:
        if cfg["eval_games"]:
            extra["before"] = evaluate_fn(model, tokenizer, eval_opp)
            print("before:", format_rates(extra["before"]))

    # Ctrl-C does not kill the step in flight: it sets a flag, the step finishes, we save and stop.
    # So a checkpoint always sits exactly between two steps and --resume continues the same run.
    stop = {"asked": False}
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(asked=True))
    bar = tqdm(range(start_step, cfg["steps"]), desc=f"GRPO {cfg['game']}", initial=start_step, total=cfg["steps"])
    try:
        for step in bar:
            t0 = time.time()
            # 1. rollout: G copies of each start state
            seeds = train_seeds(cfg["seed"], step, cfg["num_groups"])
            envs = make_envs(step, tokenizer, opp)
            flat_seeds = [s for s in seeds for _ in range(cfg["group_size"])]
            flat_groups = [g for g in range(cfg["num_groups"]) for _ in range(cfg["group_size"])]
            # env_rng (section 3b): do the G games of a group also share the opponent's dice?
            streams = (None if cfg.get("env_rng", "shared") == "shared"
                       else [k for _ in range(cfg["num_groups"]) for k in range(cfg["group_size"])])
            with bf16_autocast(device, cfg["bf16"]):
                episodes = rollout(model, tokenizer, envs, flat_seeds, flat_groups, cfg["temperature"], cfg["top_p"],
                                   cfg["max_new_tokens"], sys_prompt, streams=streams)
            t_roll = time.time() - t0
            # 2-4. rewards, advantages, filtering
            rewards = torch.tensor([ep.reward for ep in episodes], dtype=torch.float32)   # (N,)
            adv = group_advantages(rewards, cfg["group_size"], cfg["scale_rewards"])        # (N,)
            kept = filter_groups(rewards, cfg["group_size"], cfg["filter_ratio"])
            batch = [episodes[i] for i in kept]
            ids, attn, mask = pad_batch(batch, tokenizer.pad_token_id)
            kept_adv = adv[kept]                                                              # (N_kept,)
            if cfg.get("turn_discount", 1.0) != 1.0:
                kept_adv = kept_adv[:, None] * turn_weights(mask, cfg["turn_discount"])        # (N_kept, T)
            instruments = extra_metrics(model, episodes, kept, ids, attn, mask, adv, cfg) if extra_metrics else {}
            # 5. update: num_iterations PPO epochs, each over `minibatches` optimiser steps
            old = batch_logps(model, ids, attn, cfg) if cfg["num_iterations"] > 1 else None
            ref = batch_logps(ref_model, ids, attn, cfg) if ref_model is not None else None
            step_tokens = mask[:, 1:].sum()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            model.train()
            for _ in range(cfg["num_iterations"]):
                for sl in micro_slices(len(batch), math.ceil(len(batch) / cfg["minibatches"])):
                    optimizer.zero_grad(set_to_none=True)
                    stats = accumulate_gradients(model, ids[sl], attn[sl], mask[sl], kept_adv[sl], cfg,
                                                 old_logps=None if old is None else old[sl],
                                                 ref_logps=None if ref is None else ref[sl], step_tokens=step_tokens)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"]))
                    optimizer.step()
            model.eval()
            seconds = time.time() - t0
            record = {"step": step + 1, **step_metrics(episodes, kept, cfg["group_size"], adv), **stats,
                      "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"],
                      "tokens_per_s": float(step_tokens) / max(1e-9, seconds - t_roll),
                      "rollout_s": t_roll, "seconds": seconds, **instruments}
            if cfg["eval_every"] and (step + 1) % cfg["eval_every"] == 0:
                rates = evaluate_fn(model, tokenizer, eval_opp, progress=False)
                record.update({f"eval_{k}": v for k, v in rates.items()})
            log_line(os.path.join(out, "log.jsonl"), record)
            if cfg["sample_every"] and (step + 1) % cfg["sample_every"] == 0:
                for ep in episodes[:: max(1, len(episodes) // 4)][:4]:
                    log_line(os.path.join(out, "samples.jsonl"), {"step": step + 1, **episode_record(tokenizer, ep)})
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}", success=f"{record['rate_success']:.2f}")
            if stop["asked"]:
                save_checkpoint(out, model, tokenizer, optimizer, step + 1, extra)
                print(f"\ninterrupted: saved {out}/checkpoint at step {step + 1}; continue with --resume {out}")
                sys.exit(130)
            if cfg["save_every"] and (step + 1) % cfg["save_every"] == 0:
                save_checkpoint(out, model, tokenizer, optimizer, step + 1, extra)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    save_checkpoint(out, model, tokenizer, optimizer, cfg["steps"], extra)
    after = None
    if cfg["eval_games"]:
        after = evaluate_fn(model, tokenizer, eval_opp)
        print("after: ", format_rates(after))
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump({"before": extra.get("before"), "after": after}, f, indent=1)
    return extra.get("before"), after


def load_policy_path(name):
    return ensure_tiny(TINY_DIR) if name == "tiny" else name


def format_rates(rates):
    keys = [k for k in ("win", "draw", "loss", "success", "failure", "truncated", "opponent_error", "invalid",
                        "took_win", "blocked")
            if k in rates]
    return "  ".join(f"{k} {100 * rates[k]:.1f}%" for k in keys)


# -----------------------------------------------------------------------------
# 13. Command line: every hyperparameter above is a flag with the same name
HELP = {
    "model": "tiny (built in code), a hub name, or a local directory",
    "game": f"environment to train on: {', '.join(games.ENV_NAMES)}",
    "opponent": "random | greedy (takes a win when it can, else random) | minimax | greedy:P | minimax:P (each "
                "reply the bot's own with probability P, else random) | "
                "model:PATH | model:self | http://host:port/v1#model-name",
    "eval_opponent": "opponent of the before/after evaluation games, same choices (empty = --opponent)",
    "steps": "optimiser steps (rollout + update) to run",
    "num_groups": "start states (GRPO groups) per step",
    "group_size": "G: games per start state",
    "filter_ratio": "StarPO*: keep this top fraction of groups by reward std (1.0 = off; paper 0.25)",
    "lr": "AdamW learning rate (paper 1e-6 for 1.5B/7B)",
    "weight_decay": "AdamW weight decay",
    "lr_warmup_steps": "linear learning-rate warm-up over the first N steps (0 = off)",
    "lr_decay": "none | cosine: after warm-up, keep the learning rate or decay it to 0 at the last step",
    "grad_clip": "max global gradient norm",
    "eps_low": "PPO clip range below 1",
    "eps_high": "PPO clip range above 1 (clip-higher; paper 0.28)",
    "beta": "k3 KL coefficient to the frozen starting model (0 = no reference model)",
    "entropy_coef": "entropy bonus coefficient (paper 0.001)",
    "loss_type": "token aggregation: grpo | bnpo | dr_grpo | dapo",
    "scale_rewards": "advantage std: group | batch | none",
    "env_rng": "shared | per-game: the games of a group share the start state and (shared) also the bots' later "
               "random moves, or (per-game) each game draws its own",
    "tactic_start": "tictactoe: chance that a training game starts in one of the 3,334 positions with a win to "
                    "take or a single threat to block (0 = GIFT's start states; evaluation always starts empty)",
    "turn_discount": "gamma in (0, 1]: a move k learner turns before the end gets gamma^k of its game's "
                     "advantage (1 = every move the same, as GIFT)",
    "num_iterations": "PPO epochs over each rollout batch",
    "minibatches": "optimiser steps per PPO epoch (the rollout batch is split evenly)",
    "micro_batch_size": "episodes per forward/backward (gradient accumulation; result does not change)",
    "temperature": "sampling temperature for rollouts and training log-probs",
    "top_p": "nucleus sampling for rollouts (1.0 = off)",
    "max_new_tokens": "maximum tokens the policy may write per turn",
    "eval_games": "games played before and after training (0 = skip)",
    "eval_every": "also evaluate every N steps (0 = never)",
    "save_every": "checkpoint every N steps (also on Ctrl-C and at the end)",
    "sample_every": "write a few decoded episodes to samples.jsonl every N steps",
    "seed": "seed for torch, numpy, python and the environments' start states",
    "threads": "torch CPU threads (0 = torch's default)",
    "out_dir": "output folder: log.jsonl, samples.jsonl, eval.json, checkpoint/",
}


def defaults():
    g = globals()
    return {k: g["model_name" if k == "model" else k] for k in HELP} | {"device": "cpu", "dtype": "float32", "bf16": False,
                                      "gradient_checkpointing": False, "system_prompt": "You are a helpful assistant.",
                                      "resume": None}



# The flags with a fixed set of values (nested.py offers the same flags with the same choices). --game's
# choices are read when the parser is built, so a game registered after import (exercise 03) is accepted.
CHOICES = {"loss_type": LOSS_TYPES, "scale_rewards": ("group", "batch", "none"), "lr_decay": LR_DECAYS,
           "env_rng": ("shared", "per-game")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults are sized for the tiny model on a 2-core CPU.")
    d = defaults()
    for key, text in HELP.items():
        kind = type(d[key])
        choices = {**CHOICES, "game": games.ENV_NAMES}.get(key)
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None, choices=choices,
                       help=f"{text} (default: {d[key]})")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="weights dtype; bfloat16 halves memory for 7B models on one GPU (default: float32)")
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast for every forward pass (rollout and training) on CUDA")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward: less memory, ~30%% more time")
    p.add_argument("--system-prompt", default=None, help="system message for real chat models (tiny uses none)")
    p.add_argument("--resume", metavar="OUT", default=None,
                   help="continue the run in OUT exactly (its args.json; --steps may be raised)")
    a = vars(p.parse_args(argv))
    cfg = dict(d)
    if a["resume"]:
        with open(os.path.join(a["resume"], "args.json")) as f:
            cfg.update(json.load(f))
        cfg.update(out_dir=a["resume"], resume=a["resume"])
        a = {"steps": a["steps"]}
    cfg.update({k: v for k, v in a.items() if v is not None})
    return cfg


def main(argv=None):
    cfg = parse_args(argv)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    t0 = time.time()
    before, after = train(cfg)
    minutes = (time.time() - t0) / 60
    print(f"done in {minutes:.1f} min; log: {cfg['out_dir']}/log.jsonl, model: {cfg['out_dir']}/checkpoint")
    if before and after:
        # Columns: every rate of either table (an outcome may occur only before, or only after).
        keys = [k for k in dict.fromkeys([*before, *after]) if not k.startswith("mean")]
        print("\n| | " + " | ".join(keys) + " |")
        print("|---" * (1 + len(keys)) + "|")
        for name, r in (("before", before), ("after", after)):
            print(f"| {name} | " + " | ".join(f"{100 * r.get(k, 0):.1f}%" for k in keys) + " |")


if __name__ == "__main__":
    main()
