"""README.md's "How to read this code" section names only functions that exist.

The section is a reading guide: for each file, the ideas to look for and the functions that hold them.
A renamed function silently breaks such a guide, so this test reads the section and checks every name
against the files themselves (with ast: nothing is imported or run).

The format the section must follow
----------------------------------
1. A heading (any level, "#" to "######") whose text is exactly "How to read this code" (case does not
   matter). The section runs to the next heading of the same or a higher level, or the end of the file.
2. A FILE LINE is a list item that starts with a top-level file name: plain, in backticks, in bold or
   as a markdown link:
       - games.py — ideas: one parser for every game; look at `parse_answer`, `TicTacToeEnv.step`
       - `grpo.py` -- start at `train()`, then `group_advantages`, `grpo_loss`
       - [nested.py](nested.py): `NestedEnv.step`, `joint_reward`
   Every backticked name on a file line must be defined in THAT file: `name` or `name()` a top-level
   def, class or module-level variable; `Class.method` (or `Class.method()`) a method or class attribute
   of a top-level class (inherited from a class of the same file counts). A name may carry another
   file's module prefix to point there instead: `games.make_env` on a grpo.py line is looked up in games.py.
   Indented lines right below a file line (continuations, not new list items) belong to it.
3. Anywhere in the section, `file.py: name` (or `file.py:name`) inside one pair of backticks names a
   function in that file explicitly, e.g. `nested.py: joint_reward`.
4. On any other line, a backticked call `name()` must be defined in at least one top-level .py file.
5. Backticked text that is not a name is ignored: commands (`python grpo.py --game matrix`), flags
   (`--loss-type`), formulas (`A = (R - mean) / std`), file names alone (`grpo.py`), and everything
   inside fenced code blocks. A lone identifier IS a name: on a file line, `eps_high` must be defined in
   that file (it is: a hyperparameter), but a symbol such as `A_i` is not -- write it outside backticks.
The section must name at least one function; a section that names none checks nothing and fails.
"""
import ast
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO_ROOT, "README.md")
SECTION_TITLE = "how to read this code"

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
NAME_RE = re.compile(rf"(?P<name>{IDENT}(?:\.{IDENT})*)(?P<call>\(\))?")
EXPLICIT_RE = re.compile(rf"(?P<file>[A-Za-z0-9_./-]+\.py)\s*:\s*(?P<name>{IDENT}(?:\.{IDENT})*)(?:\(\))?")
FILE_LINE_RE = re.compile(r"^[-*+]\s+\[?(?:\*\*|`)?(?P<file>[A-Za-z0-9_./-]+\.py)(?:\*\*|`)?(?:\]\([^)\s]*\))?"
                          r"(?=$|[\s:,;—–-])")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BACKTICKS_RE = re.compile(r"`([^`\n]+)`")


# -----------------------------------------------------------------------------
# 1. What a file defines
def top_level_names(tree):
    """{name: node} for the defs, classes and assigned names of a module (not its imports)."""
    names = {}

    def targets(node):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                yield from targets(element)

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names[node.name] = node
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    names.update({n: node for n in targets(t)})
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                names.update({n: node for n in targets(node.target)})
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                # module-level code inside blocks still defines module-level names
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(tree.body)
    return names


def class_members(cls, names, seen=()):
    """Methods and class attributes of a class, with those of its bases defined in the same module."""
    members = set(top_level_names(ast.Module(body=cls.body, type_ignores=[])))
    for base in cls.bases:
        if isinstance(base, ast.Name) and isinstance(names.get(base.id), ast.ClassDef) and base.id not in seen:
            members |= class_members(names[base.id], names, seen + (cls.name,))
    return members


class Repo:
    """The top-level .py files of a directory, parsed once each."""

    def __init__(self, root):
        self.root = root
        self.files = sorted(f for f in os.listdir(root) if f.endswith(".py"))
        self._names = {}

    def names(self, file):
        if file not in self._names:
            with open(os.path.join(self.root, file), encoding="utf-8") as f:
                self._names[file] = top_level_names(ast.parse(f.read(), filename=file))
        return self._names[file]

    def problem(self, file, dotted):
        """None if `dotted` is defined in `file`, else what is wrong, in words."""
        parts = dotted.split(".")
        if file not in self.files:
            return f"{file} is not a top-level file of the repository"
        # A module prefix points at another file: `games.make_env`, `grpo.train`.
        if len(parts) > 1 and parts[0] + ".py" in self.files and parts[0] not in self.names(file):
            file, parts = parts[0] + ".py", parts[1:]
        names = self.names(file)
        if len(parts) == 1:
            return None if parts[0] in names else f"{file} defines no top-level `{parts[0]}`"
        if len(parts) == 2:
            cls = names.get(parts[0])
            if not isinstance(cls, ast.ClassDef):
                return f"{file} defines no class `{parts[0]}`"
            return None if parts[1] in class_members(cls, names) else f"class {parts[0]} in {file} has no `{parts[1]}`"
        return f"`{dotted}`: name a function as name, Class.method or module.name, not deeper"

    def problem_anywhere(self, dotted):
        problems = [self.problem(f, dotted) for f in self.files]
        return None if any(p is None for p in problems) else f"no top-level file defines `{dotted}`"


