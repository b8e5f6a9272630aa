"""
grpo.py -- Group Relative Policy Optimisation for multi-turn text games, from scratch.

What it does: plays G games from each start state with the current policy, scores every game with the
environment's reward, and pushes up the log-probability of the moves of games that beat their group's
average (DeepSeekMath's GRPO in the "StarPO*" form of GIFT, arXiv 2601.05633, App. B.1-B.3). No value
network: the group mean is the baseline. One step of the loop (section 11):
  1. rollout    every episode advances in lockstep, one batched `generate` per turn; we keep the exact
                sampled token ids and a loss mask that is 1 on them and 0 on what the env or template wrote
  2. reward     R_i = the sum of episode i's turn rewards (win 1, draw 0.5, invalid answer -0.1)
  3. advantage  A_i = (R_i - mean_group R) / (std_group R + eps)                        (section 1)
  4. filter     keep the groups whose rewards vary most (StarPO*)                       (section 2)
  5. update     clipped surrogate on every sampled token, A_i on each token of episode i (sections 3, 4, 8)

What we simplified (and why), one line each (docs/PAPERS.md has the full list):
  - HF `generate` (or transformers' continuous batching, --rollout fast) instead of vLLM: no new dependency.
  - We train on the token ids that were sampled; GIFT's code re-tokenises reformatted text.
  - No dual-clip (verl's c = 3): with one optimiser step per rollout the ratio never leaves 1.
  - The tiny default model reads compact observations (a 3-line board, not a paragraph of rules).

Run:  python grpo.py   # tiny, TicTacToe vs random, ~10 min on 2 CPU cores; its last line should read
                       #   | after | 73.0% | 6.5% | 20.5% | 73.0% | 0.0% |   (win, draw, loss, success, invalid)
      python grpo.py --model Qwen/Qwen2.5-1.5B-Instruct --device cuda --precision bf16 --gradient-checkpointing \\
          --lr 1e-6 --filter-ratio 0.25 --minibatches 2 --max-new-tokens 600 --micro-batch-size 4 --threads 0
"""
import argparse
import collections
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import games


