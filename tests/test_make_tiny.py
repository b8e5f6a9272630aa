"""Tests of data/make_tiny.py, the recipe of the shipped `tiny` (data/tiny/).

The shipped folder must be exactly what the recipe builds (same tokenizer, same architecture), and the
recipe itself must still run end to end: a slow test rebuilds a small tiny in a temporary folder and
loads it through the same `from_pretrained` path as any hub model.
"""
import json
import os
import subprocess
import sys

import pytest
from transformers import AutoConfig

import grpo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
import make_tiny  # noqa: E402


def test_the_shipped_tokenizer_and_config_are_the_recipes():
    built, (model, shipped) = make_tiny.build_tokenizer(), grpo.load_policy("tiny")
    assert built.get_vocab() == shipped.get_vocab() and len(shipped) == 274          # 5 + 4 + 256 + 9
    assert built.chat_template == shipped.chat_template and shipped.eos_token == "<|end|>"
    config = AutoConfig.from_pretrained(grpo.TINY_DIR)
    for key, value in make_tiny.TINY_CONFIG.items():
        saved = config.rope_parameters["rope_theta"] if key == "rope_theta" else getattr(config, key)
        assert saved == value, key                                  # transformers 5 keeps rope_theta in rope_parameters
    assert config.compact_observations is True
    recipe = json.load(open(os.path.join(grpo.TINY_DIR, "recipe.json")))
    assert recipe["phases"] == [[list(g), lr, n] for g, lr, n in make_tiny.PHASES]    # built with today's recipe


def test_a_transcript_masks_exactly_the_bots_answers():
    import random

    import games

    tok = make_tiny.build_tokenizer()
    ids, mask = make_tiny.transcript(tok, games.make_env("matrix", compact=True), 3, random.Random(0))
    answer = tok.decode([t for t, m in zip(ids, mask) if m])
    assert answer.startswith("<answer>") and answer.endswith("</answer><|end|>")    # one turn: answer + EOS
    assert tok.decode([t for t, m in zip(ids, mask) if not m]).startswith("<|user|>you:p")


@pytest.mark.slow
def test_the_recipe_runs_and_its_folder_loads_through_from_pretrained(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "make_tiny.py"), "--out", str(out), "--steps", "5"],
                   check=True, cwd=ROOT)
    assert sorted(os.listdir(out)) == sorted(os.listdir(grpo.TINY_DIR))
    model, tok = grpo.load_policy(str(out))
    assert sum(p.numel() for p in model.parameters()) == 823_680 and grpo.is_compact(model)
    assert json.load(open(out / "recipe.json"))["phases"][0][2] == 5
