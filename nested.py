"""
nested.py -- Nested ("AND") versus mixed ("OR") multi-task GRPO, on top of grpo.py.

The idea (GIFT §3.3-3.4, gift.md 2.1). Train one policy on K tasks with GRPO. Two ways to batch them:
  mixed   ("OR")   every trajectory is ONE task drawn from the pool; the objective adds the tasks up,
                       max E[ sum_k R_k(tau_k) ]   (over separate trajectories)
                   A step can raise the total by getting better at whichever task is easiest, so the
                   tasks take turns dominating the gradient and the others can starve (GIFT §3.3).
  nested  ("AND")  every trajectory plays ALL K tasks one after another and gets ONE reward,
                       max E[ R(tau_1, ..., tau_K) ],   R = mean_k R_k   (GIFT App. B.2)
                   The top reward needs every sub-task solved, so a solved task cannot saturate the
                   objective: partial success keeps producing gradient for the rest (GIFT §3.4).
This file builds the nested environment, the mixed and single-task baselines with EXACTLY equal
budgets, the per-task instruments the paper's argument rests on (entropy and the gradient norm of
each task's share of the loss, GIFT §2.4/Fig. 4), and the experiment of GIFT Table 2/4 at toy scale.
The GRPO loop itself is grpo.train, reused through its make_envs and extra_metrics hooks; nothing
of the loop is copied here.

What we simplified or chose (and why), one line each:
  - "arith" (games.py) stands in for MATH as the formal task F: a tiny model can learn it.
  - TicTacToe and Spy opponents are games.py's bots (GIFT: Qwen3-14B), so everything runs offline.
  - Budgets are exactly equal: K tasks, mixed = N groups of single tasks, nested = N/K groups of
    K-task trajectories, same G -> same sub-task episodes per step and in total. GIFT's F+I1 configs
    gave nested twice the sub-task episodes of mixed (gift.md 3.5); we assert equality in code.
  - Every sub-task keeps its own turn limit, so every sub-task is always reached. GIFT shares one
    budget (the sum), so a sub-task that wastes turns can leave later ones unplayed (reward 0).
  - No marker between sub-tasks by default (GIFT shows none): the next observation simply starts.
  - Warm-up (GIFT App. B.3, unspecified there) is a separate mixed grpo.train run whose checkpoint
    the nested run starts from; the optimiser state starts afresh at the switch.
  - Evaluation samples at T = 0.5 as GIFT does, with a fixed torch seed, on start states 10_000+i
    (grpo.py evaluates greedily instead).
  - The learning rate is 2e-4, not grpo.py's 7e-4, and it is warmed up linearly over the first 5 steps
    (4 with --quick): without the warm-up the matrix task collapsed (every answer invalid within 5
    steps) in 1 of 3 seeds at 2e-4 (README "Nested versus mixed"). GIFT uses 1e-6 for its 1.5B model.
    Do not confuse --lr-warmup-steps with --warmup-steps, GIFT's mixed steps before nesting.

Run:  python nested.py                      # I2 = matrix+tictactoe: base, single-*, mixed, nested; 3 seeds
                                            # (12.2 min measured on 2 CPU cores shared with other jobs)
      python nested.py --quick              # the same, 2 seeds, a smaller budget
      python nested.py --setting F+I2 --num-groups 6   # arith -> matrix -> tictactoe (paper's order)
      python nested.py --setting I2 --order tictactoe,matrix --modes nested   # the order ablation
      python nested.py --setting F+I3 --warmup-steps 10 --joint min           # warm-up, strict AND
      python nested.py --model Qwen/Qwen2.5-1.5B-Instruct --device cuda --group-size 16 --lr 1e-6 \
          --filter-ratio 0.25 --max-new-tokens 600 --steps 200 --eval-games 100
"""

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

import games
import grpo

# -----------------------------------------------------------------------------
# Hyperparameters of the experiment (each is also a --flag; the GRPO ones are grpo.py's, with the
# defaults below for the tiny model on 2 CPU cores). The paper's values are in the comments.
setting = "I2"               # which task set (SETTINGS below); GIFT Tables 2-4 use F+I1..3 and I2
modes = "single,mixed,nested"  # which training rows to run; "single" means one run per task
seeds = "0,1,2"              # one run per seed and mode; GIFT reports one run per row
joint = "mean"               # R of a nested trajectory: mean (GIFT App. B.2) | min | product (strict ANDs)
warmup_steps = 0             # mixed steps before nesting (GIFT App. B.3 warms up the 1.5B F+I3 run)
marker = False               # write "Task k of K: name" above each sub-task's first observation
task_grads = True            # per-task gradient norms every step (one extra forward + K backwards)
eval_games = 100             # games per task and joint episodes per model; GIFT evaluates 100
eval_temperature = 0.5       # sampling temperature of evaluation, GIFT's 0.5 (gift.md 4.1); 0 = greedy
steps = 20                   # optimiser steps per run; GIFT runs 100-300 (gift.md 3.6)
num_groups = 8               # MIXED groups per step (a multiple of K); nested uses num_groups / K
group_size = 6               # G: episodes per group; GIFT uses 16
filter_ratio = 1.0           # StarPO* top fraction of groups by reward std; GIFT 0.25 (see --help)
lr = 2e-4                    # AdamW learning rate; grpo.py's 7e-4 collapses the matrix task; GIFT 1e-6
lr_warmup_steps = 5          # linear lr warm-up (grpo.lr_at): without it the matrix task collapsed in 1 of 3 seeds
out_dir = "runs/nested"      # <out_dir>/<setting>/<row>/seed<s>/ holds one grpo.train run each

