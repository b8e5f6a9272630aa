"""
data/make_tiny.py -- the recipe of `tiny`, the small model every default command uses (data/tiny/).

What it builds: a byte-level tokenizer and a Qwen2-architecture model of 0.82M parameters, warm-started by
behaviour cloning on transcripts of the games' own bots playing random LEGAL moves. It learns the answer
format and the legal moves of every game, and no strategy: the analogue of starting GRPO from an instruct
model. The result is saved with `save_pretrained`, so `grpo.load_policy("tiny")` is a plain
`from_pretrained("data/tiny")`, the same call that loads Qwen/Qwen2.5-1.5B-Instruct.

The repository ships the folder this script writes, so nobody needs to run it: a fresh clone trains at once,
and every machine starts from the same weights (before, each machine built its own and started GRPO from a
different tiny). Run it to change the recipe, or to see it work (PHASES below: 400 steps each):

Run:  python data/make_tiny.py                        # rebuilds data/tiny/ (about 7.5 min on 2 CPU cores)
      python data/make_tiny.py --out /tmp/tiny --steps 20   # a quick look (a useless model, the same recipe)
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import games  # noqa: E402

# -----------------------------------------------------------------------------
# The recipe, one comment each
TINY_CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
                   tie_word_embeddings=True)   # 0.82M parameters: learns TicTacToe, fits a CPU
# Two phases: TicTacToe alone first, because reading a board and answering a LEGAL move takes far more
# practice than an answer format (mixed with the other games the jump had not come after 750 steps); then
# every game at half the learning rate, TicTacToe still half of the transcripts so its legality stays.
# (games, peak lr, steps) per phase; a 1,200-step first phase was worse, not better (docs/LOG.md, 2026-12-06).
PHASES = ((("tictactoe",), 2e-3, 400),
          (("tictactoe", "matrix", "tictactoe", "arith", "tictactoe", "spy"), 1e-3, 400))
BATCH = 32                   # episodes per step
SEED = 0                     # model initialisation and transcripts
OUT = os.path.join(HERE, "tiny")

# -----------------------------------------------------------------------------
# 1. The tokenizer: Qwen2's design (byte-level BPE) with an EMPTY merge list
#
# Nothing can be downloaded, so we cannot borrow Qwen's vocabulary. Byte-level BPE with no merges makes
# every byte one token, so any text encodes, and transformers rebuilds it identically when
# from_pretrained sees model_type "qwen2" (a tokenizer of another design loses its newlines there; a test
# guards this). The chat markers, the four format tags and the nine TicTacToe moves are single tokens,
# as a real vocabulary has tokens for frequent strings: a TicTacToe decision is then ONE sampled token.
SPECIAL = ["<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
MOVES = [f"({r},{c})" for r in (1, 2, 3) for c in (1, 2, 3)]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Qwen2's pre-tokenizer split (the GPT-4-style regex); with no merges it changes nothing, but it keeps the
# tokenizer identical to the one transformers rebuilds.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def byte_alphabet():
    """GPT-2's printable stand-in character for each of the 256 bytes (byte-level BPE's base vocabulary)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + TAGS + byte_alphabet())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL)
    core.add_tokens(TAGS + MOVES)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<pad>", unk_token=None,
                                   chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, seed=SEED):
    """A randomly initialised Qwen2ForCausalLM. `compact_observations` tells the scripts to give it the games'
    short observations (games.py, "Compact observations"): it cannot read a paragraph of rules."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, compact_observations=True,
                         **TINY_CONFIG)
    return Qwen2ForCausalLM(config)


# -----------------------------------------------------------------------------
# 2. Transcripts of random legal play, as token ids with a loss mask
#
#     [<|user|> observation <|assistant|>] [<answer>(2,3)</answer> <|end|>] [<|user|> next observation ...
#      mask 0                               mask 1                           mask 0
#
# Exactly the layout grpo.py's rollout writes for this chat template, so the warm start trains on the
# sequences GRPO will later sample.
def transcript(tokenizer, env, seed, rng):
    obs, ids, mask, done = env.reset(seed), [], [], False
    while not done:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": obs}], tokenize=False,
                                               add_generation_prompt=True)
        answer = games.format_answer(env.random_action(rng))
        part = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids, mask = ids + part + reply, mask + [0] * len(part) + [1] * len(reply)
        obs, _, done, _ = env.step(answer)
    return ids, mask


def bot_batch(tokenizer, game_names, n, seed):
    """n transcripts, cycling through game_names; TicTacToe starts from GIFT's random start states half the time."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = game_names[i % len(game_names)]
        options = {"random_start": rng.random() < 0.5} if name == "tictactoe" else {}
        env = games.make_env(name, compact=True, **options)
        rows.append(transcript(tokenizer, env, rng.randrange(10**9), rng))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((n, width), tokenizer.pad_token_id)
    mask = torch.zeros((n, width))
    for r, (i, m) in enumerate(rows):
        ids[r, :len(i)], mask[r, :len(m)] = torch.tensor(i), torch.tensor(m, dtype=torch.float32)
    return ids, mask


# -----------------------------------------------------------------------------
# 3. Behaviour cloning: cross-entropy on the bots' answer tokens, cosine-decayed learning rate
#
#     loss = - (1 / sum M) sum_t M_t log pi(y_t | y_<t)
def warm_start(model, tokenizer, game_names, steps, lr, seed):
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in tqdm(range(steps), desc=f"warm start {'+'.join(sorted(set(game_names)))}"):
        ids, mask = bot_batch(tokenizer, game_names, BATCH, seed * 100_003 + step)
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
        # A cosine decay to 0: the last steps polish the answer format instead of bouncing around it.
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    return float(loss)


def main(argv=None):
    p = argparse.ArgumentParser(description="Rebuild the tiny model (tokenizer + behaviour-cloning warm start).")
    p.add_argument("--out", default=OUT, help=f"folder to write (default: {OUT})")
    p.add_argument("--steps", type=int, default=0, help="behaviour-cloning steps of EVERY phase (default: PHASES' own)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)          # one thread: the same arithmetic order, run after run
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    print(f"tiny: {sum(p.numel() for p in model.parameters()):,} parameters, {len(tokenizer)} tokens")
    for phase, (game_names, lr, steps) in enumerate(PHASES):
        loss = warm_start(model, tokenizer, game_names, args.steps or steps, lr, SEED + phase)
        print(f"phase {phase + 1}: last behaviour-cloning loss {loss:.4f}")
    # Written next to the target, then moved: a reader never finds half a model.
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "recipe.json"), "w") as f:
        json.dump({"script": "data/make_tiny.py", "batch": BATCH, "seed": SEED,
                   "phases": [[list(g), lr, args.steps or n] for g, lr, n in PHASES]}, f, indent=1)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
