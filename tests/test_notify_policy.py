"""notify/policy.py: grouping, pacing per receiver and backoff, as plain functions of their inputs."""

from __future__ import annotations

from dataclasses import dataclass

from gradwatch.config.secrets import secret_url
from gradwatch.notify.policy import Pacer, backoff, next_group
from gradwatch.notify.slack import SlackNotifier
from gradwatch.notify.webhook import WebhookNotifier

HOOK = "https://hooks.slack.com/services/T0SECRET/B0SECRET/XyZsecretTOKEN123"


@dataclass
class Row:
    id: int
    run: str
    enqueued_at: float
    alert_key: str


def test_the_head_row_opens_a_window_and_nothing_goes_before_it_closes():
    rows = [Row(1, "a", 100.0, "k1"), Row(2, "a", 101.0, "k2")]
    assert next_group(rows, 2.0, now=101.5) == ([], 0.5)
    assert next_group(rows, 2.0, now=101.5, draining=True) == (rows, 0.0)  # shutting down: send now


def test_a_group_is_one_run_within_the_window_with_one_transition_per_alert():
    rows = [
        Row(1, "a", 100.0, "k1"),
        Row(2, "b", 100.5, "k9"),  # another run: its own group
        Row(3, "a", 101.0, "k2"),
        Row(4, "a", 101.5, "k1"),  # k1 again (resolved after firing): the next send
        Row(5, "a", 101.6, "k3"),  # after it, so it waits too (order per run is kept)
    ]
    group, wait = next_group(rows, 2.0, now=103.0)
    assert [r.id for r in group] == [1, 3] and wait == 0.0
    late = [Row(1, "a", 100.0, "k1"), Row(2, "a", 105.0, "k2")]
    assert [r.id for r in next_group(late, 2.0, now=106.0)[0]] == [1]  # enqueued after the window
    # a channel that folds transitions itself (Alertmanager) gets both of k1's in one group
    folded, _ = next_group(rows, 2.0, now=103.0, one_state_per_alert=False)
    assert [r.id for r in folded] == [1, 3, 4, 5]


def test_only_alertmanager_folds_an_alerts_transitions_itself():
    from gradwatch.notify.alertmanager import AlertmanagerNotifier
    from gradwatch.notify.base import Notifier
    from gradwatch.notify.console import ConsoleNotifier
    from gradwatch.notify.slack import SlackNotifier
    from gradwatch.notify.webhook import WebhookNotifier

    assert Notifier.one_state_per_alert and WebhookNotifier.one_state_per_alert
    assert SlackNotifier.one_state_per_alert and ConsoleNotifier.one_state_per_alert
    assert not AlertmanagerNotifier.one_state_per_alert


def test_backoff_doubles_with_equal_jitter_and_honours_retry_after():
    low, high = (lambda a, b: a), (lambda a, b: b)
    assert [backoff(n, None, 1.0, 300.0, high) for n in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 300.0]
    assert backoff(4, None, 1.0, 300.0, low) == 4.0  # never less than half the step
    assert backoff(9, 7.0, 1.0, 300.0, low) == 7.0  # Retry-After wins over the attempt count
    assert 7.0 <= backoff(1, 7.0, 1.0, 300.0) <= 8.0


def test_pacing_is_per_receiver_and_never_sleeps():
    pacer = Pacer()
    assert pacer.reserve("slack A", 1.0, now=10.0) == 0.0
    assert pacer.reserve("slack A", 1.0, now=10.25) == 0.75  # wait, and nothing is taken
    assert pacer.reserve("slack B", 1.0, now=10.25) == 0.0  # another receiver is not held up
    assert pacer.reserve("slack A", 1.0, now=11.0) == 0.0
    assert all(pacer.reserve("webhook", 0.0, now=11.0) == 0.0 for _ in range(3))  # no limit, no wait


def test_slack_channels_sharing_a_webhook_url_share_one_pace_key_that_hides_it():
    a = SlackNotifier("a", secret_url(HOOK))
    b = SlackNotifier("b", secret_url(HOOK))
    c = SlackNotifier("c", secret_url(HOOK.replace("TOKEN123", "TOKEN456")))
    hook = WebhookNotifier("hook", secret_url("http://127.0.0.1:9/hook"))
    try:
        assert a.pace_key() == b.pace_key() != c.pace_key()
        assert "T0SECRET" not in a.pace_key() and "secretTOKEN" not in a.pace_key()
        assert hook.pace_key() == "channel hook"
    finally:
        for n in (a, b, c, hook):
            n.close()
