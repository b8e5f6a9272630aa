"""Tests of glow_sft.py: the GLOW weights by hand, the loss mask, the data checks, exact resume, and
short end-to-end runs of every mode and subcommand. CPU only; the whole file runs in well under a minute.

The numbers in the comments are worked by hand; the code must reproduce them to 1e-5.
"""
import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import games
import glow_sft
import grpo


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are tiny: a second thread only adds synchronisation, and on a shared 2-core machine
    # it can make every step several times slower. Restored after this file.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# -----------------------------------------------------------------------------
# 1. GLOW weights: w = clamp(alpha * (1 - sigmoid(beta * gain)), 0.5, 5), gain = prev - curr
def test_glow_weights_hand_computed():
    prev = torch.tensor([1.0, 1.0, 1.0, 1.0])
    curr = torch.tensor([1.1, 1.05, 1.0, 0.8])                  # gains -0.1, -0.05, 0, +0.2
    # alpha 2, beta 10: 2(1 - sigmoid(-1)) = 1.462117; 2(1 - sigmoid(-0.5)) = 1.244918; 2 * 0.5 = 1;
    # 2(1 - sigmoid(2)) = 0.238406 -> clamped up to 0.5
    w = glow_sft.glow_weights(prev, curr, alpha=2.0, beta=10.0)
    assert torch.allclose(w, torch.tensor([1.462117, 1.244918, 1.0, 0.5]), atol=1e-5)


def test_glow_defaults_give_exactly_half_to_every_sample_whose_loss_did_not_rise():
    # alpha 1, beta 20 (official defaults): gain 0.05 -> 1 - sigmoid(1) = 0.268941 -> 0.5; gain 0 -> 0.5;
    # gain -0.1 (loss rose) -> 1 - sigmoid(-2) = 0.880797
    prev = torch.tensor([1.0, 1.0, 1.0])
    curr = torch.tensor([0.95, 1.0, 1.1])
    w = glow_sft.glow_weights(prev, curr)
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 0.880797]), atol=1e-5)
    assert float(w.max()) <= 1.0                                # the upper clamp 5 is never reached with alpha 1


def test_glow_offset_variant_and_upper_clamp():
    prev, curr = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.1])
    # 1 + alpha(1 - sigmoid(beta * gain)): gain 0 -> 1.5; gain -0.1 -> 1 + (1 - sigmoid(-2)) = 1.880797
    w = glow_sft.glow_weights(prev, curr, offset=True)
    assert torch.allclose(w, torch.tensor([1.5, 1.880797]), atol=1e-5)
    # alpha 10, beta 10, gain -1: 10(1 - sigmoid(-10)) = 9.99955 -> clamped to 5
    w = glow_sft.glow_weights(torch.tensor([0.0]), torch.tensor([1.0]), alpha=10.0, beta=10.0)
    assert torch.allclose(w, torch.tensor([5.0]))


def test_unseen_ids_use_the_current_batch_mean():
    # prev = [NaN, 1.0], curr = [0.5, 1.5]: the NaN becomes mean(curr) = 1.0, so gains are 0.5 and -0.5.
    # alpha 2, beta 10: 2(1 - sigmoid(5)) = 0.013386 -> 0.5;  2(1 - sigmoid(-5)) = 1.986614
    w = glow_sft.glow_weights(torch.tensor([float("nan"), 1.0]), torch.tensor([0.5, 1.5]), alpha=2.0, beta=10.0)
    assert torch.allclose(w, torch.tensor([0.5, 2 * (1 - sigmoid(-5))]), atol=1e-5)


def test_weights_carry_no_gradient():
    curr = torch.tensor([0.5, 1.5], requires_grad=True)
    w = glow_sft.glow_weights(torch.tensor([1.0, 1.0]), curr)
    assert not w.requires_grad


# -----------------------------------------------------------------------------
# 2. The loss: response tokens only, token mean per sample
@pytest.fixture(scope="module")
def tiny():
    """tiny's architecture and tokenizer with fresh weights (the experiment's "scratch" model)."""
    return glow_sft.load_model(glow_sft.Settings(seed=0))


