"""Exercise 06: selfplay.selfplay_plan -- a schedule of grpo.py runs, each against the previous checkpoint.

The plan is checked through grpo.parse_settings, the same parser `python grpo.py` uses, so the tests do
not care how the flags are ordered, only what each round's run will do. Nothing is trained here.
Until the repository has a selfplay.py they are skipped ("exercise 06 not started").
Run:  python -m pytest exercises/test_06_self_play.py -q
"""
import importlib
import os

import pytest

import grpo


@pytest.fixture
def selfplay_plan(target):
    if target.name == "repo":
        try:
            module = importlib.import_module("selfplay")
        except ModuleNotFoundError as e:
            if e.name != "selfplay":
                raise
            pytest.skip("exercise 06 not started: there is no selfplay.py in the repository root "
                        "(see exercises/06_self_play.md)")
        if not hasattr(module, "selfplay_plan"):
            pytest.fail("selfplay.py has no selfplay_plan(rounds, steps_per_round, out_dir, ...)", pytrace=False)
        return module.selfplay_plan
    return target.get("selfplay", "selfplay_plan")


def norm(path):
    return os.path.normpath(path)


def parsed(plan):
    assert isinstance(plan, list) and all(isinstance(a, str) for argv in plan for a in argv), \
        "the plan is a list of argument lists of strings, one per round"
    return [grpo.parse_settings(grpo.Settings, list(argv)) for argv in plan]


def test_round_zero_then_previous_checkpoints(selfplay_plan):
    cfgs = parsed(selfplay_plan(3, 20, "runs/sp"))
    assert len(cfgs) == 3
    # round 0: the starting model against the first opponent
    assert (cfgs[0].model, cfgs[0].opponent) == ("tiny", "random")
    for r, cfg in enumerate(cfgs):
        assert cfg.steps == 20
        assert norm(cfg.out_dir) == norm(f"runs/sp/round{r}")
        if r:
            # round r: continues from round r-1's checkpoint and plays against a frozen copy of it
            previous = norm(f"runs/sp/round{r - 1}/checkpoint")
            assert norm(cfg.model) == previous
            assert cfg.opponent.startswith("model:") and norm(cfg.opponent[len("model:"):]) == previous


def test_start_model_first_opponent_and_extra_flags(selfplay_plan):
    cfgs = parsed(selfplay_plan(2, 5, "out", start_model="runs/grpo/checkpoint", first_opponent="minimax",
                                extra_args=["--eval-games", "50", "--loss-type", "dr_grpo"]))
    assert (norm(cfgs[0].model), cfgs[0].opponent) == (norm("runs/grpo/checkpoint"), "minimax")
    assert norm(cfgs[1].model) == norm("out/round0/checkpoint")
    assert all(c.eval_games == 50 and c.loss_type == "dr_grpo" and c.steps == 5 for c in cfgs)


def test_every_round_writes_its_own_folder(selfplay_plan):
    cfgs = parsed(selfplay_plan(4, 1, "x"))
    assert len({norm(c.out_dir) for c in cfgs}) == 4


def test_at_least_one_round(selfplay_plan):
    with pytest.raises(ValueError):
        selfplay_plan(0, 10, "runs/sp")
