"""
benchmarks/gpu_steps.py -- GPU memory and throughput of one GRPO step and one SFT step at real model sizes.

Nothing can be downloaded on our machines, so the models are RANDOMLY INITIALISED from the published
Qwen2.5-0.5B and Qwen2.5-1.5B architectures (hidden size, layers, heads, the 151,936-token vocabulary),
built from a config dict. Memory and time depend on the architecture and the sequence lengths, not on
the weights, so these are the figures a user gets with the real checkpoints -- except generation
length: a random model never says EOS, so every completion runs to its limit (we force that with
min_new_tokens, which is the worst case a real run can hit).

What is timed is this repository's own code, not a re-implementation:
  GRPO step  grpo.generate_batch (HF generate, KV cache, sampling at T = 1) over num_groups * group_size
             prompts -- timed twice, in fp32 and under bf16 autocast -- then grpo.group_advantages on random rewards, then grpo.accumulate_gradients
             (micro-batches, the grpo loss, the entropy bonus), grad-norm clipping and one AdamW step.
             Weights in fp32, forward passes under bf16 autocast, gradient checkpointing on: the
             README's single-GPU recipe (`--bf16 --gradient-checkpointing`).
  SFT step   glow_sft.train_step with GLOW weighting (epoch 1, so the weights are computed) on a
             batch of fixed-length trajectories, bf16 weights (glow_sft's `--dtype bfloat16`), fused AdamW.
Each case runs `--repeats` steps after one untimed warm-up step; we print the median seconds, tokens
per second and the peak GPU memory that torch allocated (torch.cuda.max_memory_allocated).

Run (one GPU):   python benchmarks/gpu_steps.py --out gpu_steps.json
Quick CPU check: python benchmarks/gpu_steps.py --sizes test --device cpu
"""
import argparse
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

# The published architectures (config.json of Qwen/Qwen2.5-0.5B-Instruct and -1.5B-Instruct).
QWEN_VOCAB = 151_936
SIZES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    # a few-MB stand-in with the real vocabulary, to check this script on a CPU
    "test": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
PAD_ID, EOS_ID = 151_643, 151_645   # Qwen2.5's <|endoftext|> and <|im_end|>