def test_collate_labels_only_the_response_and_its_eos(tiny):
    _, tok = tiny
    ids, n_prompt = glow_sft.encode_trajectory(tok, {"id": "a", "prompt": "1+2=?", "response": "3"})
    batch = glow_sft.collate([(ids, n_prompt)], tok.pad_token_id)
    labels = batch["labels"][0]
    assert (labels[:n_prompt] == glow_sft.IGNORE).all()
    assert labels[n_prompt:].tolist() == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[n_prompt:-1]) == "3"
    assert tok.decode(ids[:n_prompt]).endswith("<|assistant|>")


def test_per_sample_loss_is_a_token_mean_over_response_tokens(tiny):
    model, tok = tiny
    long = {"id": "a", "prompt": "7+5=?", "response": "Step 1: 7 + 5 = 12\n<answer>12</answer>"}
    short = {"id": "b", "prompt": "2*3-1=?", "response": "<answer>5</answer>"}
    examples = [glow_sft.encode_trajectory(tok, t) for t in (long, short)]
    batch = glow_sft.collate(examples, tok.pad_token_id)
    with torch.no_grad():
        got = glow_sft.per_sample_loss(model, batch)
        # By hand, one sequence at a time, no padding: -mean over t >= n_prompt of log p(ids_t | ids_<t)
        for row, (ids, n_prompt) in enumerate(examples):
            logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)    # (T, V)
            manual = -sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))) / (len(ids) - n_prompt)
            assert abs(float(got[row]) - manual) < 1e-4
    # A prompt token never counts: put it in the labels and the loss changes, take it out and it is back.
    leaky = {k: v.clone() for k, v in batch.items()}
    leaky["labels"][0, 2] = leaky["input_ids"][0, 2]
    with torch.no_grad():
        assert abs(float(glow_sft.per_sample_loss(model, leaky)[0]) - float(got[0])) > 1e-6
        # Changing a prompt input token changes the context but its own label stays -100: the mask holds.
        assert float((batch["labels"][:, :examples[0][1]] != glow_sft.IGNORE).sum()) == 0


def test_long_and_short_responses_weigh_equally(tiny):
    model, tok = tiny
    trajs = [{"id": "a", "prompt": "1+1=?", "response": "Step 1: 1 + 1 = 2\nStep 2: 2 + 0 = 2\n<answer>2</answer>"},
             {"id": "b", "prompt": "1+1=?", "response": "<answer>2</answer>"}]
    batch = glow_sft.collate([glow_sft.encode_trajectory(tok, t) for t in trajs], tok.pad_token_id)
    with torch.no_grad():
        l = glow_sft.per_sample_loss(model, batch)
        # The batch loss with weights 1 is the plain mean of the two per-sample means, whatever their lengths.
        flat = F.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
                               .reshape(-1, len(tok)), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert abs(float(l.mean()) - float(flat)) > 1e-4            # standard token-level SFT would differ
    assert torch.allclose(l.mean(), (l[0] + l[1]) / 2)


