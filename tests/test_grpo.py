"""Tests of grpo.py: hand-computed tensors first, then the properties of a real multi-turn rollout.

The numbers in the comments are worked by hand; the code must reproduce them to 1e-6.
"""
import json
import math
import os
from pathlib import Path

import pytest
import torch

import games
import grpo


# -----------------------------------------------------------------------------
# Group advantages
def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.5, 1.0])  # one group of 4
    # mean 0.625, unbiased std sqrt(0.6875 / 3) = 0.478714 -> A = (r - 0.625) / 0.478714
    expected = torch.tensor([0.783349, -1.305582, -0.261116, 0.783349])
    assert torch.allclose(grpo.group_advantages(r, 4), expected, atol=1e-5)


def test_zero_variance_group_gets_exactly_zero():
    r = torch.tensor([0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 0.0])
    adv = grpo.group_advantages(r, 4)
    assert torch.equal(adv[:4], torch.zeros(4))
    # second group: mean 0.5, unbiased std sqrt(1/3) = 0.577350 -> +-0.866025
    assert torch.allclose(adv[4:], torch.tensor([0.866025, -0.866025, 0.866025, -0.866025]), atol=1e-5)


def test_group_advantages_batch_and_none_scaling():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])  # two groups of 2
    # none: r - group mean = [0.5, -0.5, 0, 0]; the zero-variance group stays 0
    assert torch.allclose(grpo.group_advantages(r, 2, scale="none"), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    # batch: divide by the std of all four rewards, unbiased: sqrt(0.75 / 3) = 0.5 -> [1, -1, 0, 0]
    assert torch.allclose(grpo.group_advantages(r, 2, scale="batch"), torch.tensor([1.0, -1.0, 0.0, 0.0]), atol=1e-5)
    with pytest.raises(ValueError):
        grpo.group_advantages(r, 2, scale="bogus")


def test_filter_keeps_the_groups_with_largest_std():
    r = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5])  # stds: 0, 0.707, 0, 0.354
    assert grpo.filter_groups(r, 2, 0.5) == [2, 3, 6, 7]
    assert grpo.filter_groups(r, 2, 0.25) == [2, 3]
    assert grpo.filter_groups(r, 2, 1.0) == list(range(8))


# -----------------------------------------------------------------------------
# The loss, every aggregation, on one hand-worked example
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
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logps, old, adv, mask


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