micro_batch_size = group_size  # episodes per forward/backward = one group: grpo trims the padding of each
                             # micro-batch, and a mixed batch holds 8-token matrix answers beside
                             # 5-turn games; the gradient does not depend on it

# --quick: the same experiment, smaller (2.2 min measured on 2 busy cores; the default took 12.2).
# Its own folder, so that a later full run does not meet a quick run's folders (run.json would refuse).
QUICK = dict(steps=8, num_groups=4, group_size=8, lr_warmup_steps=4, eval_games=30, seeds="0,1",
             out_dir="runs/nested-quick")

# Save a checkpoint this often so an interrupted experiment loses at most this many steps.
SAVE_EVERY = 10
# Evaluation start states; grpo.play_games starts at the same number, so the tasks a model plays
# alone and the sub-tasks of its joint episodes are the very same instances.
EVAL_SEED_BASE = 10_000

# The paper's settings (GIFT §4.1.2, gift.md 2.3), in its nesting order Math -> Matrix -> TicTacToe -> Spy.
SETTINGS = {
    "I1": ("matrix",),
    "I2": ("matrix", "tictactoe"),
    "I3": ("matrix", "tictactoe", "spy"),
    "F+I1": ("arith", "matrix"),
    "F+I2": ("arith", "matrix", "tictactoe"),
    "F+I3": ("arith", "matrix", "tictactoe", "spy"),
}
MODES = ("single", "mixed", "nested")
JOINT_RULES = ("mean", "min", "product")


# -----------------------------------------------------------------------------
# 1. The joint reward of a nested trajectory (GIFT App. B.2, gift.md 2.1)
#
#     mean:     R = (1/K) sum_k R_k     the paper's choice: partial success still pays
#     min:      R = min_k R_k           strict AND: as good as the worst sub-task
#     product:  R = prod_k R_k          strict AND: any failed sub-task zeroes everything
#
# R_k in [0, 1] is sub-task k's outcome reward (1 success, 0.5 TicTacToe draw, 0 otherwise). All three
# reach their maximum only when every sub-task succeeds; they differ in how much a partial success
# earns. The paper picks the mean because a strict AND is too hard a target for a small model early in
# training, when it rarely solves every sub-task. The mean is symmetric: the order does not matter to R.
def joint_reward(rewards, rule="mean"):
    if not rewards:
        raise ValueError("joint_reward: no sub-task rewards")
    if rule == "mean":
        return sum(rewards) / len(rewards)
    if rule == "min":
        return min(rewards)
    if rule == "product":
        return math.prod(rewards)
    raise ValueError(f"joint must be one of {JOINT_RULES}, got {rule!r}")


# -----------------------------------------------------------------------------
# 2. NestedEnv: K sub-tasks played one after another inside ONE episode (GIFT App. B.2, gift.md 2.2)
#
# It is an env of the games.py interface, so grpo.rollout plays it like any game. Per step:
#   - the reply goes to the current sub-task, which keeps its own protocol, turn limit and success rule;
#   - while the sub-task runs, its rewards pass through (the -0.1 of an invalid answer, as in GIFT's code);
#   - when it ends, its outcome reward R_k is kept hidden: the step returns 0 (plus the -0.1 if that
#     last answer was invalid) and the observation is the next sub-task's first one;
#   - when the last sub-task ends, the step returns R = joint(R_1..R_K) and done.
# So the trajectory's return is  sum(penalties) + joint(R_1..R_K)  (gift.md 2.2, last line).
#
# Choices, each a line:
#   - Turn budget = the sum of the sub-tasks' limits (GIFT App. B.3: 1 + 5 = 6 turns for I2).
#   - A sub-task that runs out of turns ends as "truncated" with R_k = 0 (games.py ends it at its own
#     limit) and the next sub-task starts. Every sub-task is reached; none is left unplayed.
#   - reset(seed) resets every sub-task with the SAME seed, as GIFT's code does: a joint evaluation
#     episode then contains exactly the instances the single-task evaluation plays with that seed.
#   - The boundary observation is the next sub-task's first observation, with no marker unless
#     marker=True (GIFT shows none: the model sees only that the state text changed).
class NestedEnv:
    def __init__(self, sub_envs, joint="mean", marker=False):
        if not sub_envs:
            raise ValueError("NestedEnv needs at least one sub-environment")
        joint_reward([1.0], joint)                                  # fail now on an unknown rule
        self.subs = list(sub_envs)
        self.tasks = [env.name for env in self.subs]
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"NestedEnv: a task appears twice in {self.tasks}; with one shared seed "
                             "both copies would be the same instance")
        self.name = "nested:" + "+".join(self.tasks)
        self.max_turns = sum(env.max_turns for env in self.subs)
        self.joint, self.marker = joint, bool(marker)
        self.done = True

    def _first_obs(self, k):
        header = f"Task {k + 1} of {len(self.subs)}: {self.tasks[k]}\n" if self.marker else ""
        return header + self.first_obs[k]

    def reset(self, seed):
        self.first_obs = [env.reset(seed) for env in self.subs]
        self.k = 0                    # index of the sub-task being played
        self.turn = 0                 # turns used in the whole episode
        self.penalty = 0.0            # rewards passed through inside the current sub-task
        self.results = []             # one dict per finished sub-task
        self.turn_tasks = []          # the task each turn belonged to (for per-task token labels)
        self.done = False
        return self._first_obs(0)

    def split_rng(self, stream):
        """grpo --env-rng per-game: every sub-game keeps its start state and draws its own dice."""
        for env in self.subs:
            env.split_rng(stream)

    def step(self, response):
        if self.done:
            raise RuntimeError(f"{self.name}: the episode is over; call reset(seed) to start a new one")
        played, task = self.k, self.tasks[self.k]
        obs, reward, sub_done, sub_info = self.subs[played].step(response)
        self.turn += 1
        self.turn_tasks.append(task)
        if not sub_done:
            self.penalty += reward
            return obs, reward, False, self._info(sub_info, played, outcome="ongoing", success=False)
        # Sub-task k is over. Its outcome reward R_k stays hidden until the end; a negative terminal
        # reward is the -0.1 of an invalid last answer ("truncated"), a penalty that passes through.
        outcome_reward, passed = max(reward, 0.0), min(reward, 0.0)
        self.results.append({"task": task, "outcome": sub_info["outcome"], "success": bool(sub_info["success"]),
                             "reward": outcome_reward, "penalty": self.penalty + passed,
                             "turns": sub_info["turn"]})
        if self.k + 1 < len(self.subs):
            info = self._info(sub_info, played, outcome="ongoing", success=False)
            self.k, self.penalty = self.k + 1, 0.0
            return self._first_obs(self.k), passed, False, info
        self.done = True
        R = joint_reward([r["reward"] for r in self.results], self.joint)
        success = all(r["success"] for r in self.results)
        info = self._info(sub_info, played, outcome="success" if success else "failure", success=success)
        info["joint_reward"] = R
        return obs, passed + R, True, info

    def _info(self, sub_info, played, outcome, success):
        # valid and answer describe this turn; subtask/task say which sub-task it went to; subtasks
        # lists the finished ones; success is the joint metric (every sub-task succeeded, as GIFT logs).
        return {"valid": sub_info["valid"], "answer": sub_info.get("answer"), "outcome": outcome,
                "success": success, "turn": self.turn, "subtask": played, "task": self.tasks[played],
                "sub_info": sub_info, "subtasks": [dict(r) for r in self.results],
                "turn_tasks": list(self.turn_tasks)}

    def render(self):
        return self.subs[self.k].render()

    def legal_actions(self):
        return self.subs[self.k].legal_actions()

    def random_action(self, rng):
        return self.subs[self.k].random_action(rng)


