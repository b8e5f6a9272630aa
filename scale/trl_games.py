"""
scale/trl_games.py -- our games, nested episodes included, trained by TRL's GRPOTrainer on 1 to N GPUs.

What it does: hands trl.GRPOTrainer (TRL 1.16.0) a `rollout_func` that plays whole multi-turn games with
the core's own conversation code (grpo.start_episode, grpo.finish_turn), so TRL trains exactly the token
ids and loss mask grpo.py trains, while accelerate, DeepSpeed ZeRO-3 and a vLLM server do the scaling.

How a multi-turn game fits TRL's "one prompt -> one completion". Per episode the rollout_func returns
    prompt_ids      the first observation, chat-templated                  (context only)
    completion_ids  answer 1, env reply 1, answer 2, ..., last answer      (everything after the prompt)
    env_mask        1 on the answers' sampled tokens, 0 on env text        (TRL's loss mask is times this)
    logprobs        log pi(token) as it was sampled, 0.0 on env text       (TRL's vLLM importance weights)
    episode_reward  R_i, the env's total: an extra field, which TRL passes to the reward function
and TRL does the rest of GRPO: advantages within each group of num_generations episodes, the clipped loss
where env_mask = 1, the optimiser step, the weight sync to vLLM.

What we simplified (and why), one line each:
  - No StarPO* group filter: TRL has no hook between advantages and loss (GIFT keeps the top 25% of groups).
  - TRL hands the rollout_func only the `prompt` column, so a prompt is a JSON spec {"tasks", "seed"}, not
    text: the env writes the real first observation.
  - max_completion_length is the limit PER TURN (what TRL's vLLM backend gives every call), so dr_grpo,
    whose constant it is, is left out.
  - The vLLM path calls TRL's own VLLMGeneration.generate but is UNTESTED here (no GPU; vllm not installed).

Run:  pip install -r scale/requirements.txt
      python scale/trl_games.py --game tictactoe --steps 20 --num-groups 4 --group-size 8   # tiny, CPU, ~1 min
      python scale/trl_games.py --game matrix+tictactoe --steps 20 --num-groups 4 --group-size 8   # nested
      accelerate launch --config_file scale/zero3.yaml scale/trl_games.py --device cuda ...   # scale/README.md
"""
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch                                                    # noqa: E402

import games                                                    # noqa: E402
import grpo                                                     # noqa: E402
import nested                                                   # noqa: E402
from grpo import flag                                           # noqa: E402

LOGP_ROWS = 16   # episodes per forward when recomputing sampling log-probs (memory only)


# grpo.py's settings (same defaults, same meaning), less what TRL cannot do, plus the engine's own.
@dataclass
class Settings(grpo.Settings):
    game: str = flag("tictactoe", "a game of games.py; A+B: nested episodes (nested.py); A,B: groups alternate")
    loss_type: str = flag("grpo", "TRL loss_type; GIFT's seq-mean-token-mean = grpo", ("grpo", "bnpo", "dapo"))
    device: str = flag("cpu", "cpu | cuda (accelerate gives each process its GPU)", ("cpu", "cuda"))
    micro_batch_size: int = flag(64, "episodes per forward/backward per process (TRL per_device_train_batch_size)")
    gradient_checkpointing: bool = flag(False, "recompute activations in backward: less memory, more time")
    joint: str = flag("mean", "nested reward rule (nested.joint_reward); GIFT mean", nested.JOINT_RULES)
    use_vllm: bool = flag(False, "generate with TRL's vLLM backend (UNTESTED here; scale/README.md)")
    vllm_mode: str = flag("server", "server (trl vllm-serve) | colocate", ("server", "colocate"))
    out_dir: str = flag("runs/trl_games", "log.jsonl, eval.json, args.json, checkpoint/")


NOT_FLAGS = ("filter_ratio", "minibatches", "rollout", "lora_rank", "lora_alpha", "resume")   # no TRL path here


# -----------------------------------------------------------------------------
# 1. The dataset: one row per GRPO group
#
# TRL's sampler repeats every row num_generations times, side by side, and (shuffle_dataset=False) walks
# the rows in order: row r is group r % N of step r // N, and its G episodes share one start state because
# they share one row. The seeds are grpo.train_seeds', so both trainers play the same groups.
def task_specs(game):
    """"matrix+tictactoe,spy" -> [("matrix", "tictactoe"), ("spy",)]: nested within a spec, mixed across."""
    specs = [tuple(t.strip() for t in spec.split("+")) for spec in game.split(",")]
    for task in {t for spec in specs for t in spec}:
        if task not in games.ENV_CLASSES:
            raise ValueError(f"--game {game!r}: unknown task {task!r}; valid: {', '.join(games.ENV_CLASSES)}")
    return specs


