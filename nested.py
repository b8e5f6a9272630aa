"""
nested.py -- Nested ("AND") versus mixed ("OR") multi-task GRPO, on top of grpo.py.

The idea (GIFT, arXiv 2601.05633, §3.3-3.4, App. B.2): train one policy on K tasks with GRPO, batched one of two ways:
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
  - Budgets are exactly equal, before and after the StarPO* filter (GIFT's F+I1 configs gave nested twice as many).
  - Every sub-task keeps its own turn limit, so every sub-task is reached (GIFT shares one budget).
  - Evaluation samples at T = 0.5 as GIFT does, but from fixed seeds, so runs compare on the same games.
  - lr 2e-4 with a 5-step linear warm-up: at grpo.py's 7e-4 the matrix task collapsed (docs/LOG.md).

Run:  python nested.py --quick        # I2, every row, 2 seeds: a smoke test (~4 min on 2 CPU cores)
      python nested.py                # the experiment: 3 seeds (docs/RESULTS.md has the measured table)
      python nested.py --setting F+I2 --num-groups 6   # arith -> matrix -> tictactoe, the paper's order
      python nested.py --setting I2 --order tictactoe,matrix --modes nested   # the order ablation (Table 6)
"""
import hashlib
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

# The settings of GIFT §4.1.2, in its nesting order Math -> Matrix -> TicTacToe -> Spy
SETTINGS = {"I1": ("matrix",), "I2": ("matrix", "tictactoe"), "I3": ("matrix", "tictactoe", "spy"),
            "F+I1": ("arith", "matrix"), "F+I2": ("arith", "matrix", "tictactoe"),
            "F+I3": ("arith", "matrix", "tictactoe", "spy")}
MODES = ("single", "mixed", "nested")
JOINT_RULES = ("mean", "min", "product")


# -----------------------------------------------------------------------------
# Settings: the experiment's own, then grpo.py's with the defaults this experiment needs
@dataclass
class Settings(grpo.Settings):
    setting: str = flag("I2", ", ".join(f"{k}={'+'.join(v)}" for k, v in SETTINGS.items()), tuple(SETTINGS))
    order: str = flag("", "a comma-separated permutation of the setting's tasks, e.g. tictactoe,matrix (GIFT Table 6)")
    modes: str = flag("single,mixed,nested", "training rows to run; single = one run per task")
    seeds: str = flag("0,1,2", "run seeds; the table reports mean ± std over them (GIFT reports one run)")
    joint: str = flag("mean", "nested reward: mean (GIFT App. B.2) | min | product (strict ANDs)", JOINT_RULES)
    warmup_steps: int = flag(0, "nested only: mixed steps first, then nested for the rest (GIFT App. B.3)")
    eval_temperature: float = flag(0.5, "sampling temperature of the evaluation games; GIFT 0.5")
    task_grads: bool = flag(True, "per-task instruments every step (one extra forward, K backwards)")
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
# Settings that change no number of a run: left out of the run.json that guards a run folder (section 9)
NEUTRAL = ("threads", "micro_batch_size", "quick", "seeds", "modes", "out_dir", "device", "task_grads")


# -----------------------------------------------------------------------------
# 1. The joint reward of a nested trajectory (GIFT App. B.2)
#
#     mean:     R = (1/K) sum_k R_k     the paper's choice: partial success still pays
#     min:      R = min_k R_k           strict AND: as good as the worst sub-task
#     product:  R = prod_k R_k          strict AND: any failed sub-task zeroes everything
#
# R_k in [0, 1] is sub-task k's outcome reward (1 success, 0.5 TicTacToe draw, 0 otherwise). All three peak only
# when every sub-task succeeds; they differ in what a partial success earns. The paper picks the mean because a
# strict AND is too hard a target for a small model early on. The mean ignores the order.
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
# So the return is  sum(penalties) + joint(R_1..R_K). The turn budget is the sum of the sub-tasks' (GIFT App. B.3:
# 1 + 5 = 6 for I2). reset(seed) resets every sub-task with the SAME seed, with no "Task k of K" marker between them,
# as GIFT's code does: a joint evaluation episode then holds exactly the instances the single-task evaluation plays.
class NestedEnv:
    def __init__(self, sub_envs, joint="mean"):
        joint_reward([1.0], joint)                                  # fail now on an unknown rule
        self.subs, self.tasks = list(sub_envs), [env.name for env in sub_envs]
        if not self.subs or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"NestedEnv needs different sub-tasks (one seed for all), got {self.tasks}")
        self.name, self.max_turns = "nested:" + "+".join(self.tasks), sum(env.max_turns for env in self.subs)
        self.joint, self.done = joint, True

    def reset(self, seed):
        self.first_obs = [env.reset(seed) for env in self.subs]
        self.k, self.penalty = 0, 0.0                   # the sub-task being played; its penalties so far
        self.results, self.turn_tasks, self.done = [], [], False   # finished sub-tasks; every turn's task
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
        self.done, R = True, joint_reward([r["reward"] for r in self.results], self.joint)
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


