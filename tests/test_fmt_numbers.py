"""fmt.py is the one number and time policy: human text, JSON, the stored spelling, RFC 3339."""

from __future__ import annotations

import json
import math

from gradwatch import fmt, rules, templates
from gradwatch.alerts import AlertEvent


def test_stored_numbers_keep_the_format_existing_databases_hold():
    # rows written before fmt.stored_number spelled NaN/Inf with repr(); a change needs a migration
    assert [fmt.stored_number(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]
    assert {"nan", "inf", "-inf"} == fmt.STORED_NONFINITE
    assert fmt.stored_number(2.5) == 2.5 and fmt.stored_number(7) == 7
    for text in fmt.STORED_NONFINITE:
        assert repr(float(text)) == text  # float() reads each one back


def test_an_alert_event_stores_nonfinite_values_in_that_format():
    event = AlertEvent(
        rule="r",
        run=".",
        tag="t",
        kind="firing",
        severity="critical",
        previous=None,
        step=1,
        value=-math.inf,
        wall_time=0.0,
        threshold=None,
        starts_at=0.0,
        ends_at=None,
    )
    assert json.loads(event.to_json())["value"] == "-inf"
    assert AlertEvent.from_json(event.to_json()).value == -math.inf


def test_humans_read_one_spelling_everywhere():
    assert [fmt.human(v) for v in (826256.0, 0.5, 1.5e-05, math.nan, math.inf, -math.inf)] == [
        "826,256",
        "0.5",
        "1.5e-05",
        "NaN",
        "+Inf",
        "-Inf",
    ]
    assert fmt.human_or_na(None) == "n/a"
    assert format(templates.Num(math.inf)) == fmt.human(math.inf)


def test_export_spells_json_numbers_as_fmt_does():
    from gradwatch.oneshot.text import json_value

    for v in (826256.0, 0.1, -2.5e-300, 1e308, math.nan, math.inf, -math.inf):
        assert json.loads(json_value(v)) == fmt.json_number(v)


def test_each_name_has_one_home():
    # rules re-exported these while the layers above moved (issue 11); now every caller imports
    # them from fmt and templates, and rules no longer offers a second path
    assert not any(hasattr(rules, n) for n in ("human", "json_number", "template_fields", "RANK"))
    assert rules.Template is templates.Template  # the type rules' own annotations are rendered with
    assert fmt.json_number(math.inf) == "Infinity"


def test_times_have_one_spelling_too():
    # logs, stop-files, Alertmanager and webhook payloads: RFC 3339, UTC, milliseconds
    assert fmt.rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert fmt.rfc3339(1700000000.1234) == "2023-11-14T22:13:20.123Z"
    from gradwatch import logjson

    assert logjson.rfc3339 is fmt.rfc3339  # the old import path (actions.py) is the same function