def dataset_rows(game, steps, num_groups, seed):
    specs, rows = task_specs(game), []
    for step in range(steps):
        for g, s in enumerate(grpo.train_seeds(seed, step, num_groups)):
            rows.append({"prompt": json.dumps({"tasks": specs[(step * num_groups + g) % len(specs)], "seed": s})})
    return rows


def read_spec(prompt):
    spec = json.loads(prompt) if isinstance(prompt, str) and prompt.startswith("{") else None
    if not isinstance(spec, dict) or not spec.get("tasks") or not isinstance(spec.get("seed"), int):
        raise ValueError(f"rollout_func: prompt {prompt!r} is not a spec such as "
                         '{"tasks": ["tictactoe"], "seed": 1}; build the dataset with dataset_rows')
    return spec


# -----------------------------------------------------------------------------
# 2. What the rollout may sample from
#
# TRL trains log_softmax(z / T) wherever env_mask = 1. Tokens drawn from anything else (top-k, top-p, a
# repetition penalty) would train a distribution they were not sampled from: refuse, do not drift.
def check_config(trainer):
    a = trainer.args
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    wrong = {"top_k": a.top_k not in (0, -1, None), "top_p": a.top_p != 1.0, "min_p": a.min_p not in (None, 0.0),
             "repetition_penalty": a.repetition_penalty != 1.0, "generation_kwargs": bool(a.generation_kwargs),
             "use_transformers_continuous_batching": a.use_transformers_continuous_batching,
             "loss_type=dr_grpo": a.loss_type == "dr_grpo",
             # Un-gathered ZeRO-3 weights make every forward a collective: ranks whose games last different
             # numbers of turns would wait for each other forever.
             "ds3_gather_for_generation": bool(plugin and plugin.zero_stage == 3 and not a.ds3_gather_for_generation)}
    if bad := [k for k, v in wrong.items() if v]:
        raise ValueError(f"GRPOConfig: {', '.join(bad)} unsupported by the multi-turn rollout_func: it samples "
                         "log_softmax(logits / temperature) (top_k=0, top_p=1, no penalty), gathers ZeRO-3 "
                         "weights, and max_completion_length is per turn")


# -----------------------------------------------------------------------------
# 3. Generation backends: play every unfinished episode on, one batched call per turn, to the end
#
# Without vLLM TRL generates on each process with its own (unwrapped) model, and so do we: grpo.rollout's
# loop, grpo.generate_batch then grpo.finish_turn. generate_batch keeps no scores, so the log-probs come
# from one forward of the finished episodes at the sampling temperature. TRL reads them only with vLLM.
def play_local(model, tokenizer, episodes, temperature, max_new):
    config, stops = grpo.generation_config(model, tokenizer, temperature, max_new), set(grpo.stop_ids(tokenizer, model))
    while active := [ep for ep in episodes if not ep.done]:
        for ep, new_ids in zip(active, grpo.generate_batch(model, tokenizer, [ep.ids for ep in active], config)):
            grpo.finish_turn(tokenizer, ep, new_ids, stops)


@torch.no_grad()
def sampled_logps(model, tokenizer, episodes, starts, temperature):
    """Per episode: log pi of its sampled tokens (mask 1), in order. Greedy (T = 0) reports T = 1."""
    device, out = next(model.parameters()).device, []
    for lo in range(0, len(episodes), LOGP_ROWS):
        chunk = episodes[lo:lo + LOGP_ROWS]
        ids, attn, _ = grpo.pad_batch(chunk, tokenizer.pad_token_id)                       # (B, L), right-padded
        logps, _ = grpo.token_logps_and_entropy(model, ids.to(device), attn.to(device), temperature or 1.0,
                                                with_entropy=False)                        # (B, L-1): ids[:, 1:]
        for row, (ep, start) in enumerate(zip(chunk, starts[lo:])):
            lp = logps[row, start - 1:len(ep.ids) - 1].tolist()                            # the completion's
            out.append([v for v, m in zip(lp, ep.mask[start:]) if m])
    return out


