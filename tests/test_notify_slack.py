"""Slack: Block Kit within limits, escaping, pacing, 429/400/500 against a loopback Slack stand-in."""

from __future__ import annotations

import itertools
import logging
import re
import sqlite3

import pytest
from receivers import Receiver, Response, crossing_and_recovery, make_event, wait_until
from slack_sdk.models.blocks import Block

from gradwatch.config.secrets import secret_url
from gradwatch.notify.base import DeliveryError
from gradwatch.notify.outbox import Outbox
from gradwatch.notify.slack import DETAIL_MAX, SlackNotifier, escape, fit

TOKEN_PATH = "/services/T0TEAM/B0HOOK/sEcReTtOkEn42"


@pytest.fixture
def slack():
    with Receiver() as r:
        yield r


def notifier(receiver: Receiver, pace: float | None = 0.05, **kw) -> SlackNotifier:
    """A Slack channel on the stand-in; ``pace`` shortens Slack's 1 s spacing where it is not tested."""
    n = SlackNotifier("ml-slack", secret_url(receiver.url(TOKEN_PATH)), timeout=5, **kw)
    if pace is not None:
        n.min_interval = pace
    return n


def validate(payload: dict) -> list[Block]:
    """What Slack would reject: slack_sdk's models check the documented limits."""
    assert payload["text"], "the notification fallback must always be there"
    assert len(payload["blocks"]) <= 50
    blocks = []
    for d in payload["blocks"]:
        b = Block.parse(d)
        assert b is not None, f"unknown block {d}"
        b.validate_json()
        assert b.to_dict() == d
        blocks.append(b)
    return blocks


def test_one_alert_message_has_header_fields_and_recommendation(slack, caplog):
    caplog.set_level(logging.DEBUG)
    n = notifier(slack, mention="<!here>", generator_url="http://tb:6006/#scalars&regexInput={run}")
    n.send([make_event(run="td3/seed 1", value=826256.0, step=300)])
    [req] = slack.wait_for(1)
    assert req.path == TOKEN_PATH and req.header("Content-Type").startswith("application/json")
    body = req.json
    validate(body)
    header = body["blocks"][0]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "\U0001f534 CRITICAL: GradientExplosion", "emoji": True},
    }
    assert body["blocks"][1] == {"type": "section", "text": {"type": "mrkdwn", "text": "<!here>"}}
    section = body["blocks"][2]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in section["fields"]}
    assert fields["*Run*"] == "`td3/seed 1`" and fields["*Tag*"] == "`gradients/actor_cnn_norm`"
    assert fields["*Step*"] == "300" and fields["*Value*"] == "826,256" and fields["*Threshold*"] == "50,000"
    assert fields["*Severity*"] == "critical"
    assert fields["*Link*"] == "<http://tb:6006/#scalars&regexInput=td3%2Fseed%201|open>"
    assert "*Recommendation:* Stop training" in body["blocks"][3]["text"]["text"]
    assert body["text"].startswith("<!here> [CRITICAL] GradientExplosion: gradients/actor_cnn_norm")
    assert "sEcReT" not in caplog.text  # urllib3's debug line quotes the request path
    n.close()


def test_metric_derived_strings_are_escaped_only_for_the_three_characters(slack):
    n = notifier(slack)
    run = 'exp<1>&co\'s "best" <!channel>'
    e = make_event(run=run, tag="loss/<@U123>", annotations={"summary": f"{run} exploded & more"})
    n.send([e])
    body = slack.wait_for(1)[0].json
    validate(body)
    text = str(body)
    assert "<!channel>" not in text and "<@U123>" not in text
    run_field = body["blocks"][1]["fields"][0]["text"]
    assert run_field == '*Run*\n`exp&lt;1&gt;&amp;co\'s "best" &lt;!channel&gt;`'
    assert "&#39;" not in text and "&quot;" not in text  # no HTML-escaping of everything
    assert "exploded &amp; more" in body["text"]
    assert escape("a&lt;b") == "a&amp;lt;b"  # & first, so existing entities are shown literally
    n.close()


def test_resolved_and_escalated_wording(slack):
    n = notifier(slack)
    n.send([make_event(kind="escalated", previous="warning", seq=2)])
    n.send([make_event(kind="resolved", seq=3)])
    esc, res = (r.json for r in slack.wait_for(2))
    assert esc["blocks"][1]["text"]["text"].startswith("*Escalated:*")
    assert "*Severity*\ncritical (was warning)" in [f["text"] for f in esc["blocks"][1]["fields"]]
    assert res["blocks"][0]["text"]["text"] == "\u2705 RESOLVED: GradientExplosion"
    assert res["text"].startswith("[RESOLVED]") and "Recommendation" not in str(res["blocks"])
    n.close()