def make_task_env(tasks, tokenizer, opponent, training, joint="mean", marker=False):
    """One env for a group: a games.py env for one task, a NestedEnv for several.

    The options of each (sub-)task are grpo.env_options_for's: compact observations for the tiny
    model, and TicTacToe's random start states in training but the empty board in evaluation."""
    subs = [games.make_env(t, **grpo.env_options_for(t, tokenizer, opponent, training)) for t in tasks]
    return subs[0] if len(subs) == 1 else NestedEnv(subs, joint, marker)


# -----------------------------------------------------------------------------
# 3. Settings and order (GIFT §4.1.2 and Table 6)
def setting_tasks(name, order=None):
    """The tasks of a setting, in the paper's order or in `order` (a permutation of them)."""
    if name not in SETTINGS:
        raise ValueError(f"--setting: expected one of {', '.join(SETTINGS)}, got {name!r}")
    tasks = SETTINGS[name]
    if order:
        wanted = tuple(t.strip() for t in order.split(",") if t.strip())
        if sorted(wanted) != sorted(tasks):
            raise ValueError(f"--order {order!r} must be a permutation of {name}'s tasks {','.join(tasks)}")
        tasks = wanted
    return tasks


# -----------------------------------------------------------------------------
# 4. Group layouts and the budget (GIFT §2.3, gift.md 3.5)
#
# A layout lists, for one step, the task tuple of every GRPO group (its G members share a seed):
#   single  N groups of (t,)
#   mixed   N groups, N/K of each task (t,), in a seeded shuffle per step (all in ONE update and ONE
#           filter, the paper's setup; the shuffle keeps the filter's tie-breaking from favouring a task)
#   nested  N/K groups of (t_1, ..., t_K)
# Sub-task episodes per step = G * sum over groups of len(tasks) = N * G for all three, so the
# comparison is at equal budget per step and, with equal steps, in total.
def group_layout(mode, tasks, n_groups, seed, step):
    K = len(tasks)
    if mode == "single":
        if K != 1:
            raise ValueError(f"single-task training takes one task, got {tasks}")
        return [tuple(tasks)] * n_groups
    if n_groups % K:
        raise ValueError(f"--num-groups {n_groups} must be a multiple of the number of tasks ({K}) "
                         "so that mixed has equal groups per task and nested has whole groups")
    if mode == "mixed":
        layout = [(t,) for t in tasks for _ in range(n_groups // K)]
        random.Random(1_000_003 * seed + step).shuffle(layout)
        return layout
    if mode == "nested":
        return [tuple(tasks)] * (n_groups // K)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def subtask_episodes(layout, group_size_):
    """Sub-task episodes one step plays: a K-task trajectory counts K times."""
    return group_size_ * sum(len(g) for g in layout)


def check_budget(tasks, n_groups, group_size_, steps_):
    """Asserts that single, mixed and nested see the same sub-task episodes per step and in total."""
    per_step = {}
    for mode in MODES:
        mode_tasks = tasks[:1] if mode == "single" else tasks
        per_step[mode] = subtask_episodes(group_layout(mode, mode_tasks, n_groups, 0, 0), group_size_)
    assert len(set(per_step.values())) == 1, f"unequal budgets per step: {per_step}"
    return {"per_step": per_step["mixed"], "total": per_step["mixed"] * steps_}


def make_envs_hook(mode, tasks, n_groups, group_size_, seed, joint_="mean", marker_=False):
    """grpo.train's make_envs: the layout's envs, each group's G copies adjacent (group-major).
    grpo.train then resets all G envs of group g with the seed grpo.train_seeds(seed, step, ...)[g]."""
    def make_envs(step, tokenizer, opponent):
        layout = group_layout(mode, tasks, n_groups, seed, step)
        return [make_task_env(g, tokenizer, opponent, True, joint_, marker_) for g in layout for _ in range(group_size_)]
    return make_envs


# -----------------------------------------------------------------------------
# 5. Which task owns each sampled token
#
# grpo's episode is one token sequence with mask 1 on sampled tokens. Every turn's answer is one
# unbroken run of 1s (the environment always writes something between two answers), so the j-th run
# is turn j, and NestedEnv's info["turn_tasks"][j] says which sub-task that turn played. A plain
# single-task episode labels every run with its own task.
def token_tasks(ep, tasks):
    """Per token of ep: the index in `tasks` of the task the token was sampled for, -1 if not sampled."""
    turn_tasks = ep.info.get("turn_tasks") or [ep.task] * ep.turns
    labels, turn, previous = [], -1, 0
    for m in ep.mask:
        if m and not previous:
            turn += 1
        labels.append(tasks.index(turn_tasks[turn]) if m else -1)
        previous = m
    if turn + 1 != len(turn_tasks):
        raise ValueError(f"episode of {ep.task!r}: {turn + 1} sampled runs but {len(turn_tasks)} turns")
    return labels


def label_batch(batch, tasks, width):
    """(N, width) long tensor of token_tasks, padded with -1 like grpo.pad_batch pads on the right."""
    labels = torch.full((len(batch), width), -1, dtype=torch.long)
    for row, ep in enumerate(batch):
        lab = token_tasks(ep, tasks)
        labels[row, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    return labels


# -----------------------------------------------------------------------------
# 6. Each task's share of the gradient (the paper's evidence, GIFT §2.4 / Fig. 4)
#
# The step's loss is a sum over sampled tokens, each token weighted by GLOBAL normalisers (grpo.py
# section 7: 1/num_sequences and the sequence's token count for "grpo", the batch's tokens for
# bnpo/dapo, and the entropy bonus over the batch's tokens). Split the tokens by task:
#
#     L = sum_t L_t,     L_t = the same sum over the tokens of task t, with the SAME normalisers
#     g = grad L = sum_t g_t
#
# so the per-task gradients add up exactly to the update's gradient, and ||g_t|| says how hard task t
# pulls on the weights. For mixed, task t's tokens are its episodes; for nested, they are the turns of
# sub-task t inside every trajectory. GIFT §3.3 argues that under mixed training one task after another
# takes over the update and the gradient's size swings from step to step: a claim about these g_t.
#
# How: one forward pass; for task t, replace the log-probs (and entropies) of every OTHER token by a
# detached copy. The loss VALUE is unchanged, so every normaliser is unchanged, but only task t's
# tokens pass gradient. K backward passes through the same graph give g_1..g_K. We measure the first
# (and, at GIFT's settings, only) PPO epoch of a step that is one minibatch: ratio = 1, and dapo's
# step-wide token count is the batch's own. No sampling happens here, so the run's random stream and
# hence its training are identical with and without these instruments.
def task_gradients(model, ids, attn, mask, labels, advantages, cfg, n_tasks, with_grads=True):
    """ids, attn, mask, labels: (N, T) for the update batch; advantages: (N,).

    Returns grads (n_tasks, P) or None, entropy_sum (n_tasks,), tokens (n_tasks,). Mirrors
    grpo.accumulate_gradients (first PPO epoch: ratio = 1, old = current) for beta = 0."""
    if cfg["beta"] > 0:
        raise ValueError("per-task gradients do not include the KL term (the hook has no reference "
                         "model); use beta 0 (GIFT) or --no-task-grads")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    target, target_labels = mask[:, 1:], labels[:, 1:]                    # (N, T-1): token t+1 is predicted at t
    N = ids.shape[0]
    batch_tokens = target.sum().clamp(min=1)
    grads = torch.zeros(n_tasks, sum(p.numel() for p in params)) if with_grads else None
    entropy_sum, tokens = torch.zeros(n_tasks), torch.zeros(n_tasks)
    for sl in grpo.micro_slices(N, cfg["micro_batch_size"]):
        width = int(attn[sl].sum(1).max())
        mb_mask = target[sl, :width - 1].to(device)
        mb_labels = target_labels[sl, :width - 1].to(device)
        with torch.set_grad_enabled(with_grads), grpo.bf16_autocast(device, cfg.get("bf16")):
            logps, entropy = grpo.token_logps_and_entropy(model, ids[sl, :width].to(device),
                                                          attn[sl, :width].to(device), cfg["temperature"])
        for t in range(n_tasks):
            mine = (mb_labels == t) & (mb_mask > 0)
            entropy_sum[t] += float((entropy.detach() * mine).sum())
            tokens[t] += float(mine.sum())
            if not with_grads or not mine.any():
                continue
            logps_t = torch.where(mine, logps, logps.detach())
            entropy_t = torch.where(mine, entropy, entropy.detach())
            loss, _ = grpo.grpo_loss(logps_t, logps.detach(), advantages[sl].to(device), mb_mask,
                                     eps_low=cfg["eps_low"], eps_high=cfg["eps_high"], loss_type=cfg["loss_type"],
                                     max_completion_length=cfg.get("max_completion_length"),
                                     num_sequences=N, num_tokens=batch_tokens)
            loss = loss - cfg["entropy_coef"] * (entropy_t * mb_mask).sum() / batch_tokens
            parts = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[t] += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).cpu()
                                   for g, p in zip(parts, params)])
    return grads, entropy_sum, tokens


def task_outcomes(episodes, tasks):
    """Per task: mean reward (its outcome reward + its penalties) and success, over the step's episodes.
    A nested episode contributes one sample per sub-task, from info["subtasks"]."""
    rows = {t: [] for t in tasks}
    for ep in episodes:
        for r in ep.info.get("subtasks") or [{"task": ep.task, "reward": ep.reward, "penalty": 0.0,
                                              "success": bool(ep.info.get("success"))}]:
            rows[r["task"]].append((r["reward"] + r["penalty"], float(r["success"])))
    out = {}
    for t, rs in rows.items():
        if rs:
            out[f"{t}/reward"] = sum(r for r, _ in rs) / len(rs)
            out[f"{t}/success"] = sum(s for _, s in rs) / len(rs)
    return out


def instruments_hook(tasks, with_grads=True):
    """grpo.train's extra_metrics: per task entropy, gradient norm, cosine to the update, token share;
    and reward/success/kept share where grpo's own step_metrics does not split by task."""
    tasks = list(tasks)

    def extra_metrics(model, episodes, kept, ids, attn, mask, adv, cfg):
        batch = [episodes[i] for i in kept]
        labels = label_batch(batch, tasks, ids.shape[1])
        grads, ent, tok = task_gradients(model, ids, attn, mask, labels, adv[kept], cfg, len(tasks), with_grads)
        m = {}
        if len({ep.task for ep in episodes}) == 1:
            # grpo splits reward/success/kept by ep.task only when a step holds several tasks (mixed).
            # Single-task and nested steps get them here. A kept nested group holds every task, so
            # its "kept share" is 1 by construction; token_share below is the informative figure.
            m.update(task_outcomes(episodes, tasks))
            m.update({f"{t}/kept": 1.0 for t in tasks if f"{t}/reward" in m})
        grads = grads.double() if grads is not None else None           # norms and cosines in float64
        total = grads.sum(0) if grads is not None else None
        for t, name in enumerate(tasks):
            m[f"{name}/entropy"] = float(ent[t] / tok[t]) if tok[t] > 0 else None
            m[f"{name}/token_share"] = float(tok[t] / tok.sum().clamp(min=1))
            if grads is not None:
                norm = float(grads[t].norm())
                m[f"{name}/grad_norm"] = norm
                m[f"{name}/grad_cos"] = float(grads[t] @ total) / max(1e-12, norm * float(total.norm()))
        if total is not None:
            # ||sum_t g_t||: equals grpo's pre-clip "grad_norm" when minibatches = num_iterations = 1.
            m["task_grad_norm"] = float(total.norm())
        return m
    return extra_metrics


# -----------------------------------------------------------------------------
# 7. Evaluation: every task alone, and the joint metric on nested episodes
#
# Each model plays `n` games of every task separately (grpo.play_games, the evaluation options:
# TicTacToe from the empty board) and `n` nested episodes of all the tasks; "joint" is the share of
# nested episodes in which EVERY sub-task succeeded (GIFT's nested success). in_nested/<task> is a
# task's success when it is played inside the nested episode, after the earlier sub-tasks. Sampling
# restarts from the same torch seed for every block of games, so every model meets the same dice.
def evaluate(model, tokenizer, tasks, opponent, n, cfg, joint_="mean", marker_=False, temperature=eval_temperature,
             progress=True):
    sys_prompt = None if grpo.is_tiny(tokenizer) else cfg["system_prompt"]
    rates = {}
    for task in tasks:
        torch.manual_seed(EVAL_SEED_BASE)
        r, _ = grpo.play_games(model, tokenizer, task, n, seed_base=EVAL_SEED_BASE, temperature=temperature,
                               env_options=grpo.env_options_for(task, tokenizer, opponent, training=False),
                               max_new=cfg["max_new_tokens"], system_prompt=sys_prompt, progress=progress)
        rates[task] = r["success"]
    if len(tasks) > 1:
        torch.manual_seed(EVAL_SEED_BASE)
        envs = [make_task_env(tasks, tokenizer, opponent, False, joint_, marker_) for _ in range(n)]
        eps = grpo.rollout(model, tokenizer, envs, [EVAL_SEED_BASE + i for i in range(n)], temperature=temperature,
                           max_new=cfg["max_new_tokens"], system_prompt=sys_prompt, progress=progress)
        rates["joint"] = grpo.summarize_outcomes(eps)["success"]
        for k, task in enumerate(tasks):
            rates[f"in_nested/{task}"] = sum(ep.info["subtasks"][k]["success"] for ep in eps) / n
    else:
        rates["joint"] = rates[tasks[0]]
    return rates


# -----------------------------------------------------------------------------
# 8. One row of the table = one grpo.train run per seed, each in its own folder (resumable)
#
# grpo.train runs with eval_games = 0: its own before/after evaluation would replay the untrained model
# in every run, where the base row does it once. We evaluate the saved checkpoint instead.
# A run whose eval.json exists is skipped; one with a checkpoint but no eval.json is resumed by
# grpo.train. run.json records what the folder was started with (the command line's settings and the
# starting model's files), so a changed command line or a rebuilt tiny model cannot silently reuse a
# stale run.
def model_stamp(name):
    """What identifies the starting model: name, size and time of each file of a local directory
    (the tiny model is built on first use), or the hub name itself."""
    path = grpo.load_policy_path(name)
    if not os.path.isdir(path):
        return name
    return [(f, os.path.getsize(os.path.join(path, f)), int(os.path.getmtime(os.path.join(path, f))))
            for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))]