# Turn discount, by hand: a row with two learner turns (runs of 1s in the mask), gamma = 0.5.
#   mask [1, 0, 1, 1] -> the first turn is 1 turn before the end: weights [0.5, 1, 1, 1]
#   ratio 1, A = 2: grpo token losses -A w = [-1, 0, -2, -2], row mean over 3 sampled tokens = -5/3
def test_turn_discount_hand_computed():
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    w = grpo.turn_weights(mask, 0.5)
    assert torch.equal(w, torch.tensor([[0.5, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    three_turns = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    assert torch.equal(grpo.turn_weights(three_turns, 0.5), torch.tensor([[1.0, 0.25, 1.0, 0.5, 0.5, 1.0, 1.0]]))
    adv = torch.tensor([2.0, -1.0])[:, None] * w                                    # (B, T)
    zeros = torch.zeros(2, 4)
    loss, _ = grpo.grpo_loss(zeros, zeros, adv, mask, loss_type="grpo")
    assert float(loss) == pytest.approx((-5 / 3 + 1.0) / 2, abs=1e-6)               # row 1: -(-1) * 1
    # gamma = 1 as a (B, T) tensor is exactly the (B,) loss
    one, _ = grpo.grpo_loss(zeros, zeros, torch.tensor([2.0, -1.0])[:, None] * grpo.turn_weights(mask, 1.0), mask)
    base, _ = grpo.grpo_loss(zeros, zeros, torch.tensor([2.0, -1.0]), mask)
    assert float(one) == float(base)
    with pytest.raises(ValueError, match="turn-discount"):
        grpo.train(dict(grpo.defaults(), turn_discount=0.0))
    with pytest.raises(ValueError, match="tactic-start"):
        grpo.train(dict(grpo.defaults(), game="matrix", tactic_start=0.5))
    with pytest.raises(ValueError, match="tactic-start"):
        grpo.train(dict(grpo.defaults(), tactic_start=1.5))


def test_clipped_tokens_get_zero_gradient():
    logps, old, adv, mask = loss_example()
    loss, _ = grpo.grpo_loss(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, loss_type="grpo")
    loss.backward()
    g = logps.grad
    # clipped tokens: no gradient. Unclipped: d(-r A)/dlogp = -r A, / tokens of the row / 2 rows
    assert g[0, 0] == 0 and g[1, 0] == 0
    assert g[0, 1] == pytest.approx(-1.0 / 2 / 2)
    assert g[1, 1] == pytest.approx(0.5 / 3 / 2)
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
    """Our grpo_loss against TRL 1.16.0's `_compute_loss` aggregation, re-derived on plain tensors
    (one micro-batch, GA = 1, beta = 0.04 with use_bias_correction_kl=False, token-level ratio)."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    logps = -torch.rand(B, T, generator=g) * 3
    old = logps + 0.3 * torch.randn(B, T, generator=g)
    ref = logps + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    # TRL's per-token loss: -min(coef_1 * A, coef_2 * A) + beta * (exp(ref - logp) - (ref - logp) - 1)
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.28)
    per_tok = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    per_tok = per_tok + 0.04 * (torch.exp(ref - logps) - (ref - logps) - 1)
    trl = {"grpo": ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean(),
           "bnpo": (per_tok * mask).sum() / mask.sum().clamp(min=1.0),
           "dr_grpo": (per_tok * mask).sum() / (B * 16),
           "dapo": (per_tok * mask).sum() / mask.sum()}
    for loss_type, expected in trl.items():
        ours, _ = grpo.grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.04, eps_low=0.2, eps_high=0.28,
                                 loss_type=loss_type, max_completion_length=16)
        assert float(ours) == pytest.approx(float(expected), abs=1e-6), loss_type


# -----------------------------------------------------------------------------
# Models: the tiny model round-trips through from_pretrained
def test_tiny_roundtrip_through_from_pretrained(tmp_path):
    tok = grpo.build_tiny_tokenizer()
    model = grpo.build_tiny_model(tok, seed=1)
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n_params <= 5_000_000
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = grpo.load_policy(str(tmp_path))
    text = "<|user|>x.o\n...\n..x<|assistant|><answer>(2,3)</answer><|end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids
    assert tok2.decode(ids) == text
    # the tags and the nine TicTacToe moves are single tokens; any other text is one token per byte
    assert len(tok2("<answer>", add_special_tokens=False)["input_ids"]) == 1
    moves = tok2("".join(grpo.TINY_MOVES), add_special_tokens=False)["input_ids"]
    assert len(moves) == 9 and len(set(moves)) == 9 and tok2.decode(moves) == "".join(grpo.TINY_MOVES)
    assert len(tok2("(4,1)", add_special_tokens=False)["input_ids"]) == 5      # not a move: five bytes
    odd = "héllo\n\n  wörld ☃ 12"
    assert len(tok2(odd, add_special_tokens=False)["input_ids"]) == len(odd.encode("utf-8"))
    assert tok2.decode(tok2(odd, add_special_tokens=False)["input_ids"]) == odd
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)


# -----------------------------------------------------------------------------
# Micro-batch invariance: 1 vs 4 micro-batches give the same gradient, for every loss type
@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_micro_batch_invariance(loss_type):
    tok = grpo.build_tiny_tokenizer()
    model = grpo.build_tiny_model(tok, seed=2)
    g = torch.Generator().manual_seed(3)
    N, T = 8, 20
    ids = torch.randint(10, 100, (N, T), generator=g)
    lengths = torch.randint(8, T + 1, (N,), generator=g)
    attn = (torch.arange(T)[None] < lengths[:, None]).long()
    mask = ((torch.rand(N, T, generator=g) > 0.4) & attn.bool()).float()
    adv = torch.randn(N, generator=g)
    cfg = dict(temperature=0.7, loss_type=loss_type, beta=0.0, eps_low=0.2, eps_high=0.28, entropy_coef=0.01,
               max_completion_length=T)
    grads = []
    for mbs in (8, 2):
        model.zero_grad(set_to_none=True)
        grpo.accumulate_gradients(model, ids, attn, mask, adv, dict(cfg, micro_batch_size=mbs))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_per_token_advantages_micro_batch_invariant_and_equal_at_gamma_1():
    tok = grpo.build_tiny_tokenizer()
    model = grpo.build_tiny_model(tok, seed=2)
    g = torch.Generator().manual_seed(4)
    N, T = 8, 20
    ids = torch.randint(10, 100, (N, T), generator=g)
    attn = torch.ones(N, T, dtype=torch.long)
    mask = ((torch.rand(N, T, generator=g) > 0.4)).float()
    adv = torch.randn(N, generator=g)
    cfg = dict(temperature=1.0, loss_type="grpo", beta=0.0, eps_low=0.2, eps_high=0.28, entropy_coef=0.0)

    def grad(a, mbs):
        model.zero_grad(set_to_none=True)
        grpo.accumulate_gradients(model, ids, attn, mask, a, dict(cfg, micro_batch_size=mbs))
        return torch.cat([p.grad.flatten() for p in model.parameters()])
    flat = grad(adv, 8)
    assert torch.allclose(grad(adv[:, None] * grpo.turn_weights(mask, 1.0), 8), flat, atol=1e-7)
    per_token = adv[:, None] * grpo.turn_weights(mask, 0.5)
    assert torch.allclose(grad(per_token, 8), grad(per_token, 2), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(grad(per_token, 8), flat, atol=1e-4)                 # the discount does act


# -----------------------------------------------------------------------------
# A real multi-turn TicTacToe rollout with the warm-started tiny model
@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A quickly warm-started tiny model (fewer steps than the default, same code)."""
    path = str(tmp_path_factory.mktemp("tiny"))
    grpo.ensure_tiny(path, steps=60, game_names=("tictactoe",))
    return grpo.load_policy(path)


def test_env_rng_shared_or_per_game(tiny):
    # Greedy decoding is deterministic, so with one seed and shared dice the 8 games are one game; with a
    # stream per game the start is the same but the random opponent's replies differ.
    model, tok = tiny
    def play(streams):
        envs = [games.make_env("tictactoe", compact=True) for _ in range(8)]
        eps = grpo.rollout(model, tok, envs, [3] * 8, temperature=0.0, max_new=24, streams=streams)
        return [tuple(ep.ids) for ep in eps], [ep.messages[0]["content"] for ep in eps]
    shared, firsts = play(None)
    assert len(set(shared)) == 1
    per_game, firsts_pg = play(list(range(8)))
    assert len(set(per_game)) > 1 and set(firsts_pg) == set(firsts)          # same start state
    assert play(list(range(8)))[0] == per_game                                 # and reproducible
    assert grpo.parse_args(["--env-rng", "per-game"])["env_rng"] == "per-game"
    with pytest.raises(SystemExit):
        grpo.parse_args(["--env-rng", "sometimes"])


def test_rollout_keeps_exact_sampled_ids_and_mask(tiny, monkeypatch):
    model, tok = tiny
    sampled = []
    real = grpo.generate_batch

    def recording(*a, **k):
        out = real(*a, **k)
        sampled.append(out)
        return out
    monkeypatch.setattr(grpo, "generate_batch", recording)
    envs = [games.make_env("tictactoe", compact=True, opponent="random") for _ in range(6)]
    torch.manual_seed(0)
    eps = grpo.rollout(model, tok, envs, list(range(6)), temperature=1.0, max_new=24)
    assert any(ep.turns >= 3 for ep in eps)  # really multi-turn
    eos = tok.eos_token_id
    for i, ep in enumerate(eps):
        assert len(ep.ids) == len(ep.mask)
        # The mask-1 tokens are exactly what generate returned, turn by turn, cut after the first EOS.
        mine = [ep.ids[t] for t in range(len(ep.ids)) if ep.mask[t] == 1]
        turns = []
        for turn_outputs, actives in zip(sampled, active_lists(eps, len(sampled))):
            if i in actives:
                new = turn_outputs[actives.index(i)]
                turns += new[: new.index(eos) + 1] if eos in new else new
        assert mine == turns
        # The mask-0 tokens are the chat template and the environment's text, nothing else:
        # decoding the whole sequence gives back the rendered conversation.
        assert tok.decode(ep.ids) == grpo.render(tok, ep.messages, add_generation_prompt=False)
        # every sampled answer ends with EOS inside the mask (the model learns to stop)
        ends = [t for t in range(len(ep.ids)) if ep.ids[t] == eos]
        assert all(ep.mask[t] == 1 for t in ends) or ep.cut_turns > 0


def active_lists(eps, n_turns):
    """Which episode indices took part in each generate call (episodes drop out when done)."""
    return [[i for i, e in enumerate(eps) if e.turns > turn] for turn in range(n_turns)]


def test_generation_logps_equal_training_logps(tiny):
    """ratio = 1 on-policy: the training forward pass reproduces the sampling distribution."""
    model, tok = tiny
    envs = [games.make_env("tictactoe", compact=True) for _ in range(4)]
    prompts = [grpo.start_episode(tok, env, s, s).ids for s, env in enumerate(envs)]
    prompts[1] = prompts[1][3:]  # different lengths -> real left padding
    config = grpo.generation_config(tok, model, 0.8, 1.0, 10)
    config.output_scores, config.return_dict_in_generate = True, True
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=config)
    gen_lp = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, out.sequences[:, width:, None])[..., 0]
    for row, p in enumerate(prompts):
        new = out.sequences[row, width:].tolist()
        n = new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else len(new)
        seq = torch.tensor([p + new[:n]])
        with torch.no_grad():
            lp, _ = grpo.token_logps_and_entropy(model, seq, torch.ones_like(seq), temperature=0.8)
        assert torch.allclose(lp[0, len(p) - 1:], gen_lp[row, :n], atol=1e-4)


def test_environment_tokens_get_zero_gradient_but_are_attended(tiny):
    model, tok = tiny
    envs = [games.make_env("tictactoe", compact=True, opponent="random") for _ in range(4)]
    torch.manual_seed(1)
    eps = grpo.rollout(model, tok, envs, [5, 6, 7, 8], temperature=1.0, max_new=24)
    ids, attn, mask = grpo.pad_batch(eps, tok.pad_token_id)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])

    def loss_of(input_ids):
        logps, _ = grpo.token_logps_and_entropy(model, input_ids, attn)
        if logps.requires_grad:
            logps.retain_grad()
        loss, _ = grpo.grpo_loss(logps, logps.detach(), adv, mask[:, 1:])
        return loss, logps

    loss, logps = loss_of(ids)
    loss.backward()
    env_positions = (mask[:, 1:] == 0)
    assert torch.count_nonzero(logps.grad[env_positions]) == 0          # exactly zero on env tokens
    assert torch.count_nonzero(logps.grad[~env_positions]) > 0
    # ... but they are attended to: change one board character before an answer, and the log-probs of
    # the answer tokens after it move. (The loss VALUE is no witness: on-policy it is -sum_i A_i / B = 0
    # here, whatever the board says.)
    row = int(torch.tensor([ep.turns for ep in eps]).argmax())
    first_answer = eps[row].mask.index(1)
    changed = ids.clone()
    changed[row, first_answer - 3] = tok.convert_tokens_to_ids("x") if ids[row, first_answer - 3] != \
        tok.convert_tokens_to_ids("x") else tok.convert_tokens_to_ids("o")
    with torch.no_grad():
        _, moved = loss_of(changed)
    answer_positions = mask[row, 1:] == 1
    assert not torch.allclose(moved[row][answer_positions], logps.detach()[row][answer_positions])


