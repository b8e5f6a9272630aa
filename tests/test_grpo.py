"""Tests of grpo.py: hand-computed tensors first, then the model paths a real checkpoint takes (its own
generation settings, two stop ids, bf16, LoRA), then real multi-turn rollouts and the training loop.

The numbers in the comments are worked by hand; the code must reproduce them to 1e-6.
"""
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

import games
import grpo


@pytest.fixture(scope="module")
def tiny():
    """The shipped tiny model (data/tiny), loaded once."""
    return grpo.load_policy("tiny")


def random_model(tiny, seed):
    """tiny's architecture with fresh random weights (its tokenizer is tiny's)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny[0].config)
    model.generation_config = tiny[0].generation_config
    return model


# -----------------------------------------------------------------------------
# 1-2. Group advantages and the StarPO* filter
def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.5, 1.0])  # one group of 4
    # mean 0.625, unbiased std sqrt(0.6875 / 3) = 0.478714 -> A = (r - 0.625) / 0.478714
    expected = torch.tensor([0.783349, -1.305582, -0.261116, 0.783349])
    assert torch.allclose(grpo.group_advantages(r, 4), expected, atol=1e-5)


def test_zero_variance_group_gets_exactly_zero():
    adv = grpo.group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 0.0]), 4)
    assert torch.equal(adv[:4], torch.zeros(4))
    # second group: mean 0.5, unbiased std sqrt(1/3) = 0.577350 -> +-0.866025
    assert torch.allclose(adv[4:], torch.tensor([0.866025, -0.866025, 0.866025, -0.866025]), atol=1e-5)


def test_group_advantages_batch_and_none_scaling():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])  # two groups of 2
    # none: r - group mean = [0.5, -0.5, 0, 0]; batch: divide by the std of all four, sqrt(0.75 / 3) = 0.5
    assert torch.allclose(grpo.group_advantages(r, 2, scale="none"), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert torch.allclose(grpo.group_advantages(r, 2, scale="batch"), torch.tensor([1.0, -1.0, 0.0, 0.0]), atol=1e-5)
    with pytest.raises(ValueError):
        grpo.group_advantages(r, 2, scale="bogus")


def test_filter_keeps_the_groups_with_largest_std():
    r = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5])  # stds: 0, 0.707, 0, 0.354
    assert grpo.filter_groups(r, 2, 0.5) == [2, 3, 6, 7]
    assert grpo.filter_groups(r, 2, 0.25) == [2, 3]
    assert grpo.filter_groups(r, 2, 1.0) == list(range(8))


# -----------------------------------------------------------------------------
# 4. The loss, every aggregation, on one hand-worked example
#   mask   = [[1, 1, 0], [1, 1, 1]]          A = [1, -0.5]          old logps = 0
#   ratios = [[1.5, 1, 1], [0.5, 1, 1]]      eps_low = 0.2, eps_high = 0.28
#   token losses -min(r A, clip(r) A):
#     row 0: -min(1.5, 1.28) = -1.28,  -1                       (second column clipped at 1.28)
#     row 1: -min(-0.25, -0.4) = 0.4, 0.5, 0.5                  (ratio 0.5 clipped at 0.8)
#   grpo    = mean(-2.28/2, 1.4/3)            = (-1.14 + 0.466667) / 2 = -0.336667
#   bnpo    = (-2.28 + 1.4) / 5               = -0.176
#   dr_grpo = -0.88 / (2 * 4)   (L_max = 4)   = -0.11
def loss_example():
    logps = torch.tensor([[math.log(1.5), 0.0, 0.0], [math.log(0.5), 0.0, 0.0]], requires_grad=True)
    return logps, torch.zeros(2, 3), torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("loss_type,expected", [("grpo", -0.336667), ("bnpo", -0.176), ("dapo", -0.176),
                                                ("dr_grpo", -0.11)])
def test_loss_types_hand_computed(loss_type, expected):
    logps, old, adv, mask = loss_example()
    loss, stats = grpo.grpo_loss(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, loss_type=loss_type,
                                 max_completion_length=4)
    assert abs(float(loss.detach()) - expected) < 1e-6
    # one of five tokens is clipped from below (ratio 0.5, A < 0), one from above (1.5, A > 0)
    assert stats["clip_low"] == pytest.approx(0.2) and stats["clip_high"] == pytest.approx(0.2)
    assert stats["ratio"] == pytest.approx(1.0)  # (1.5 + 1 + 0.5 + 1 + 1) / 5


def test_entropy_bonus_is_averaged_like_the_loss():
    # H = [[1, 2, 9], [3, 3, 3]] (9 is masked), c = 0.1: each token's loss gets -0.1 H.
    #   grpo: row 0 (-2.28 - 0.3) / 2 = -1.29, row 1 (1.4 - 0.9) / 3 = 0.166667 -> mean -0.561667
    #   bnpo: (-2.28 + 1.4 - 0.1 * 12) / 5 = -0.416
    logps, old, adv, mask = loss_example()
    H = torch.tensor([[1.0, 2.0, 9.0], [3.0, 3.0, 3.0]])
    for loss_type, expected in (("grpo", -0.561667), ("bnpo", -0.416)):
        loss, stats = grpo.grpo_loss(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, loss_type=loss_type,
                                     entropy=H, entropy_coef=0.1)
        assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
        assert stats["entropy"] == pytest.approx(12 / 5)


def test_clipped_tokens_get_zero_gradient():
    logps, old, adv, mask = loss_example()
    loss, _ = grpo.grpo_loss(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, loss_type="grpo")
    loss.backward()
    g = logps.grad
    # clipped tokens: no gradient. Unclipped: d(-r A)/dlogp = -r A, / tokens of the row / 2 rows
    assert g[0, 0] == 0 and g[1, 0] == 0
    assert g[0, 1] == pytest.approx(-1.0 / 2 / 2) and g[1, 1] == pytest.approx(0.5 / 3 / 2)
    assert g[0, 2] == 0  # masked


def test_k3_kl_hand_computed():
    # ref = 0: k3 = exp(-logp) + logp - 1 -> log 1.5: 0.072132, log 0.5: 0.306853, others 0
    logps, old, adv, mask = loss_example()
    loss, stats = grpo.grpo_loss(logps, old, adv, mask, ref_logps=torch.zeros(2, 3), beta=0.1,
                                 eps_low=0.2, eps_high=0.28, loss_type="bnpo")
    assert stats["kl"] == pytest.approx((0.072132 + 0.306853) / 5, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(-0.176 + 0.1 * (0.072132 + 0.306853) / 5, abs=1e-6)
    with pytest.raises(ValueError):
        grpo.grpo_loss(logps, old, adv, mask, beta=0.1)


def test_loss_matches_trl_formula_on_random_tensors():
    """Our grpo_loss against TRL 1.16.0's aggregation, re-derived on plain tensors (one micro-batch, one
    optimiser step per rollout, beta = 0.04, token-level ratio)."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    logps = -torch.rand(B, T, generator=g) * 3
    old, ref = logps + 0.3 * torch.randn(B, T, generator=g), logps + 0.2 * torch.randn(B, T, generator=g)
    adv, mask = torch.randn(B, generator=g), (torch.rand(B, T, generator=g) > 0.3).float()
    coef_1 = torch.exp(logps - old)
    per_tok = -torch.min(coef_1 * adv[:, None], torch.clamp(coef_1, 0.8, 1.28) * adv[:, None])
    per_tok = per_tok + 0.04 * (torch.exp(ref - logps) - (ref - logps) - 1)
    trl = {"grpo": ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean(),
           "bnpo": (per_tok * mask).sum() / mask.sum().clamp(min=1.0),
           "dr_grpo": (per_tok * mask).sum() / (B * 16), "dapo": (per_tok * mask).sum() / mask.sum()}
    for loss_type, expected in trl.items():
        ours, _ = grpo.grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.04, eps_low=0.2, eps_high=0.28,
                                 loss_type=loss_type, max_completion_length=16)
        assert float(ours) == pytest.approx(float(expected), abs=1e-6), loss_type


