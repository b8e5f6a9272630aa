"""Tests of benchmarks/: the GPU script builds the published Qwen2.5 architectures and runs every case on a
CPU stand-in; the SFT-vs-Trainer script runs (accelerate is installed with scale/requirements.txt)."""
import os
import runpy

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu_steps():
    return runpy.run_path(os.path.join(ROOT, "benchmarks", "gpu_steps.py"))


def test_the_published_qwen_sizes(gpu_steps):
    # Parameter counts of Qwen2.5-0.5B, -1.5B (tied embeddings) and -7B as published, built on the meta device.
    for size, published in (("0.5b", 494_032_768), ("1.5b", 1_543_714_304), ("7b", 7_615_616_512)):
        model = gpu_steps["build_model"](size, "meta", torch.float32)
        assert sum(p.numel() for p in model.parameters()) == published


def small_args(**kw):
    import types
    return types.SimpleNamespace(**{"num_groups": 2, "group_size": 2, "prompt_len": 6, "completion_len": 4,
                                    "micro_batch": 2, "lora_rank": 4, "sft_batch": 2, "sft_len": 8,
                                    "sft_micro_batch": 2, "repeats": 1, "seed": 0, **kw})


def test_update_logps_and_sft_cases_run_on_a_cpu_stand_in(gpu_steps):
    cpu, args = torch.device("cpu"), small_args()
    full = gpu_steps["grpo_case"]("test", "full", args, cpu)
    lora = gpu_steps["grpo_case"]("test", "lora", args, cpu)
    assert full["episodes"] == lora["episodes"] == 4 and full["update_tok_per_s"] * full["update_s"] == pytest.approx(40)
    logps = gpu_steps["logps_case"]("test", "full", args, cpu)
    assert logps["chunked_s"] > 0 and logps["whole_s"] > 0
    sft = gpu_steps["sft_case"]("test", "lora", args, cpu)
    assert sft["tok_per_s"] * sft["step_s"] == pytest.approx(16)


@pytest.mark.slow
def test_the_whole_test_plan_with_the_fast_rollout(gpu_steps, tmp_path):
    # the rollout case starts a continuous-batching manager, which takes ~1 min on a CPU
    out = tmp_path / "g.json"
    gpu_steps["main"](["--plan", "test", "--device", "cpu", "--num-groups", "2", "--group-size", "2", "--prompt-len",
                       "6", "--completion-len", "4", "--micro-batch", "2", "--sft-batch", "2", "--sft-len", "8",
                       "--sft-micro-batch", "2", "--repeats", "1", "--lora-rank", "4", "--out", str(out)])
    import json
    rollout = json.loads(out.read_text())["results"][0]
    assert rollout["generate_new_tokens"] == rollout["fast_new_tokens"] == 16
    assert rollout["fast_max_abs_logprob_gap"] < 1e-4             # fp32 on a CPU: the same distribution
