"""
benchmarks/gpu_steps.py -- GPU time and memory of this repository's GRPO and SFT steps at real model sizes.

Nothing can be downloaded on our machines, so the models are RANDOMLY INITIALISED from the published
Qwen2.5-0.5B, -1.5B and -7B architectures (hidden size, layers, heads, the 151,936/152,064-token vocabulary),
built from a config dict. Time and memory depend on the architecture and the lengths, not on the weights,
except one thing: a random model never says EOS, so every completion runs to its limit (the worst case).

What is timed is this repository's own code:
  rollout  one turn of num_groups x group_size completions, the same prompts and lengths, three ways:
           `generate` (grpo.generate_batch, HF generate, bf16 weights), `fast` (grpo.generate_fast,
           transformers' continuous batching: --rollout fast) and `static` (HF generate with a static KV
           cache, which transformers compiles): new tokens per second and the ratio to `generate`.
           Also max |logprob(fast) - logprob(training forward)| on the sampled tokens: ratio 1 up to rounding.
  grpo     one GRPO update (grpo.accumulate_gradients + AdamW) on rollout-shaped batches: full fine-tuning
           (fp32 weights, bf16 autocast, gradient checkpointing) or LoRA (bf16 frozen base, rank 64).
  logps    peak memory of grpo.token_logps_and_entropy, forward + backward, chunked (the default) against one
           chunk holding all (B, T, V) logits: the saving of section 3 of grpo.py.
  sft      one glow_sft.train_step with GLOW weights (epoch 1), full or LoRA.
Each case runs `--repeats` timed steps after one untimed warm-up; medians, and the peak GPU memory torch
allocated. The JSON is written after every case, so a timeout keeps what ran.

Run (one GPU):   python benchmarks/gpu_steps.py --out data/logs/gpu_steps_<card>.json     # the default plan
Quick CPU check: python benchmarks/gpu_steps.py --plan test --device cpu
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch                                                    # noqa: E402

import glow_sft                                                 # noqa: E402
import grpo                                                     # noqa: E402

# The published architectures (config.json of Qwen/Qwen2.5-{0.5B,1.5B,7B}-Instruct).
SIZES = {
    "0.5b": dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    # a few-MB stand-in with the real vocabulary, to check this script on a CPU
    "test": dict(vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
PAD_ID, EOS_ID = 151_643, 151_645   # Qwen2.5's <|endoftext|> and <|im_end|>
# What one GPU run measures (the list): rollout speed on every size, full GRPO on 1.5B, LoRA on 7B.
PLANS = {
    "default": [("rollout", "0.5b", "full"), ("logps", "0.5b", "full"), ("rollout", "1.5b", "full"),
                ("grpo", "1.5b", "full"), ("logps", "1.5b", "full"), ("grpo", "7b", "lora"), ("sft", "7b", "lora"),
                ("rollout", "7b", "lora")],
    "test": [("rollout", "test", "full"), ("logps", "test", "full"), ("grpo", "test", "full"),
             ("grpo", "test", "lora"), ("sft", "test", "lora")],
}


def build_model(size, device, dtype, seed=0):
    """A random Qwen2ForCausalLM of the named size, created directly on `device` (no CPU copy)."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                         bos_token_id=None, **SIZES[size])
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=[EOS_ID, PAD_ID], pad_token_id=PAD_ID)
    return model


TOKENIZER = types.SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=EOS_ID)   # the ids are all generate needs


def timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return out, time.perf_counter() - t0, peak


def trainable(size, mode, device, args):
    """The model a training run of this mode updates: fp32 weights, or a bf16 base with fp32 LoRA adapters."""
    model = build_model(size, device, torch.bfloat16 if mode == "lora" else torch.float32, args.seed)
    if mode == "lora":
        grpo.add_lora(model, args.lora_rank, 2.0 * args.lora_rank)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def prompts(args, g):
    """G copies of each of num_groups random prompts: a group shares its start state."""
    p = torch.randint(0, PAD_ID, (args.num_groups, args.prompt_len), generator=g)
    return p.repeat_interleave(args.group_size, 0).tolist()