def test_many_alerts_are_summarised_within_limits_never_cut_mid_entity(slack):
    n = notifier(slack)
    long_run = "&" * 5000  # every character escapes to five
    events = [
        make_event(run=long_run, tag=f"grad/{'<' * 300}{i}", seq=i, annotations={"summary": "&" * 4000})
        for i in range(200)
    ]
    payload = n.message(events)
    blocks = validate(payload)
    assert len(blocks) <= 50
    summary = payload["blocks"][1]["text"]["text"]
    assert summary.startswith("*200 alerts on run*")
    assert len(summary) <= 3000 and summary.endswith("more")
    # each cut is at a whole entity: no '&' that does not start one of the three
    for b in payload["blocks"]:
        for t in re.findall(r"'text': '([^']*)'", str(b)):
            assert not re.search(r"&(?!amp;|lt;|gt;)", t), t[:200]
    assert len(payload["text"]) <= 3000
    # the detailed form (up to 8 alerts) with huge strings also fits
    payload = n.message(events[:8])
    validate(payload)
    assert len(payload["blocks"][0]["text"]["text"]) <= 150
    n.close()


def test_fit_cuts_raw_text_before_escaping():
    assert fit("a<b", 10) == "a&lt;b"
    out = fit("<<<<", 10)
    assert out == "&lt;&lt;\u2026" and len(out) <= 10
    assert fit("<<<<", 9) == "&lt;&lt;\u2026" and fit("<<<<", 8) == "&lt;\u2026"
    assert fit("x" * 20, 5) == "xxxx\u2026"


def test_outbox_paces_one_message_per_second_and_groups_tags(slack, tmp_path):
    n = notifier(slack, pace=None, group_wait=0.0)
    assert n.min_interval == 1.0
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05)
    conn = sqlite3.connect(db)
    tags = [f"gradients/{t}_norm" for t in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")]
    # one step, four tags, one transaction: one message
    box.enqueue(conn, [make_event(tag=t, seq=1) for t in tags])
    # then three more runs: three more messages, at most one per second
    for run in ("exp2", "exp3", "exp4"):
        box.enqueue(conn, [make_event(run=run)])
    conn.commit()
    box.start()
    box.wake()
    reqs = slack.wait_for(4, timeout=15)
    assert box.wait_idle(10)
    assert box.stop(5)
    assert len(slack.requests) == 4
    first = reqs[0].json
    assert first["blocks"][0]["text"]["text"] == "\U0001f534 CRITICAL: 4 alerts: GradientExplosion"
    assert [b["fields"][1]["text"] for b in first["blocks"][1:5]] == [f"*Tag*\n`{t}`" for t in tags]
    # when each request was let go, not when it arrived (arrival adds the machine's noise)
    gaps = [b - a for a, b in itertools.pairwise(n.paced_at)]
    assert len(gaps) == 3 and all(g >= n.min_interval for g in gaps), gaps
    assert box.stats()["ml-slack"] == {"sent": 7, "failed": 0, "dropped": 0, "queued": 0}
    conn.close()


def test_channels_sharing_one_webhook_url_are_paced_together(slack, tmp_path):
    """Slack allows one message per second per webhook URL, whichever channel sends it (issue 15:
    pacing keyed per channel passed every test)."""
    interval = 0.5
    a = notifier(slack, pace=interval, group_wait=0.0)
    b = SlackNotifier("ml-slack-2", secret_url(slack.url(TOKEN_PATH)), timeout=5, group_wait=0.0)
    b.min_interval = interval
    db = str(tmp_path / "state.db")
    box = Outbox(db, [a, b], poll_interval=0.05)  # two channels, two dispatcher threads
    conn = sqlite3.connect(db)
    for run in ("r1", "r2", "r3"):
        box.enqueue(conn, [make_event(run=run)])
    conn.commit()
    box.start()
    slack.wait_for(6, timeout=15)
    assert box.wait_idle(10) and box.stop(5)
    granted = sorted([*a.paced_at, *b.paced_at])
    gaps = [y - x for x, y in itertools.pairwise(granted)]
    assert len(gaps) == 5 and all(g >= interval for g in gaps), gaps
    a.close()
    b.close()


def test_429_is_retried_after_retry_after(slack, tmp_path):
    slack.script(Response(429, "rate_limited", {"Retry-After": "1"}))
    n = notifier(slack, group_wait=0.0)
    with pytest.raises(DeliveryError) as info:
        n.send([make_event()])
    assert info.value.retry_after == 1.0 and not info.value.permanent
    slack.script(Response(429, "rate_limited", {"Retry-After": "1"}))
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05, backoff_base=0.01)
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    reqs = slack.wait_for(3, timeout=10)
    assert reqs[2].at - reqs[1].at >= 0.95  # not before Retry-After
    assert box.wait_idle(5) and box.stop(5)
    assert box.stats()["ml-slack"]["sent"] == 1 and box.stats()["ml-slack"]["failed"] == 1
    conn.close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, "invalid_payload"),
        (403, "action_prohibited"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
    ],
)
def test_permanent_errors_are_not_retried(slack, tmp_path, status, body, caplog):
    slack.script(Response(status, body))
    n = notifier(slack, group_wait=0.0)
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05, backoff_base=0.01)
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    wait_until(lambda: box.stats()["ml-slack"]["dropped"] == 1, what="the permanent failure")
    assert box.wait_idle(5) and box.stop(5)
    assert slack.count() == 1 and box.stats()["ml-slack"]["failed"] == 1
    assert f"HTTP {status} {body}" in caplog.text and "sEcReT" not in caplog.text
    row = sqlite3.connect(db).execute("SELECT state, last_error FROM notify_outbox").fetchone()
    assert row[0] == "failed" and body in row[1]
    conn.close()