def flag(default, help, choices=None):
    """A setting: its default, the --help text, and (optionally) its allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


# -----------------------------------------------------------------------------
# Settings: the defaults of `python grpo.py`, sized for the tiny model on a 2-core CPU. Every one is a flag.
@dataclass
class Settings:
    model: str = flag("tiny", "tiny (data/tiny, shipped), a hub name, or a local folder")
    game: str = flag("tictactoe", "environment of games.py: matrix, tictactoe, spy, arith, math_jsonl")
    opponent: str = flag("random", "random | minimax | model:PATH | model:self | http://host:port/v1#name; "
                              "GIFT: Qwen3-14B")
    steps: int = flag(200, "optimiser steps of rollout + update; GIFT runs 100-300")
    num_groups: int = flag(8, "start states (GRPO groups) per step; GIFT 8")
    group_size: int = flag(16, "G: games per start state; GIFT 16")
    filter_ratio: float = flag(1.0, "StarPO*: keep this top fraction of groups by reward std; GIFT 0.25")
    loss_type: str = flag("grpo", "how token losses are averaged (section 4); GIFT's verl setup = grpo", LOSS_TYPES)
    scale_rewards: str = flag("group", "the std in the advantage: group | batch | none (section 1)",
                              ("group", "batch", "none"))
    eps_low: float = flag(0.2, "PPO clip below 1; GIFT 0.2")
    eps_high: float = flag(0.28, "PPO clip above 1 (DAPO's clip-higher); GIFT 0.28")
    beta: float = flag(0.0, "k3 KL coefficient to the frozen starting model; GIFT 0 (no reference model)")
    entropy_coef: float = flag(0.001, "entropy bonus; GIFT 0.001")
    num_iterations: int = flag(1, "PPO epochs over each rollout batch; GIFT 1")
    minibatches: int = flag(1, "optimiser steps per PPO epoch, the batch split evenly; GIFT's configs 1-2")
    lr: float = flag(7e-4, "AdamW learning rate; GIFT 1e-6 on 1.5B/7B models")
    lr_warmup_steps: int = flag(0, "linear learning-rate warm-up over the first N steps; GIFT 0")
    temperature: float = flag(1.0, "sampling temperature of rollouts and of the trained log-probs; GIFT 1.0")
    max_new_tokens: int = flag(24, "tokens the policy may write per turn; tiny needs 4, GIFT allows 600")
    rollout: str = flag("generate", "generate (HF generate) | fast (continuous batching, for GPUs)",
                        ("generate", "fast"))
    micro_batch_size: int = flag(64, "episodes per forward/backward; the gradient does not depend on it")
    precision: str = flag("fp32", "fp32 | bf16: bf16 autocast over fp32 weights (bf16 frozen base with LoRA)",
                          ("fp32", "bf16"))
    gradient_checkpointing: bool = flag(False, "recompute activations in backward: less memory, ~30% more time")
    lora_rank: int = flag(0, "rank r of LoRA adapters on every projection (section 5b); 0 = train all weights")
    lora_alpha: float = flag(16.0, "LoRA scale alpha: the adapter adds (alpha / r) B A x")
    device: str = flag("cpu", "cpu | cuda | cuda:1 ...")
    threads: int = flag(1, "torch CPU threads (0 = torch's default); tiny's small matrices gain nothing from more")
    eval_games: int = flag(200, "greedy games before and after training (empty board, random first player); 0 = none")
    seed: int = flag(0, "one seed for torch, numpy, python and the start states")
    out_dir: str = flag("runs/grpo", "log.jsonl, samples.jsonl, eval.json, args.json, checkpoint/")
    resume: bool = flag(False, "continue the run in --out-dir from its checkpoint, with its args.json")
    overwrite: bool = flag(False, "start afresh in an --out-dir that already holds a run, deleting it")


WEIGHT_DECAY = 0.0        # AdamW weight decay; verl (GIFT) uses 0.01
GRAD_CLIP = 1.0           # max global gradient norm, as verl
SAVE_EVERY = 50           # checkpoint every N steps (and at the end, and on Ctrl-C)
SAMPLE_EVERY = 25         # write a few decoded episodes to samples.jsonl every N steps
EVAL_SEED_BASE = 10_000   # evaluation episode i starts from seed 10_000 + i; training never uses these
SYSTEM_PROMPT = "You are a helpful assistant."   # real chat models only; GIFT's, reworded
TINY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny")   # built by data/make_tiny.py
LOGIT_CHUNK = 2 ** 25     # logits held at once when computing log-probs (section 3): 128 MB of fp32


# -----------------------------------------------------------------------------
# 1. Group-relative advantages (DeepSeekMath; GIFT App. B.1)
#
#     A_i = (R_i - mean_g R) / (std_g R + eps)        std: unbiased (Bessel), as torch and TRL
#
# Every game in a group starts from the same state, so the group mean is a free baseline: no value
# network. A group whose games all scored the same carries no signal; its A is exactly 0 (GIFT's code
# does the same when std <= 1e-6), so no rounding noise leaks into the loss.
#   scale="batch": divide by the std of the whole batch instead (TRL's option)
#   scale="none":  no division (Dr. GRPO: the std makes easy and hard groups count alike)
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
    return torch.where(group_std <= eps, torch.zeros_like(adv), adv).reshape(-1)


# -----------------------------------------------------------------------------
# 2. StarPO* filtering (GIFT App. B.3, from RAGEN)
#
# Keep the fraction `ratio` of groups with the largest reward std: the start states on which the policy
# is most undecided. Zero-variance groups go first (their A is 0 anyway). GIFT's code selects GROUPS, not
# single trajectories. ratio = 1.0 keeps everything.
def filter_groups(rewards, group_size, ratio):
    """Indices (into the flat batch) of the episodes of the kept groups, in order."""
    stds = rewards.view(-1, group_size).std(dim=1) if group_size > 1 else torch.zeros(len(rewards))
    keep = max(1, int(ratio * len(stds)))
    order = sorted(range(len(stds)), key=lambda g: -float(stds[g]))[:keep]   # stable: ties keep their order
    return [g * group_size + j for g in sorted(order) for j in range(group_size)]


# -----------------------------------------------------------------------------
# 3. Per-token log-probabilities and entropy, without the (B, T, V) tensor
#
#     log pi(y_t | y_<t) = z_t[y_t] - logsumexp_v z_t[v]        z_t = logits_{t-1} / T
#     H_t = - sum_v p_v log p_v = logsumexp(z_t) - sum_v p_v z_t[v]
#
# Logits at position t-1 predict token t, hence the shift. Dividing by the sampling temperature T makes
# the trained distribution exactly the one the tokens were sampled from (as TRL does). With Qwen's
# 151,936-token vocabulary, fp32 logits of 8 x 768 tokens take 3.7 GB, and a plain log_softmax keeps
# several such tensors for backward. So we run the model WITHOUT its head, then apply the head to a few
# positions at a time (at most LOGIT_CHUNK logits), and recompute each chunk in backward
# (torch.utils.checkpoint) instead of storing it. Same numbers; the peak is one chunk.
def _chunk_logps(head, hidden, targets, temperature, with_entropy):
    logits = head(hidden).float()                                                # (B, c, V)
    logits = logits / temperature if temperature != 1.0 else logits
    if not with_entropy:       # SFT: log pi(y) = -cross_entropy, one fused kernel for forward and backward
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return -ce.view(targets.shape), torch.zeros_like(ce).view(targets.shape)
    lse = torch.logsumexp(logits, dim=-1)                                        # (B, c)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse          # (B, c)
    return logps, lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)       # (B, c), (B, c)


def token_logps_and_entropy(model, ids, attention_mask, temperature=1.0, with_entropy=True):
    """ids, attention_mask: (B, T). Returns logps, entropy: (B, T-1), aligned with ids[:, 1:]."""
    body, head = getattr(model, model.base_model_prefix), model.get_output_embeddings()
    hidden = body(input_ids=ids, attention_mask=attention_mask).last_hidden_state[:, :-1]   # (B, T-1, H)
    targets = ids[:, 1:]                                                                     # (B, T-1)
    width = max(1, LOGIT_CHUNK // (ids.shape[0] * head.weight.shape[0]))                   # positions per chunk
    if width >= targets.shape[1]:
        return _chunk_logps(head, hidden, targets, temperature, with_entropy)
    parts = [checkpoint(_chunk_logps, head, hidden[:, s:s + width], targets[:, s:s + width], temperature,
                        with_entropy, use_reentrant=False) for s in range(0, targets.shape[1], width)]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


# -----------------------------------------------------------------------------
# 4. The GRPO loss (DeepSeekMath Eq. 3; DAPO; GIFT App. B.1 Eqs. 3-5)
#
#     ratio_t = exp(logp_t - logp_old_t)
#     l_t     = -min(ratio_t A, clip(ratio_t, 1 - eps_low, 1 + eps_high) A)     clipped surrogate
#             + beta k3_t,     k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   KL, if beta > 0
#             - c H_t                                                            entropy bonus
#
# Only sampled tokens count (mask M). How the l_t are averaged is the `loss_type`, as in TRL 1.16.0:
#     grpo     (1/B) sum_i [ sum_t l M / sum_t M ]   per-sequence token mean (DeepSeekMath, GIFT's verl)
#     bnpo     sum l M / sum M                       token mean over the optimiser step's batch
#     dr_grpo  sum l M / (B * L_max)                 Dr. GRPO: a constant, so no length bias at all
#     dapo     sum l M / (step tokens / k)           generation-batch token mean, rescaled to one of the
#                                                    k optimiser steps per rollout (TRL's normaliser)
# B and the counts belong to the OPTIMISER step, not the micro-batch: the loop passes them in, so summed
# micro-batch losses equal the full loss and the gradient does not depend on --micro-batch-size. (TRL
# averages per-micro-batch means for bnpo, which does; here bnpo and dapo differ only when k > 1.)
# The entropy bonus is averaged exactly like the loss, as verl does: it is part of l_t.
#
# Why the loss VALUE hovers near 0 while reward rises: on-policy, ratio = 1 and A has mean 0 within each
# group. Its GRADIENT, sum_i A_i grad log pi, is not zero. Watch reward and success, not the loss.
def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, beta=0.0, eps_low=0.2, eps_high=0.2,
              loss_type="grpo", max_completion_length=None, num_sequences=None, num_tokens=None,
              entropy=None, entropy_coef=0.0):
    """logps, old_logps, mask, ref_logps, entropy: (B, T); advantages: (B,) or (B, T). Returns (loss, stats).

    num_sequences / num_tokens: the optimiser step's B and token normaliser (default: this call's own).
    max_completion_length: L_max of dr_grpo (default T).
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
    if entropy is not None and entropy_coef:
        per_token = per_token - entropy_coef * entropy

    B, T = logps.shape
    num_sequences = num_sequences or B
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / num_sequences
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / (num_tokens or mask.sum().clamp(min=1))
    else:  # dr_grpo
        loss = (per_token * mask).sum() / (num_sequences * (max_completion_length or T))

    with torch.no_grad():                          # token means over the sampled tokens, for the log
        n = mask.sum().clamp(min=1)
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype)                   # clip is the active branch
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        stats = {k: float((v * mask).sum() / n) for k, v in (("kl", kl), ("clip_low", low), ("clip_high", high),
                                                              ("ratio", ratio), ("entropy", entropy)) if v is not None}
        stats["tokens"] = float(mask.sum())
    return loss, stats


