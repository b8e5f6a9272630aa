"""
nested.py -- Nested ("AND") versus mixed ("OR") multi-task GRPO, on top of grpo.py.

The idea (GIFT, arXiv 2601.05633, §3.3-3.4 and App. B.2). Train one policy on K tasks with GRPO. Two ways
to batch them:
  mixed   ("OR")   every trajectory is ONE task drawn from the pool; the objective adds the tasks up,
                       max E[ sum_k R_k(tau_k) ]   (over separate trajectories)
                   a step can raise the total by improving whichever task is easiest, so tasks take turns
                   dominating the gradient and the others can starve (GIFT §3.3).
  nested  ("AND")  every trajectory plays ALL K tasks one after another and earns ONE reward,
                       max E[ R(tau_1, ..., tau_K) ],   R = mean_k R_k   (GIFT App. B.2)
                   the top reward needs every sub-task solved, so a solved task cannot saturate the
                   objective: partial success keeps producing gradient for the rest (GIFT §3.4).
This file builds the nested environment, the mixed and single-task baselines with EXACTLY equal budgets,
the per-task instruments the paper's argument rests on (entropy and each task's share of the gradient,
GIFT §4.2 / Fig. 4), and the experiment of GIFT Tables 2 and 4 at toy scale. The GRPO loop is
grpo.train, reused through its hooks; nothing of it is copied here.

What we simplified or chose (and why), one line each (docs/PAPERS.md):
  - "arith" (games.py) stands in for MATH as the formal task; the games' bots stand in for Qwen3-14B.
  - Budgets are exactly equal, before and after the StarPO* filter: mixed = N groups of one task,
    nested = N/K groups of K-task trajectories, same G (GIFT's F+I1 configs gave nested twice as many).
  - Every sub-task keeps its own turn limit, so every sub-task is reached (GIFT shares one budget).
  - Evaluation samples at T = 0.5 as GIFT does, but from fixed seeds, so runs compare on the same games.
  - lr 2e-4 with a 5-step linear warm-up: at grpo.py's 7e-4 the matrix task collapsed (docs/LOG.md).

Run:  python nested.py --quick        # I2: base, single-matrix, single-tictactoe, mixed, nested; 2 seeds,
                                      # a smoke test of the pipeline (~4 min on 2 CPU cores)
      python nested.py                # the experiment: 3 seeds (docs/RESULTS.md has the measured table)
      python nested.py --setting F+I2 --num-groups 6   # arith -> matrix -> tictactoe, the paper's order
      python nested.py --setting I2 --order tictactoe,matrix --modes nested   # the order ablation (Table 6)
"""
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

import games
import grpo
from grpo import flag

SETTINGS = {                 # GIFT §4.1.2, in its nesting order Math -> Matrix -> TicTacToe -> Spy
    "I1": ("matrix",), "I2": ("matrix", "tictactoe"), "I3": ("matrix", "tictactoe", "spy"),
    "F+I1": ("arith", "matrix"), "F+I2": ("arith", "matrix", "tictactoe"),
    "F+I3": ("arith", "matrix", "tictactoe", "spy"),
}
MODES = ("single", "mixed", "nested")
JOINT_RULES = ("mean", "min", "product")


