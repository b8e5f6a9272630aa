"""Tests of evaluate.py: hand-computed statistics first, then answer extraction, scoring, games, tables, plots.

Nothing here needs the warm-started tiny model: where a model is needed, a randomly initialised tiny model
is saved to a temporary folder, so the whole file runs in seconds on a CPU.
"""
import builtins
import json
import math
import os
import time
import types

import pytest
import torch

import evaluate
import games
import grpo

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models here are too small to gain from a second thread; on a shared 2-core machine the
    second one mostly waits (measured: 3.5 s instead of 10.5 s for the CLI test). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -----------------------------------------------------------------------------
# Wilson intervals, pass@k, maj@k
def test_wilson_interval_hand_computed():
    # 8/10: p = 0.8, z^2/n = 0.384146; center = (0.8 + 0.192073) / 1.384146 = 0.716739
    # half = 1.96 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226560  ->  (0.4902, 0.9433)
    low, high = evaluate.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # 0/10: center = half = 0.192073 / 1.384146 = 0.138766  ->  (0, 0.2775): never a zero-width interval
    low, high = evaluate.wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    # symmetric: 10/10 mirrors 0/10
    assert evaluate.wilson_interval(10, 10) == pytest.approx((1 - high, 1.0))
    assert evaluate.wilson_interval(0, 0) == (0.0, 1.0)


def test_pass_at_k_hand_computed():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert evaluate.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert evaluate.pass_at_k(5, 2, 1) == pytest.approx(0.4)      # pass@1 = c/n
    assert evaluate.pass_at_k(5, 0, 5) == 0.0
    assert evaluate.pass_at_k(5, 4, 2) == 1.0                     # C(1,2) = 0: every pair holds a correct one
    with pytest.raises(ValueError):
        evaluate.pass_at_k(3, 1, 4)


def test_majority_vote():
    keys, correct = ["A", "B", "B", "C"], [False, True, True, False]
    assert evaluate.majority_correct(keys, correct, 1) is False   # only "A"
    assert evaluate.majority_correct(keys, correct, 2) is False   # A 1 - B 1: the tie goes to the first, A
    assert evaluate.majority_correct(keys, correct, 3) is True    # B 2 - A 1
    assert evaluate.majority_correct([None, None, "B"], [False, False, True], 3) is True   # unreadable: no vote
    assert evaluate.majority_correct([None, None], [False, False], 2) is False
    assert evaluate.k_values(8) == [1, 2, 4, 8] and evaluate.k_values(6) == [1, 2, 4, 6]
    assert evaluate.k_values(1) == [1]


# -----------------------------------------------------------------------------
# Answer extraction
@pytest.mark.parametrize("text,n,expected", [
    ("<answer>B</answer>", 4, "B"),
    ("<think>A looks wrong</think> <answer>B</answer>", 4, "B"),
    ("The answer is (B).", 4, "B"),
    ("After thinking, Answer: **C**", 4, "C"),
    ("b", 4, "B"),
    ("(d)", 4, "D"),
    ("<answer>c</answer>", 4, "C"),
    ("<answer>A</answer> no wait <answer>C</answer>", 4, "C"),          # several tags: the last one
    ("<answer>A</answer> the answer is (D)", 4, "A"),                    # a tag beats a phrase
    ("<answer>(B) Paris</answer>", 4, "B"),
    ("<answer>B. Paris</answer>", 4, "B"),
    ("<answer>I pick C</answer>", 4, "C"),                               # "I" is not an option of four
    ("<answer>I pick C</answer>", 10, "I"),                              # ... but it is one of ten (GIFT rule)
    ("Because it is obvious.", 4, None),                                 # letters inside words never count
    ("<answer>Because</answer>", 4, None),
    ("the answer is a trick question", 4, None),                         # lower-case "a" is a word here
    ("The answer is éB", 4, None),                                       # B glued to a letter
    ("Ｔhe answer is （Ｄ）", 4, "D"),                                      # full-width forms, NFKC
    ("<answer>Β</answer>", 4, None),                                     # Greek capital beta, not B
    ("I do not know", 4, None),
    ("<answer></answer>", 4, None),
    ("", 4, None),
])
def test_extract_choice(text, n, expected):
    assert evaluate.extract_choice(text, n) == expected