# With vLLM (UNTESTED here) TRL's backend generates: one `trl vllm-serve` for all processes, or an engine
# per GPU (colocate). In server mode it gathers every process's prompts and gives process r the slice
# r * len(prompts) ..., so all processes must call it equally often with equally many prompts: a finished
# episode sends a 1-token placeholder, and the loop ends only when no process has a game left.
def play_vllm(trainer, tokenizer, episodes, stops):
    logps, device = [[] for _ in episodes], trainer.accelerator.device
    while trainer.accelerator.gather(torch.tensor([sum(not ep.done for ep in episodes)], device=device)).sum() > 0:
        prompts = [ep.ids[:1] if ep.done else ep.ids for ep in episodes]
        _, new_ids, new_logps, _ = trainer.vllm_generation.generate(prompts=prompts, images=None, num_generations=1)
        for ep, ids, lps, store in zip(episodes, new_ids, new_logps, logps):
            if not ep.done:
                before = len(ep.mask)
                grpo.finish_turn(tokenizer, ep, list(ids), stops)
                # vLLM gives [log p] per token (logprobs=0: the sampled one); keep as many as finish_turn kept
                store += [lp[0] for lp in lps[:sum(ep.mask[before:])]]
    return logps


# -----------------------------------------------------------------------------
# 4. The rollout_func: TRL calls rollout_func(prompts, trainer) once per generation batch
#
# `prompts` is this process's slice, already repeated num_generations times by TRL's sampler: one episode
# per prompt. The chat template is applied here (grpo.start_episode), never by TRL.
def make_rollout_func(opponent="random", joint="mean", temperature=None):
    """opponent: a games.py bot name or a callable (grpo.make_opponent). temperature: None = TRL's
    GRPOConfig.temperature; 0 = greedy (tests, evaluation), which TRL itself never asks for."""
    def rollout_func(prompts, trainer):
        check_config(trainer)
        tokenizer, args = trainer.processing_class, trainer.args
        T = args.temperature if temperature is None else temperature
        if trainer.use_vllm and T != args.temperature:
            raise ValueError("rollout_func: with use_vllm the temperature is GRPOConfig.temperature; drop the override")
        policy = trainer.accelerator.unwrap_model(trainer.model)
        compact = grpo.is_compact(policy)                     # tiny: compact boards and no system prompt
        episodes = []
        for prompt in prompts:
            spec = read_spec(prompt)
            env = nested.make_task_env(spec["tasks"], compact, opponent, training=True, joint=joint)
            episodes.append(grpo.start_episode(tokenizer, env, spec["seed"], spec["seed"],
                                               None if compact else grpo.SYSTEM_PROMPT))
        starts = [len(ep.ids) for ep in episodes]
        if trainer.use_vllm:
            logps = play_vllm(trainer, tokenizer, episodes, set(grpo.stop_ids(tokenizer, policy)))
        else:
            from trl.models import unwrap_model_for_generation           # what TRL's own generate path uses

            with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                             gather_deepspeed3_params=args.ds3_gather_for_generation,
                                             gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model:
                was_training = model.training
                model.eval()                                  # no dropout while playing, as in grpo.rollout
                play_local(model, tokenizer, episodes, T, args.max_completion_length)
                logps = sampled_logps(model, tokenizer, episodes, starts, T)
                model.train(was_training)
        out = {k: [] for k in ("prompt_ids", "completion_ids", "env_mask", "logprobs", "episode_reward", "success")}
        for ep, start, lp in zip(episodes, starts, logps):
            mask, sampled = ep.mask[start:], iter(lp)
            out["prompt_ids"].append(ep.ids[:start])
            out["completion_ids"].append(ep.ids[start:])
            out["env_mask"].append(mask)
            out["logprobs"].append([next(sampled) if m else 0.0 for m in mask])
            out["episode_reward"].append(ep.reward)
            out["success"].append(float(bool(ep.info.get("success"))))
        return out
    return rollout_func


def episode_reward(completions, episode_reward, success, log_metric=None, **_):
    """TRL reward function: the env scored the episode while it was played; pass R_i on, log the success rate."""
    if log_metric is not None:
        log_metric("episode/success", sum(success) / len(success))
    return [float(r) for r in episode_reward]