# -----------------------------------------------------------------------------
# Settings: the experiment's own, then grpo.py's with the defaults this experiment needs
@dataclass
class Settings(grpo.Settings):
    setting: str = flag("I2", "task set: " + ", ".join(f"{k}={'+'.join(v)}" for k, v in SETTINGS.items()),
                        tuple(SETTINGS))
    order: str = flag("", "a comma-separated permutation of the setting's tasks, e.g. tictactoe,matrix (GIFT Table 6)")
    modes: str = flag("single,mixed,nested", "training rows to run; single = one run per task")
    seeds: str = flag("0,1,2", "run seeds; the table reports mean ± std over them (GIFT reports one run)")
    joint: str = flag("mean", "nested reward: mean (GIFT App. B.2) | min | product (strict ANDs)", JOINT_RULES)
    warmup_steps: int = flag(0, "nested only: mixed steps first, then nested for the rest (GIFT App. B.3)")
    eval_temperature: float = flag(0.5, "sampling temperature of the evaluation games; GIFT 0.5")
    task_grads: bool = flag(True, "per-task gradient norms every step (one extra forward, K backwards)")
    quick: bool = flag(False, "the smaller smoke-test size QUICK below (given flags still win)")
    # grpo.py's settings with this experiment's defaults (the rest are grpo.py's own)
    steps: int = flag(20, "optimiser steps per run (with --warmup-steps: warm-up included); GIFT 100-300")
    num_groups: int = flag(8, "MIXED groups per step, a multiple of K; nested plays num_groups / K groups")
    group_size: int = flag(6, "G: episodes per group; GIFT 16")
    lr: float = flag(2e-4, "AdamW learning rate; grpo.py's 7e-4 collapsed the matrix task; GIFT 1e-6")
    lr_warmup_steps: int = flag(5, "linear lr warm-up: without it the matrix task collapsed in 1 of 3 seeds")
    micro_batch_size: int = flag(6, "one group per forward: grpo trims each micro-batch's padding")
    eval_games: int = flag(100, "games per task, and nested episodes for the joint column, per model; GIFT 100")
    out_dir: str = flag("runs/nested", "root: <out-dir>/<setting>/<row>/seed<s>/; a rerun skips finished runs")


QUICK = dict(steps=8, num_groups=4, group_size=8, lr_warmup_steps=4, eval_games=30, seeds="0,1",
             out_dir="runs/nested-quick")       # its own folder: a later full run never meets its runs
NOT_FLAGS = ("game", "resume", "overwrite")     # nested.py picks the game and manages its run folders


# -----------------------------------------------------------------------------
# 1. The joint reward of a nested trajectory (GIFT App. B.2)
#
#     mean:     R = (1/K) sum_k R_k     the paper's choice: partial success still pays
#     min:      R = min_k R_k           strict AND: as good as the worst sub-task
#     product:  R = prod_k R_k          strict AND: any failed sub-task zeroes everything
#
# R_k in [0, 1] is sub-task k's outcome reward (1 success, 0.5 TicTacToe draw, 0 otherwise). All three peak
# only when every sub-task succeeds; they differ in what a partial success earns. The paper picks the mean
# because a strict AND is too hard a target for a small model early on. The mean ignores the order.
def joint_reward(rewards, rule="mean"):
    if rule not in JOINT_RULES or not rewards:
        raise ValueError(f"joint must be one of {JOINT_RULES} over at least one reward, got {rule!r} over {rewards}")
    return {"mean": sum(rewards) / len(rewards), "min": min(rewards), "product": math.prod(rewards)}[rule]