def rollout_case(size, mode, args, device):
    model = build_model(size, device, torch.bfloat16 if device.type == "cuda" else torch.float32, args.seed).eval()
    if mode == "lora":
        grpo.add_lora(model, args.lora_rank, 2.0 * args.lora_rank)
    config = grpo.generation_config(model, TOKENIZER, 1.0, args.completion_len)
    config.min_new_tokens = args.completion_len                         # a random model: run to the limit anyway
    static = copy.deepcopy(config)
    static.cache_implementation = "static"
    ways = {"generate": lambda p: grpo.generate_batch(model, TOKENIZER, p, config, batch_size=len(p)),
            "static": lambda p: grpo.generate_batch(model, TOKENIZER, p, static, batch_size=len(p)),
            "fast": lambda p: grpo.generate_fast(model, TOKENIZER, p, config)}
    g, out = torch.Generator().manual_seed(args.seed), {"case": "rollout", "size": size, "mode": mode}
    n = args.num_groups * args.group_size
    try:
        for name, fn in ways.items():
            times, peaks = [], []
            for rep in range(args.repeats + 1):
                news, seconds, peak = timed(device, lambda: fn(prompts(args, g)))
                if rep:
                    times.append(seconds)
                    peaks.append(peak)
            tokens = sum(len(x) for x in news)
            out.update({f"{name}_s": statistics.median(times), f"{name}_new_tok_per_s": tokens / statistics.median(times),
                        f"{name}_peak_gib": max(peaks), f"{name}_new_tokens": tokens})
        # Does the fast path sample the distribution the loss trains? Its own log-probs against ours.
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=ContinuousBatchingConfig(
            allow_block_sharing=False, auto_switch_to_flash=False, return_logprobs=True))
        manager.start()
        ps = prompts(args, g)[:min(n, 8)]
        rid = manager.add_requests(inputs=ps, max_new_tokens=args.completion_len)
        results = {}
        while len(results) < len(rid):
            r = manager.get_result(timeout=1)
            if r is not None and r.is_finished():
                results[r.request_id] = r
        manager.stop(block=True)
        gap = 0.0
        for p, r in zip(ps, (results[i] for i in rid)):
            ids = torch.tensor([p + r.generated_tokens], device=device)
            with torch.no_grad():
                lp, _ = grpo.token_logps_and_entropy(model, ids, torch.ones_like(ids))
            gap = max(gap, float((lp[0, len(p) - 1:].float().cpu() - torch.tensor(r.logprobs)).abs().max()))
        out["fast_max_abs_logprob_gap"] = gap
    finally:
        grpo.stop_fast_managers()
    for name in ("fast", "static"):
        out[f"{name}_over_generate"] = out[f"{name}_new_tok_per_s"] / out["generate_new_tok_per_s"]
    return out


