"""docs/guarantees.md names, for each promise, the test that holds it: every one must exist."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARANTEES = ROOT / "docs" / "guarantees.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


@cache
def collected_tests(path: str) -> frozenset[str]:
    """The test functions pytest would collect from one file: top level, or methods of Test* classes."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(n for n in names if n.startswith("test"))


def references() -> list[tuple[int, str, str]]:
    return [
        (lineno, path, name)
        for lineno, line in enumerate(GUARANTEES.read_text().splitlines(), 1)
        for path, name in TEST_REF.findall(line)
    ]


def test_every_listed_test_exists():
    refs = references()
    assert len(refs) >= 40, "the list is the point of the page"
    missing = [
        f"docs/guarantees.md:{lineno}: {path}::{name}"
        for lineno, path, name in refs
        if not (ROOT / path).is_file() or name not in collected_tests(path)
    ]
    assert missing == [], "promises whose test does not exist:\n" + "\n".join(missing)


def test_each_promise_line_names_one_test():
    # one promise, one line, one test: a bullet under a section either names a test or is "at risk"
    at_risk = GUARANTEES.read_text().split("## Promises at risk")[0]
    bullets = [line for line in at_risk.splitlines() if line.startswith("- ")]
    assert bullets and all(len(TEST_REF.findall(b)) == 1 for b in bullets), [
        b for b in bullets if len(TEST_REF.findall(b)) != 1
    ]