# -----------------------------------------------------------------------------
# 5. Models: one loading path, the sampling distribution pinned, precision, LoRA
#
# `load_policy` is the only way a model enters this codebase: from_pretrained of a hub name or a folder
# ("tiny" is the folder data/tiny). A checkpoint ships a generation_config.json (Qwen2.5-Instruct: a
# repetition penalty, top_k, top_p) and transformers fills every setting we leave unset from it. Then the
# rollout would sample from a penalised, truncated distribution while the loss trains log_softmax(z / T).
# So we drop those settings and keep only the checkpoint's stop ids, which matter: Qwen stops on
# <|im_end|> and <|endoftext|>, and a turn ends at whichever comes first (section 6).
def stop_ids(tokenizer, model):
    """Every token id that ends a turn: the tokenizer's EOS and the model's own eos_token_id list."""
    extra = model.generation_config.eos_token_id
    ids = {tokenizer.eos_token_id} | set(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def load_policy(name, device="cpu", dtype=torch.float32):
    """(model, tokenizer) from "tiny", a hub name or a local folder, with a neutral generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()                    # our bars only: no "Loading weights" per call
    path = TINY_DIR if name == "tiny" else name
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"                      # generation: every prompt ends where sampling starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    harmless = ("eos_token_id", "pad_token_id", "bos_token_id", "use_cache", "output_attentions",
                "output_hidden_states", "return_dict_in_generate", "_from_model_config", "transformers_version")
    shipped = {k: v for k, v in model.generation_config.to_diff_dict().items() if k not in harmless}
    model.generation_config = GenerationConfig(eos_token_id=stop_ids(tokenizer, model),
                                               pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=model.generation_config.bos_token_id)
    if shipped:
        print(f"[model] {name}: ignoring its generation settings {shipped}: rollouts sample log_softmax(logits / T)")
    return model, tokenizer


def is_compact(model):
    """True for tiny (config flag set by data/make_tiny.py): its games use compact observations."""
    return bool(getattr(model.config, "compact_observations", False))


def autocast(precision, device):
    """bf16 autocast around EVERY forward of a step (rollout, old/reference log-probs, training), so the
    PPO ratio compares log-probs of one precision: fp32 old against bf16 new was off 1 by up to 0.1."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


# 5b. LoRA (Hu et al. 2021, arXiv 2106.09685), written here: a frozen weight W plus a trained low-rank update
#
#     y = W x + (alpha / r) B A x          A: (r, in), B: (out, r), r << in, out
#
# B starts at zero, so step 0 is the base model exactly. Only A and B train, in fp32, so the base can be
# stored in bf16 (--precision bf16): a 7B model is then 15 GB of frozen weights plus small adapters and
# their AdamW state, which fits one 80 GB card. Why not bf16 weights with full training: bf16 keeps 8
# significant bits, so an update of lr 1e-6 to a weight of 0.02 rounds away (tests/test_grpo.py measures
# how many weights a step leaves unchanged); trained weights are always fp32 here.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base, self.scale = base.requires_grad_(False), alpha / rank
        self.lora_A = torch.nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))   # as nn.Linear initialises its weight

    def forward(self, x):
        update = F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B) * self.scale
        return self.base(x) + update.to(x.dtype)


def add_lora(model, rank, alpha):
    """Freeze the model and wrap every LORA_TARGETS projection in a LoRALinear (in place)."""
    model.requires_grad_(False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in LORA_TARGETS and isinstance(child, torch.nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))
    return model


def merged_state_dict(model):
    """The plain model's state dict, adapters merged into W (W + scale B A): what save_pretrained writes."""
    state = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if not k.endswith(("lora_A", "lora_B"))}
    for name, lora in model.named_modules():
        if isinstance(lora, LoRALinear):
            W = state[f"{name}.weight"]
            state[f"{name}.weight"] = (W.float() + lora.scale * lora.lora_B.float() @ lora.lora_A.float()).to(W.dtype)
    return state