# -----------------------------------------------------------------------------
# 3. Lean log-probs: the same values as a full log_softmax, without holding (B, T, V)
def full_logps_and_entropy(model, ids, attn, temperature):
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature, -1)
    return logp.gather(-1, ids[:, 1:, None])[..., 0], -(logp.exp() * logp).sum(-1)


def test_chunked_logps_and_entropy_equal_the_full_log_softmax(tiny, monkeypatch):
    model = random_model(tiny, 3)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 250, (3, 17), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 12:] = 0
    monkeypatch.setattr(grpo, "LOGIT_CHUNK", 3 * 4 * model.config.vocab_size)    # 4 positions per chunk: 4 chunks
    lean = grpo.token_logps_and_entropy(model, ids, attn, 0.7)
    (lean[0].sum() + lean[1].sum()).backward()
    lean_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = full_logps_and_entropy(model, ids, attn, 0.7)
    (full[0].sum() + full[1].sum()).backward()
    for a, b in zip(lean, full):
        assert torch.allclose(a, b, atol=1e-5)
    for a, p in zip(lean_grad, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)
    # without the entropy (SFT's path: the log-prob as a fused cross-entropy), the same log-probs
    assert torch.allclose(grpo.token_logps_and_entropy(model, ids, attn, 0.7, with_entropy=False)[0], full[0], atol=1e-5)