# -----------------------------------------------------------------------------
# 5. The script: Settings -> GRPOConfig (scale/README.md has the table), evaluation as grpo.py's
def grpo_config(cfg, world, **extra):
    from trl import GRPOConfig

    per_process = cfg.num_groups * cfg.group_size // world
    micro = min(cfg.micro_batch_size, per_process)
    if per_process * world != cfg.num_groups * cfg.group_size or per_process % micro:
        raise ValueError(f"--num-groups x --group-size = {cfg.num_groups * cfg.group_size} episodes per step must "
                         f"split evenly over {world} process(es), then into --micro-batch-size {micro}")
    # One rollout and one optimiser step per --steps step: the accumulation steps split one generation batch.
    # With num_iterations k TRL counts k optimiser steps per rollout, hence max_steps = steps * k.
    # GRPOConfig's defaults differ from TrainingArguments' (bf16, activation checkpointing on): both set here.
    settings = dict(
        output_dir=cfg.out_dir, max_steps=cfg.steps * cfg.num_iterations, num_iterations=cfg.num_iterations,
        per_device_train_batch_size=micro, gradient_accumulation_steps=per_process // micro,
        num_generations=cfg.group_size, shuffle_dataset=False, max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature, top_k=0, top_p=1.0, learning_rate=cfg.lr,
        lr_scheduler_type="constant_with_warmup" if cfg.lr_warmup_steps else "constant",
        warmup_steps=cfg.lr_warmup_steps, weight_decay=grpo.WEIGHT_DECAY, max_grad_norm=grpo.GRAD_CLIP,
        beta=cfg.beta, epsilon=cfg.eps_low, epsilon_high=cfg.eps_high, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, entropy_coef=cfg.entropy_coef, use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode, bf16=cfg.precision == "bf16", activation_checkpointing=cfg.gradient_checkpointing,
        use_cpu=cfg.device == "cpu", seed=cfg.seed, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True)
    return GRPOConfig(**{**settings, **extra})


def evaluate(model, tokenizer, cfg, opponent):
    """grpo.py's evaluation for each spec of --game: greedy, seeds 10_000 + i, evaluation start states."""
    compact, rates = grpo.is_compact(model), {}
    for tasks in task_specs(cfg.game):
        envs = [nested.make_task_env(tasks, compact, opponent, training=False, joint=cfg.joint)
                for _ in range(cfg.eval_games)]
        rates["+".join(tasks)] = grpo.play(model, tokenizer, envs, 0.0, cfg.max_new_tokens,
                                           None if compact else grpo.SYSTEM_PROMPT, progress=False)[0]
    return rates


def main(argv=None):
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    cfg = grpo.parse_settings(Settings, argv, __doc__.split("\n\n")[0].strip(), skip=NOT_FLAGS)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")          # rollout_func is experimental: said above
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task_specs(cfg.game)                                             # fail before loading anything
    grpo.make_opponent(cfg.opponent)                                 # checks the spec only
    state = PartialState()
    if state.is_main_process:
        grpo.claim_run_dir(cfg.out_dir, asdict(cfg), resume=False, overwrite=cfg.overwrite)
    state.wait_for_everyone()
    # The config first: under `accelerate launch` with ZeRO-3 it tells from_pretrained to load each process's
    # shard only, instead of the whole model in every process.
    args = grpo_config(cfg, state.num_processes)
    model, tokenizer = grpo.load_policy(cfg.model)
    opponent = grpo.make_opponent(cfg.opponent, grpo.TINY_DIR if cfg.model == "tiny" else cfg.model,
                                  state.device, cfg.max_new_tokens)
    log, seconds = os.path.join(cfg.out_dir, "log.jsonl"), []

    class StepLog(TrainerCallback):
        """A log.jsonl line per step: TRL's metrics and the step's wall-clock seconds (rollout + update)."""
        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            seconds.append(time.perf_counter() - self.t0)

        def on_log(self, args, st, control, logs=None, **_):
            if st.is_world_process_zero and logs and "loss" in logs:
                grpo.log_line(log, {"step": st.global_step, **logs, "seconds": seconds[-1]})
                shown = "  ".join(f"{k} {logs[k]:.3f}" for k in ("reward", "episode/success") if k in logs)
                print(f"step {st.global_step}: {shown}  {seconds[-1]:.2f} s")   # PPO epochs > 1 play no games

    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=episode_reward,
                          args=args,
                          train_dataset=Dataset.from_list(dataset_rows(cfg.game, cfg.steps, cfg.num_groups, cfg.seed)),
                          rollout_func=make_rollout_func(opponent, cfg.joint), callbacks=[StepLog()])
    trainer.remove_callback(PrinterCallback)                         # StepLog prints one short line instead
    # Evaluation plays on one process; after a multi-GPU run, evaluate the checkpoint with evaluate.py.
    evaluating = cfg.eval_games > 0 and state.num_processes == 1
    before = evaluate(trainer.model, tokenizer, cfg, opponent) if evaluating else None
    trainer.train()
    trainer.save_model(os.path.join(cfg.out_dir, "checkpoint"))
    if state.is_main_process and seconds:
        print(f"median {statistics.median(seconds):.3f} s/step over {len(seconds)} steps; log: {log}")
    if evaluating:
        after = evaluate(trainer.model, tokenizer, cfg, opponent)
        with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
            json.dump({"before": before, "after": after}, f, indent=1)
        for spec in before:
            print(f"{spec} before: {grpo.format_rates(before[spec])}\n{spec} after:  {grpo.format_rates(after[spec])}")


if __name__ == "__main__":
    main()