def test_train_step_reads_and_writes_the_history_by_id(tiny):
    model, tok = tiny
    model = type(model)(model.config)                           # a private copy; the fixture stays untouched
    cfg = glow_sft.Settings(micro_batch_size=1)
    trajs = [{"id": "x", "prompt": "1+1=?", "response": "<answer>2</answer>"},
             {"id": "y", "prompt": "2+2=?", "response": "<answer>4</answer>"}]
    batch = glow_sft.collate([glow_sft.encode_trajectory(tok, t) for t in trajs], tok.pad_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    history = {"x": 0.0, "y": 100.0}                            # x got much worse since, y much better
    stats = glow_sft.train_step(model, opt, None, batch, cfg, epoch=1, history=dict(history), sample_ids=["x", "y"],
                                correct=[True, False])
    assert stats["w_max"] > 0.99 and stats["w_min"] == 0.5      # x: w ~ 1 (loss rose), y: 0.5
    assert stats["rose"] == 0.5 and stats["pos_loss"] is not None and stats["neg_loss"] is not None
    glow_sft.train_step(model, opt, None, batch, cfg, epoch=1, history=history, sample_ids=["x", "y"])
    assert history["x"] > 0.0 and history["y"] < 100.0          # overwritten with this visit's losses
    # epoch 0 (official: epoch < 1) and --weighting none train unweighted: every w is exactly 1
    for epoch, weighting in ((0, "glow"), (3, "none")):
        stats = glow_sft.train_step(model, opt, None, batch, glow_sft.Settings(weighting=weighting), epoch=epoch,
                                    history={"x": 0.0, "y": 100.0}, sample_ids=["x", "y"])
        assert stats["w_min"] == stats["w_max"] == 1.0


# -----------------------------------------------------------------------------
# 3. Data checks: every error names the file and the line
def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


GOOD = '{"id": "a", "prompt": "1+1=?", "response": "<answer>2</answer>", "correct": true}'


@pytest.mark.parametrize("bad, message", [
    ('{"id": "a", "prompt": "1+1=?", "response": "x", "correct": true', "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"prompt": "1+1=?", "response": "x", "correct": true}', "'id'"),
    ('{"id": "b", "response": "x", "correct": true}', "exactly one of 'prompt'"),
    ('{"id": "b", "prompt": "1+1=?", "correct": true}', "'response'"),
    ('{"id": "b", "prompt": "1+1=?", "response": "x", "correct": "yes"}', "'correct'"),
    ('{"id": "b", "prompt": "1+1=?", "response": "x", "correct": 1}', "'correct'"),
    ('{"id": "b", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}], '
     '"response": "x", "correct": true}', "must end before the response"),
    ('{"id": "a", "prompt": "1+1=?", "response": "x", "correct": false}', "duplicate id 'a' (first used on line 1)"),
])
def test_bad_lines_stop_with_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "t.jsonl", [GOOD, "", bad])
    with pytest.raises(glow_sft.DataError) as e:
        glow_sft.read_trajectories(path)
    assert str(e.value).startswith(f"{path}:3:") and message in str(e.value)


def test_the_example_file_in_the_repository_is_valid():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "glow_example.jsonl")
    rows = glow_sft.read_trajectories(path)
    assert {"prompt", "messages"} <= {k for r in rows for k in r}
    for r in rows:
        assert games.check_answer(r["response"], r["answer"]) == r["correct"]