def load_trainable(cfg, resume_dir=None):
    """The model a run updates (cfg: precision, lora_rank, lora_alpha, gradient_checkpointing, model, device):
    fp32 weights, or a frozen base (bf16 with --precision bf16) with fp32 LoRA adapters."""
    base_dtype = torch.bfloat16 if cfg.precision == "bf16" and cfg.lora_rank else torch.float32
    source = os.path.join(resume_dir, "checkpoint") if resume_dir and not cfg.lora_rank else cfg.model
    model, tokenizer = load_policy(source, cfg.device, base_dtype)     # adapters: restored by load_checkpoint
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    if any(p.requires_grad and p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("trained weights must be fp32: bf16 weights lose updates smaller than 1/256 of the weight "
                         "(section 5b); use --precision bf16 (fp32 weights, bf16 compute) or --lora-rank")
    if cfg.gradient_checkpointing:              # non-reentrant: frozen inputs (LoRA) still pass gradient
        if hasattr(model, "activation_checkpointing_enable"):                 # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


# -----------------------------------------------------------------------------
# 6. Conversations as token ids
#
# A multi-turn episode is ONE growing token sequence:
#     [template + observation 1] [sampled answer 1 + stop] [template + observation 2] [sampled answer 2 ...
#      mask 0 ...............     mask 1 ...............    mask 0 ...............    mask 1 ...
# The env's text is tokenised as it arrives; the model's text is never re-tokenised, so the log-probs we
# train are those of what was played. To tokenise just the new env part we render the chat with and without
# the new message and tokenise the difference: any template that only appends works (Qwen2.5's does).
def render(tokenizer, messages, add_generation_prompt):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def env_turn_ids(tokenizer, messages, new_user_text):
    """Token ids of the template text after the last EOS, through the new message and the generation prompt."""
    before = render(tokenizer, messages, add_generation_prompt=False)
    after = render(tokenizer, messages + [{"role": "user", "content": new_user_text}], add_generation_prompt=True)
    cut = before.rfind(tokenizer.eos_token) + len(tokenizer.eos_token)    # what follows it (Qwen's "\n") is ours
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
    task: str = ""                                 # the env's name (per-task logs of nested.py)
    messages: list = field(default_factory=list)   # the chat as text (templates and samples.jsonl)
    ids: list = field(default_factory=list)        # every token of the episode, prompt included
    mask: list = field(default_factory=list)       # 1 where the policy sampled the token
    reward: float = 0.0                            # R_i: the sum of all turn rewards
    done: bool = False
    info: dict = field(default_factory=dict)       # the env's last info
    turns: int = 0
    invalid_turns: int = 0                         # turns whose answer was unusable or illegal
    cut_turns: int = 0                             # turns that hit max_new_tokens without a stop id


def start_episode(tokenizer, env, seed, group, system_prompt=None):
    ep = Episode(env=env, seed=seed, group=group, task=getattr(env, "name", ""))
    ep.messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    ep.messages.append({"role": "user", "content": env.reset(seed)})
    ep.ids = tokenizer(render(tokenizer, ep.messages, True), add_special_tokens=False)["input_ids"]
    ep.mask = [0] * len(ep.ids)
    return ep


def cut_at_stop(ids, stops):
    """ids through the first stop id (inclusive), and whether there was one."""
    for k, t in enumerate(ids):
        if t in stops:
            return ids[:k + 1], True
    return ids, False


def finish_turn(tokenizer, ep, sampled_ids, stops):
    """Append one sampled answer (mask 1), step the env, append its reply (mask 0)."""
    taken, stopped = cut_at_stop(sampled_ids, stops)              # what `generate` wrote after it is padding
    # The chat continues after the template's own EOS. A turn that hit max_new_tokens, or stopped on another
    # stop id (Qwen's <|endoftext|>), gets one appended that the model did not sample: mask 0.
    closing = [] if stopped and taken[-1] == tokenizer.eos_token_id else [tokenizer.eos_token_id]
    ep.cut_turns += not stopped
    ep.ids += taken + closing
    ep.mask += [1] * len(taken) + [0] * len(closing)
    text = tokenizer.decode(taken[:-1] if stopped else taken, skip_special_tokens=True)
    obs, reward, done, info = ep.env.step(text)
    ep.turns, ep.reward, ep.info, ep.done = ep.turns + 1, ep.reward + reward, info, done
    ep.invalid_turns += not info.get("valid", True)
    ep.messages.append({"role": "assistant", "content": text})
    if not done:
        new_ids = env_turn_ids(tokenizer, ep.messages, obs)
        ep.ids += new_ids
        ep.mask += [0] * len(new_ids)
        ep.messages.append({"role": "user", "content": obs})
    return ep


# -----------------------------------------------------------------------------
# 7. Rollout: every episode advances in lockstep, one batched generation per turn
#
# Prompts are padded on the LEFT, so all of them end at the same column and generation continues every
# row from its own last token, with the KV cache. top_k=0 and top_p=1 matter: transformers' default keeps
# the 50 likeliest tokens, which would change the distribution we sample from (section 5).
#
# --rollout fast uses transformers' continuous batching instead (paged KV cache, no padding, CUDA graphs):
# the same model and sampling rule, for GPUs, where `generate` spends most of each token step in Python.
# Its log-probs come from other kernels, so with it the loop always recomputes old log-probs by the
# training forward (section 11): the ratio then starts at exactly 1. Not bit-reproducible across runs.
def generation_config(model, tokenizer, temperature, max_new):
    from transformers import GenerationConfig

    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else {}
    return GenerationConfig(**sampling, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=stop_ids(tokenizer, model))


@torch.no_grad()
def generate_batch(model, tokenizer, prompts, config, batch_size=256):
    """One continuation per prompt (lists of ids). Returns the new ids of each row, padding included."""
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(chunk):
            ids[row, width - len(p):], attn[row, width - len(p):] = torch.tensor(p), 1
        seq = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=config)
        outs += [row[width:].tolist() for row in seq.cpu()]
    return outs