# -----------------------------------------------------------------------------
# 5. Models: the shipped tiny, a checkpoint's own generation settings, two stop ids, bf16, LoRA
def test_shipped_tiny_loads_through_from_pretrained_and_plays_legal_moves(tiny):
    model, tok = tiny
    assert model.name_or_path == grpo.TINY_DIR and grpo.is_compact(model)
    assert sum(p.numel() for p in model.parameters()) == 823_680                  # "0.82M parameters"
    # the tags and the nine moves are single tokens; any other text is one token per byte, newlines kept
    moves = tok("".join(f"({r},{c})" for r in (1, 2, 3) for c in (1, 2, 3)), add_special_tokens=False)["input_ids"]
    assert len(moves) == 9 == len(set(moves)) and len(tok("<answer>", add_special_tokens=False)["input_ids"]) == 1
    odd = "héllo\n\n  wörld ☃ 12"
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd
    rates, episodes = grpo.play(model, tok, [games.make_env("tictactoe", compact=True) for _ in range(50)],
                                progress=False)
    assert rates["invalid"] < 0.05 and sum(ep.turns for ep in episodes) > 100      # it plays legal moves


def copy_tiny(tmp_path, **generation):
    path = tmp_path / "tiny_copy"
    shutil.copytree(grpo.TINY_DIR, path)
    GenerationConfig(**generation).save_pretrained(path)
    return str(path)


def test_a_checkpoints_generation_settings_never_change_what_is_sampled(tmp_path):
    # A Qwen2.5-Instruct checkpoint ships repetition_penalty, top_k, top_p and a temperature. Left in place,
    # transformers would sample from a penalised, truncated distribution while the loss trains z / T.
    path = copy_tiny(tmp_path, do_sample=True, repetition_penalty=1.5, top_k=3, top_p=0.5, temperature=0.2, eos_token_id=[1, 8],
                     pad_token_id=0)
    model, tok = grpo.load_policy(path)
    assert grpo.stop_ids(tok, model) == [1, 8]                                    # the stop ids survive
    prompt = grpo.start_episode(tok, games.make_env("tictactoe", compact=True), 3, 0).ids
    config = grpo.generation_config(model, tok, 0.9, 6)
    config.output_scores = config.return_dict_in_generate = True
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), generation_config=config)
        new = out.sequences[0, len(prompt):]
        logits = model(input_ids=out.sequences).logits[0, len(prompt) - 1:-1] / 0.9
    # The scores generate sampled from are exactly the model's logits / T: no processor touched them.
    assert torch.allclose(torch.stack(out.scores, 1)[0, :len(new)], logits[:len(new)], atol=1e-5)