def make_task_env(tasks, compact, opponent, training, joint="mean"):
    """A games.py env for one task, a NestedEnv for several; each with grpo.env_options."""
    subs = [games.make_env(t, **grpo.env_options(t, compact, opponent, training)) for t in tasks]
    return subs[0] if len(subs) == 1 else NestedEnv(subs, joint)


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
# Sub-task episodes per step = G * sum over groups of len(tasks) = N * G for all three. The StarPO* filter then
# keeps int(ratio * groups) groups, so mixed keeps ratio * N * G and nested ratio * (N/K) * K * G only when both
# counts come out whole: check_budget refuses layouts where they would not.
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
                         "filter_ratio is a whole number")
    return {"per_step": played["mixed"], "trained_per_step": trained["mixed"], "total": played["mixed"] * steps}


def make_envs_hook(mode, tasks, n_groups, group_size, seed, joint="mean"):
    """grpo.train's make_envs: the layout's envs, each group's G copies adjacent (group-major)."""
    def make_envs(step, compact, opponent):
        return [make_task_env(g, compact, opponent, True, joint)
                for g in group_layout(mode, tasks, n_groups, seed, step) for _ in range(group_size)]
    return make_envs


# -----------------------------------------------------------------------------
# 4. Which task owns each sampled token
#
# Every turn's answer is one unbroken run of 1s in the loss mask (the env always writes something between two
# answers), so the j-th run is turn j, and NestedEnv's info["turn_tasks"][j] names its sub-task.
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


# -----------------------------------------------------------------------------
# 5. Each task's share of the gradient (the paper's evidence, GIFT §4.2, Fig. 4)
#
# The step's loss is a sum over sampled tokens with GLOBAL normalisers (grpo.py section 4). Split the tokens by task:
#     L = sum_t L_t,    g = grad L = sum_t g_t          g, g_t: (P,), P = trained parameters
# so the per-task gradients add up exactly to the update's gradient, and ||g_t|| says how hard task t pulls.
# How: one forward; for task t, every OTHER token's log-prob and entropy is replaced by a detached copy. The loss
# VALUE, hence every normaliser, is unchanged, but only task t's tokens pass gradient. The advantages are the ones
# the update trains (per token if an advantage hook made them so). We measure the step as grpo.py's first
# optimiser step sees it (ratio 1); nothing is sampled, so training is unchanged.
def task_gradients(model, ids, attn, mask, labels, advantages, cfg, n_tasks):
    """ids, attn, mask, labels: (N, T); advantages: (N,) or (N, T). Returns grads (n_tasks, P),
    entropy_sum (n_tasks,), tokens (n_tasks,)."""
    if cfg.beta > 0:
        raise ValueError("per-task gradients leave out the KL term; use --beta 0 (GIFT) or --no-task-grads")
    device, params = next(model.parameters()).device, [p for p in model.parameters() if p.requires_grad]
    target, target_labels = mask[:, 1:], labels[:, 1:]                    # token t+1 is predicted at t
    N, total = ids.shape[0], target.sum().clamp(min=1)
    grads = torch.zeros(n_tasks, sum(p.numel() for p in params))       # (K, P): g_t, one row per task
    entropy_sum, tokens = torch.zeros(n_tasks), torch.zeros(n_tasks)
    for sl in grpo.micro_slices(N, cfg.micro_batch_size):
        width = int(attn[sl].sum(1).max())                                # trim the micro-batch's padding
        mb_mask, mb_labels = target[sl, :width - 1].to(device), target_labels[sl, :width - 1].to(device)
        adv = (advantages[sl] if advantages.dim() == 1 else advantages[sl, 1:width]).to(device)
        with grpo.autocast(cfg.precision, device):
            logps, entropy = grpo.token_logps_and_entropy(model, ids[sl, :width].to(device),
                                                          attn[sl, :width].to(device), cfg.temperature)
        for t in range(n_tasks):
            mine = (mb_labels == t) & (mb_mask > 0)                       # (b, width - 1): task t's tokens
            entropy_sum[t] += float((entropy.detach() * mine).sum())
            tokens[t] += float(mine.sum())
            if not mine.any():
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


