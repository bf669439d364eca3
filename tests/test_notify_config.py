"""Channel config: every bad input gives file:line and what is wrong; secrets never show."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from gradwatch.config.secrets import Secret, redact, scrub
from gradwatch.config.yaml import Problem, Section, load_yaml_text
from gradwatch.notify.alertmanager import AlertmanagerNotifier
from gradwatch.notify.base import DeliveryError, Notifier
from gradwatch.notify.registry import build_from_sections as build_notifiers
from gradwatch.notify.slack import SlackNotifier
from gradwatch.notify.webhook import WebhookNotifier

SLACK_SECRET = "https://hooks.slack.com/services/T0SECRET/B0SECRET/XyZsecretTOKEN123"


def build(text: str) -> tuple[list[Notifier], list[Problem]]:
    problems: list[Problem] = []
    top = Section(load_yaml_text(text, "gw.yaml"), "gw.yaml", "", problems, line=1)
    notifiers = build_notifiers(list(top.sections("notifiers")))
    top.finish()
    return notifiers, problems


def messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


def test_all_channel_types_with_their_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("SLACK_URL", SLACK_SECRET)
    token = tmp_path / "token"
    token.write_text("s3cr3t-bearer\n")
    notifiers, problems = build(f"""
notifiers:
  - name: ml-slack
    type: slack
    url: ${{SLACK_URL}}
    min_severity: warning
    match: {{runs: ["exp*"], tags: "gradients/*"}}
    group_wait: 5s
    repeat_interval: 30m
    mention: "<!here>"
    generator_url: "http://tb.example:6006/#scalars&regexInput={{run}}"
  - name: hook
    type: webhook
    url: http://127.0.0.1:9/hook
    bearer_token_file: {token}
    hmac_secret: abc
    headers: {{X-Team: ml}}
    max_alerts: 10
    timeout: 3s
    send_resolved: false
  - name: am
    type: alertmanager
    urls: [http://127.0.0.1:1, http://127.0.0.1:2/]
    labels: {{source: gradwatch, cluster: a100}}
    resend_interval: 30s
    min_firing: 45s
    max_age: 1h
""")
    assert problems == []
    slack, hook, am = notifiers
    assert isinstance(slack, SlackNotifier) and slack.url.reveal() == SLACK_SECRET
    assert slack.min_severity == "warning" and slack.runs == ["exp*"] and slack.tags == ["gradients/*"]
    assert slack.group_wait == 5 and slack.repeat_interval == 1800 and slack.mention == "<!here>"
    assert isinstance(hook, WebhookNotifier) and hook.bearer_token.reveal() == "s3cr3t-bearer"
    assert hook.timeout == 3 and hook.send_resolved is False and hook.max_alerts == 10
    assert hook.headers["X-Team"].reveal() == "ml"
    assert isinstance(am, AlertmanagerNotifier) and am.group_wait == 0 and am.resend_interval == 30
    assert am.min_firing == 45
    assert [u.reveal() for u in am.urls] == [
        "http://127.0.0.1:1/api/v2/alerts",
        "http://127.0.0.1:2/api/v2/alerts",
    ]
    assert am.labels == {"source": "gradwatch", "cluster": "a100"} and am.max_age == 3600
    # what `gradwatch check` may print: no secret anywhere
    for n in notifiers:
        for text in (n.describe(), repr(n), str(vars(n))):
            assert "T0SECRET" not in text and "XyZsecret" not in text and "s3cr3t" not in text
    assert "https://hooks.slack.com/***" in slack.describe()
    for n in notifiers:
        n.close()


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("{name: a, type: slak, url: http://x}", "gw.yaml:3: notifiers[0].type: expected one of slack"),
        ("{name: a, type: slack}", "gw.yaml:3: notifiers[0]: missing required key 'url' (or 'url_file')"),
        ("{name: a, type: slack, url: http://x, colour: red}", "notifiers[0].colour: unknown key"),
        ("{type: slack, url: http://x}", "notifiers[0]: missing required key 'name'"),
        ("{name: 'a b', type: slack, url: http://x}", "notifiers[0].name: use letters, digits"),
        ("{name: a, type: slack, url: http://x, min_severity: high}", "min_severity: expected one of info"),
        ("{name: a, type: slack, url: http://x, group_wait: soon}", "group_wait: expected a duration"),
        ("{name: a, type: slack, url: http://x, timeout: 0}", "notifiers[0].timeout: must be more than 0"),
        ("{name: a, type: slack, url: http://x, match: {rule: x}}", "notifiers[0].match.rule: unknown key"),
        ("{name: a, type: slack, url: ftp://x/y}", "notifiers[0].url: expected an http:// or https:// URL"),
        ("{name: a, type: slack, url: 'http://'}", "notifiers[0].url: the URL has no host"),
        ("{name: a, type: slack, url: 12345}", "notifiers[0].url: expected a non-empty string"),
        ("{name: a, type: slack, url: http://x, icon_emoji: fire}", "icon_emoji: expected an emoji name"),
        ("{name: a, type: slack, url: http://x, generator_url: 'http://tb/{step}'}", "unknown field {step}"),
        ("{name: a, type: webhook, url: http://x, max_alerts: -1}", "max_alerts: expected a whole number"),
        ("{name: a, type: webhook, url: http://x, headers: [a]}", "headers: expected a mapping of header"),
        ("{name: a, type: webhook, url: http://x, headers: {'a b': c}}", "'a b' is not a valid HTTP header"),
        ("{name: a, type: webhook, url: http://x, headers: {Content-Type: x}}", "gradwatch sets this header"),
        (
            "{name: a, type: alertmanager, url: http://x, headers: {Content-Type: x}}",
            "gradwatch sets this header",
        ),
        (
            "{name: a, type: alertmanager, url: http://x, bearer_token: t, headers: {Authorization: x}}",
            "gradwatch sets this header",
        ),
        ("{name: a, type: alertmanager}", "missing required key 'url' (or 'urls' for several"),
        ("{name: a, type: alertmanager, urls: []}", "urls: expected a list of Alertmanager URLs"),
        ("{name: a, type: alertmanager, urls: [http://x, 5]}", "urls: item 2: expected a URL string"),
        ("{name: a, type: alertmanager, url: http://x, urls: [http://y]}", "either 'url' or 'urls'"),
        ("{name: a, type: alertmanager, url: http://x, labels: {a-b: c}}", "'a-b' is not a valid label"),
        ("{name: a, type: alertmanager, url: http://x, labels: {run: c}}", "'run' is set by gradwatch"),
        ("{name: a, type: alertmanager, url: http://x, resend_interval: 0}", "resend_interval: at least 1s"),
        ("{name: a, type: alertmanager, url: http://x, min_firing: 0s}", "min_firing: must be more than 0"),
    ],
)
def test_bad_config_gives_file_line_and_message(item, expected):
    notifiers, problems = build(f"# channels\nnotifiers:\n  - {item}\n")
    assert notifiers == []
    text = "\n".join(messages(problems))
    assert expected in text, text
    assert all(p.file == "gw.yaml" and p.line == 3 for p in problems), text


def test_duplicate_names_and_non_list():
    _, problems = build(
        "notifiers:\n  - {name: a, type: webhook, url: http://x}\n"
        "  - {name: a, type: webhook, url: http://y}\n"
    )
    assert "gw.yaml:3: notifiers[1].name: channel name 'a' is already used on line 2" in messages(problems)
    _, problems = build("notifiers: {name: a}\n")
    assert messages(problems) == ["gw.yaml:1: notifiers: expected a list, got a mapping"]


def test_env_and_file_secrets(monkeypatch, tmp_path):
    monkeypatch.delenv("GW_UNSET_URL", raising=False)
    monkeypatch.setenv("GW_EMPTY", "")
    missing = tmp_path / "nope"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two = tmp_path / "two"
    two.write_text("a\nb\n")
    good = tmp_path / "good"
    good.write_text(SLACK_SECRET + "\n")
    notifiers, problems = build(f"""
notifiers:
  - {{name: a, type: slack, url: "${{GW_UNSET_URL}}"}}
  - {{name: b, type: slack, url: "${{GW_EMPTY}}"}}
  - {{name: c, type: slack, url_file: {missing}}}
  - {{name: d, type: slack, url_file: {empty}}}
  - {{name: e, type: slack, url_file: {two}}}
  - {{name: f, type: slack, url: http://x, url_file: {good}}}
  - {{name: g, type: slack, url_file: {good}}}
""")
    assert messages(problems) == [
        "gw.yaml:3: notifiers[0].url: environment variable GW_UNSET_URL is not set or is empty",
        "gw.yaml:4: notifiers[1].url: environment variable GW_EMPTY is not set or is empty",
        f"gw.yaml:5: notifiers[2].url_file: cannot read {missing}: No such file or directory",
        f"gw.yaml:6: notifiers[3].url_file: {empty}: the file is empty",
        f"gw.yaml:7: notifiers[4].url_file: {two}: the file holds more than one line",
        "gw.yaml:8: notifiers[5].url_file: give either 'url' or 'url_file', not both",
    ]
    [g] = notifiers
    assert g.url.reveal() == SLACK_SECRET  # trailing newline stripped
    g.close()


def test_secret_typed_where_it_does_not_belong_is_not_echoed(monkeypatch):
    monkeypatch.setenv("GW_TOKEN", "tok-7f3a9c")
    _, problems = build("""
notifiers:
  - {name: a, type: webhook, url: "http://x/${GW_TOKEN}", bearer_token: [tok-inline-99], hmac_secret: 424242}
  - {name: b, type: webhook, url: "not a url tok-inline-99"}
""")
    text = "\n".join(messages(problems))
    assert "bearer_token: expected a non-empty string" in text
    assert "hmac_secret: expected a non-empty string" in text
    assert "notifiers[1].url: expected an http:// or https:// URL" in text
    for secret in ("tok-inline-99", "424242", "tok-7f3a9c"):
        assert secret not in text


def test_console_type_uses_the_console_module_when_present(capsys):
    notifiers, problems = build(
        "notifiers:\n  - {name: term, type: console, format: line, min_severity: critical}\n"
    )
    if importlib.util.find_spec("gradwatch.notify.console") is None:
        assert messages(problems) == [
            "gw.yaml:2: notifiers[0].type: the console notifier is not available in this build"
        ]
        return
    assert problems == []
    [term] = notifiers
    assert term.name == "term" and term.group_wait == 0 and term.describe().startswith("console 'term'")
    from receivers import make_event

    assert not term.accepts(make_event(severity="warning"))
    term.send([make_event(run="console-run")])
    assert "console-run" in capsys.readouterr().out
    _, problems = build("notifiers:\n  - {name: term, type: console, format: xml}\n")
    assert messages(problems) == [
        "gw.yaml:2: notifiers[0].format: expected one of auto, line, block, json, got 'xml'"
    ]


def test_redact_and_scrub():
    assert redact(SLACK_SECRET) == "https://hooks.slack.com/***"
    assert redact("http://user:pw@am.internal:9093") == "http://am.internal:9093/***"
    assert redact("http://am.internal:9093/") == "http://am.internal:9093"
    assert redact("https://x.example/hook?token=abc") == "https://x.example/***"
    assert redact("http://[::1]:80/a") == "http://[::1]:80/***"
    assert redact("garbage") == "***" and redact("http://x:notaport/") == "***"
    s = Secret(SLACK_SECRET, redact(SLACK_SECRET))
    assert SLACK_SECRET not in f"{s} {s!r} {[s]}"
    leaked = (
        "HTTPSConnectionPool(host='hooks.slack.com'): Max retries exceeded with url: "
        "/services/T0SECRET/B0SECRET/XyZsecretTOKEN123"
    )
    assert "SECRET" not in scrub(leaked, [s]) and "hooks.slack.com" in scrub(leaked, [s])


def test_delivery_error_for_unreachable_url_holds_no_secret(caplog):
    from receivers import make_event, refused_port

    caplog.set_level(logging.DEBUG)
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}/services/T0SECRET/B0SECRET/XyZsecretTOKEN123"
        n = SlackNotifier("s", Secret(url, redact(url)), timeout=2)
        with pytest.raises(DeliveryError) as info:
            n.send([make_event()])
    assert not info.value.permanent
    assert "Connection refused" in info.value.message
    text = info.value.message + repr(info.value) + caplog.text
    assert "SECRET" not in text and "XyZ" not in text
    n.close()
