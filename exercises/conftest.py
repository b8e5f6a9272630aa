"""
exercises/conftest.py -- which code the grading tests grade.

The same tests grade three targets, chosen by environment variables:

    python -m pytest exercises/                              repo       the student's code in the repository
                                                                        (grpo.group_advantages, nested.joint_reward, ...)
    EXERCISE_SOLUTIONS=1 python -m pytest exercises/         solutions  our reference answers, exercises/solutions.py
    EXERCISE_TARGET=stub python -m pytest exercises/         stub       exercises/stubs.py, which must FAIL every exercise

EXERCISE_TARGET=repo|solutions|stub names a target directly; EXERCISE_SOLUTIONS=1 is the same as
EXERCISE_TARGET=solutions. Tests ask the `target` fixture for a function by the name it has in the
repository, e.g. target.get("grpo", "group_advantages") (experiments/blocking.py is "blocking"); for
solutions and stub the module part is
ignored and the name is looked up in that one file.
"""
import importlib
import importlib.util
import os
import sys

import pytest

EXERCISES_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(EXERCISES_DIR)
for folder in (REPO_ROOT, os.path.join(REPO_ROOT, "experiments")):   # `pytest exercises/` does not add the cwd
    if folder not in sys.path:
        sys.path.insert(0, folder)
WHERE = {"blocking": "experiments/blocking.py"}   # modules that are not top-level scripts

TARGET_FILES = {"solutions": "solutions.py", "stub": "stubs.py"}
TARGETS = ("repo",) + tuple(TARGET_FILES)


def target_name():
    """The target the environment asks for; a bad value stops the run with a message."""
    chosen = os.environ.get("EXERCISE_TARGET", "").strip().lower()
    if chosen and chosen not in TARGETS:
        raise pytest.UsageError(f"EXERCISE_TARGET={chosen!r}: expected one of {', '.join(TARGETS)}")
    solutions = os.environ.get("EXERCISE_SOLUTIONS", "").strip()
    if solutions not in ("", "0"):
        if solutions != "1":
            raise pytest.UsageError(f"EXERCISE_SOLUTIONS={solutions!r}: expected 1 (or 0 / unset)")
        if chosen and chosen != "solutions":
            raise pytest.UsageError(f"EXERCISE_SOLUTIONS=1 and EXERCISE_TARGET={chosen} ask for two targets")
        return "solutions"
    return chosen or "repo"


def load_file(kind):
    """exercises/solutions.py or stubs.py as a module under a name no other file uses."""
    path = os.path.join(EXERCISES_DIR, TARGET_FILES[kind])
    spec = importlib.util.spec_from_file_location(f"exercise_{kind}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Target:
    def __init__(self, name):
        self.name = name
        self.module = None if name == "repo" else load_file(name)

    def get(self, module_name, attr):
        """The object the student writes as `module_name.attr` (in the repo), or ours of the same name."""
        if self.module is None:
            source, where = importlib.import_module(module_name), WHERE.get(module_name, f"{module_name}.py")
        else:
            source, where = self.module, f"exercises/{TARGET_FILES[self.name]}"
        if not hasattr(source, attr):
            pytest.fail(f"{where} has no `{attr}`: the exercise asks you to write it there", pytrace=False)
        return getattr(source, attr)


@pytest.fixture(scope="session")
def target():
    return Target(target_name())


def pytest_report_header(config):
    try:
        return f"exercises: grading target = {target_name()}"
    except pytest.UsageError as e:
        return f"exercises: {e}"
