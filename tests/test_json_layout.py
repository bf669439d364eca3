"""``fmt.write_json``: json.dump(indent=2)'s layout for the outer levels of a document, each value
below on one line by json's C encoder (check --json on 1,000 findings spent 0.15-0.2 s in the
pure-Python encoder that ``indent`` selects). The parsed document must not change."""

from __future__ import annotations

import io
import json
import random

import pytest

from gradwatch.fmt import write_json


def random_doc(rng: random.Random, depth: int = 0):
    """Nested dicts and lists of every JSON scalar, empty containers, and names that need escaping."""
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -3, 2**70, rng.randrange(-(10**9), 10**9)])
    if kind == 2:
        return rng.choice([0.0, -0.0, 1e300, 5e-324, rng.uniform(-1e6, 1e6), 0.1])
    if kind in (3, 4):
        return rng.choice(
            ["", "grad/norm", 'quote " back \\ slash', "run-\udcff", "tab\tnewline\n", "é ü 中"]
        )
    if kind in (5, 6):
        n = rng.choice([0, 1, 3])
        return {
            rng.choice(["a", "b", "c", "k\n", "é"]) + str(i): random_doc(rng, depth + 1) for i in range(n)
        }
    return [random_doc(rng, depth + 1) for _ in range(rng.choice([0, 1, 4]))]


def written(doc, depth: int) -> str:
    out = io.StringIO()
    write_json(doc, out, depth=depth)
    return out.getvalue()


@pytest.mark.parametrize("seed", range(200))
def test_a_deep_enough_layout_is_json_dumps_with_indent_2(seed):
    doc = random_doc(random.Random(seed))
    assert written(doc, depth=99) == json.dumps(doc, indent=2) + "\n"


@pytest.mark.parametrize("seed", range(200))
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_a_shallow_layout_holds_the_same_document(seed, depth):
    doc = {"findings": [random_doc(random.Random(seed)) for _ in range(3)], "n": 1}
    text = written(doc, depth)
    assert json.loads(text) == json.loads(json.dumps(doc))
    assert text.endswith("\n")
    if depth == 0:
        assert text.count("\n") == 1


def test_values_below_the_depth_are_one_line_each():
    doc = {
        "status": "OK",
        "findings": [{"rule": "a", "first": {"warning": {"step": 1}}}, {"rule": "b"}],
        "problems": {},
    }
    assert written(doc, depth=2) == (
        "{\n"
        '  "status": "OK",\n'
        '  "findings": [\n'
        '    {"rule": "a", "first": {"warning": {"step": 1}}},\n'
        '    {"rule": "b"}\n'
        "  ],\n"
        '  "problems": {}\n'
        "}\n"
    )