def test_a_turn_that_stops_on_the_second_stop_id(tiny):
    # Qwen stops on <|im_end|> (the template's EOS) and on <|endoftext|>. A turn that ends on the second one
    # keeps it (sampled, mask 1), drops what generate padded after it, is not "cut", and gets the template's
    # EOS appended with mask 0 so the chat goes on well-formed.
    _, tok = tiny
    second = tok.convert_tokens_to_ids("</think>")
    env = games.make_env("tictactoe", compact=True)
    ep = grpo.start_episode(tok, env, 2, 0)
    answer = tok("<answer>(2,2)</answer>", add_special_tokens=False)["input_ids"]
    start = len(ep.ids)
    grpo.finish_turn(tok, ep, answer + [second, tok.pad_token_id, tok.pad_token_id], {tok.eos_token_id, second})
    assert ep.ids[start:start + len(answer) + 2] == answer + [second, tok.eos_token_id]
    assert ep.mask[start:start + len(answer) + 2] == [1] * (len(answer) + 1) + [0]
    assert ep.cut_turns == 0 and ep.info["valid"] and ep.messages[-2]["content"] == "<answer>(2,2)</answer>"
    # A turn that never stops is cut: its sampled tokens stay, one EOS is appended (mask 0).
    ep2 = grpo.start_episode(tok, games.make_env("tictactoe", compact=True), 2, 0)
    grpo.finish_turn(tok, ep2, answer[:2], {tok.eos_token_id})
    assert ep2.cut_turns == 1 and ep2.mask[-len(ep2.ids) + start:][:3] == [1, 1, 0]


def test_bf16_weights_lose_small_updates_so_trained_weights_stay_fp32(tiny, tmp_path):
    # One AdamW step at GIFT's lr 1e-6: every update has size ~1e-6, below bf16's resolution (8 bits) for a
    # weight of ~1e-2, so in bf16 storage almost every weight stays exactly where it was.
    def unchanged_share(dtype):
        model = random_model(tiny, 0).to(dtype)
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0).step()
        same = sum(int((p.detach() == b).sum()) for p, b in zip(model.parameters(), before))
        return same / sum(p.numel() for p in model.parameters())
    bf16, fp32 = unchanged_share(torch.bfloat16), unchanged_share(torch.float32)
    print(f"weights a bf16 step at lr 1e-6 left unchanged: {100 * bf16:.1f}%; fp32: {100 * fp32:.1f}%")
    assert bf16 > 0.95 and fp32 < 0.01
    # So the trained weights are fp32 whatever the precision; with LoRA the frozen base may be bf16.
    cfg = grpo.Settings(precision="bf16")
    assert {p.dtype for p in grpo.load_trainable(cfg)[0].parameters()} == {torch.float32}
    lora = grpo.load_trainable(replace(cfg, lora_rank=4))[0]
    assert {p.dtype for p in lora.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in lora.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_lora_starts_at_the_base_merges_exactly_and_trains_only_adapters(tiny, tmp_path):
    model = random_model(tiny, 5)
    ids = torch.randint(10, 250, (2, 9))
    with torch.no_grad():
        base = model(input_ids=ids).logits
    grpo.add_lora(model, rank=4, alpha=8.0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)                   # B = 0: step 0 is the base
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * 7 * model.config.num_hidden_layers              # q k v o gate up down
    model(input_ids=ids).logits.sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    assert not torch.allclose(trained, base)
    # Merged into the weights, saved as a plain model: from_pretrained gives the same logits.
    grpo.save_checkpoint(str(tmp_path), model, tiny[1], {"step": 0})
    plain, _ = grpo.load_policy(str(tmp_path / "checkpoint"))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, trained, atol=1e-5)


# -----------------------------------------------------------------------------
# 6-7. Rollouts: exact sampled ids, the mask, the sampling distribution, the fast path
def test_rollout_keeps_exact_sampled_ids_and_mask(tiny, monkeypatch):
    model, tok = tiny
    sampled, real = [], grpo.generate_batch

    def recording(*a, **k):
        sampled.append(real(*a, **k))
        return sampled[-1]
    monkeypatch.setattr(grpo, "generate_batch", recording)
    envs = [games.make_env("tictactoe", compact=True) for _ in range(6)]
    torch.manual_seed(0)
    eps = grpo.rollout(model, tok, envs, list(range(6)), temperature=1.0, max_new=24)
    assert any(ep.turns >= 3 for ep in eps)                                     # really multi-turn
    stops = set(grpo.stop_ids(tok, model))
    for i, ep in enumerate(eps):
        assert len(ep.ids) == len(ep.mask)
        # The mask-1 tokens are exactly what generate returned, turn by turn, through the first stop id.
        mine = [t for t, m in zip(ep.ids, ep.mask) if m == 1]
        actives = [[j for j, e in enumerate(eps) if e.turns > turn] for turn in range(len(sampled))]
        turns = [grpo.cut_at_stop(out[act.index(i)], stops)[0] for out, act in zip(sampled, actives) if i in act]
        assert mine == [t for turn in turns for t in turn]
        # The mask-0 tokens are the chat template and the env's text: decoding gives the rendered chat back.
        assert tok.decode(ep.ids) == grpo.render(tok, ep.messages, add_generation_prompt=False)