def grpo_case(size, mode, args, device):
    """GRPO updates on rollout-shaped batches (prompt_len + completion_len tokens, loss on the completion)."""
    model = trainable(size, mode, device, args)
    cfg = grpo.Settings(micro_batch_size=args.micro_batch, precision="bf16" if device.type == "cuda" else "fp32",
                        lr=1e-6 if mode == "full" else 1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    g, n = torch.Generator().manual_seed(args.seed), args.num_groups * args.group_size
    T = args.prompt_len + args.completion_len
    mask = torch.zeros(n, T)
    mask[:, args.prompt_len:] = 1.0                                                    # sampled tokens only
    times, peaks = [], []
    for rep in range(args.repeats + 1):
        ids = torch.randint(0, PAD_ID, (n, T), generator=g)
        adv = grpo.group_advantages(torch.rand(n, generator=g), args.group_size)
        _, seconds, peak = timed(device, lambda: grpo.update_policy(model, optimizer, ids, torch.ones_like(ids), mask,
                                                                    adv, cfg))
        if rep:
            times.append(seconds)
            peaks.append(peak)
    med = statistics.median(times)
    return {"case": "grpo", "size": size, "mode": mode, "episodes": n, "seq_len": T, "micro_batch": args.micro_batch,
            "update_s": med, "update_tok_per_s": n * T / med, "update_peak_gib": max(peaks)}


def logps_case(size, mode, args, device):
    """Peak memory of log-probs + entropy, forward and backward, for one micro-batch: chunked vs all at once."""
    model = build_model(size, device, torch.float32, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, PAD_ID, (args.micro_batch, args.prompt_len + args.completion_len), generator=g).to(device)
    out, default = {"case": "logps", "size": size, "batch": args.micro_batch, "seq_len": ids.shape[1]}, grpo.LOGIT_CHUNK
    try:
        for name, chunk in (("chunked", default), ("whole", 2 ** 62)):
            grpo.LOGIT_CHUNK = chunk

            def step():
                with grpo.autocast("bf16" if device.type == "cuda" else "fp32", device):
                    lp, ent = grpo.token_logps_and_entropy(model, ids, torch.ones_like(ids))
                (lp.sum() + ent.sum()).backward()
                model.zero_grad(set_to_none=True)
            timed(device, step)                                                         # warm-up
            _, seconds, peak = timed(device, step)
            out.update({f"{name}_s": seconds, f"{name}_peak_gib": peak})
    finally:
        grpo.LOGIT_CHUNK = default
    out["peak_saving"] = 1 - out["chunked_peak_gib"] / out["whole_peak_gib"] if device.type == "cuda" else float("nan")
    return out


def sft_case(size, mode, args, device):
    model = trainable(size, mode, device, args)
    cfg = glow_sft.Settings(micro_batch_size=args.sft_micro_batch, precision="bf16" if device.type == "cuda" else "fp32")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda")
    g, history, times, peaks = torch.Generator().manual_seed(args.seed), {}, [], []
    for rep in range(args.repeats + 1):
        rows = torch.randint(0, PAD_ID, (args.sft_batch, args.sft_len), generator=g).tolist()
        batch = glow_sft.collate([(r, args.sft_len // 4) for r in rows], PAD_ID)      # a quarter is prompt
        _, seconds, peak = timed(device, lambda: glow_sft.train_step(model, optimizer, None, batch, cfg, 1, history,
                                                                     list(range(args.sft_batch))))
        if rep:
            times.append(seconds)
            peaks.append(peak)
    med = statistics.median(times)
    return {"case": "sft", "size": size, "mode": mode, "batch": args.sft_batch, "seq_len": args.sft_len,
            "step_s": med, "tok_per_s": args.sft_batch * args.sft_len / med, "peak_gib": max(peaks)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="default", choices=tuple(PLANS), help="which cases and sizes (default: default)")
    p.add_argument("--device", default="cuda", help="cuda | cpu (default: cuda)")
    p.add_argument("--num-groups", type=int, default=8, help="GRPO start states per step (default: 8, GIFT's)")
    p.add_argument("--group-size", type=int, default=16, help="GRPO episodes per start state (default: 16, GIFT's)")
    p.add_argument("--prompt-len", type=int, default=256, help="GRPO prompt tokens (default: 256)")
    p.add_argument("--completion-len", type=int, default=512, help="GRPO sampled tokens per episode (default: 512)")
    p.add_argument("--micro-batch", type=int, default=8, help="episodes per GRPO forward/backward (default: 8)")
    p.add_argument("--lora-rank", type=int, default=64, help="LoRA rank of the lora cases; alpha = 2 x rank (default: 64)")
    p.add_argument("--sft-batch", type=int, default=32, help="trajectories per SFT step (default: 32)")
    p.add_argument("--sft-len", type=int, default=1024, help="tokens per SFT trajectory (default: 1024)")
    p.add_argument("--sft-micro-batch", type=int, default=8, help="trajectories per SFT forward/backward (default: 8)")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per case, after one warm-up (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, prompts and rewards (default: 0)")
    p.add_argument("--out", default=None, help="also write the results to this JSON file (after every case)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    import transformers
    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args)}
    print(json.dumps(info))
    results = []
    for case, size, mode in PLANS[args.plan]:
        t0 = time.time()
        r = {"rollout": rollout_case, "grpo": grpo_case, "logps": logps_case, "sft": sft_case}[case](size, mode, args, device)
        r["case_wall_s"] = time.time() - t0
        results.append(r)
        print(json.dumps(r), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"info": info, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