# -----------------------------------------------------------------------------
# 2. The section and the names in it
def reading_section(text):
    """(first line number, lines) of the section, or None if the README has no such heading."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = HEADING_RE.match(line)
        if m and m.group(2).strip().lower() == SECTION_TITLE:
            level, body = len(m.group(1)), []
            for later in lines[i + 1:]:
                h = HEADING_RE.match(later)
                if h and len(h.group(1)) <= level:
                    break
                body.append(later)
            return i + 2, body
    return None


def references(first_line, lines):
    """[(line number, file or None, name, is_call)] for every name the section points at."""
    refs, current_file, in_fence = [], None, False
    for number, line in enumerate(lines, start=first_line):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        item = line.lstrip()
        m = FILE_LINE_RE.match(item)
        if m:
            current_file = os.path.basename(m.group("file"))
        elif not (line[:1].isspace() and item and not re.match(r"[-*+]\s", item)):
            current_file = None     # a new list item, or an unindented line: no file context
        for span in BACKTICKS_RE.findall(line):
            span = span.strip()
            explicit = EXPLICIT_RE.fullmatch(span)
            if explicit:
                refs.append((number, os.path.basename(explicit.group("file")), explicit.group("name"), False))
                continue
            name = NAME_RE.fullmatch(span)
            if not name or span.endswith(".py"):
                continue
            if current_file:
                refs.append((number, current_file, name.group("name"), bool(name.group("call"))))
            elif name.group("call"):
                refs.append((number, None, name.group("name"), True))
    return refs


def problems(repo, refs):
    found = []
    for number, file, name, _ in refs:
        p = repo.problem(file, name) if file else repo.problem_anywhere(name)
        if p:
            found.append(f"README.md line {number}: `{name}`: {p}")
    return found


# -----------------------------------------------------------------------------
# 3. The tests
FORMAT_HINT = ('Add a section "## How to read this code" with one list item per file, e.g.\n'
               '  - games.py — ideas: one parser for every game; look at `parse_answer`, `TicTacToeEnv.step`\n'
               'The full format is at the top of tests/test_readme_names.py.')


def test_reading_guide_names_exist():
    with open(README, encoding="utf-8") as f:
        section = reading_section(f.read())
    assert section is not None, f'README.md has no "How to read this code" section. {FORMAT_HINT}'
    refs = references(*section)
    assert refs, f'README.md\'s "How to read this code" section names no function. {FORMAT_HINT}'
    missing = problems(Repo(REPO_ROOT), refs)
    assert not missing, "names in README.md that the code does not define:\n" + "\n".join(missing)


EXAMPLE = """\
# Title

## How to read this code

Start with `python grpo.py --help`; the loop is `train()`.

- games.py — ideas: one answer parser; look at `parse_answer`, `TicTacToeEnv.step`, `TicTacToeEnv._invalid`
- `grpo.py` -- `group_advantages()`, `grpo_loss`, `games.make_env`, `LOSS_TYPES`; flags like `--loss-type`
  and, on the next line, `filter_groups`
- **nested.py**: `NestedEnv.step`
- [evaluate.py](evaluate.py) — `wilson_interval`
- the GLOW weight is `glow_sft.py: glow_weights`; formulas such as `w = alpha * x` are skipped

```
`not_checked_inside_a_fence()`
```

## Results

`not_in_the_section()`
"""


def test_parser_reads_the_documented_format():
    refs = references(*reading_section(EXAMPLE))
    assert [(file, name, call) for _, file, name, call in refs] == [
        (None, "train", True),
        ("games.py", "parse_answer", False), ("games.py", "TicTacToeEnv.step", False),
        ("games.py", "TicTacToeEnv._invalid", False),
        ("grpo.py", "group_advantages", True), ("grpo.py", "grpo_loss", False), ("grpo.py", "games.make_env", False),
        ("grpo.py", "LOSS_TYPES", False), ("grpo.py", "filter_groups", False),
        ("nested.py", "NestedEnv.step", False), ("evaluate.py", "wilson_interval", False),
        ("glow_sft.py", "glow_weights", False),
    ]
    # every one of them exists in this repository (TicTacToeEnv._invalid is inherited from TextEnv)
    assert problems(Repo(REPO_ROOT), refs) == []


def test_parser_reports_wrong_names():
    text = EXAMPLE.replace("`grpo_loss`", "`grpo_loss_v2`").replace("TicTacToeEnv.step", "TicTacToeEnv.stepp") \
                  .replace("`train()`", "`no_such_function()`")
    found = problems(Repo(REPO_ROOT), references(*reading_section(text)))
    assert len(found) == 3
    assert any("`grpo_loss_v2`" in p and "grpo.py" in p for p in found)
    assert any("TicTacToeEnv" in p and "`stepp`" in p for p in found)
    assert any("`no_such_function`" in p for p in found)


def test_a_missing_section_is_reported():
    assert reading_section("# Title\n\n## Quick start\n\ntext\n") is None