# -----------------------------------------------------------------------------
# 2. NestedEnv: K sub-tasks played one after another inside ONE episode (GIFT App. B.2)
#
# An env of the games.py interface, so grpo.rollout plays it like any game. Per step:
#   - the reply goes to the current sub-task, with its own protocol, turn limit and success rule;
#   - while it runs, its rewards pass through (the -0.1 of an invalid answer, as in GIFT's code);
#   - when it ends, its outcome reward R_k stays hidden: the step returns 0 (plus -0.1 if that last
#     answer was invalid) and the next sub-task's first observation;
#   - when the last one ends, the step returns R = joint(R_1..R_K) and done.
# So the return is  sum(penalties) + joint(R_1..R_K). The turn budget is the sum of the sub-tasks' (GIFT
# App. B.3: 1 + 5 = 6 for I2). reset(seed) resets every sub-task with the SAME seed, as GIFT's code does:
# a joint evaluation episode then holds exactly the instances the single-task evaluation plays.
class NestedEnv:
    def __init__(self, sub_envs, joint="mean", marker=False):
        joint_reward([1.0], joint)                                  # fail now on an unknown rule
        self.subs, self.tasks = list(sub_envs), [env.name for env in sub_envs]
        if not self.subs or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"NestedEnv needs different sub-tasks (one seed for all), got {self.tasks}")
        self.name = "nested:" + "+".join(self.tasks)
        self.max_turns = sum(env.max_turns for env in self.subs)
        self.joint, self.marker, self.done = joint, bool(marker), True

    def reset(self, seed):
        # The marker ("Task k of K: name") is off by default: GIFT shows none, the state text just changes.
        self.first_obs = [(f"Task {k + 1} of {len(self.subs)}: {task}\n" if self.marker else "") + env.reset(seed)
                          for k, (task, env) in enumerate(zip(self.tasks, self.subs))]
        self.k, self.penalty = 0, 0.0                   # the sub-task being played; its penalties so far
        self.results, self.turn_tasks = [], []          # finished sub-tasks; the task of every turn played
        self.done = False
        return self.first_obs[0]

    def step(self, response):
        if self.done:
            raise RuntimeError(f"{self.name}: the episode is over; call reset(seed) to start a new one")
        k, task = self.k, self.tasks[self.k]
        obs, reward, sub_done, sub_info = self.subs[k].step(response)
        self.turn_tasks.append(task)
        if not sub_done:
            self.penalty += reward
            return obs, reward, False, self._info(sub_info, k)
        # A negative terminal reward is the -0.1 of an invalid last answer: a penalty, passed through.
        passed = min(reward, 0.0)
        self.results.append({"task": task, "outcome": sub_info["outcome"], "success": bool(sub_info["success"]),
                             "reward": max(reward, 0.0), "penalty": self.penalty + passed, "turns": sub_info["turn"]})
        if k + 1 < len(self.subs):
            self.k, self.penalty = k + 1, 0.0
            return self.first_obs[k + 1], passed, False, self._info(sub_info, k)
        self.done = True
        R = joint_reward([r["reward"] for r in self.results], self.joint)
        return obs, passed + R, True, self._info(sub_info, k) | {"joint_reward": R}

    def _info(self, sub_info, k):
        # success is the joint metric (every sub-task succeeded), known at the end only, as GIFT logs it.
        success = self.done and all(r["success"] for r in self.results)
        outcome = ("success" if success else "failure") if self.done else "ongoing"
        return {"valid": sub_info["valid"], "answer": sub_info.get("answer"), "outcome": outcome, "success": success,
                "turn": len(self.turn_tasks), "subtask": k, "task": self.tasks[k], "sub_info": sub_info,
                "subtasks": [dict(r) for r in self.results], "turn_tasks": list(self.turn_tasks)}

    def render(self):
        return self.subs[self.k].render()


def make_task_env(tasks, compact, opponent, training, joint="mean", marker=False):
    """A games.py env for one task, a NestedEnv for several; each with grpo.env_options."""
    subs = [games.make_env(t, **grpo.env_options(t, compact, opponent, training)) for t in tasks]
    return subs[0] if len(subs) == 1 else NestedEnv(subs, joint, marker)


def setting_tasks(name, order=""):
    """The tasks of a setting, in the paper's order or in `order` (a permutation of them)."""
    if name not in SETTINGS:
        raise ValueError(f"--setting: expected one of {', '.join(SETTINGS)}, got {name!r}")
    wanted = tuple(t.strip() for t in order.split(",") if t.strip())
    if wanted and sorted(wanted) != sorted(SETTINGS[name]):
        raise ValueError(f"--order {order!r} must be a permutation of {name}'s tasks {','.join(SETTINGS[name])}")
    return wanted or SETTINGS[name]