def test_question_files_need_an_answer(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", ['{"prompt": "1+1=?", "answer": 2}', '{"prompt": "2+2=?"}'])
    with pytest.raises(glow_sft.DataError, match=r"q\.jsonl:2: field 'answer'"):
        glow_sft.read_questions(path)


# -----------------------------------------------------------------------------
# 4. make-data: positives are right, negatives wrong, ids unique, tests disjoint from training
def test_make_data_labels_match_the_answer_checker(tmp_path):
    glow_sft.main(["make-data", "--out-dir", str(tmp_path), "--n-train", "50", "--n-test", "20"])
    train = glow_sft.read_trajectories(str(tmp_path / "train.jsonl"))   # also checks the ids are unique
    assert len(train) == 100 and sum(t["correct"] for t in train) == 50
    for t in train:
        assert games.check_answer(t["response"], t["answer"]) == t["correct"]
    # A negative's steps are valid except one slip: same question, same number of steps as its positive.
    pos, neg = train[0], train[1]
    assert pos["id"] == "q0-pos" and neg["id"] == "q0-neg" and pos["prompt"] == neg["prompt"]
    assert pos["response"].count("Step") == neg["response"].count("Step")
    seen = {t["prompt"] for t in train}
    for name in ("test_id", "test_near", "test_ood"):
        qs = glow_sft.read_questions(str(tmp_path / f"{name}.jsonl"))
        assert len(qs) == 20 and not seen & {q["prompt"] for q in qs}
    assert all("/" in q["prompt"] for q in glow_sft.read_questions(str(tmp_path / "test_ood.jsonl")))


# -----------------------------------------------------------------------------
# 5. Training end to end: every mode, exact resume, LoRA, distillation, evaluation
def small_data(tmp_path, n=12):
    glow_sft.make_data(str(tmp_path / "data"), n, 4, 0, steps=1, max_operand=5)
    return {k: str(tmp_path / "data" / f"{k}.jsonl") for k in ("train", "test_id", "test_near", "test_ood")}


def small_cfg(files, out, **over):
    return glow_sft.Settings(**{"train": files["train"], "out_dir": str(out), "epochs": 2, "batch_size": 8,
                                "micro_batch_size": 4, "lr": 1e-3, "max_new_tokens": 8, **over})


@pytest.mark.parametrize("mode, weighting", [("pos", "none"), ("neg", "none"), ("all", "none"), ("all", "glow")])
def test_each_mode_trains_and_logs(tmp_path, mode, weighting):
    files = small_data(tmp_path)
    cfg = small_cfg(files, tmp_path / "run", data=mode, weighting=weighting,
                    tests=f"{files['test_id']},{files['test_ood']}")
    summary = glow_sft.train(cfg)
    rows = [json.loads(x) for x in open(tmp_path / "run" / "log.jsonl")]
    n = 12 if mode != "all" else 24
    assert summary["status"] == "done" and len(rows) == 2 * math.ceil(n / 8)
    for key in ("loss", "loss_unweighted", "w_mean", "w_min", "w_max", "rose", "pos_loss", "neg_loss"):
        assert key in rows[0]
    assert (rows[0]["pos_loss"] is None) == (mode == "neg") and (rows[0]["neg_loss"] is None) == (mode == "pos")
    assert rows[0]["w_mean"] == 1.0 and rows[0]["rose"] is None           # epoch 0: unweighted, no history
    if weighting == "glow":
        assert rows[-1]["w_min"] >= 0.5 and rows[-1]["w_mean"] < 1.0      # alpha 1: at most 1, mostly 0.5
    ev = json.load(open(tmp_path / "run" / "eval.json"))
    assert 0 <= ev["test_ood"]["accuracy"] <= 1 and ev["test_ood"]["entropy"] > 0
    assert os.path.exists(tmp_path / "run" / "checkpoint" / "trainer_state.pt")
    with pytest.raises(SystemExit, match="--overwrite"):                    # a rerun never deletes the run
        glow_sft.train(cfg)


def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    files = small_data(tmp_path)
    glow_sft.train(small_cfg(files, tmp_path / "full", data="all", weighting="glow", epochs=3))

    # Ctrl-C in the middle of epoch 1 (during step 5 of 9): the step finishes, the run saves and stops.
    real, steps = glow_sft.train_step, []

    def step_then_ctrl_c(*args, **kwargs):
        steps.append(real(*args, **kwargs))
        if len(steps) == 5:
            signal.raise_signal(signal.SIGINT)
        return steps[-1]
    part = small_cfg(files, tmp_path / "part", data="all", weighting="glow", epochs=3)
    with monkeypatch.context() as m:
        m.setattr(glow_sft, "train_step", step_then_ctrl_c)
        assert glow_sft.train(part)["status"] == "interrupted"
    state = torch.load(tmp_path / "part" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["global_step"] == 5 and len(state["loss_history"]) == 24   # the history is in the checkpoint
    glow_sft.main(["train", "--out-dir", str(tmp_path / "part"), "--resume"])

    def strip(path):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in open(path)]
    assert strip(tmp_path / "full" / "log.jsonl") == strip(tmp_path / "part" / "log.jsonl")
    a, _ = grpo.load_policy(str(tmp_path / "full" / "checkpoint"))
    b, _ = grpo.load_policy(str(tmp_path / "part" / "checkpoint"))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_lora_sft_trains_only_adapters_and_saves_a_plain_model(tmp_path):
    files = small_data(tmp_path)
    glow_sft.train(small_cfg(files, tmp_path / "lora", model="tiny", lora_rank=4, epochs=1))
    trained, _ = grpo.load_policy(str(tmp_path / "lora" / "checkpoint"))     # adapters merged: a plain model
    base, _ = grpo.load_policy("tiny")
    changed = {n for (n, p), q in zip(trained.state_dict().items(), base.state_dict().values()) if not torch.equal(p, q)}
    assert changed and all(n.endswith(tuple(f"{t}.weight" for t in grpo.LORA_TARGETS)) for n in changed)


def test_distill_labels_samples_with_the_answer_checker(tmp_path):
    q = write_lines(tmp_path / "q.jsonl", ['{"id": "q1", "prompt": "1+1=?", "answer": 2}',
                                          '{"id": "q2", "messages": [{"role": "user", "content": "2+2=?"}], "answer": 4}'])
    glow_sft.main(["distill", "--model", "tiny", "--questions", q, "--k", "3", "--out-dir", str(tmp_path / "d"),
                   "--max-new-tokens", "6"])
    rows = glow_sft.read_trajectories(str(tmp_path / "d" / "traj.jsonl"))
    assert [r["id"] for r in rows] == ["q1-s0", "q1-s1", "q1-s2", "q2-s0", "q2-s1", "q2-s2"]
    for r in rows:
        assert r["correct"] == games.check_answer(r["response"], r["answer"])
    assert "messages" in rows[3] and "prompt" in rows[0]


def test_entropy_of_given_generations_by_hand(tiny):
    model, tok = tiny
    prompts = [glow_sft.prompt_ids(tok, {"prompt": q}) for q in ("1+1=?", "2+2=?")]
    answers = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for a in ("<answer>2</answer>", "<answer>5</answer>")]
    gens = list(zip(prompts, answers))
    # By hand: T=1 entropy at the positions that predict each generated token, token-level mean.
    total, count = 0.0, 0
    with torch.no_grad():
        for p, n in gens:
            logp = F.log_softmax(model(input_ids=torch.tensor([p + n])).logits[0].float(), -1)
            for t in range(len(p), len(p) + len(n)):
                total += float(-(logp[t - 1].exp() * logp[t - 1]).sum())
                count += 1
    assert glow_sft.entropy_of_generations(model, tok, gens) == pytest.approx(total / count, abs=1e-4)


