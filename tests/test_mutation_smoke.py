"""tools/mutation_smoke.py gives the right verdicts (the full run is slow and not in CI; these are not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation_smoke", ROOT / "tools" / "mutation_smoke.py")
smoke = sys.modules["mutation_smoke"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(smoke)

GUARANTEES_TEST = ("tests/test_docs_guarantees.py",)
LISTED = "tests/test_outbox.py::test_enqueue_joins_the_callers_transaction"


def mutation(find: str, replace: str, path: str = "docs/guarantees.md") -> object:
    return smoke.Mutation("probe", "a probe", path, find, replace, GUARANTEES_TEST)


@pytest.mark.parametrize(
    ("find", "path", "verdict"),
    [
        ("no such snippet anywhere", "docs/guarantees.md", "site not found"),
        ("tests/test_", "docs/guarantees.md", "site ambiguous"),
        ("x", "gradwatch/no_such_module.py", "site not found"),
    ],
)
def test_a_moved_site_is_reported_not_a_crash(tmp_path, find, path, verdict):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guarantees.md").write_text((ROOT / "docs" / "guarantees.md").read_text())
    assert smoke.apply(mutation(find, "y", path), tmp_path).startswith(verdict)


def test_a_mutation_the_tests_notice_is_caught():
    # rename a listed test in the copy: test_every_listed_test_exists must fail there, not here
    outcome, detail, _ = smoke.check(mutation(LISTED, LISTED + "_renamed"))
    assert outcome == "caught", detail
    assert "test_every_listed_test_exists" in detail


def test_a_mutation_the_tests_do_not_notice_is_missed():
    outcome, detail, _ = smoke.check(mutation("# Guarantees and the tests", "# Promises and the tests"))
    assert outcome == "missed", detail


def test_every_mutation_has_a_claim_and_tests_that_exist():
    names = [m.name for m in smoke.MUTATIONS]
    assert len(names) == len(set(names)) >= 10
    for m in smoke.MUTATIONS:
        assert m.claim and m.tests and m.find != m.replace, m.name
        assert all((ROOT / t.split("::")[0]).is_file() for t in m.tests), m.name


def test_tests_that_pass_unmutated_have_a_clean_baseline():
    # a failing baseline would turn every mutation of that test set into a false "caught"
    assert smoke.failing_baselines([mutation("x", "y")]) == {}


def test_the_command_line_lists_and_refuses_unknown_names(capsys):
    assert smoke.main(["--list"]) == 0
    assert "backoff-constant" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        smoke.main(["--no-baseline", "no-such-mutation"])
    assert "unknown mutation(s) no-such-mutation" in capsys.readouterr().err


def test_a_whole_run_with_its_baseline_scores_the_mutations(monkeypatch, capsys):
    caught = smoke.Mutation(
        "renamed", "a claim", "docs/guarantees.md", LISTED, LISTED + "_x", GUARANTEES_TEST
    )
    moved = smoke.Mutation("moved", "a claim", "docs/guarantees.md", "no such text", "y", GUARANTEES_TEST)
    monkeypatch.setattr(smoke, "MUTATIONS", (caught, moved))
    assert smoke.main([]) == 0
    out = capsys.readouterr().out
    assert "CAUGHT" in out and "SITE NOT FOUND" in out and "score 1/1 (100%) caught" in out