@pytest.mark.parametrize("text,expected", [
    ("<answer>42</answer>", "42"),
    ("so the result is \\boxed{3/4}.", "3/4"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),                          # braces matched
    ("The answer is 12.", "12"),
    ("the answer is -1,200 apples", "-1,200"),
    (" 7 ", "7"),
    ("no idea", None),
    ("\\boxed{12", None),                                                # unclosed
])
def test_extract_free(text, expected):
    assert evaluate.extract_free(text) == expected


def test_extraction_of_one_megabyte_is_fast():
    huge = [
        "x" * 1_000_000 + "<answer>C</answer>",
        "<answer>" * 125_000,                        # never closed: quadratic for a naive regex
        "answer is " * 100_000,
        "\\boxed{" + "{" * 1_000_000,
        "Because " * 125_000,
    ]
    t0 = time.time()
    got = [evaluate.extract_choice(text, 4) for text in huge] + [evaluate.extract_free(text) for text in huge]
    assert time.time() - t0 < 5.0
    assert got[0] == "C" and got[1:5] == [None] * 4
    assert got[5] == "C" and got[6:] == [None] * 4


# -----------------------------------------------------------------------------
# Benchmark files
def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_demo_files_load():
    mc = evaluate.load_bench(os.path.join(DATA, "bench_mc_demo.jsonl"))
    free = evaluate.load_bench(os.path.join(DATA, "bench_math_demo.jsonl"))
    assert (mc["kind"], len(mc["items"]), mc["name"]) == ("mc", 30, "mc_demo")
    assert (free["kind"], len(free["items"]), free["name"]) == ("free", 30, "math_demo")
    assert len({it["subject"] for it in mc["items"]}) == 3 and len({it["subject"] for it in free["items"]}) == 3


def test_answer_as_letter_or_index(tmp_path):
    path = write(tmp_path, "b.jsonl", [
        json.dumps({"question": "q1", "choices": ["x", "y", "z"], "answer": 2}),
        "",                                                                   # blank lines are fine
        json.dumps({"question": "q2", "choices": ["x", "y"], "answer": "b"}),
    ])
    bench = evaluate.load_bench(path)
    assert [it["gold"] for it in bench["items"]] == ["C", "B"]
    assert [it["line"] for it in bench["items"]] == [1, 3]
    assert bench["items"][0]["subject"] == "all"


@pytest.mark.parametrize("bad_line,message", [
    ('{"question": "q", "choices": ["a", "b"], "answer": "C"}', "field 'answer'"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "field 'answer'"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}', "field 'answer'"),
    ('{"question": "q", "choices": "ab", "answer": "A"}', "field 'choices'"),
    ('{"question": "", "choices": ["a", "b"], "answer": "A"}', "field 'question'"),
    ('{"question": "q", "choices": ["a", "b"]}', "field 'answer' is missing"),
    ('{"question": "q", "answer": 3}', "put each kind in its own file"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "A"', "not valid JSON"),
    ('["q", "A"]', "expected a JSON object"),
])
def test_malformed_bench_file_names_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"question": "q", "choices": ["a", "b"], "answer": "A"})
    path = write(tmp_path, "bad.jsonl", [good, good, bad_line])
    with pytest.raises(ValueError) as err:
        evaluate.load_bench(path)
    assert f"bad.jsonl:3: " in str(err.value) and message in str(err.value)


def test_malformed_bench_file_stops_the_cli(tmp_path):
    path = write(tmp_path, "bad.jsonl", ['{"question": "q", "answer": 1}', "{oops"])
    with pytest.raises(SystemExit, match="bad.jsonl:2"):
        evaluate.main(["--model", "unused", "--games", "none", "--bench", path])