FAST_MANAGERS = {}   # (model, temperature, max_new) -> a running continuous-batching manager


def generate_fast(model, tokenizer, prompts, config):
    """Like generate_batch, through a persistent continuous-batching manager (started on first use)."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    key = (id(model), config.temperature if config.do_sample else 0.0, config.max_new_tokens)
    if key not in FAST_MANAGERS:
        # No prefix sharing between requests: blocks cached under older weights must never be reused.
        cb = ContinuousBatchingConfig(allow_block_sharing=False, auto_switch_to_flash=False)
        FAST_MANAGERS[key] = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb)
        FAST_MANAGERS[key].start()
    manager = FAST_MANAGERS[key]
    request_ids = manager.add_requests(inputs=prompts, max_new_tokens=config.max_new_tokens)
    done = {}
    while len(done) < len(request_ids):
        result = manager.get_result(timeout=1)
        if result is None and not manager.is_running():
            raise RuntimeError("--rollout fast: the continuous-batching thread stopped; use --rollout generate")
        if result is not None and result.is_finished():
            done[result.request_id] = result.generated_tokens
    return [done[r] for r in request_ids]


def stop_fast_managers():
    for manager in FAST_MANAGERS.values():
        manager.stop(block=True)
    FAST_MANAGERS.clear()


def rollout(model, tokenizer, envs, seeds, groups=None, temperature=1.0, max_new=24, system_prompt=None,
            progress=False, fast=False):
    """Play one episode per (env, seed) to the end; returns the list of Episodes."""
    groups = groups if groups is not None else list(range(len(envs)))
    episodes = [start_episode(tokenizer, env, s, g, system_prompt) for env, s, g in zip(envs, seeds, groups)]
    config, stops = generation_config(model, tokenizer, temperature, max_new), set(stop_ids(tokenizer, model))
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(episodes), desc="playing", leave=False, disable=not progress)
    while active := [ep for ep in episodes if not ep.done]:
        generate = generate_fast if fast else generate_batch
        for ep, new_ids in zip(active, generate(model, tokenizer, [ep.ids for ep in active], config)):
            finish_turn(tokenizer, ep, new_ids, stops)
            bar.update(int(ep.done))
    bar.close()
    model.train(was_training)
    return episodes


def summarize_outcomes(episodes):
    """Rates over finished episodes: each outcome (win/draw/loss/...), success, invalid turns, mean return."""
    n = max(1, len(episodes))
    out = {k: c / n for k, c in collections.Counter(ep.info.get("outcome", "unknown") for ep in episodes).items()}
    out["success"] = sum(bool(ep.info.get("success")) for ep in episodes) / n
    out["invalid"] = sum(ep.invalid_turns for ep in episodes) / max(1, sum(ep.turns for ep in episodes))
    out["mean_return"] = sum(ep.reward for ep in episodes) / n
    return out


def play(model, tokenizer, envs, temperature=0.0, max_new=24, system_prompt=None, progress=True):
    """The evaluation helper training needs for its before/after numbers (evaluate.py builds on it):
    env i plays from seed EVAL_SEED_BASE + i, greedy by default. Returns (rates, episodes)."""
    seeds = [EVAL_SEED_BASE + i for i in range(len(envs))]
    episodes = rollout(model, tokenizer, envs, seeds, temperature=temperature, max_new=max_new,
                       system_prompt=system_prompt, progress=progress)
    return summarize_outcomes(episodes), episodes


# -----------------------------------------------------------------------------
# 8. The update: padded tensors, old log-probs, micro-batches, minibatches
#
# The batch is padded on the right into (N, T) tensors. Env tokens stay in the input -- the model must
# attend to the board -- but their mask is 0, so they get exactly zero gradient. Each micro-batch is
# trimmed to its own longest row, so short games cost no padding.
def pad_batch(episodes, pad_id):
    width = max(len(ep.ids) for ep in episodes)
    ids = torch.full((len(episodes), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(episodes), width), dtype=torch.long)
    mask = torch.zeros((len(episodes), width), dtype=torch.float32)
    for row, ep in enumerate(episodes):
        ids[row, :len(ep.ids)], attn[row, :len(ep.ids)] = torch.tensor(ep.ids), 1
        mask[row, :len(ep.mask)] = torch.tensor(ep.mask, dtype=torch.float32)
    return ids, attn, mask


def micro_slices(n, size):
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def micro_logps(model, ids, attn, sl, cfg):
    """(width, logps, entropy) of the rows `sl`, trimmed to their longest row; logps: (b, width - 1)."""
    device, width = next(model.parameters()).device, int(attn[sl].sum(1).max())
    with autocast(cfg.precision, device):
        return (width, *token_logps_and_entropy(model, ids[sl, :width].to(device), attn[sl, :width].to(device),
                                                cfg.temperature))


@torch.no_grad()
def batch_logps(model, ids, attn, cfg):
    """Log-probs of a batch without gradient: the old policy (before any update) or the reference model."""
    outs = [micro_logps(model, ids, attn, sl, cfg) for sl in micro_slices(ids.shape[0], cfg.micro_batch_size)]
    return torch.cat([F.pad(logps.float().cpu(), (0, ids.shape[1] - width)) for width, logps, _ in outs])  # (N, T-1)


def accumulate_gradients(model, ids, attn, mask, advantages, cfg, old_logps=None, ref_logps=None, num_tokens=None):
    """Forward/backward over micro-batches of ONE optimiser step; leaves the summed gradient in .grad.

    ids, attn, mask: (N, T), mask[:, t] = 1 where token t was sampled; advantages: (N,) or (N, T).
    num_tokens: dapo's normaliser (section 4). Returns the step's stats, token-weighted over micro-batches.
    """
    device = next(model.parameters()).device
    target_mask = mask[:, 1:]                                                    # (N, T-1): targets are ids[:, 1:]
    N, total = ids.shape[0], target_mask.sum().clamp(min=1)
    norm = num_tokens if cfg.loss_type == "dapo" and num_tokens is not None else total
    L_max = getattr(cfg, "max_completion_length", None) or ids.shape[1] - 1           # dr_grpo's constant
    sums = {}
    for sl in micro_slices(N, cfg.micro_batch_size):
        width, logps, entropy = micro_logps(model, ids, attn, sl, cfg)
        old = old_logps[sl, :width - 1].to(device) if old_logps is not None else logps.detach()
        ref = ref_logps[sl, :width - 1].to(device) if ref_logps is not None else None
        mb_adv = (advantages[sl] if advantages.dim() == 1 else advantages[sl, 1:width]).to(device)
        loss, stats = grpo_loss(logps, old, mb_adv, target_mask[sl, :width - 1].to(device), ref, cfg.beta,
                                cfg.eps_low, cfg.eps_high, cfg.loss_type, L_max, num_sequences=N, num_tokens=norm,
                                entropy=entropy, entropy_coef=cfg.entropy_coef)
        loss.backward()
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for k in ("kl", "clip_low", "clip_high", "ratio", "entropy"):
            sums[k] = sums.get(k, 0.0) + stats[k] * stats["tokens"] / float(total)
    return sums


def update_policy(model, optimizer, ids, attn, mask, advantages, cfg, old_logps=None, ref_logps=None):
    """num_iterations PPO epochs, each split into `minibatches` optimiser steps. Returns the last step's stats.

    old_logps must be given whenever there is more than one optimiser step per rollout: from the second
    step on, the policy has moved, and the ratio must compare it with the policy that SAMPLED the batch.
    """
    n = ids.shape[0]
    dapo_tokens = mask[:, 1:].sum() / cfg.minibatches              # TRL: generation tokens / steps per rollout
    model.train()
    for _ in range(cfg.num_iterations):
        for sl in micro_slices(n, math.ceil(n / cfg.minibatches)):
            optimizer.zero_grad(set_to_none=True)
            stats = accumulate_gradients(model, ids[sl], attn[sl], mask[sl], advantages[sl], cfg,
                                         None if old_logps is None else old_logps[sl],
                                         None if ref_logps is None else ref_logps[sl], dapo_tokens)
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP))
            optimizer.step()
    model.eval()
    return stats


# -----------------------------------------------------------------------------
# 9. Opponents (GIFT trains against a fixed Qwen3-14B served over HTTP)
#
# games.py takes any callable `prompt -> text` as an opponent. `model:PATH` wraps a local model,
# `model:self` a frozen copy of the starting policy (one GPU, no server), `http://...` games.py's client.
def make_opponent(spec, policy_path=None, device="cpu", max_new=24, temperature=0.5):
    """What games.py gets as an opponent. Without policy_path, only checks the spec (before anything loads)."""
    if spec in games.TTT_BOTS:
        return spec
    if spec.startswith(("http://", "https://")):
        url, _, name = spec.partition("#")
        return games.OpenAIChatOpponent(url, name or "default")
    if not spec.startswith("model:") or spec == "model:":
        raise ValueError(f"--opponent: expected random, minimax, model:PATH, model:self or http://..., got {spec!r}")
    if policy_path is None:
        return None
    model, tokenizer = load_policy(policy_path if spec == "model:self" else spec[len("model:"):], device)
    model.eval().requires_grad_(False)
    config, stops = generation_config(model, tokenizer, temperature, max_new), set(stop_ids(tokenizer, model))

    def respond(prompt):                      # one prompt in, the decoded reply through its stop id out
        ids = tokenizer(render(tokenizer, [{"role": "user", "content": prompt}], True), add_special_tokens=False)
        new, _ = cut_at_stop(generate_batch(model, tokenizer, [ids["input_ids"]], config)[0], stops)
        return tokenizer.decode(new, skip_special_tokens=True)
    return respond


def env_options(game, compact, opponent, training):
    """The options training and evaluation give one game: compact observations for tiny; TicTacToe starts
    from GIFT's random start states in training and from the empty board in evaluation."""
    options = {"compact": compact}
    if game == "tictactoe":
        options.update(opponent=opponent, random_start=training)
    elif game == "spy" and callable(opponent):
        options.update(opponent=opponent)
    return options