def test_accuracy_is_greedy_and_graded_by_the_answer_checker(tiny):
    model, tok = tiny
    qs = [{"prompt": "1+1=?", "answer": 2}, {"prompt": "3+3=?", "answer": 6}]
    a, b = glow_sft.evaluate_accuracy(model, tok, qs, 5), glow_sft.evaluate_accuracy(model, tok, qs, 5)
    assert a == b and a["mean_new_tokens"] <= 5 and a["n"] == 2
    assert a["accuracy"] == sum(games.check_answer(s["response"], s["answer"]) for s in a["samples"]) / 2


@pytest.mark.slow
def test_experiment_writes_logs_results_and_a_table(tmp_path, monkeypatch, capsys):
    # The real --quick takes minutes; the same code on a toy size: 4 conditions x 2 seeds, 2 steps each
    # (the experiment's batches hold 32 trajectories: 32 questions give pos and neg one batch, all two).
    monkeypatch.setitem(glow_sft.EXPERIMENT, "quick", dict(n_train=32, n_test=4, epochs=1))
    monkeypatch.setattr(glow_sft, "SEEDS", (0, 1))
    glow_sft.main(["experiment", "--quick", "--out-dir", str(tmp_path), "--max-new-tokens", "8"])
    root = tmp_path / "experiment-quick"        # never the full experiment's folder
    results = json.load(open(root / "results.json"))["results"]
    assert set(results) == {"pos", "neg", "all", "all+GLOW"}
    assert (root / "all+GLOW_s1" / "log.jsonl").exists()
    # Steps match across conditions: pos/neg run 2 epochs of 32, all 1 epoch of 64.
    assert {len(open(root / f"{c}_s0" / "log.jsonl").readlines()) for c in results} == {2}
    assert "| all+GLOW |" in capsys.readouterr().out
