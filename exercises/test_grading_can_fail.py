"""The grading tests themselves, graded: they must fail on stubs and pass on our reference answers.

A test that cannot fail grades nothing. This file runs the exercise tests twice in a subprocess:

    EXERCISE_TARGET=stub python -m pytest exercises/test_0*.py       every exercise must have failures
    EXERCISE_TARGET=solutions python -m pytest exercises/test_0*.py  everything passes, nothing skipped

exercises/stubs.py is what a student who has not started hands in (NotImplementedError, zeros, ones);
exercises/solutions.py is ours. The subprocesses run only the exercise files, never this one, so there
is no recursion. Each costs a few seconds (one torch import).
"""
import collections
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

EXERCISES_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(EXERCISES_DIR)
EXERCISE_FILES = sorted(f for f in os.listdir(EXERCISES_DIR) if f.startswith("test_0") and f.endswith(".py"))
CHILD_TIMEOUT_S = 240


def grade(target, tmp_path):
    """Runs the exercise tests against `target`; returns (exit code, output, {file stem: Counter of results})."""
    report = tmp_path / f"{target}.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("EXERCISE_SOLUTIONS", "EXERCISE_TARGET")}
    env["EXERCISE_TARGET"] = target
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
           *[os.path.join("exercises", f) for f in EXERCISE_FILES]]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    results = {f[:-len(".py")]: collections.Counter() for f in EXERCISE_FILES}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            stem = case.get("classname", "").split(".")[-1]
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            results.setdefault(stem, collections.Counter())[kinds[0] if kinds else "passed"] += 1
    return proc.returncode, proc.stdout[-3000:] + proc.stderr[-2000:], results


def test_there_is_one_test_file_per_exercise():
    assert len(EXERCISE_FILES) >= 6, EXERCISE_FILES


def test_stubs_fail_every_exercise(tmp_path):
    code, output, results = grade("stub", tmp_path)
    # exit code 1 = tests ran and some failed (2-4 would be a usage or collection problem, not a grade)
    assert code == 1, f"expected the stub run to fail its tests (exit 1), got exit {code}:\n{output}"
    for stem, counts in results.items():
        failed = counts["failure"] + counts["error"]
        assert failed >= 1, f"{stem}: no test failed on exercises/stubs.py ({dict(counts)}): it cannot grade"
        assert counts["skipped"] == 0, f"{stem}: skipped on the stubs ({dict(counts)}); stubs must be graded"


def test_solutions_pass_every_exercise(tmp_path):
    code, output, results = grade("solutions", tmp_path)
    assert code == 0, f"exercises/solutions.py fails the grading tests (exit {code}):\n{output}"
    for stem, counts in results.items():
        assert counts["passed"] >= 1 and set(counts) == {"passed"}, f"{stem}: {dict(counts)}"
