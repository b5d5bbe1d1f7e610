"""docs/reliability.md ties each claim to a test: every test it names must exist where it says, so a
renamed or moved test cannot leave a claim resting on nothing."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

from tests.helpers import REPO

DOC = REPO / "docs" / "reliability.md"
# `tests/integration/test_x.py::test_y`, `test_x.py::Class::test_y[case]`, `tests/unit/test_x.py`,
# and a bare `test_y[<case>]` where the sentence names the file.
CITATION = re.compile(r"`((?:tests/[\w/]+/)?(test_\w+\.py))(?:::([\w:]+))?(?:\[[^`\]]*\])?`")
BARE_TEST = re.compile(r"`(test_\w+)(?:\[[^`\]]*\])?`")


def _test_files(name: str) -> list[Path]:
    return sorted((REPO / "tests").rglob(name))


@lru_cache(maxsize=None)
def _tests_in(path: Path) -> frozenset[str]:
    """Node ids below a file, as pytest names them: test_f, Class::test_m."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(
                f"{node.name}::{m.name}"
                for m in node.body
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name.startswith("test")
            )
    return frozenset(names)


def citations(text: str) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(the citation as written, file path or name, node id or None) per file citation, and the bare
    test names."""
    cited = [(m.group(0), m.group(1), m.group(3)) for m in CITATION.finditer(text)]
    bare = [m.group(1) for m in BARE_TEST.finditer(text)]
    return cited, bare


def unresolved(text: str) -> list[str]:
    """Every citation in ``text`` that names no existing test file or test, with why."""
    problems = []
    cited, bare = citations(text)
    for written, path, node in cited:
        files = [REPO / path] if "/" in path else _test_files(path)
        files = [f for f in files if f.is_file()]
        if len(files) != 1:
            problems.append(
                f"{written}: {'no such file' if not files else 'names several files: ' + ', '.join(map(str, files))}"
            )
        elif node and node not in _tests_in(files[0]):
            problems.append(f"{written}: no test {node} in {files[0].relative_to(REPO)}")
    every_test = set().union(*(_tests_in(f) for f in (REPO / "tests").rglob("test_*.py")))
    problems += [f"`{name}`: no such test in tests/" for name in bare if name not in every_test]
    return problems


def test_every_test_that_reliability_md_cites_exists():
    text = DOC.read_text(encoding="utf-8")
    cited, _ = citations(text)
    assert len(cited) >= 25, "the citation pattern no longer matches how the page cites tests"
    assert unresolved(text) == []


def test_a_moved_or_missing_test_is_reported():
    """The check itself: a test cited in the wrong file, a test that does not exist, a file that does
    not exist and a bare name that matches nothing are each reported; real citations are not."""
    text = (
        "`tests/integration/test_train.py::test_killed_training_resumes_from_its_checkpoint` "
        "`test_train_resume.py::test_killed_training_resumes_from_its_checkpoint` "
        "`test_score.py::test_no_such_thing` `test_nowhere.py` `test_ingest_outcome[<case>]` `test_vanished[x]`"
    )
    problems = unresolved(text)
    assert len(problems) == 4, problems
    assert "no test test_killed_training_resumes_from_its_checkpoint in tests/integration/test_train.py" in problems[0]
    assert "test_no_such_thing" in problems[1] and "no such file" in problems[2] and "test_vanished" in problems[3]