def instruments_hook(tasks):
    """grpo.train's extra_metrics: per task reward, success, entropy, token share, gradient norm and its cosine."""
    def extra_metrics(model, episodes, kept, ids, attn, mask, advantages, cfg):
        # (N, T) token_tasks, padded with -1 on the right like grpo.pad_batch
        labels = torch.tensor([token_tasks(episodes[i], tasks) + [-1] * (ids.shape[1] - len(episodes[i].mask))
                               for i in kept], dtype=torch.long)
        grads, ent, tok = task_gradients(model, ids, attn, mask, labels, advantages, cfg, len(tasks))
        total = grads.double().sum(0)                                # (P,) = the step's gradient
        m = {"task_grad_norm": float(total.norm())}     # = grpo's pre-clip grad_norm with one optimiser step
        # each task's reward (penalties included) and success: a nested episode's sub-task results, else the episode
        results = [r for ep in episodes for r in ep.info.get("subtasks") or
                   [{"task": ep.task, "reward": ep.reward, "penalty": 0.0, "success": bool(ep.info.get("success"))}]]
        for t, name in enumerate(tasks):
            mine = [r for r in results if r["task"] == name]
            m[f"{name}/reward"] = float(np.mean([r["reward"] + r["penalty"] for r in mine])) if mine else None
            m[f"{name}/success"] = float(np.mean([r["success"] for r in mine])) if mine else None
            g = grads[t].double()
            m[f"{name}/entropy"] = float(ent[t] / tok[t]) if tok[t] > 0 else None
            m[f"{name}/token_share"] = float(tok[t] / tok.sum().clamp(min=1))
            m[f"{name}/grad_norm"] = float(g.norm())
            m[f"{name}/grad_cos"] = float(g @ total) / max(1e-12, float(g.norm() * total.norm()))
        return m
    return extra_metrics


# -----------------------------------------------------------------------------
# 6. Evaluation: every task alone, and the joint metric on nested episodes
#
# A model plays `n` games of each task alone (TicTacToe from the empty board) and `n` nested episodes of all of
# them; "joint" is the share of nested episodes in which EVERY sub-task succeeded (GIFT's nested success). Sampling
# restarts from the same torch seed for every block, so every model meets the same dice. Rates go to eval.json.
def evaluate(model_path, folder, tasks, cfg):
    model, tokenizer = grpo.load_policy(model_path, cfg.device)
    compact, start = grpo.is_compact(model), grpo.TINY_DIR if cfg.model == "tiny" else cfg.model
    opponent = grpo.make_opponent(cfg.opponent, start, cfg.device, cfg.max_new_tokens)

    def play(task_list):
        torch.manual_seed(grpo.EVAL_SEED_BASE)
        envs = [make_task_env(task_list, compact, opponent, False, cfg.joint) for _ in range(cfg.eval_games)]
        return grpo.play(model, tokenizer, envs, cfg.eval_temperature, cfg.max_new_tokens,
                         None if compact else grpo.SYSTEM_PROMPT)
    rates = {task: play([task])[0]["success"] for task in tasks}
    rates["joint"] = play(list(tasks))[0]["success"] if len(tasks) > 1 else rates[tasks[0]]   # one task: joint = alone
    json.dump({"after": rates}, open(os.path.join(folder, "eval.json"), "w"), indent=1)
    return {"after": rates}