# -----------------------------------------------------------------------------
# Scoring with an injected generator: no model needed
def answering(bench, reply):
    """A fake generate_fn: reply(item) for the item each prompt was built from."""
    by_prompt = {evaluate.bench_prompt(it, compact=False): it for it in bench["items"]}
    return lambda prompts: [reply(by_prompt[p]) for p in prompts]


@pytest.mark.parametrize("file", ["bench_mc_demo.jsonl", "bench_math_demo.jsonl"])
def test_gold_answerer_scores_100_and_silent_model_0(file):
    bench = evaluate.load_bench(os.path.join(DATA, file))
    gold = answering(bench, lambda it: f"<think>easy</think><answer>{it['gold']}</answer>")
    perfect, _ = evaluate.score_bench(bench, gold)
    assert perfect["accuracy"] == 1.0 and perfect["unanswered"] == 0.0
    assert all(s["accuracy"] == 1.0 for s in perfect["subjects"].values())
    assert sum(s["n"] for s in perfect["subjects"].values()) == 30
    silent, records = evaluate.score_bench(bench, answering(bench, lambda it: "I am not sure."))
    assert silent["accuracy"] == 0.0 and silent["unanswered"] == 1.0
    assert silent["interval"] == pytest.approx(evaluate.wilson_interval(0, 30))
    assert all(r["answers"] == [None] for r in records)


def test_per_subject_micro_and_macro_accuracy(tmp_path):
    # subject s1: 3 questions, all right; s2: 1 question, wrong -> micro 3/4, macro (1 + 0) / 2
    lines = [json.dumps({"question": f"q{i}", "choices": ["a", "b"], "answer": "A", "subject": s})
             for i, s in enumerate(["s1", "s1", "s1", "s2"])]
    bench = evaluate.load_bench(write(tmp_path, "s.jsonl", lines))
    m, _ = evaluate.score_bench(bench, answering(bench, lambda it: "<answer>A</answer>" if it["subject"] == "s1"
                                                 else "<answer>B</answer>"))
    assert m["accuracy"] == 0.75 and m["macro_accuracy"] == 0.5
    assert m["subjects"] == {"s1": {"n": 3, "accuracy": 1.0}, "s2": {"n": 1, "accuracy": 0.0}}


def test_samples_give_pass_at_k_and_maj_at_k(tmp_path):
    # two questions, gold A; 4 replies each, in this order:
    #   q0: A B B C  -> c = 1: pass@1 0.25, pass@2 1 - C(3,2)/C(4,2) = 0.5, pass@4 1; maj@1 right, maj@2 A-B tie -> A
    #       right, maj@4 B wrong
    #   q1: A A ? A  -> c = 3: pass@1 0.75, pass@2 1, pass@4 1; maj right at every k
    lines = [json.dumps({"question": f"q{i}", "choices": ["a", "b", "c"], "answer": "A"}) for i in range(2)]
    bench = evaluate.load_bench(write(tmp_path, "k.jsonl", lines))
    script = {"q0": iter("ABBC"), "q1": iter("AA?A")}
    generate = answering(bench, lambda it: f"<answer>{next(script[it['question']])}</answer>")
    m, _ = evaluate.score_bench(bench, generate, samples=4)
    assert m["accuracy"] == pytest.approx((0.25 + 0.75) / 2)
    assert m["pass@k"] == pytest.approx({1: 0.5, 2: 0.75, 4: 1.0})
    assert m["maj@k"] == pytest.approx({1: 1.0, 2: 1.0, 4: 0.5})
    assert m["unanswered"] == pytest.approx(1 / 8) and "interval" not in m


def test_free_answers_use_numeric_tolerance(tmp_path):
    lines = [json.dumps({"question": "half?", "answer": 0.5}), json.dumps({"question": "big?", "answer": "1200"})]
    bench = evaluate.load_bench(write(tmp_path, "f.jsonl", lines))
    replies = {"half?": "<answer>1/2</answer>", "big?": "The answer is 1,200."}
    m, records = evaluate.score_bench(bench, answering(bench, lambda it: replies[it["question"]]))
    assert m["accuracy"] == 1.0
    assert [r["answers"] for r in records] == [["1/2"], ["1,200"]]