def build_model(size, device, dtype, seed):
    """A random Qwen2ForCausalLM of the named size, created directly on `device` (no CPU copy)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=QWEN_VOCAB, max_position_embeddings=32768, rope_theta=1e6,
                         pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None, **SIZES[size])
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def grpo_case(size, args, device):
    """Median timings of GRPO steps: generation, then the update. Returns a result dict."""
    model = build_model(size, device, torch.float32, args.seed)
    model.gradient_checkpointing_enable()
    tokenizer = types.SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    n = args.num_groups * args.group_size
    gen_config = grpo.generation_config(tokenizer, model, 1.0, 1.0, args.completion_len)
    gen_config.min_new_tokens = args.completion_len           # a random model never stops: make it explicit
    cfg = dict(temperature=1.0, loss_type="grpo", beta=0.0, eps_low=0.2, eps_high=0.28, entropy_coef=0.001,
               micro_batch_size=args.grpo_micro_batch, max_completion_length=args.completion_len, bf16=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    gen_s, train_s, gen_peak, train_peak = {"fp32": [], "bf16": []}, [], {"fp32": [], "bf16": []}, []
    for rep in range(args.repeats + 1):
        # G copies of each of num_groups random prompts, as a group shares its start state.
        prompts = torch.randint(0, PAD_ID, (args.num_groups, args.prompt_len), generator=g)
        prompts = prompts.repeat_interleave(args.group_size, 0).tolist()
        model.eval()
        # Generation twice: in the weights' fp32, then under bf16 autocast (same prompts, new samples).
        timings = {}
        for mode in ("fp32", "bf16"):
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                completions = grpo.generate_batch(model, tokenizer, prompts, gen_config)
            sync(device)
            timings[mode] = (time.perf_counter() - t0, peak_gib(device))
        t1 = time.perf_counter()
        ids = torch.tensor([p + c for p, c in zip(prompts, completions)])              # (N, T)
        attn = torch.ones_like(ids)
        mask = torch.zeros(ids.shape, dtype=torch.float32)
        mask[:, args.prompt_len:] = 1.0                                                  # sampled tokens only
        rewards = torch.rand(n, generator=g)
        adv = grpo.group_advantages(rewards, args.group_size)                            # (N,)
        reset_peak(device)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        grpo.accumulate_gradients(model, ids, attn, mask, adv, cfg)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if rep > 0:                                # rep 0 is the warm-up (allocator, kernels, AdamW state)
            for mode, (seconds, mem) in timings.items():
                gen_s[mode].append(seconds)
                gen_peak[mode].append(mem)
            train_s.append(t2 - t1)
            train_peak.append(peak_gib(device))
    del model, optimizer
    gen_tokens, train_tokens = n * args.completion_len, n * (args.prompt_len + args.completion_len)
    t_med = statistics.median(train_s)
    out = {"case": "grpo", "size": size, "episodes": n, "prompt_len": args.prompt_len,
           "completion_len": args.completion_len, "micro_batch": args.grpo_micro_batch,
           "update_s": t_med, "update_tok_per_s": train_tokens / t_med, "update_peak_gib": max(train_peak)}
    for mode in ("fp32", "bf16"):
        g_med = statistics.median(gen_s[mode])
        out.update({f"generate_{mode}_s": g_med, f"generate_{mode}_tok_per_s": gen_tokens / g_med,
                    f"generate_{mode}_peak_gib": max(gen_peak[mode])})
    return out


def sft_case(size, args, device):
    """Median timings of glow_sft.train_step on fixed-length random trajectories."""
    model = build_model(size, device, torch.bfloat16, args.seed)
    optimizer = glow_sft.make_optimizer(model, 1e-5, 0.0)
    hp = dict(weighting="glow", alpha=1.0, beta=20.0, w_min=0.5, w_max=5.0, glow_offset=False,
              micro_batch_size=args.sft_micro_batch, grad_clip=1.0)
    g = torch.Generator().manual_seed(args.seed)
    history, ids_of_rows = {}, list(range(args.sft_batch))
    times, peak = [], []
    for rep in range(args.repeats + 1):
        rows = torch.randint(0, PAD_ID, (args.sft_batch, args.sft_len), generator=g).tolist()
        batch = glow_sft.collate([(r, args.sft_len // 4) for r in rows], PAD_ID)   # a quarter is prompt
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        glow_sft.train_step(model, optimizer, None, batch, hp, epoch=1, history=history, sample_ids=ids_of_rows)
        sync(device)
        if rep > 0:
            times.append(time.perf_counter() - t0)
            peak.append(peak_gib(device))
    del model, optimizer
    med = statistics.median(times)
    return {"case": "sft", "size": size, "batch": args.sft_batch, "seq_len": args.sft_len,
            "micro_batch": args.sft_micro_batch, "step_s": med,
            "tok_per_s": args.sft_batch * args.sft_len / med, "peak_gib": max(peak)}


def ratio_case(size, args, device):
    """How far the PPO ratio sits from 1 BEFORE any update when old and new log-probs differ in precision.

    With --num-iterations > 1 grpo.py computes old log-probs in a separate no-grad pass (batch_logps)
    and the training log-probs in accumulate_gradients. On-policy, before the first update, the ratio
    must be exactly 1. We compare old log-probs computed in fp32 (what grpo.py did before it ran every
    forward pass under the same bf16_autocast) and under bf16 autocast (what it does now) against the
    training forward under bf16 autocast.
    """
    model = build_model(size, device, torch.float32, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    n, T = args.group_size, args.prompt_len + args.completion_len
    ids = torch.randint(0, PAD_ID, (n, T), generator=g)
    attn = torch.ones_like(ids)
    cfg = dict(temperature=1.0, micro_batch_size=args.grpo_micro_batch, bf16=True)
    old = {"fp32": grpo.batch_logps(model, ids, attn, dict(cfg, bf16=False)),
           "bf16": grpo.batch_logps(model, ids, attn, cfg)}
    model.train()
    with torch.no_grad(), grpo.bf16_autocast(device, True):
        new = torch.cat([grpo.token_logps_and_entropy(model, ids[sl].to(device), attn[sl].to(device))[0].cpu()
                         for sl in grpo.micro_slices(n, args.grpo_micro_batch)])          # (n, T-1)
    del model
    out = {"case": "ratio", "size": size, "sequences": n, "seq_len": T}
    for mode, o in old.items():
        ratio = torch.exp(new - o)                                                           # (n, T-1)
        out[f"old_{mode}_max_abs_ratio_minus_1"] = float((ratio - 1).abs().max())
        out[f"old_{mode}_clipped_share"] = float(((ratio < 0.8) | (ratio > 1.28)).float().mean())
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.5b,1.5b", help="comma list of " + ", ".join(SIZES) + " (default: 0.5b,1.5b)")
    p.add_argument("--cases", default="grpo,sft",
                   help="comma list of grpo, sft, ratio (old/new log-prob precision, see ratio_case) "
                        "(default: grpo,sft)")
    p.add_argument("--device", default="cuda", help="cuda | cpu (default: cuda)")
    p.add_argument("--num-groups", type=int, default=8, help="GRPO start states per step (default: 8, GIFT's)")
    p.add_argument("--group-size", type=int, default=16, help="GRPO episodes per start state (default: 16, GIFT's)")
    p.add_argument("--prompt-len", type=int, default=256, help="GRPO prompt tokens (default: 256)")
    p.add_argument("--completion-len", type=int, default=512, help="GRPO sampled tokens per episode (default: 512)")
    p.add_argument("--grpo-micro-batch", type=int, default=8, help="episodes per GRPO forward/backward (default: 8)")
    p.add_argument("--sft-batch", type=int, default=32, help="trajectories per SFT step (default: 32)")
    p.add_argument("--sft-len", type=int, default=1024, help="tokens per SFT trajectory (default: 1024)")
    p.add_argument("--sft-micro-batch", type=int, default=8, help="trajectories per SFT forward/backward (default: 8)")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per case, after one warm-up (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, prompts and rewards (default: 0)")
    p.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    import transformers
    info["transformers"] = transformers.__version__
    print(json.dumps(info))
    results = []
    for size in args.sizes.split(","):
        for case in args.cases.split(","):
            t0 = time.time()
            r = {"grpo": grpo_case, "sft": sft_case, "ratio": ratio_case}[case](size, args, device)
            r["case_wall_s"] = time.time() - t0
            results.append(r)
            print(json.dumps(r), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if args.out:                                   # write after every case: a timeout keeps what ran
                with open(args.out, "w") as f:
                    json.dump({"info": info, "results": results}, f, indent=1)
    print("\n| case | model | what | seconds | tokens/s | peak GiB |\n|---|---|---|---|---|---|")
    for r in results:
        if r["case"] == "ratio":
            print(f"| PPO ratio before any update | {r['size']} | {r['sequences']} x {r['seq_len']} tok | "
                  f"max abs(ratio - 1): old fp32 {r['old_fp32_max_abs_ratio_minus_1']:.3g}, old bf16 "
                  f"{r['old_bf16_max_abs_ratio_minus_1']:.3g} | clipped share: {r['old_fp32_clipped_share']:.3g} "
                  f"vs {r['old_bf16_clipped_share']:.3g} | |")
        elif r["case"] == "grpo":
            for mode in ("fp32", "bf16"):
                print(f"| GRPO | {r['size']} | generate {r['episodes']} x {r['completion_len']} tok, {mode} | "
                      f"{r[f'generate_{mode}_s']:.2f} | {r[f'generate_{mode}_tok_per_s']:.0f} | "
                      f"{r[f'generate_{mode}_peak_gib']:.1f} |")
            print(f"| GRPO | {r['size']} | update {r['episodes']} x {r['prompt_len'] + r['completion_len']} tok | "
                  f"{r['update_s']:.2f} | {r['update_tok_per_s']:.0f} | {r['update_peak_gib']:.1f} |")
        else:
            print(f"| SFT (GLOW) | {r['size']} | step {r['batch']} x {r['seq_len']} tok | {r['step_s']:.2f} | "
                  f"{r['tok_per_s']:.0f} | {r['peak_gib']:.1f} |")


if __name__ == "__main__":
    main()