# Flags that change speed or bookkeeping, not what a run learns: a run may resume with other values.
NEUTRAL = ("threads", "micro_batch_size", "save_every", "sample_every")


def run_spec(mode, run_tasks, tasks, seed, opts):
    return {"mode": mode, "tasks": list(run_tasks), "eval_tasks": list(tasks), "seed": seed,
            "start_model": model_stamp(opts["grpo"]["model"]),
            "joint": opts["joint"], "marker": opts["marker"], "warmup_steps": opts["warmup_steps"] if
            mode == "nested" else 0, "eval_games": opts["eval_games"], "eval_temperature": opts["eval_temperature"],
            "grpo": {k: v for k, v in opts["grpo"].items() if k not in NEUTRAL}}


def finished_run(folder, spec):
    """Claims `folder` for `spec` (run.json); returns its eval.json if the run is complete, else None."""
    path = os.path.join(folder, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != json.loads(json.dumps(spec)):
            raise SystemExit(f"{path}: this folder was started with other settings; use another "
                             f"--out-dir or delete {folder}")
    else:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            json.dump(spec, f, indent=1)
    done = os.path.join(folder, "eval.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    return None


def evaluate_saved(model_path, folder, tasks, opts, **extra):
    """Loads a model, evaluates it (section 7) and writes <folder>/eval.json. Returns what it wrote."""
    g = opts["grpo"]
    dtype = {"float32": None, "bfloat16": torch.bfloat16}[g["dtype"]]
    model, tokenizer = grpo.load_policy(model_path, g["device"], dtype)
    opponent = grpo.make_opponent(g["opponent"], grpo.load_policy_path(g["model"]), g["device"], dtype,
                                  g["max_new_tokens"])
    t0 = time.time()
    rates = evaluate(model, tokenizer, tasks, opponent, opts["eval_games"], g, opts["joint"], opts["marker"],
                     opts["eval_temperature"])
    result = {"after": rates, **extra, "eval_s": time.time() - t0}
    with open(os.path.join(folder, "eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def train_run(mode, run_tasks, seed, folder, opts, model_path=None, steps_=None):
    """One grpo.train run: single (grpo's own default envs), mixed or nested (our make_envs)."""
    g = opts["grpo"]
    layout_groups = len(group_layout(mode, run_tasks, g["num_groups"], seed, 0))
    cfg = {**grpo.defaults(), **g, "seed": seed, "out_dir": folder, "resume": folder, "eval_games": 0,
           "eval_every": 0, "num_groups": layout_groups, "steps": steps_ if steps_ is not None else g["steps"],
           "game": run_tasks[0] if mode == "single" else f"{mode}:{'+'.join(run_tasks)}"}
    if model_path:
        cfg["model"] = model_path
    make_envs = None if mode == "single" else \
        make_envs_hook(mode, run_tasks, g["num_groups"], g["group_size"], seed, opts["joint"], opts["marker"])
    grpo.train(cfg, make_envs=make_envs, extra_metrics=instruments_hook(run_tasks, opts["task_grads"]))


def run_row(mode, run_tasks, tasks, seed, folder, opts):
    """Train (with warm-up if asked), evaluate on every task + joint, write eval.json. Returns it."""
    spec = run_spec(mode, run_tasks, tasks, seed, opts)
    done = finished_run(folder, spec)
    if done:
        return done
    t0 = time.time()
    W, model_path = spec["warmup_steps"], None
    if W:
        # GIFT App. B.3: a short mixed stage first. The budget stays exact: W mixed steps + (steps - W)
        # nested steps see steps * num_groups * G sub-task episodes, the same as the mixed row.
        if not 0 < W < opts["grpo"]["steps"]:
            raise ValueError(f"--warmup-steps {W} must be between 0 and --steps {opts['grpo']['steps']}")
        warm = os.path.join(folder, "warmup")
        train_run("mixed", run_tasks, seed, warm, opts, steps_=W)
        model_path = os.path.join(warm, "checkpoint")
    train_run(mode, run_tasks, seed, folder, opts, model_path, opts["grpo"]["steps"] - W)
    return evaluate_saved(os.path.join(folder, "checkpoint"), folder, tasks, opts, train_s=time.time() - t0)


def base_row(tasks, folder, opts):
    """The untrained starting model, evaluated once: its row has no training seeds."""
    spec = {"mode": "base", "eval_tasks": list(tasks), "start_model": model_stamp(opts["grpo"]["model"]),
            "eval_games": opts["eval_games"], "eval_temperature": opts["eval_temperature"], "joint": opts["joint"],
            "marker": opts["marker"]}
    return finished_run(folder, spec) or evaluate_saved(opts["grpo"]["model"], folder, tasks, opts)


# -----------------------------------------------------------------------------
# 9. The table (GIFT Table 2 layout) and the training curves (GIFT Fig. 4)
def fmt(values):
    """'mean ± std' in percent over seeds (sample std; a single value prints alone)."""
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def results_table(rows, columns, average_of=()):
    """rows: {row name: [eval rates of each seed]}; one column per key, then "avg" over `average_of`."""
    head = ["training"] + [c.split("/")[-1] for c in columns] + (["avg"] if average_of else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in rows.items():
        cells = [fmt([r[c] for r in runs]) for c in columns]
        if average_of:
            cells.append(fmt([sum(r[c] for c in average_of) / len(average_of) for r in runs]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CURVE_KEYS = ("reward", "success", "entropy", "grad_norm", "grad_cos", "token_share", "kept")


def read_log(path):
    """log.jsonl records in step order (a resumed run may log a step twice: the later line wins)."""
    records = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                records[r["step"]] = r
    return [records[s] for s in sorted(records)]


def run_curves(folder, tasks, warmup):
    """Per step and task: the CURVE_KEYS of one run, the warm-up's steps first if there was one."""
    records = (read_log(os.path.join(folder, "warmup", "log.jsonl")) if warmup else []) + \
        read_log(os.path.join(folder, "log.jsonl"))
    return [{"step": step, "task": t, **{k: r.get(f"{t}/{k}") for k in CURVE_KEYS}}
            for step, r in enumerate(records, 1) for t in tasks]


def write_curves(path_csv, curves):
    """curves: {(row, seed): rows of run_curves}. One CSV line per row, seed, step, task."""
    with open(path_csv, "w") as f:
        f.write("row,seed,step,task," + ",".join(CURVE_KEYS) + "\n")
        for (row, seed), rows in curves.items():
            for r in rows:
                f.write(f"{row},{seed},{r['step']},{r['task']}," +
                        ",".join("" if r[k] is None else f"{r[k]:.6g}" for k in CURVE_KEYS) + "\n")


def dynamics_table(curves, tasks):
    """Entropy and gradient norm per row and task, averaged over seeds and over the second half of
    training; cv = std/mean of the grad norm over steps (GIFT §2.4 reports unstable norms for mixed)."""
    lines = ["| training | task | entropy | grad norm | grad-norm cv | grad cos to update |", "|---|---|---|---|---|---|"]
    by_row = {}
    for (row, seed), rows in curves.items():
        by_row.setdefault(row, []).append(rows)
    for row, runs in by_row.items():
        for t in tasks:
            stats = {"entropy": [], "grad_norm": [], "cv": [], "grad_cos": []}
            for rows in runs:
                mine = [r for r in rows if r["task"] == t]
                late = mine[len(mine) // 2:]
                for k in ("entropy", "grad_norm", "grad_cos"):
                    vals = [r[k] for r in late if r[k] is not None]
                    if vals:
                        stats[k].append(float(np.mean(vals)))
                norms = [r["grad_norm"] for r in late if r["grad_norm"] is not None]
                if len(norms) > 1 and np.mean(norms) > 0:
                    stats["cv"].append(float(np.std(norms) / np.mean(norms)))
            if not stats["entropy"]:
                continue
            cell = lambda k: f"{np.mean(stats[k]):.3f}" if stats[k] else "-"
            lines.append(f"| {row} | {t} | {cell('entropy')} | {cell('grad_norm')} | {cell('cv')} | {cell('grad_cos')} |")
    return "\n".join(lines)


def plot_curves(path_png, curves, tasks):
    """Entropy and grad norm per task over steps, mean over seeds. Needs matplotlib (optional)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    rows = sorted({row for row, _ in curves})
    for ax, key in zip(axes, ("entropy", "grad_norm")):
        for row in rows:
            for t in tasks:
                per_step = {}
                for (r, _), run in curves.items():
                    if r != row:
                        continue
                    for x in run:
                        if x["task"] == t and x[key] is not None:
                            per_step.setdefault(x["step"], []).append(x[key])
                if per_step:
                    xs = sorted(per_step)
                    ax.plot(xs, [np.mean(per_step[s]) for s in xs], label=f"{row} / {t}")
        ax.set_xlabel("step")
        ax.set_title(f"per-task {key.replace('_', ' ')} (mean over seeds)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)
    plt.close(fig)


# -----------------------------------------------------------------------------
# 10. The experiment: base, single-<task> for every task, mixed, nested; every seed; one table
def row_plan(tasks, mode_list):
    """[(row name, mode, tasks it trains on)] in the table's order."""
    plan = []
    for mode in mode_list:
        if mode == "single":
            plan += [(f"single-{t}", "single", (t,)) for t in tasks]
        else:
            plan.append((mode, mode, tuple(tasks)))
    return plan


def run_experiment(opts):
    tasks = setting_tasks(opts["setting"], opts["order"])
    mode_list = [m.strip() for m in opts["modes"].split(",") if m.strip()]
    for m in mode_list:
        if m not in MODES:
            raise ValueError(f"--modes: {m!r} is not one of {', '.join(MODES)}")
    seed_list = [int(s) for s in str(opts["seeds"]).split(",") if s.strip()]
    g = opts["grpo"]
    budget = check_budget(tasks, g["num_groups"], g["group_size"], g["steps"])
    label = opts["setting"] + ("" if tuple(tasks) == SETTINGS[opts["setting"]] else "_" + "-".join(tasks))
    root = os.path.join(opts["out_dir"], label)
    os.makedirs(root, exist_ok=True)
    print(f"{label}: tasks {' -> '.join(tasks)}; per run {budget['per_step']} sub-task episodes per step, "
          f"{budget['total']} in total (mixed {g['num_groups']} groups of one task, nested "
          f"{g['num_groups'] // len(tasks)} groups of {len(tasks)} tasks, G = {g['group_size']})")

    t0 = time.time()
    results = {"base": [base_row(tasks, os.path.join(root, "base"), opts)["after"]]}
    plan = row_plan(tasks, mode_list)
    curves = {}
    for seed in seed_list:
        for name, mode, run_tasks in plan:
            folder = os.path.join(root, name, f"seed{seed}")
            tqdm.write(f"== {name}, seed {seed} -> {folder}")
            results.setdefault(name, []).append(run_row(mode, run_tasks, tasks, seed, folder, opts)["after"])
            warm = mode == "nested" and opts["warmup_steps"] > 0
            curves[(name, seed)] = run_curves(folder, list(run_tasks), warm)
    minutes = (time.time() - t0) / 60

    table = results_table(results, list(tasks) + ["joint"], average_of=tasks)
    inside = results_table(results, [f"in_nested/{t}" for t in tasks] + ["joint"]) if len(tasks) > 1 else ""
    dynamics = dynamics_table(curves, tasks)
    write_curves(os.path.join(root, "curves.csv"), curves)
    try:
        plot_curves(os.path.join(root, "curves.png"), curves, tasks)
        plot_note = f"curves: {root}/curves.png and {root}/curves.csv"
    except ImportError:
        plot_note = f"curves: {root}/curves.csv (install matplotlib for curves.png)"
    header = (f"Setting {label} ({' -> '.join(tasks)}), success % on {opts['eval_games']} games per task at "
              f"T = {opts['eval_temperature']}; mean ± std over seeds {','.join(map(str, seed_list))}; joint = all sub-tasks succeed "
              f"in one nested episode; avg = mean of the task columns. Budget: {budget['total']} sub-task "
              f"episodes per run.")
    report = f"{header}\n\n{table}\n"
    if inside:
        report += f"\nThe same models, each task's success inside the nested evaluation episodes:\n\n{inside}\n"
    report += f"\nTraining dynamics (second half of training, per task):\n\n{dynamics}\n"
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(report)
    print("\n" + report)
    print(f"{plot_note}\nthis call took {minutes:.1f} min (skipped runs cost nothing); table: {root}/table.md")
    return results


# -----------------------------------------------------------------------------
# 11. Command line: the experiment's flags, then every grpo.py hyperparameter with the same name
OWN_HELP = {
    "setting": "task set: " + ", ".join(f"{k}={'+'.join(v)}" for k, v in SETTINGS.items()),
    "order": "comma-separated permutation of the setting's tasks, e.g. tictactoe,matrix (GIFT Table 6)",
    "modes": "training rows to run, any of single,mixed,nested (single = one run per task)",
    "seeds": "comma-separated run seeds; the table reports mean ± std over them",
    "joint": "nested reward rule: mean (GIFT) | min | product (strict ANDs)",
    "warmup_steps": "nested only: this many mixed steps first, then nested for the rest of --steps",
    "eval_games": "games per task, and nested episodes for the joint column, per model",
    "eval_temperature": "sampling temperature of the evaluation games (GIFT 0.5; 0 = greedy)",
    "out_dir": "root folder: <out-dir>/<setting>/<row>/seed<s>/ (re-running skips finished runs)",
}
# grpo.py flags that nested.py sets itself, so they are not offered here.
NOT_FROM_GRPO = ("game", "out_dir", "eval_games", "eval_every", "seed", "eval_opponent",
                 "tactic_start")        # TicTacToe-only start states: our tasks build their own envs
# grpo.py defaults that differ for this experiment (the rest are grpo.py's own).
GRPO_OVERRIDES = dict(steps=steps, num_groups=num_groups, group_size=group_size, filter_ratio=filter_ratio,
                      lr=lr, lr_warmup_steps=lr_warmup_steps, micro_batch_size=micro_batch_size,
                      save_every=SAVE_EVERY)
# grpo.py flags whose meaning is more specific here.
GRPO_HELP = {"num_groups": "MIXED groups per step, a multiple of the number of tasks K; single-task runs "
                           "play as many groups, nested runs num_groups / K groups of K-task trajectories",
             "steps": "optimiser steps per run (nested with warm-up: warm-up steps included)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults are sized for the tiny model on a 2-core CPU.")
    own = globals()
    for key, text in OWN_HELP.items():
        default = own.get(key)
        choices = {"setting": tuple(SETTINGS), "joint": JOINT_RULES}.get(key)
        kind = type(default) if default is not None else str
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None, choices=choices,
                       help=f"{text} (default: {default})")
    p.add_argument("--marker", action="store_true", default=None,
                   help="write 'Task k of K: name' above each sub-task's first observation (default: off, as GIFT)")
    p.add_argument("--no-task-grads", action="store_true",
                   help="skip the per-task gradient norms (they cost one forward and K backwards per step)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smaller experiment, about 2 minutes on 2 cores: {QUICK} (explicit flags still win)")
    d = dict(grpo.defaults(), **GRPO_OVERRIDES)
    grpo_group = p.add_argument_group("GRPO (grpo.py's flags, same meaning)")
    for key, text in grpo.HELP.items():
        if key in NOT_FROM_GRPO:
            continue
        choices = grpo.CHOICES.get(key)
        grpo_group.add_argument("--" + key.replace("_", "-"), type=type(d[key]), default=None, choices=choices,
                                help=f"{GRPO_HELP.get(key, text)} (default: {d[key]})")
    grpo_group.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cpu)")
    grpo_group.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="weights dtype (default: float32)")
    a = vars(p.parse_args(argv))

    base = dict(QUICK) if a["quick"] else {}
    pick = lambda key, fallback: a[key] if a.get(key) is not None else base.get(key, fallback)
    grpo_cfg = {k: pick(k, d[k]) for k in d if k not in NOT_FROM_GRPO and k != "resume"}
    return {"setting": pick("setting", setting), "order": a["order"], "modes": pick("modes", modes),
            "seeds": pick("seeds", seeds), "joint": pick("joint", joint), "warmup_steps": pick("warmup_steps", warmup_steps),
            "marker": bool(a["marker"]) or marker, "task_grads": task_grads and not a["no_task_grads"],
            "eval_games": pick("eval_games", eval_games), "eval_temperature": pick("eval_temperature", eval_temperature),
            "out_dir": pick("out_dir", out_dir), "grpo": grpo_cfg}


def main(argv=None):
    opts = parse_args(argv)
    if opts["grpo"]["threads"]:                                      # grpo.py's --threads, same rule
        torch.set_num_threads(opts["grpo"]["threads"])
    run_experiment(opts)


if __name__ == "__main__":
    main()