# -----------------------------------------------------------------------------
# Games with tiny's architecture and fresh weights (it answers nonsense, which is all these tests need)
@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("random_tiny"))
    model, tok = grpo.load_policy("tiny")
    torch.manual_seed(0)
    type(model)(model.config).save_pretrained(path)
    tok.save_pretrained(path)
    model, tok = grpo.load_policy(path)
    return path, model, tok


def play(model, tok, spec, temperature, n=3):
    torch.manual_seed(0)
    _, eps = grpo.play(model, tok, evaluate.make_task_envs(spec, True, "random", n), temperature, 4, progress=False)
    return eps


@pytest.mark.parametrize("game,temperature", [("tictactoe", 0.0), ("matrix", 1.0)])
def test_evaluation_seeds_are_fixed(random_tiny, game, temperature):
    _, model, tok = random_tiny
    a, b = play(model, tok, game, temperature), play(model, tok, game, temperature)
    assert [ep.seed for ep in a] == [grpo.EVAL_SEED_BASE + i for i in range(3)]
    assert [ep.ids for ep in a] == [ep.ids for ep in b] and [ep.info for ep in a] == [ep.info for ep in b]
    # other seeds, other games: the first observations differ
    envs = evaluate.make_task_envs(game, True, "random", 3)
    assert [env.reset(123 + i) for i, env in enumerate(envs)] != [ep.messages[0]["content"] for ep in a]


def test_game_report_counts_and_intervals(random_tiny):
    _, model, tok = random_tiny
    eps = play(model, tok, "matrix", 0.0, n=5)
    report = evaluate.game_report("matrix", eps)
    assert report["n"] == 5 and report["turns"] == sum(ep.turns for ep in eps)
    assert sum(o["count"] for o in report["outcomes"].values()) == 5
    for stat in list(report["outcomes"].values()) + [report["success"], report["invalid"]]:
        assert 0.0 <= stat["low"] <= stat["rate"] <= stat["high"] <= 1.0


def test_game_report_joint_success_of_nested_episodes():
    # Joint success needs every sub-game: 1 of these 3 episodes; matrix alone succeeded twice.
    # The episodes' last info as nested.NestedEnv writes it: success = all sub-tasks, and "subtasks".
    subs = [[True, True], [True, False], [False, True]]
    eps = [types.SimpleNamespace(info={"outcome": "success" if all(s) else "failure", "success": all(s),
                                       "subtasks": [{"success": x} for x in s]},
                                 reward=sum(s) / 2, turns=2, invalid_turns=0)
           for s in subs]
    report = evaluate.game_report("nested:matrix+tictactoe", eps)
    assert report["joint_success"]["count"] == 1 and report["success"]["count"] == 1
    assert report["sub_success"]["matrix"]["count"] == 2 and report["sub_success"]["tictactoe"]["count"] == 2


def test_game_report_matrix_success_by_game_and_role():
    games_roles = [("Stag Hunt", "P1", True), ("Stag Hunt", "P1", False), ("Stag Hunt", "P2", True),
                   ("GAME", "P1", False)]
    eps = [types.SimpleNamespace(info={"outcome": "success" if ok else "failure", "success": ok, "game": g,
                                       "role": r}, reward=float(ok), turns=1, invalid_turns=0)
           for g, r, ok in games_roles]
    by = evaluate.game_report("matrix", eps)["by_game"]
    assert [(k, v["count"], v["n"]) for k, v in by.items()] == [("GAME P1", 0, 1), ("Stag Hunt P1", 1, 2),
                                                                ("Stag Hunt P2", 1, 1)]
    assert "by game: GAME P1 0/1, Stag Hunt P1 1/2" in evaluate.format_game(evaluate.game_report("matrix", eps))