# -----------------------------------------------------------------------------
# 10. Run folders, checkpoints, Ctrl-C (glow_sft.py uses the same ones)
#
# A checkpoint is everything needed to continue EXACTLY: the weights (save_pretrained, adapters merged so
# the folder is a plain model), the adapters themselves, the optimiser, the step and every RNG state. It is
# written to checkpoint.tmp and swapped in, so a crash while saving never destroys the last good one.
RUN_FILES = ("log.jsonl", "samples.jsonl", "eval.json", "args.json", "checkpoint")


def claim_run_dir(out, settings, resume, overwrite):
    """A fresh run never deletes an earlier one unless asked (--overwrite); --resume needs a checkpoint."""
    if resume:
        if not os.path.exists(os.path.join(out, "checkpoint", "trainer_state.pt")):
            raise SystemExit(f"--resume: {out} has no checkpoint/trainer_state.pt to continue from")
        return
    trained = [f for f in ("checkpoint", "log.jsonl") if os.path.exists(os.path.join(out, f))]
    if trained and not overwrite:
        raise SystemExit(f"{out} already holds a run ({', '.join(trained)}). Continue it with --resume, "
                         f"start afresh there with --overwrite (deletes it), or choose another --out-dir.")
    for path in [os.path.join(out, f) for f in RUN_FILES if os.path.exists(os.path.join(out, f))]:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump({k: v for k, v in settings.items() if k not in ("resume", "overwrite")}, f, indent=1)