def test_500_is_retried_with_backoff(slack, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    slack.script(Response(500, "rollup_error"), Response(503, "busy"))
    n = notifier(slack, group_wait=0.0)
    db = str(tmp_path / "state.db")
    box = Outbox(db, [n], poll_interval=0.05, backoff_base=0.05)
    conn = sqlite3.connect(db)
    box.enqueue(conn, [make_event()])
    conn.commit()
    box.start()
    slack.wait_for(3)
    assert box.wait_idle(5) and box.stop(5)
    assert slack.count() == 3
    assert box.stats()["ml-slack"] == {"sent": 1, "failed": 2, "dropped": 0, "queued": 0}
    # one warning for the outage, one line when it ended, not one per attempt
    assert caplog.text.count("delivery failed, retrying") == 1
    assert "delivering again after 2 failed attempt(s)" in caplog.text
    conn.close()


def test_a_huge_recommendation_and_summary_still_fit_slacks_section_limit(slack):
    # the prefixes (":bulb: *Recommendation:* ", "*Firing:* ") count toward the 3000 characters
    n = notifier(slack)
    e = make_event(annotations={"summary": "s" * 5000, "recommendation": "r" * 5000})
    blocks = validate(n.message([e]))
    sections = [b.to_dict()["text"]["text"] for b in blocks if b.type == "section"]
    assert any(t.startswith(":bulb: *Recommendation:* ") for t in sections)
    assert max(len(t) for t in sections) == 3000
    n.close()


def test_rate_limit_is_told_by_the_status_not_by_the_text(slack):
    n = notifier(slack)
    slack.script(
        Response(429, "rate_limited"),  # a proxy ate Retry-After: wait a second anyway
        Response(500, "upstream said HTTP 429"),  # an error whose text mentions 429 is not a rate limit
    )
    with pytest.raises(DeliveryError) as limited:
        n.send([make_event()])
    with pytest.raises(DeliveryError) as failed:
        n.send([make_event()])
    assert (limited.value.status, limited.value.retry_after) == (429, 1.0)
    assert (failed.value.status, failed.value.retry_after) == (500, None)
    n.close()


CODE_SPAN = re.compile(r"`([^`]*)`")


def test_a_backtick_or_line_break_in_a_name_cannot_end_its_code_span(slack):
    """Issue 9: a backtick in a run name ended the code span; the rest was read as markup.

    Names sit whole in code spans; in free text (a summary that quotes the run) their
    backticks cannot open one. Line breaks and bidi overrides are shown escaped.
    """
    n = notifier(slack)
    run = "exp`*URGENT* stop _all_ jobs` <!channel>\n:rotating_light: `x"
    tag = "grad\u202e`norm\r"
    single = n.message([make_event(run=run, tag=tag)])
    many = n.message([make_event(run=run, tag=f"{tag}{i}", seq=i) for i in range(DETAIL_MAX + 1)])
    for payload in (single, many):
        validate(payload)
        texts = [payload["text"]]
        for b in payload["blocks"]:
            texts += [b["text"]["text"]] if b["type"] == "section" else []
            texts += [f["text"] for f in b.get("fields", [])]
            texts += [e["text"] for e in b.get("elements", [])]
        for text in texts:
            assert "<!channel>" not in text and "\u202e" not in text and "\n:rotating" not in text
            assert "`x" not in text, f"a backtick from the name is left: {text!r}"
            for span in CODE_SPAN.findall(text):
                assert span.startswith(("exp\u02cb", "grad\\u202e")), f"a span not made by us: {span!r}"
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in single["blocks"][1]["fields"]}
    assert fields["*Run*"] == (
        "`exp\u02cb*URGENT* stop _all_ jobs\u02cb &lt;!channel&gt;\\x0a:rotating_light: \u02cbx`"
    )
    assert fields["*Tag*"] == "`grad\\u202e\u02cbnorm\\x0d`"
    n.close()


def test_names_in_slack_are_escaped_as_the_console_escapes_them():
    """Review 9: Slack's own table missed U+061C and left lone surrogates raw (Slack showed
    \\udcff where the console and logs show \\xff); it is now fmt.escape plus the backtick."""
    from gradwatch.notify.slack import code, free_text

    raw = "run\udcff\u061c\ud800x`y\n"
    assert code(raw) == "`run\\xff\\u061c\\ud800x\u02cby\\x0a`"
    assert free_text(raw, 100) == code(raw)[1:-1]
    assert code(raw).encode()  # Slack gets valid UTF-8


def test_a_crossing_and_its_recovery_in_one_batch_show_firing_then_resolved(slack):
    n = notifier(slack)
    events = crossing_and_recovery("slack-batch")
    words = [b["text"]["text"].split()[0] for b in n.message(events)["blocks"][1:5]]
    assert words == ["*Firing:*", "*Firing:*", "*Resolved:*", "*Resolved:*"]
    n.close()