def test_nested_setting_is_played_with_nested_py(random_tiny):
    _, model, tok = random_tiny
    eps = play(model, tok, "nested:matrix+tictactoe", 0.0, n=2)
    report = evaluate.game_report("nested:matrix+tictactoe", eps)
    assert set(report["sub_success"]) == {"matrix", "tictactoe"}
    assert report["joint_success"]["rate"] <= min(s["rate"] for s in report["sub_success"].values())
    assert all(len(ep.info["subtasks"]) == 2 for ep in eps)       # every sub-game was reached


def test_task_names():
    assert evaluate.parse_task("nested:matrix+tictactoe") == ("nested:matrix+tictactoe", ["matrix", "tictactoe"])
    assert evaluate.parse_task("spy") == ("spy", None)
    for bad in ("chess", "nested:matrix", "nested:matrix+chess", "nested:spy+spy", "math_jsonl"):
        with pytest.raises(ValueError):
            evaluate.parse_task(bad)


# -----------------------------------------------------------------------------
# Tables: rows = models, columns = tasks + benchmarks + average (+ entropy)
def fake_result(name, games_, benches, entropy=None):
    r = {"model": name, "games": {g: {"success": {"rate": v}} for g, v in games_.items()},
         "bench": {b: {"accuracy": v} for b, v in benches.items()}}
    if entropy is not None:
        r["entropy"] = {"all": entropy}
    return r


def test_comparison_table_shape():
    results = [fake_result("base", {"matrix": 0.1, "tictactoe": 0.3}, {"mmlu": 0.5}, entropy=1.5),
               fake_result("grpo", {"matrix": 0.5, "tictactoe": 0.7}, {"mmlu": 0.6}),
               fake_result("nested", {"matrix": 0.2}, {"mmlu": 0.5})]
    columns, rows = evaluate.results_table(results)
    assert columns == ["model", "matrix", "tictactoe", "mmlu", "avg", "entropy"]
    assert [len(r) for r in rows] == [6, 6, 6]
    assert rows[0][4] == pytest.approx(30.0) and rows[1][4] == pytest.approx(60.0)
    assert rows[2][2] is None and rows[2][4] == pytest.approx(35.0)        # a missing task is not averaged
    lines = grpo.markdown_table(columns, rows).splitlines()
    assert len(lines) == 2 + 3 and all(line.count("|") == 7 for line in lines)
    assert lines[4] == "| nested | 20.00 | - | 50.00 | 35.00 | - |"


def test_compare_cli_end_to_end_with_entropy(random_tiny, tmp_path):
    path = random_tiny[0]
    out, bench = tmp_path / "compare.json", tmp_path / "mc_demo.jsonl"
    bench.write_text("".join(open(os.path.join(DATA, "bench_mc_demo.jsonl")).readlines()[:2]))   # 2 questions
    evaluate.main(["--models", f"{path},{path}", "--games", "matrix", "--n", "2", "--bench", str(bench),
                   "--max-new-tokens", "4", "--entropy", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["columns"] == ["model", "matrix", "mc_demo", "avg", "entropy"]
    assert len(saved["rows"]) == 2 and saved["rows"][0] == saved["rows"][1]   # same model, same seeds
    assert saved["results"][0]["games"]["matrix"]["n"] == 2
    # an untrained model is close to uniform: its entropy is just under log(vocabulary)
    assert 0.9 * math.log(random_tiny[1].config.vocab_size) < saved["rows"][0][-1] <= math.log(random_tiny[1].config.vocab_size) + 1e-6


def test_cli_checks_before_loading_anything():
    with pytest.raises(SystemExit, match="--samples > 1 with --temperature 0"):
        evaluate.parse_args(["--samples", "4", "--temperature", "0"])
    cfg = evaluate.parse_args(["--samples", "4"])
    assert cfg.bench_temperature == evaluate.SAMPLE_TEMPERATURE and cfg.game_temperature == 0.0
    for bad in (["--games", "chess"], ["--opponent", "greedy"], ["--games", "none", "--bench", "none"]):
        with pytest.raises(SystemExit):
            evaluate.parse_args(bad)