def save_checkpoint(out, model, tokenizer, state):
    tmp, final = os.path.join(out, "checkpoint.tmp"), os.path.join(out, "checkpoint")
    model.save_pretrained(tmp, state_dict=merged_state_dict(model))
    tokenizer.save_pretrained(tmp)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    adapters = {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
    torch.save({**state, "adapters": adapters, "rng": rng}, os.path.join(tmp, "trainer_state.pt"))
    if os.path.exists(final):
        os.replace(final, final + ".old")
    os.replace(tmp, final)
    shutil.rmtree(final + ".old", ignore_errors=True)


def load_checkpoint(out, model):
    """Restores adapters and every RNG; returns the saved state (optimiser state dicts, step, ...)."""
    state = torch.load(os.path.join(out, "checkpoint", "trainer_state.pt"), weights_only=False)
    model.load_state_dict(state.pop("adapters"), strict=False)
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def truncate_log(path, step):
    """A resumed run drops log lines past its checkpoint (written between the last save and a crash)."""
    if os.path.exists(path):
        rows = [line for line in open(path) if json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(rows)


@contextlib.contextmanager
def ctrl_c_finishes_step():
    """Ctrl-C sets a flag instead of killing the step in flight: the loop saves and stops between steps."""
    asked = {"stop": False}
    previous = signal.signal(signal.SIGINT, lambda *_: asked.update(stop=True))
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def seed_everything(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def log_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path):
    """log.jsonl records in step order, numbers only; a resumed run may log a step twice (the later wins)."""
    records = {}
    for number, row in games.jsonl_objects(path):
        if not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{number}: no integer 'step' in this line")
        records[row["step"]] = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [records[s] for s in sorted(records)]


def markdown_table(columns, rows):
    """rows: lists of cells (str as is, float with 2 decimals, None as '-')."""
    cell = lambda v: "-" if v is None else v if isinstance(v, str) else f"{v:.2f}"
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] +
                     ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


# -----------------------------------------------------------------------------
# 11. The training loop
def train_seeds(run_seed, step, n_groups, offset=0):
    """Start states of one step: disjoint from the evaluation seeds (10_000 + i) for any run seed."""
    return [1_000_000 * (run_seed + 1) + offset + step * n_groups + g for g in range(n_groups)]


# The learning rate of step s (0-based), W warm-up steps; a pure function of the step, so --resume needs no
# scheduler state. Why warm up: Adam's first updates have size ~lr in EVERY coordinate whatever the
# gradient's scale (m / sqrt(v) = +-1 after one gradient), so a first step can move the policy far.
#     lr(s) = lr (s + 1) / W   for s < W,   lr afterwards (verl's constant schedule; a cosine decay did not
#     help the default run, docs/LOG.md)
def lr_at(step, cfg):
    return cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.lr


def step_metrics(episodes, kept, group_size):
    """What one step's log line says about the games: rewards, dead groups, answer lengths, outcome rates."""
    rewards = torch.tensor([ep.reward for ep in episodes])
    stds = rewards.view(-1, group_size).std(dim=1) if group_size > 1 else torch.zeros(1)
    turns = max(1, sum(ep.turns for ep in episodes))
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "zero_std_groups": float((stds <= 1e-6).float().mean()), "kept_episodes": len(kept),
            "truncated_turns": sum(ep.cut_turns for ep in episodes) / turns,
            "response_tokens": sum(sum(ep.mask) for ep in episodes) / turns,
            **{f"rate_{k}": v for k, v in summarize_outcomes(episodes).items()}}


