"""A rule's Match remembers each half's verdict per name (run, tag): the same answers as testing
the patterns every time, each pattern tested once per distinct name, and a bounded memory."""

from __future__ import annotations

import fnmatch
import random

import pytest

from gradwatch import match as match_module
from gradwatch.match import Match, Pattern

NAMES = ["td3", "td3-lr3e-3", "ppo/seed1", "grad_norm", "gradients/actor_cnn_norm", "loss", "", "run-\udcff"]
GLOBS = ["*", "td3*", "*norm", "grad*", "ppo/*", "loss", "?"]
REGEXES = ["(?i)grad.*norm", "^td3", "seed[0-9]$", "norm", "^$"]


def verdict_without_memory(m: Match, run: str, tag: str, runs: bool = True) -> bool:
    """Match.matches as it was before it remembered verdicts (without ``runs``: matches_tag)."""
    if not runs:
        pass
    elif m.run_regex is not None:
        if not m.run_regex.search(run):
            return False
    elif not any(fnmatch.fnmatchcase(run, g) for g in m.runs):
        return False
    if m.tag_regex is not None:
        if not m.tag_regex.search(tag):
            return False
    elif not any(fnmatch.fnmatchcase(tag, g) for g in m.tags):
        return False
    if runs and any(fnmatch.fnmatchcase(run, g) for g in m.exclude_runs):
        return False
    return not any(fnmatch.fnmatchcase(tag, g) for g in m.exclude_tags)


def random_match(rng: random.Random) -> Match:
    def globs():
        return rng.sample(GLOBS, rng.randrange(1, 3))

    return Match(
        runs=globs(),
        tags=globs(),
        run_regex=Pattern(rng.choice(REGEXES)) if rng.random() < 0.4 else None,
        tag_regex=Pattern(rng.choice(REGEXES)) if rng.random() < 0.4 else None,
        exclude_tags=rng.sample(GLOBS, rng.randrange(0, 2)),
        exclude_runs=rng.sample(GLOBS, rng.randrange(0, 2)),
    )


@pytest.mark.parametrize("seed", range(60))
def test_remembered_verdicts_are_the_patterns_verdicts(seed, monkeypatch):
    rng = random.Random(seed)
    monkeypatch.setattr(match_module, "MAX_REMEMBERED_NAMES", rng.choice([1, 3, 4096]))
    m = random_match(rng)
    for _ in range(300):  # names come back, as runs and as tags, warm and after the memory starts over
        run, tag = rng.choice(NAMES), rng.choice(NAMES)
        assert m.matches(run, tag) == verdict_without_memory(m, run, tag), (m, run, tag)
        assert m.matches_tag(tag) == verdict_without_memory(m, "*", tag, runs=False)


class Counting:
    def __init__(self, text: str) -> None:
        self.pattern = Pattern(text)
        self.searched: list[str] = []

    def search(self, name: str) -> bool:
        self.searched.append(name)
        return self.pattern.search(name)


def test_each_pattern_sees_each_distinct_name_once():
    runs, tags = Counting("^run"), Counting("(?i)grad.*norm")
    m = Match(run_regex=runs, tag_regex=tags)  # type: ignore[arg-type]
    names = [f"grad_{i}_norm" for i in range(4)] + ["loss"]
    for r in range(200):
        for tag in names:
            assert m.matches(f"run{r:03}", tag) == (tag != "loss")
    assert len(runs.searched) == 200
    assert sorted(tags.searched) == sorted(names)


def test_the_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(match_module, "MAX_REMEMBERED_NAMES", 100)
    m = Match(tags=["grad*"])
    for i in range(1000):
        m.matches(f"run{i}", f"grad{i}")
    assert len(m._run_verdicts) <= 100 and len(m._tag_verdicts) <= 100
    assert m == Match(tags=["grad*"])  # what a Match remembers is no part of what it is