# -----------------------------------------------------------------------------
# The loop: a short run, and resume continuing the same RNG stream
def small_cfg(out, steps, **kw):
    cfg = grpo.defaults()
    cfg.update(out_dir=str(out), steps=steps, num_groups=2, group_size=4, eval_games=4, save_every=2,
               sample_every=1, **kw)
    return cfg


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_resume_continues_exactly(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(grpo, "TINY_DIR", tiny[0].name_or_path)
    straight = tmp_path / "straight"
    grpo.train(small_cfg(straight, 4))
    halves = tmp_path / "halves"
    grpo.train(small_cfg(halves, 2))
    cfg = grpo.parse_args(["--resume", str(halves), "--steps", "4"])
    grpo.train(cfg)
    a, b = read_log(straight / "log.jsonl"), read_log(halves / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("reward_mean", "loss", "grad_norm", "entropy"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    ea, eb = json.load(open(straight / "eval.json")), json.load(open(halves / "eval.json"))
    assert ea == eb


def test_end_to_end_cli_writes_logs_and_checkpoint(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(grpo, "TINY_DIR", tiny[0].name_or_path)
    out = tmp_path / "run"
    grpo.main(["--steps", "2", "--num-groups", "2", "--group-size", "4", "--eval-games", "6",
               "--out-dir", str(out), "--filter-ratio", "0.5", "--loss-type", "dr_grpo", "--sample-every", "1"])
    log = read_log(out / "log.jsonl")
    assert len(log) == 2
    for key in ("reward_mean", "reward_std", "zero_std_groups", "truncated_turns", "response_tokens", "entropy",
                "kl", "clip_low", "clip_high", "grad_norm", "lr", "tokens_per_s", "seconds", "rate_success"):
        assert key in log[0], key
    assert log[0]["kept_episodes"] == 4  # half of the 2 groups of 4
    assert os.path.exists(out / "checkpoint" / "config.json")
    assert os.path.exists(out / "samples.jsonl")
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed


# -----------------------------------------------------------------------------
# benchmarks/grpo_vs_trl.py: TRL is not a dependency; without it the script explains and exits 0
def test_trl_benchmark_without_trl_says_how_to_install(monkeypatch, capsys):
    import importlib.util
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / "grpo_vs_trl.py"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real_find_spec(name, *a))
    assert bench["main"]([]) == 0
    out = capsys.readouterr().out
    assert "pip install trl==1.16.0" in out and "benchmarks/grpo_vs_trl.py" in out


def test_ensure_tiny_rebuilds_a_cache_from_an_older_recipe(tmp_path):
    # An old cache: a model folder without the recipe stamp (as every tiny before recipe 2 was).
    (tmp_path / "config.json").write_text("{}")
    grpo.ensure_tiny(str(tmp_path), steps=2, game_names=("tictactoe",))
    stamp = json.loads((tmp_path / "tiny_recipe.json").read_text())
    assert stamp["version"] == grpo.TINY_RECIPE_VERSION and stamp["steps_per_phase"] == 2
    model, tok = grpo.load_policy(str(tmp_path))                      # a real model now
    assert len(tok) == model.config.vocab_size and "(2,3)" in tok.get_vocab()
    mtime = (tmp_path / "config.json").stat().st_mtime
    grpo.ensure_tiny(str(tmp_path), steps=2, game_names=("tictactoe",))   # current recipe: kept as is
    assert (tmp_path / "config.json").stat().st_mtime == mtime


# -----------------------------------------------------------------------------
# benchmarks/gpu_steps.py: the published architectures, and the script end to end on a CPU stand-in
def test_gpu_benchmark_builds_the_published_qwen_sizes_and_runs_on_cpu(tmp_path):
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_steps.py"))
    # Parameter counts of Qwen2.5-0.5B and -1.5B as published (tied embeddings), built on the meta device.
    for size, published in (("0.5b", 494_032_768), ("1.5b", 1_543_714_304)):
        model = bench["build_model"](size, "meta", torch.float32, 0)
        assert sum(p.numel() for p in model.parameters()) == published
    out = tmp_path / "g.json"
    bench["main"](["--sizes", "test", "--device", "cpu", "--cases", "grpo,sft,ratio", "--num-groups", "2",
                   "--group-size", "2", "--prompt-len", "6", "--completion-len", "4", "--sft-batch", "2",
                   "--sft-len", "8", "--repeats", "1", "--out", str(out)])
    grpo_r, sft_r, ratio_r = json.loads(out.read_text())["results"]
    assert grpo_r["episodes"] == 4
    assert grpo_r["update_tok_per_s"] * grpo_r["update_s"] == pytest.approx(4 * (6 + 4))
    assert sft_r["tok_per_s"] * sft_r["step_s"] == pytest.approx(2 * 8)
    # On the CPU autocast is off: old and training log-probs are the same computation, ratio exactly 1.
    assert ratio_r["old_fp32_max_abs_ratio_minus_1"] == 0.0 and ratio_r["old_bf16_max_abs_ratio_minus_1"] == 0.0


def test_learning_rate_schedule_hand_values():
    cfg = dict(lr=1.0, steps=10, lr_warmup_steps=2, lr_decay="cosine")
    # warm-up: (s + 1) / W; then 0.5 * (1 + cos(pi * (s - 2) / 8))
    assert [grpo.lr_at(s, cfg) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert grpo.lr_at(6, cfg) == pytest.approx(0.5, abs=1e-12)       # half way through the decay
    assert grpo.lr_at(9, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)), abs=1e-12)
    assert [grpo.lr_at(s, dict(cfg, lr_decay="none")) for s in (0, 5, 9)] == [0.5, 1.0, 1.0]
    assert grpo.lr_at(0, dict(lr=3e-4, steps=5)) == 3e-4                # old configs: no warm-up, constant


def test_noisy_minimax_and_eval_opponent_flags():
    assert grpo.make_opponent("minimax:0.5", None, "cpu", None, 8) == "minimax:0.5"   # handed to games.py as is
    cfg = grpo.parse_args(["--opponent", "minimax:0.5", "--eval-opponent", "random"])
    assert (cfg["opponent"], cfg["eval_opponent"]) == ("minimax:0.5", "random")
    assert grpo.parse_args([])["eval_opponent"] == ""                                  # default: the same opponent
    # The spec is checked before anything loads: a bad P or an unknown name fails at once.
    assert [grpo.opponent_kind(s) for s in ("random", "minimax:0.3", "greedy", "greedy:1", "model:self",
                                            "http://h:1/v1")] == ["bot", "bot", "bot", "bot", "model", "http"]
    for bad in ("minimax:2", "minimaxx"):
        with pytest.raises(ValueError, match="minimax:P"):
            grpo.opponent_kind(bad)


def test_supervised_ceiling_counts_and_learns(tmp_path):
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / "supervised_ceiling.py"))
    tok = grpo.build_tiny_tokenizer()
    grpo.build_tiny_model(tok, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    counts = {task: len(bench["examples"](task, tok)) for task in ("block", "win", "matrix")}
    assert counts == {"block": 976, "win": 2358, "matrix": 96}
    # Every matrix example's right answer is its equilibrium action, one of the six candidates.
    prompt, candidates, right = bench["examples"]("matrix", tok)[0]
    assert len(candidates) == 6 and len(right) == 1 and right <= set(candidates)
    # From random weights, 20 steps already beat the start (which picks about 1 answer in 6).
    history = bench["run"]("matrix", str(tmp_path), steps=20, batch=16, lr=2e-3, every=20)
    assert [h[0] for h in history] == [0, 20]
    assert history[-1][2] > history[0][2] + 0.25