# -----------------------------------------------------------------------------
# 7. One row of the table = one grpo.train run per seed, each in its own folder
#
# Runs resume: a folder with eval.json is done and skipped, one with a checkpoint continues (grpo.train's --resume).
# grpo.train plays no before/after games: the base row evaluates the untrained model once, section 6 the rest.
def read_json(path):
    return json.load(open(path)) if os.path.exists(path) else None


def run_row(mode, run_tasks, tasks, seed, folder, cfg):
    """Train (after a mixed warm-up if asked), evaluate on every task and the joint metric. Returns eval.json."""
    W = cfg.warmup_steps if mode == "nested" else 0
    if not 0 <= W < cfg.steps:
        raise ValueError(f"--warmup-steps {W} must be between 0 and --steps {cfg.steps}")
    base = grpo.Settings(**{k: v for k, v in asdict(cfg).items() if k in grpo.Settings.__dataclass_fields__})
    # GIFT App. B.3: a short mixed stage first, in <folder>/warmup; W mixed + (steps - W) nested steps see the
    # same budget, and the nested stage's start states go on where the warm-up's stopped (seed_offset).
    start, offset = cfg.model, 0
    for stage, out, steps in [("mixed", os.path.join(folder, "warmup"), W)] * bool(W) + [(mode, folder, cfg.steps - W)]:
        make_envs = make_envs_hook(stage, run_tasks, cfg.num_groups, cfg.group_size, seed, cfg.joint)
        run_cfg = replace(base, seed=seed, out_dir=out, eval_games=0, model=start, steps=steps,
                          num_groups=len(group_layout(stage, run_tasks, cfg.num_groups, seed, 0)),
                          game=run_tasks[0] if stage == "single" else f"{stage}:{'+'.join(run_tasks)}",
                          resume=os.path.exists(os.path.join(out, "checkpoint", "trainer_state.pt")), overwrite=True)
        grpo.train(run_cfg, make_envs=make_envs, seed_offset=offset,
                   extra_metrics=instruments_hook(run_tasks) if cfg.task_grads else None)
        start, offset = os.path.join(out, "checkpoint"), offset + steps * cfg.num_groups
    return evaluate(start, folder, tasks, cfg)


# -----------------------------------------------------------------------------
# 8. The tables: success per task (GIFT Table 2's layout) and training dynamics per task (GIFT Fig. 4)
def results_table(rows, tasks):
    """rows: {row name: [eval rates per seed]}; a column per task, joint, and avg (the mean of the task columns).
    A cell is 'mean ± std' in percent over seeds (sample std); a single seed prints its value alone."""
    def mean_std(values):
        v = 100 * np.asarray(values, dtype=float)
        return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"
    cells = [[name] + [mean_std([r[c] for r in runs]) for c in [*tasks, "joint"]] +
             [mean_std([np.mean([r[t] for t in tasks]) for r in runs])] for name, runs in rows.items()]
    return grpo.markdown_table(["training", *tasks, "joint", "avg"], cells)