def test_generation_logps_equal_training_logps(tiny):
    """ratio = 1 on-policy: the training forward reproduces the sampling distribution, left padding and all."""
    model, tok = tiny
    prompts = [grpo.start_episode(tok, games.make_env("tictactoe", compact=True), s, s).ids for s in range(4)]
    prompts[1] = prompts[1][3:]                                                 # different lengths: real padding
    config = grpo.generation_config(model, tok, 0.8, 10)
    config.output_scores = config.return_dict_in_generate = True
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    attn = (ids != tok.pad_token_id).long()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=config)
    gen_lp = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, out.sequences[:, width:, None])[..., 0]
    for row, p in enumerate(prompts):
        new, _ = grpo.cut_at_stop(out.sequences[row, width:].tolist(), set(grpo.stop_ids(tok, model)))
        seq = torch.tensor([p + new])
        with torch.no_grad():
            lp, _ = grpo.token_logps_and_entropy(model, seq, torch.ones_like(seq), temperature=0.8)
        assert torch.allclose(lp[0, len(p) - 1:], gen_lp[row, :len(new)], atol=1e-4)


def test_fast_rollout_plays_the_same_greedy_games_as_generate(tiny):
    # transformers' continuous batching (--rollout fast) against HF generate, multi-turn, greedy: the same
    # tokens, turn by turn. (Its first call takes ~15 s on a CPU to start.)
    model, tok = tiny
    games_ = lambda: [games.make_env("tictactoe", compact=True) for _ in range(6)]
    try:
        slow = grpo.rollout(model, tok, games_(), list(range(6)), temperature=0.0, max_new=8)
        fast = grpo.rollout(model, tok, games_(), list(range(6)), temperature=0.0, max_new=8, fast=True)
    finally:
        grpo.stop_fast_managers()
    assert [ep.ids for ep in fast] == [ep.ids for ep in slow]
    assert [ep.mask for ep in fast] == [ep.mask for ep in slow] and sum(ep.turns for ep in slow) > 6


def test_environment_tokens_get_zero_gradient_but_are_attended(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    eps = grpo.rollout(model, tok, [games.make_env("tictactoe", compact=True) for _ in range(4)], [5, 6, 7, 8])
    ids, attn, mask = grpo.pad_batch(eps, tok.pad_token_id)

    def logps_of(input_ids):
        logps, _ = grpo.token_logps_and_entropy(model, input_ids, attn)
        return logps
    logps = logps_of(ids)
    logps.retain_grad()
    loss, _ = grpo.grpo_loss(logps, logps.detach(), torch.tensor([1.0, -1.0, 0.5, -0.5]), mask[:, 1:])
    loss.backward()
    env_positions = mask[:, 1:] == 0
    assert torch.count_nonzero(logps.grad[env_positions]) == 0                  # exactly zero on env tokens
    assert torch.count_nonzero(logps.grad[~env_positions]) > 0
    # ... but they are attended to: change one board character before an answer, and the answer's log-probs move.
    row = int(torch.tensor([ep.turns for ep in eps]).argmax())
    first_answer, changed = eps[row].mask.index(1), ids.clone()
    x, o = tok.convert_tokens_to_ids("x"), tok.convert_tokens_to_ids("o")
    changed[row, first_answer - 3] = o if ids[row, first_answer - 3] == x else x
    with torch.no_grad():
        moved = logps_of(changed)
    answer = mask[row, 1:] == 1
    assert not torch.allclose(moved[row][answer], logps.detach()[row][answer])


# -----------------------------------------------------------------------------
# 8. The update: micro-batches, minibatches, old log-probs, dapo's normaliser
def random_batch(seed, N=8, T=20):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 250, (N, T), generator=g)
    attn = (torch.arange(T)[None] < torch.randint(8, T + 1, (N,), generator=g)[:, None]).long()
    mask = ((torch.rand(N, T, generator=g) > 0.4) & attn.bool()).float()
    return ids, attn, mask, torch.randn(N, generator=g)


def flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_micro_batch_invariance(tiny, loss_type):
    model = random_model(tiny, 2)
    ids, attn, mask, adv = random_batch(3)
    cfg = grpo.Settings(temperature=0.7, loss_type=loss_type, entropy_coef=0.01)
    grads = []
    for mbs in (8, 2):
        model.zero_grad(set_to_none=True)
        grpo.accumulate_gradients(model, ids, attn, mask, adv, replace(cfg, micro_batch_size=mbs))
        grads.append(flat_grad(model))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4) and grads[0].abs().sum() > 0
    # per-token advantages (B, T), as an advantage hook may give, are micro-batch invariant too
    per_token = adv[:, None] * torch.linspace(0.5, 1.5, ids.shape[1])[None]
    for mbs in (8, 3):
        model.zero_grad(set_to_none=True)
        grpo.accumulate_gradients(model, ids, attn, mask, per_token, replace(cfg, micro_batch_size=mbs))
        grads.append(flat_grad(model))
    assert torch.allclose(grads[2], grads[3], atol=1e-5, rtol=1e-4)


def test_every_minibatch_compares_with_the_policy_that_sampled(tiny):
    # Two optimiser steps per rollout (--minibatches 2, as GIFT's verl configs): the second minibatch must
    # see ratio != 1, because the first step moved the policy. Without old log-probs it would see exactly 1.
    ids, attn, mask, adv = random_batch(4)
    cfg = grpo.Settings(minibatches=2, micro_batch_size=8, lr=1e-2)

    def second_step_ratio(with_old):
        model = random_model(tiny, 6)
        old = grpo.batch_logps(model, ids, attn, cfg) if with_old else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        return grpo.update_policy(model, optimizer, ids, attn, mask, adv, cfg, old)["ratio"]
    assert second_step_ratio(False) == pytest.approx(1.0, abs=1e-7)
    assert abs(second_step_ratio(True) - 1.0) > 1e-3