def train(cfg, make_envs=None, evaluate_fn=None, extra_metrics=None, advantage_fn=None, seed_offset=0):
    """One GRPO run. cfg: Settings. Returns (before, after) evaluation rates (None without --eval-games).

    nested.py and experiments/ reuse this loop through hooks (the defaults train on one game, cfg.game):
      make_envs(step, compact, opponent) -> num_groups * group_size fresh envs, group-major
      evaluate_fn(model, tokenizer, opponent) -> dict of rates (before and after training)
      advantage_fn(advantages (N,), episodes, mask (N, T)) -> advantages (N,) or (N, T) actually trained
      extra_metrics(model, episodes, kept, ids, attn, mask, advantages, cfg) -> dict for the step's log line
    seed_offset shifts the start states (a run that continues another's, such as nested after warm-up).
    """
    out = cfg.out_dir
    make_opponent(cfg.opponent)                                       # fail before loading anything
    if make_envs is None and cfg.game not in games.ENV_CLASSES:
        raise ValueError(f"--game: unknown {cfg.game!r}; valid: {', '.join(games.ENV_CLASSES)}")
    claim_run_dir(out, dataclasses.asdict(cfg), cfg.resume, cfg.overwrite)
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model, tokenizer = load_trainable(cfg, out if cfg.resume else None)
    compact, start_path = is_compact(model), TINY_DIR if cfg.model == "tiny" else cfg.model
    opponent = make_opponent(cfg.opponent, start_path, device, cfg.max_new_tokens)
    ref_model = None                                                  # exists only with the KL term: a full copy
    if cfg.beta > 0:
        ref_model = load_policy(start_path, device, next(model.parameters()).dtype)[0].eval().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999))
    system_prompt = None if compact else SYSTEM_PROMPT
    if make_envs is None:
        def make_envs(step, compact_, opponent_):
            options = env_options(cfg.game, compact_, opponent_, training=True)
            return [games.make_env(cfg.game, **options) for _ in range(cfg.num_groups * cfg.group_size)]
    if evaluate_fn is None:
        def evaluate_fn(model_, tokenizer_, opponent_):
            envs = [games.make_env(cfg.game, **env_options(cfg.game, compact, opponent_, training=False))
                    for _ in range(cfg.eval_games)]
            return play(model_, tokenizer_, envs, 0.0, cfg.max_new_tokens, system_prompt)[0]
    # dr_grpo's constant L_max: the most tokens one episode can sample.
    cfg = dataclasses.replace(cfg)
    cfg.max_completion_length = cfg.max_new_tokens * max(e.max_turns for e in make_envs(0, compact, opponent))

    start_step, extra = 0, {}
    if cfg.resume:
        state = load_checkpoint(out, model)
        optimizer.load_state_dict(state["optimizer"])
        start_step, extra = state["step"], state["extra"]
        for name in ("log.jsonl", "samples.jsonl"):
            truncate_log(os.path.join(out, name), start_step)
        print(f"resumed {out} at step {start_step}")
    elif cfg.eval_games:
        extra["before"] = evaluate_fn(model, tokenizer, opponent)
        print("before:", format_rates(extra["before"]))

    def save(step):
        save_checkpoint(out, model, tokenizer, {"optimizer": optimizer.state_dict(), "step": step, "extra": extra})

    bar = tqdm(range(start_step, cfg.steps), desc=f"GRPO {cfg.game}", initial=start_step, total=cfg.steps)
    with ctrl_c_finishes_step() as ctrl_c:
        try:
            for step in bar:
                t0 = time.time()
                # 1. rollout: G copies of each start state, adjacent
                seeds = train_seeds(cfg.seed, step, cfg.num_groups, seed_offset)
                with autocast(cfg.precision, device):
                    episodes = rollout(model, tokenizer, make_envs(step, compact, opponent),
                                       [s for s in seeds for _ in range(cfg.group_size)],
                                       [g for g in range(cfg.num_groups) for _ in range(cfg.group_size)],
                                       cfg.temperature, cfg.max_new_tokens, system_prompt, fast=cfg.rollout == "fast")
                t_roll = time.time() - t0
                # 2-4. rewards, advantages, filter
                rewards = torch.tensor([ep.reward for ep in episodes], dtype=torch.float32)     # (N,)
                adv = group_advantages(rewards, cfg.group_size, cfg.scale_rewards)            # (N,)
                kept = filter_groups(rewards, cfg.group_size, cfg.filter_ratio)
                batch = [episodes[i] for i in kept]
                ids, attn, mask = pad_batch(batch, tokenizer.pad_token_id)
                kept_adv = adv[kept] if advantage_fn is None else advantage_fn(adv[kept], batch, mask)
                instruments = {} if extra_metrics is None else \
                    extra_metrics(model, episodes, kept, ids, attn, mask, kept_adv, cfg)
                # 5. update. Old log-probs: needed whenever the policy moves between optimiser steps of one
                # rollout, or when another engine sampled (--rollout fast); otherwise the training forward is them.
                several = cfg.num_iterations * cfg.minibatches > 1 or cfg.rollout == "fast"
                old = batch_logps(model, ids, attn, cfg) if several else None
                ref = batch_logps(ref_model, ids, attn, cfg) if ref_model is not None else None
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                stats = update_policy(model, optimizer, ids, attn, mask, kept_adv, cfg, old, ref)
                record = {"step": step + 1, **step_metrics(episodes, kept, cfg.group_size), **stats,
                          "adv_abs_mean": float(adv.abs().mean()), "lr": optimizer.param_groups[0]["lr"],
                          "rollout_s": t_roll, "seconds": time.time() - t0, **instruments}
                log_line(os.path.join(out, "log.jsonl"), record)
                if (step + 1) % SAMPLE_EVERY == 0:                 # a few whole games, to read what is played
                    for ep in episodes[:: max(1, len(episodes) // 4)][:4]:
                        log_line(os.path.join(out, "samples.jsonl"), {"step": step + 1, "seed": ep.seed,
                                 "reward": ep.reward, "outcome": ep.info.get("outcome"), "messages": ep.messages})
                bar.set_postfix(reward=f"{record['reward_mean']:.2f}", success=f"{record['rate_success']:.2f}")
                if ctrl_c["stop"]:
                    save(step + 1)
                    print(f"\ninterrupted: saved {out}/checkpoint at step {step + 1}; continue with --resume")
                    sys.exit(130)
                if (step + 1) % SAVE_EVERY == 0:
                    save(step + 1)
        finally:
            stop_fast_managers()
    save(cfg.steps)
    after = evaluate_fn(model, tokenizer, opponent) if cfg.eval_games else None
    if after:
        print("after: ", format_rates(after))
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump({"before": extra.get("before"), "after": after}, f, indent=1)
    return extra.get("before"), after


def format_rates(rates):
    return "  ".join(f"{k} {100 * v:.1f}%" for k, v in rates.items() if k != "mean_return")


# -----------------------------------------------------------------------------
# 12. Command line: every setting is a flag with the same name (nested.py and glow_sft.py build theirs so)
def parse_settings(cls, argv=None, description="", skip=(), defaults=None):
    """Settings from the command line: given flags, else (with --resume) the run's args.json, else `defaults`,
    else the dataclass's own."""
    p = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name, help_ = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default: {f.default})".replace("%", "%%")
        if isinstance(f.default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, help=help_)
        else:
            p.add_argument(name, type=type(f.default), choices=f.metadata["choices"], help=help_)
    given = vars(p.parse_args(argv))
    saved = {}
    if given.get("resume"):
        path = os.path.join(given.get("out_dir", cls.out_dir), "args.json")
        if not os.path.exists(path):
            raise SystemExit(f"--resume: no {path}; nothing to continue")
        saved = {k: v for k, v in json.load(open(path)).items() if k in {f.name for f in dataclasses.fields(cls)}}
    return cls(**{**(defaults or {}), **saved, **given})


def main(argv=None):
    cfg = parse_settings(Settings, argv, __doc__.split("\n\n")[0].strip())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    before, after = train(cfg)
    print(f"done in {(time.time() - t0) / 60:.1f} min; log: {cfg.out_dir}/log.jsonl, model: {cfg.out_dir}/checkpoint")
    if before and after:
        keys = [k for k in dict.fromkeys([*before, *after]) if k != "mean_return"]
        print("\n" + markdown_table([""] + keys, [[name] + [f"{100 * r.get(k, 0):.1f}%" for k in keys]
                                                  for name, r in (("before", before), ("after", after))]))


if __name__ == "__main__":
    main()
