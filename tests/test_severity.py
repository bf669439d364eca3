"""The one Severity type: order, names, and the old tables the upper layers still import."""

from __future__ import annotations

from gradwatch.severity import PENDING_RANK, SEVERITY_NAMES, Severity


def test_severities_are_ordered_and_critical_wins():
    assert Severity.OK < Severity.INFO < Severity.WARNING < Severity.CRITICAL
    assert max(Severity.WARNING, Severity.CRITICAL) is Severity.CRITICAL
    assert PENDING_RANK < Severity.OK  # pending is below every severity, so never "worse"


def test_names_round_trip_and_unknown_names_are_no_severity():
    assert SEVERITY_NAMES == ("info", "warning", "critical")
    for name in SEVERITY_NAMES:
        assert Severity.parse(name).label == name
    assert Severity.parse(None) is Severity.OK
    assert Severity.parse("") is Severity.OK
    assert Severity.parse("never") is Severity.OK


def test_of_rank_names_engine_ranks_and_falls_back_for_no_severity():
    assert Severity.of_rank(3) == "critical"
    assert Severity.of_rank(0) == "ok"
    assert Severity.of_rank(PENDING_RANK, "warning") == "warning"
    assert Severity.of_rank(0, None) is None


def test_severity_is_the_one_table_of_names_and_ranks():
    # what the old rules.RANK / SEVERITY_OF_RANK / SEVERITIES tables held, now read from Severity
    assert SEVERITY_NAMES == ("info", "warning", "critical")
    assert {s: int(Severity.parse(s)) for s in SEVERITY_NAMES} == {"info": 1, "warning": 2, "critical": 3}
    assert {r: Severity.of_rank(r) for r in (1, 2, 3)} == {1: "info", 2: "warning", 3: "critical"}