# -----------------------------------------------------------------------------
# 3. Group layouts and the budget
#
# A layout lists, for one step, the task tuple of every GRPO group (its G members share a seed):
#   single  N groups of (t,)
#   mixed   N groups, N/K of each task, in a seeded shuffle per step, all in ONE update and ONE filter
#           (GIFT §3.3; the shuffle keeps the filter's tie-breaking from favouring a task)
#   nested  N/K groups of (t_1, ..., t_K)
# Sub-task episodes per step = G * sum over groups of len(tasks) = N * G for all three. The StarPO*
# filter then keeps int(ratio * groups) groups, so mixed keeps ratio * N * G and nested ratio * (N/K) * K * G
# only when both counts come out whole: check_budget refuses layouts where they would not.
def group_layout(mode, tasks, n_groups, seed, step):
    K = len(tasks)
    if mode == "single":
        return [tuple(tasks)] * n_groups
    if n_groups % K:
        raise ValueError(f"--num-groups {n_groups} must be a multiple of the number of tasks ({K}) "
                         "so that mixed has equal groups per task and nested has whole groups")
    if mode == "nested":
        return [tuple(tasks)] * (n_groups // K)
    if mode != "mixed":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layout = [(t,) for t in tasks for _ in range(n_groups // K)]
    # Its own generator: a new order every step and run, the same one on a rerun, whatever else draws.
    random.Random(1_000_003 * seed + step).shuffle(layout)
    return layout


def check_budget(tasks, n_groups, group_size, steps, filter_ratio=1.0):
    """Sub-task episodes per step, played and trained (after the filter), equal for every mode."""
    played, trained = {}, {}
    for mode in MODES:
        layout = group_layout(mode, tasks[:1] if mode == "single" else tasks, n_groups, 0, 0)
        played[mode] = group_size * sum(len(g) for g in layout)
        trained[mode] = group_size * len(layout[0]) * max(1, int(filter_ratio * len(layout)))
    if len(set(played.values())) != 1 or len(set(trained.values())) != 1:
        raise ValueError(f"unequal budgets: sub-task episodes played {played}, trained after --filter-ratio "
                         f"{filter_ratio} {trained}; choose --num-groups so that num_groups / {len(tasks)} x "
                         f"filter_ratio is a whole number")
    return {"per_step": played["mixed"], "trained_per_step": trained["mixed"], "total": played["mixed"] * steps}


def make_envs_hook(mode, tasks, n_groups, group_size, seed, joint="mean", marker=False):
    """grpo.train's make_envs: the layout's envs, each group's G copies adjacent (group-major)."""
    def make_envs(step, compact, opponent):
        return [make_task_env(g, compact, opponent, True, joint, marker)
                for g in group_layout(mode, tasks, n_groups, seed, step) for _ in range(group_size)]
    return make_envs


# -----------------------------------------------------------------------------
# 4. Which task owns each sampled token
#
# Every turn's answer is one unbroken run of 1s in the loss mask (the env always writes something between
# two answers), so the j-th run is turn j, and NestedEnv's info["turn_tasks"][j] names its sub-task.
def token_tasks(ep, tasks):
    """Per token of ep: the index in `tasks` of the task it was sampled for, -1 if not sampled."""
    turn_tasks = ep.info.get("turn_tasks") or [ep.task] * ep.turns
    labels, turn = [], -1
    for i, m in enumerate(ep.mask):
        turn += bool(m and (i == 0 or not ep.mask[i - 1]))      # a run of 1s starts: the next turn's answer
        labels.append(tasks.index(turn_tasks[turn]) if m else -1)
    if turn + 1 != len(turn_tasks):
        raise ValueError(f"episode of {ep.task!r}: {turn + 1} sampled runs but {len(turn_tasks)} turns")
    return labels


def label_batch(batch, tasks, width):
    """(N, width) long tensor of token_tasks, padded with -1 on the right like grpo.pad_batch."""
    labels = torch.full((len(batch), width), -1, dtype=torch.long)
    for row, ep in enumerate(batch):
        labels[row, :len(ep.mask)] = torch.tensor(token_tasks(ep, tasks), dtype=torch.long)
    return labels


# -----------------------------------------------------------------------------
# 5. Each task's share of the gradient (the paper's evidence, GIFT §4.2, Fig. 4)
#
# The step's loss is a sum over sampled tokens with GLOBAL normalisers (grpo.py section 4). Split the
# tokens by task:      L = sum_t L_t,    g = grad L = sum_t g_t
# so the per-task gradients add up exactly to the update's gradient, and ||g_t|| says how hard task t pulls.
# How: one forward; for task t, every OTHER token's log-prob and entropy is replaced by a detached copy.
# The loss VALUE, hence every normaliser, is unchanged, but only task t's tokens pass gradient. The
# advantages are the ones the update trains (per token if an advantage hook made them so). We measure the
# step as grpo.py's first optimiser step sees it (ratio 1); nothing is sampled, so training is unchanged.
def task_gradients(model, ids, attn, mask, labels, advantages, cfg, n_tasks, with_grads=True):
    """ids, attn, mask, labels: (N, T); advantages: (N,) or (N, T). Returns grads (n_tasks, P) or None,
    entropy_sum (n_tasks,), tokens (n_tasks,)."""
    if cfg.beta > 0:
        raise ValueError("per-task gradients leave out the KL term; use --beta 0 (GIFT) or --no-task-grads")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    target, target_labels = mask[:, 1:], labels[:, 1:]                    # token t+1 is predicted at t
    N, total = ids.shape[0], target.sum().clamp(min=1)
    grads = torch.zeros(n_tasks, sum(p.numel() for p in params)) if with_grads else None
    entropy_sum, tokens = torch.zeros(n_tasks), torch.zeros(n_tasks)
    for sl in grpo.micro_slices(N, cfg.micro_batch_size):
        width = int(attn[sl].sum(1).max())                                # trim the micro-batch's padding
        mb_mask, mb_labels = target[sl, :width - 1].to(device), target_labels[sl, :width - 1].to(device)
        adv = (advantages[sl] if advantages.dim() == 1 else advantages[sl, 1:width]).to(device)
        with torch.set_grad_enabled(with_grads), grpo.autocast(cfg.precision, device):
            logps, entropy = grpo.token_logps_and_entropy(model, ids[sl, :width].to(device),
                                                          attn[sl, :width].to(device), cfg.temperature)
        for t in range(n_tasks):
            mine = (mb_labels == t) & (mb_mask > 0)                       # (b, width - 1): task t's tokens
            entropy_sum[t] += float((entropy.detach() * mine).sum())
            tokens[t] += float(mine.sum())
            if not with_grads or not mine.any():
                continue
            # the same values, but only task t's tokens pass gradient
            logps_t, entropy_t = torch.where(mine, logps, logps.detach()), torch.where(mine, entropy, entropy.detach())
            L_max = getattr(cfg, "max_completion_length", None) or ids.shape[1] - 1      # as grpo's update
            loss, _ = grpo.grpo_loss(logps_t, logps.detach(), adv, mb_mask, None, 0.0, cfg.eps_low, cfg.eps_high,
                                     cfg.loss_type, L_max, num_sequences=N, num_tokens=total, entropy=entropy_t,
                                     entropy_coef=cfg.entropy_coef)
            # materialize_grads: a parameter that task t's tokens never reach gets zeros, not None
            parts = torch.autograd.grad(loss, params, retain_graph=True, materialize_grads=True)
            grads[t] += torch.cat([g.reshape(-1).float().cpu() for g in parts])
    return grads, entropy_sum, tokens


def instruments_hook(tasks, with_grads=True):
    """grpo.train's extra_metrics: per task reward, success, entropy, token share, gradient norm and its
    cosine to the whole step's gradient."""
    tasks = list(tasks)

    def extra_metrics(model, episodes, kept, ids, attn, mask, advantages, cfg):
        labels = label_batch([episodes[i] for i in kept], tasks, ids.shape[1])
        grads, ent, tok = task_gradients(model, ids, attn, mask, labels, advantages, cfg, len(tasks), with_grads)
        # grpo's step_metrics splits reward/success by episode only for mixed batches; a nested episode
        # holds every task, so its sub-task results (info["subtasks"]) give each task's numbers; an episode of
        # one task counts as its own single sub-task.
        results = [r for ep in episodes for r in ep.info.get("subtasks") or
                   [{"task": ep.task, "reward": ep.reward, "penalty": 0.0, "success": bool(ep.info.get("success"))}]]
        m = {}
        for t in tasks:
            mine = [r for r in results if r["task"] == t]
            if mine:
                m[f"{t}/reward"] = float(np.mean([r["reward"] + r["penalty"] for r in mine]))
                m[f"{t}/success"] = float(np.mean([r["success"] for r in mine]))
        total = grads.double().sum(0) if grads is not None else None        # (P,) = the step's gradient
        for t, name in enumerate(tasks):
            m[f"{name}/entropy"] = float(ent[t] / tok[t]) if tok[t] > 0 else None
            m[f"{name}/token_share"] = float(tok[t] / tok.sum().clamp(min=1))
            if grads is not None:
                g = grads[t].double()
                m[f"{name}/grad_norm"] = float(g.norm())
                m[f"{name}/grad_cos"] = float(g @ total) / max(1e-12, float(g.norm() * total.norm()))
        if total is not None:
            m["task_grad_norm"] = float(total.norm())     # = grpo's pre-clip grad_norm with one optimiser step
        return m
    return extra_metrics


# -----------------------------------------------------------------------------
# 6. Evaluation: every task alone, and the joint metric on nested episodes
#
# A model plays `n` games of each task alone (TicTacToe from the empty board) and `n` nested episodes of all
# of them; "joint" is the share of nested episodes in which EVERY sub-task succeeded (GIFT's nested
# success); in_nested/<task> is a task's success inside the nested episode. Sampling restarts from the same
# torch seed for every block, so every model meets the same dice. The rates go to <folder>/eval.json.
def evaluate(model_path, folder, tasks, cfg):
    model, tokenizer = grpo.load_policy(model_path, cfg.device)
    compact = grpo.is_compact(model)
    opponent = grpo.make_opponent(cfg.opponent, grpo.TINY_DIR if cfg.model == "tiny" else cfg.model, cfg.device,
                                  cfg.max_new_tokens)

    def play(task_list):
        torch.manual_seed(grpo.EVAL_SEED_BASE)
        envs = [make_task_env(task_list, compact, opponent, False, cfg.joint) for _ in range(cfg.eval_games)]
        return grpo.play(model, tokenizer, envs, cfg.eval_temperature, cfg.max_new_tokens,
                         None if compact else grpo.SYSTEM_PROMPT)
    rates = {task: play([task])[0]["success"] for task in tasks}
    rates["joint"] = rates[tasks[0]]                         # one task: the joint metric is its success
    if len(tasks) > 1:
        summary, eps = play(list(tasks))
        rates["joint"] = summary["success"]
        for k, task in enumerate(tasks):
            rates[f"in_nested/{task}"] = sum(ep.info["subtasks"][k]["success"] for ep in eps) / len(eps)
    result = {"after": rates}
    json.dump(result, open(os.path.join(folder, "eval.json"), "w"), indent=1)
    return result


# -----------------------------------------------------------------------------
# 7. One row of the table = one grpo.train run per seed, each in its own folder
#
# A run with eval.json is done and skipped; one with a checkpoint is resumed; run.json records what the
# folder was started with (settings and the starting model's files), so a changed command line or a
# rebuilt starting model never reuses a stale run. grpo.train runs without its own before/after games: the
# base row evaluates the untrained model once, and each run's saved checkpoint is evaluated here.
NEUTRAL = ("threads", "micro_batch_size", "quick", "seeds", "modes", "out_dir", "device", "task_grads")


def model_stamp(name):
    """What run.json records of the starting model: its files' names, sizes and times (a hub name: itself)."""
    path = grpo.TINY_DIR if name == "tiny" else name
    if not os.path.isdir(path):
        return name
    return [(f, os.path.getsize(os.path.join(path, f)), int(os.path.getmtime(os.path.join(path, f))))
            for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))]


def claim(folder, spec):
    """Claims `folder` for `spec`; returns its eval.json if the run is complete, else None."""
    path = os.path.join(folder, "run.json")
    # Compared as JSON: the spec's tuples come back from the file as lists.
    if os.path.exists(path) and json.load(open(path)) != json.loads(json.dumps(spec)):
        raise SystemExit(f"{path}: this folder was started with other settings; use another --out-dir or delete it")
    os.makedirs(folder, exist_ok=True)
    json.dump(spec, open(path, "w"), indent=1)
    done = os.path.join(folder, "eval.json")
    return json.load(open(done)) if os.path.exists(done) else None


def train_run(mode, run_tasks, seed, folder, cfg, model=None, steps=None, seed_offset=0):
    """One grpo.train run: single (grpo's own envs), mixed or nested (our make_envs). Resumes a stopped one."""
    run_cfg = grpo.Settings(**{k: v for k, v in asdict(cfg).items() if k in grpo.Settings.__dataclass_fields__})
    run_cfg = replace(run_cfg, seed=seed, out_dir=folder, eval_games=0, model=model or cfg.model,
                      steps=steps or cfg.steps, num_groups=len(group_layout(mode, run_tasks, cfg.num_groups, seed, 0)),
                      game=run_tasks[0] if mode == "single" else f"{mode}:{'+'.join(run_tasks)}",
                      resume=os.path.exists(os.path.join(folder, "checkpoint", "trainer_state.pt")), overwrite=True)
    make_envs = None if mode == "single" else make_envs_hook(mode, run_tasks, cfg.num_groups, cfg.group_size, seed,
                                                             cfg.joint)
    grpo.train(run_cfg, make_envs=make_envs, extra_metrics=instruments_hook(run_tasks, cfg.task_grads),
               seed_offset=seed_offset)


def run_row(mode, run_tasks, tasks, seed, folder, cfg):
    """Train (after a mixed warm-up if asked), evaluate on every task and the joint metric. Returns eval.json."""
    W = cfg.warmup_steps if mode == "nested" else 0
    spec = {"mode": mode, "tasks": list(run_tasks), "eval_tasks": list(tasks), "seed": seed, "warmup": W,
            "start_model": model_stamp(cfg.model), **{k: v for k, v in asdict(cfg).items() if k not in NEUTRAL}}
    done = claim(folder, spec)
    if done:
        return done
    start = None
    if W:
        # GIFT App. B.3: a short mixed stage first; W mixed + (steps - W) nested steps see the same budget.
        if not 0 < W < cfg.steps:
            raise ValueError(f"--warmup-steps {W} must be between 0 and --steps {cfg.steps}")
        train_run("mixed", run_tasks, seed, os.path.join(folder, "warmup"), cfg, steps=W)
        start = os.path.join(folder, "warmup", "checkpoint")
    # After a warm-up the start states go on where it stopped (it used W steps of num_groups states).
    train_run(mode, run_tasks, seed, folder, cfg, start, cfg.steps - W, seed_offset=W * cfg.num_groups)
    return evaluate(os.path.join(folder, "checkpoint"), folder, tasks, cfg)


# -----------------------------------------------------------------------------
# 8. The tables: success per task (GIFT Table 2's layout) and training dynamics per task (GIFT Fig. 4)
CURVE_KEYS = ("reward", "success", "entropy", "grad_norm", "grad_cos", "token_share")


def results_table(rows, columns, average_of=()):
    """rows: {row name: [eval rates per seed]}; one column per key, then "avg" over `average_of`. A cell is
    'mean ± std' in percent over seeds (sample std); a single seed prints its value alone."""
    def mean_std(values):
        v = 100 * np.asarray(values, dtype=float)
        return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"
    head = ["training"] + [c.split("/")[-1] for c in columns] + (["avg"] if average_of else [])
    cells = [[name] + [mean_std([r[c] for r in runs]) for c in columns] +
             ([mean_std([np.mean([r[c] for c in average_of]) for r in runs])] if average_of else [])
             for name, runs in rows.items()]
    return grpo.markdown_table(head, cells)


def run_curves(folder, tasks, warmup):
    """Per step and task: the CURVE_KEYS of one run, the warm-up's steps first if there was one."""
    logs = [os.path.join(folder, "warmup", "log.jsonl")] * bool(warmup) + [os.path.join(folder, "log.jsonl")]
    records = [r for path in logs for r in grpo.read_log(path)]
    return [{"step": step, "task": t, **{k: r.get(f"{t}/{k}") for k in CURVE_KEYS}}
            for step, r in enumerate(records, 1) for t in tasks]


def dynamics_table(curves, tasks):
    """Entropy, gradient norm, its coefficient of variation over steps (GIFT §3.3: unstable for mixed) and
    its cosine to the update, per row and task, averaged over seeds and the second half of training."""
    by_row, rows = {}, []
    for (row, _), run in curves.items():
        by_row.setdefault(row, []).append(run)
    for row, runs in by_row.items():
        for t in tasks:
            stats = {"entropy": [], "grad_norm": [], "cv": [], "grad_cos": []}     # one value per seed
            for run in runs:
                mine = [r for r in run if r["task"] == t]
                late = mine[len(mine) // 2:]
                for k in ("entropy", "grad_norm", "grad_cos"):
                    values = [r[k] for r in late if r[k] is not None]
                    stats[k] += [np.mean(values)] if values else []
                    if k == "grad_norm" and len(values) > 1 and np.mean(values) > 0:
                        stats["cv"].append(np.std(values) / np.mean(values))      # cv = std / mean
            if stats["entropy"]:
                rows.append([row, t] + [f"{np.mean(v):.3f}" if v else "-" for v in stats.values()])
    return grpo.markdown_table(["training", "task", "entropy", "grad norm", "grad-norm cv", "grad cos to update"], rows)


# -----------------------------------------------------------------------------
# 9. The experiment: base, single-<task> for every task, mixed, nested; every seed; one table
def run_experiment(cfg):
    tasks = setting_tasks(cfg.setting, cfg.order)
    modes = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    if set(modes) - set(MODES):
        raise ValueError(f"--modes: expected some of {', '.join(MODES)}, got {cfg.modes!r}")
    seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    budget = check_budget(tasks, cfg.num_groups, cfg.group_size, cfg.steps, cfg.filter_ratio)
    # Another --order is another experiment: it gets its own folder, e.g. I2_tictactoe-matrix.
    label = cfg.setting + ("" if tuple(tasks) == SETTINGS[cfg.setting] else "_" + "-".join(tasks))
    root = os.path.join(cfg.out_dir, label)
    print(f"{label}: {' -> '.join(tasks)}; per run and step {budget['per_step']} sub-task episodes played, "
          f"{budget['trained_per_step']} trained; {budget['total']} played in all")
    t0, base = time.time(), os.path.join(root, "base")
    base_spec = {"mode": "base", "tasks": list(tasks), "start_model": model_stamp(cfg.model),
                 "eval_games": cfg.eval_games, "eval_temperature": cfg.eval_temperature}
    results = {"base": [(claim(base, base_spec) or evaluate(cfg.model, base, tasks, cfg))["after"]]}
    plan = [(f"single-{t}", "single", (t,)) for t in tasks if "single" in modes] + \
           [(m, m, tuple(tasks)) for m in ("mixed", "nested") if m in modes]
    curves = {}
    for seed in seeds:                         # seeds outside: stopping early leaves whole seeds behind
        for name, mode, run_tasks in plan:
            folder = os.path.join(root, name, f"seed{seed}")
            tqdm.write(f"== {name}, seed {seed} -> {folder}")
            results.setdefault(name, []).append(run_row(mode, run_tasks, tasks, seed, folder, cfg)["after"])
            curves[(name, seed)] = run_curves(folder, list(run_tasks), mode == "nested" and cfg.warmup_steps > 0)
    parts = [f"Setting {label} ({' -> '.join(tasks)}): success % on {cfg.eval_games} games per task at T = "
             f"{cfg.eval_temperature}, mean ± std over seeds {cfg.seeds}; joint = every sub-task of one nested "
             "episode succeeds; avg = mean of the task columns.", results_table(results, [*tasks, "joint"], tasks)]
    if len(tasks) > 1:
        parts += ["The same models, each task's success inside the nested episodes:",
                  results_table(results, [f"in_nested/{t}" for t in tasks])]
    parts += ["Training dynamics (second half of training, per task):", dynamics_table(curves, tasks)]
    report = "\n\n".join(parts) + "\n"
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(report)
    # curves.csv: the numbers behind the dynamics table, one line per row, seed, step and task (for plots).
    with open(os.path.join(root, "curves.csv"), "w") as f:
        f.write("row,seed,step,task," + ",".join(CURVE_KEYS) + "\n")
        for (row, seed), run in curves.items():
            f.writelines(f"{row},{seed},{r['step']},{r['task']},"
                         + ",".join("" if r[k] is None else f"{r[k]:.6g}" for k in CURVE_KEYS) + "\n" for r in run)
    print("\n" + report + f"\ncurves: {root}/curves.csv (python experiments/plot_logs.py <run>/log.jsonl draws them); "
          f"this call took {(time.time() - t0) / 60:.1f} min (finished runs cost nothing)")
    return results


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return grpo.parse_settings(Settings, argv, __doc__.split("\n\n")[0].strip(), skip=NOT_FLAGS,
                               defaults=QUICK if "--quick" in argv else None)


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_experiment(cfg)


if __name__ == "__main__":
    main()