# Per row and task, over the second half of each run's steps, then averaged over seeds: the entropy, ||g_t||, its
# coefficient of variation std / mean over the steps (GIFT §3.3: in mixed batches the task that dominates the
# gradient changes from step to step), and the cosine of g_t to the step's gradient g.
def dynamics_table(logs, tasks):
    """logs: {row name: [the log.jsonl records of each seed's run, a warm-up's steps first]}."""
    cv = lambda g: np.std(g) / np.mean(g) if len(g) > 1 and np.mean(g) > 0 else None
    cols = (("entropy", np.mean), ("grad_norm", np.mean), ("grad_norm", cv), ("grad_cos", np.mean))
    late = lambda records, key: [r[key] for r in records[len(records) // 2:] if key in r]    # one run's second half
    rows = []
    for row, runs in logs.items():
        for t in tasks:
            # one value per seed and column; a row that never trained task t has none, and no line
            cells = [[f(v) for v in (late(run, f"{t}/{k}") for run in runs) if v and f(v) is not None] for k, f in cols]
            if cells[0]:
                rows.append([row, t] + [f"{np.mean(v):.3f}" if v else "-" for v in cells])
    return grpo.markdown_table(["training", "task", "entropy", "grad norm", "grad-norm cv", "grad cos to update"], rows)


# -----------------------------------------------------------------------------
# 9. The experiment: base, single-<task> for every task, mixed, nested; every seed; one table
#
# <out-dir>/<setting>/run.json holds the settings it was started with: a changed command line never reuses its runs.
def run_experiment(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tasks, modes = setting_tasks(cfg.setting, cfg.order), [m.strip() for m in cfg.modes.split(",") if m.strip()]
    if set(modes) - set(MODES):
        raise ValueError(f"--modes: expected some of {', '.join(MODES)}, got {cfg.modes!r}")
    budget = check_budget(tasks, cfg.num_groups, cfg.group_size, cfg.steps, cfg.filter_ratio)
    # Another --order is another experiment: it gets its own folder, e.g. I2_tictactoe-matrix.
    label = cfg.setting + ("" if tuple(tasks) == SETTINGS[cfg.setting] else "_" + "-".join(tasks))
    root, t0 = os.path.join(cfg.out_dir, label), time.time()
    spec, path = {k: v for k, v in asdict(cfg).items() if k not in NEUTRAL}, os.path.join(root, "run.json")
    # Other starting weights under the same name (a rebuilt data/tiny) are another experiment: the spec has their hash.
    weights = os.path.join(grpo.TINY_DIR if cfg.model == "tiny" else cfg.model, "model.safetensors")
    spec["model_sha256"] = hashlib.sha256(open(weights, "rb").read()).hexdigest() if os.path.exists(weights) else None
    if (read_json(path) or spec) != spec:
        raise SystemExit(f"{path}: this folder was started with other settings; use another --out-dir or delete it")
    os.makedirs(base := os.path.join(root, "base"), exist_ok=True)
    json.dump(spec, open(path, "w"), indent=1)
    print(f"{label}: {' -> '.join(tasks)}; sub-task episodes per step: {budget['per_step']} played, "
          f"{budget['trained_per_step']} trained")
    results = {"base": [(read_json(os.path.join(base, "eval.json")) or evaluate(cfg.model, base, tasks, cfg))["after"]]}
    plan = [(f"single-{t}", "single", (t,)) for t in tasks if "single" in modes] + \
           [(m, m, tuple(tasks)) for m in ("mixed", "nested") if m in modes]
    logs = {}
    for seed in [int(s) for s in cfg.seeds.split(",") if s.strip()]:   # outside: a stop leaves whole seeds
        for name, mode, run_tasks in plan:
            folder = os.path.join(root, name, f"seed{seed}")
            tqdm.write(f"== {name}, seed {seed} -> {folder}")
            done = read_json(os.path.join(folder, "eval.json")) or run_row(mode, run_tasks, tasks, seed, folder, cfg)
            results.setdefault(name, []).append(done["after"])
            runs = [os.path.join(folder, "warmup")] * (mode == "nested" and cfg.warmup_steps > 0) + [folder]
            logs.setdefault(name, []).append([r for run in runs for r in grpo.read_log(f"{run}/log.jsonl")])
    report = ("--quick is a smoke test of the pipeline: too few games and steps to show the full run's direction.\n"
              * cfg.quick + f"Setting {label} ({' -> '.join(tasks)}): success % on {cfg.eval_games} games per task "
              f"at T = {cfg.eval_temperature}, mean ± std over seeds {cfg.seeds}; joint = every sub-task of one "
              f"nested episode succeeds; avg = mean of the task columns.\n\n{results_table(results, tasks)}"
              f"\n\nTraining dynamics (second half of training, per task):\n\n{dynamics_table(logs, tasks)}\n")
    open(os.path.join(root, "table.md"), "w").write(report)
    print("\n" + report + f"\nper-step curves: python experiments/plot_logs.py {root}/<row>/seed<s>/log.jsonl; "
          f"this call took {(time.time() - t0) / 60:.1f} min (finished runs cost nothing)")
    return results


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return grpo.parse_settings(Settings, argv, __doc__.split("\n\n")[0].strip(), skip=NOT_FLAGS,
                               defaults=QUICK if "--quick" in argv else None)


if __name__ == "__main__":
    run_experiment(parse_args())