def test_the_loop_computes_old_logps_whenever_the_policy_moves_within_a_rollout(tiny, tmp_path, monkeypatch):
    calls, real = [], grpo.batch_logps
    monkeypatch.setattr(grpo, "batch_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    small = grpo.Settings(steps=1, num_groups=2, group_size=2, eval_games=0, max_new_tokens=8)
    for kw, expected in (({}, 0), ({"minibatches": 2}, 1), ({"num_iterations": 2}, 1)):
        calls.clear()
        grpo.train(replace(small, out_dir=str(tmp_path / str(len(kw) and list(kw)[0])), **kw))
        assert len(calls) == expected, kw


def test_dapo_normalises_each_optimiser_step_like_trl(tiny):
    # TRL: dapo divides by (tokens of the generation batch) / (optimiser steps per rollout). With 2
    # minibatches, each step divides by half the batch's tokens, not all of them (which made it 2x weaker).
    ids, attn, mask, adv = random_batch(5)
    model = random_model(tiny, 7)
    cfg = grpo.Settings(loss_type="dapo", entropy_coef=0.0, micro_batch_size=8)
    half = slice(0, 4)
    model.zero_grad()
    grpo.accumulate_gradients(model, ids[half], attn[half], mask[half], adv[half], cfg, num_tokens=mask[:, 1:].sum() / 2)
    ours = flat_grad(model)
    model.zero_grad()
    logps, _ = grpo.token_logps_and_entropy(model, ids[half], attn[half])
    per_token = -adv[half, None] * torch.exp(logps - logps.detach())                # ratio 1, no clipping
    ((per_token * mask[half, 1:]).sum() / (mask[:, 1:].sum() / 2)).backward()
    assert torch.allclose(ours, flat_grad(model), atol=1e-6)


# -----------------------------------------------------------------------------
# 10-12. Opponents, run folders, resume, the command line
def test_opponent_specs_are_checked_before_anything_loads():
    assert [grpo.make_opponent(s) for s in ("random", "minimax", "model:self")] == ["random", "minimax", None]
    assert isinstance(grpo.make_opponent("http://h:1/v1#q"), games.OpenAIChatOpponent)
    for bad in ("greedy", "minimax:0.5", "model:", "ftp://x"):
        with pytest.raises(ValueError, match="--opponent"):
            grpo.make_opponent(bad)


def test_learning_rate_warm_up_hand_values():
    cfg = grpo.Settings(lr=1.0, lr_warmup_steps=4)
    assert [grpo.lr_at(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert grpo.lr_at(0, grpo.Settings(lr=3e-4)) == 3e-4                       # no warm-up: constant (verl)


def small(out, steps, **kw):
    return grpo.Settings(**{"out_dir": str(out), "steps": steps, "num_groups": 2, "group_size": 4, "eval_games": 4, **kw})


def read_log(path):
    return [json.loads(line) for line in open(path)]


def test_resume_continues_exactly(tmp_path):
    grpo.train(small(tmp_path / "straight", 4))
    grpo.train(small(tmp_path / "halves", 2))
    grpo.train(grpo.parse_settings(grpo.Settings, ["--out-dir", str(tmp_path / "halves"), "--resume", "--steps", "4"]))
    a, b = read_log(tmp_path / "straight" / "log.jsonl"), read_log(tmp_path / "halves" / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("reward_mean", "loss", "grad_norm", "entropy"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert json.load(open(tmp_path / "straight" / "eval.json")) == json.load(open(tmp_path / "halves" / "eval.json"))


def test_a_fresh_run_never_deletes_an_earlier_one(tmp_path):
    out = tmp_path / "run"
    grpo.train(small(out, 1, eval_games=0))
    stamp = (out / "log.jsonl").read_text()
    with pytest.raises(SystemExit, match="--resume.*--overwrite"):
        grpo.train(small(out, 1, eval_games=0))
    assert (out / "log.jsonl").read_text() == stamp                             # nothing lost
    grpo.train(small(out, 1, eval_games=0, seed=1, overwrite=True))             # asked for: replaced
    assert (out / "log.jsonl").read_text() != stamp
    with pytest.raises(SystemExit, match="no checkpoint"):
        grpo.train(small(tmp_path / "empty", 1, resume=True))


def test_end_to_end_cli_writes_logs_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    grpo.main(["--steps", "2", "--num-groups", "2", "--group-size", "4", "--eval-games", "6",
               "--out-dir", str(out), "--filter-ratio", "0.5", "--loss-type", "dr_grpo", "--minibatches", "2"])
    log = read_log(out / "log.jsonl")
    assert len(log) == 2 and log[0]["kept_episodes"] == 4                       # half of the 2 groups of 4
    for key in ("reward_mean", "reward_std", "zero_std_groups", "truncated_turns", "response_tokens", "entropy",
                "kl", "clip_low", "clip_high", "grad_norm", "lr", "seconds", "rate_success"):
        assert key in log[0], key
    assert json.load(open(out / "args.json"))["minibatches"] == 2
    assert os.path.exists(out / "checkpoint" / "config.json")
    printed = capsys.readouterr().out
    assert "| before |" in printed and "| after |" in printed
    with pytest.raises(SystemExit):
        grpo.main(["--loss-type", "sum"])                                      # choices are checked


@pytest.mark.slow
def test_the_default_run_learns_and_its_answers_end_where_they_end(tmp_path):
    # `python grpo.py` as the README runs it (~10 min on 2 cores): it learns (57.0% -> 73.0% greedy wins on
    # torch 2.13.0+cpu; 60.5-73.0% over seeds 0-3, docs/LOG.md), and the sampled answers stay short: no drift of
    # "</answer></answer>..." to the 24-token limit. (Issue #13's 75% is not reached: docs/RESULTS.md.)
    before, after = grpo.train(grpo.Settings(out_dir=str(tmp_path / "default")))
    log = read_log(tmp_path / "default" / "log.jsonl")
    assert after["win"] >= 0.70 and after["win"] >= before["win"] + 0.10
    assert max(r["response_tokens"] for r in log) < 6 and max(r["truncated_turns"] for r in log) < 0.05


# -----------------------------------------------------------------------------
# benchmarks/grpo_vs_trl.py: without TRL, the script explains and exits 0
def test_trl_benchmark_without_trl_says_how_to_install(monkeypatch, capsys):
    import importlib.util
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / "grpo_vs_trl.py"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real_find_spec(name, *a))
    assert bench["main"]([]) == 0
    assert "pip install -r scale/requirements.txt" in capsys.readouterr().out
