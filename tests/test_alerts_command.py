"""``gradwatch alerts``: the alert history a real daemon recorded, with what each channel got.

A real ``gradwatch watch``, a real tensorboardX writer, a webhook receiver on loopback that accepts
everything and a channel whose port refuses connections; ``gradwatch alerts`` reads the state while
the daemon runs.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest
from daemon_support import Daemon, Writer, watch_args
from receivers import Receiver, refused_port, wait_until

from gradwatch.alerts import AlertEvent
from gradwatch.cli import main
from gradwatch.history import KEEP_SECONDS, MAX_EPISODES, TABLE, Query, create_schema, episodes, record

TAG = "gradients/actor_cnn_norm"


def run_alerts(capsys, *args: str) -> tuple[int, str]:
    code = main(["alerts", *args])
    return code, capsys.readouterr().out


def statuses(requests) -> list[tuple[str, str, str]]:
    out = []
    for r in requests:
        out += [
            (a["status"], a["labels"]["alertname"], a["labels"]["run"]) for a in json.loads(r.body)["alerts"]
        ]
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A daemon that saw td3 explode and recover, and healthy-run noise; one channel up, one down."""
    base = tmp_path_factory.mktemp("alerts")
    logdir, state = base / "logdir", base / "state"
    logdir.mkdir()
    writer = Writer()
    with Receiver() as hook, refused_port() as down:
        config = base / "gradwatch.yaml"
        config.write_text(
            "notifiers:\n"
            f"  - {{name: hook, type: webhook, url: '{hook.url()}', group_wait: 0s}}\n"
            f"  - {{name: pager, type: webhook, url: 'http://127.0.0.1:{down}/hook', group_wait: 0s,"
            " timeout: 1s}\n"
        )
        daemon = Daemon(watch_args(logdir, state, "--config", str(config)), str(base))
        try:
            daemon.wait_ready()
            writer.write_many(logdir / "td3", [(100, {TAG: 5_191.0}), (200, {TAG: 130_486.0})])
            writer.write_many(logdir / "healthy", [(100, {TAG: 130.0}), (200, {TAG: 118.0})])
            wait_until(lambda: ("firing", "gradient_explosion", "td3") in statuses(hook.requests), timeout=30)
            writer.write(logdir / "td3", 300, {TAG: 90.0})  # back to normal (clipping switched on)
            wait_until(
                lambda: ("resolved", "gradient_explosion", "td3") in statuses(hook.requests), timeout=30
            )
            daemon.wait_err(r"pager: .*(refused|failed|retry)", timeout=30)
            yield {"state": str(state), "logdir": str(logdir), "config": str(config), "daemon": daemon}
        finally:
            writer.stop()
            if daemon.proc.poll() is None:
                daemon.stop()


def test_alerts_since_1h_lists_what_the_daemon_sent_per_channel(history, capsys):
    code, out = run_alerts(capsys, "--state-dir", history["state"], "--since", "1h")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("2 alerts firing at some time since ")
    assert lines[1].split() == ["STARTED", "(UTC)", "FOR", "SEVERITY", "RULE", "RUN", "TAG", "STEP", "SENT"]
    explosion = next(line for line in lines if " gradient_explosion " in line)
    assert " critical " in explosion and " td3 " in explosion and " 200..300 " in explosion
    assert "hook: firing delivered, resolved delivered; pager: firing retrying" in explosion
    growth = next(line for line in lines if " gradient_growth " in line)
    assert "hook: firing delivered" in growth


def test_alerts_json_and_csv_say_the_same(history, capsys):
    _, out = run_alerts(capsys, "--state-dir", history["state"], "--since", "1h", "--json")
    doc = json.loads(out)
    (explosion,) = [a for a in doc["alerts"] if a["rule"] == "gradient_explosion"]
    assert explosion["run"] == "td3" and explosion["severity"] == "critical" and not explosion["firing"]
    assert explosion["first"] == {"step": 200, "value": 130_486.0}
    assert explosion["last"]["step"] == 300 and explosion["duration_seconds"] >= 0
    sent = {(n["channel"], n["kind"], n["status"]) for n in explosion["notifications"]}
    assert {("hook", "firing", "delivered"), ("hook", "resolved", "delivered")} <= sent
    pager = [n for n in explosion["notifications"] if n["channel"] == "pager"]
    assert pager and pager[0]["status"] == "retrying" and pager[0]["attempts"] >= 1 and pager[0]["error"]

    _, out = run_alerts(capsys, "--state-dir", history["state"], "--since", "1h", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    hook_rows = [(r["rule"], r["kind"], r["status"]) for r in rows if r["channel"] == "hook"]
    assert ("gradient_explosion", "resolved", "delivered") in hook_rows


def test_filters_by_run_rule_and_severity_and_finds_the_state_from_the_config(history, capsys):
    _, out = run_alerts(
        capsys, "--config", history["config"], history["logdir"], "--state-dir", history["state"]
    )
    assert out.startswith("2 alerts")
    assert run_alerts(capsys, "--state-dir", history["state"], "--run", "healthy")[1].startswith("0 alerts")
    _, out = run_alerts(capsys, "--state-dir", history["state"], "--severity", "critical", "--json")
    assert [a["rule"] for a in json.loads(out)["alerts"]] == ["gradient_explosion"]
    _, out = run_alerts(capsys, "--state-dir", history["state"], "--rule", "gradient_g*", "--json")
    assert [a["rule"] for a in json.loads(out)["alerts"]] == ["gradient_growth"]


def test_without_a_state_database_it_says_where_it_looked(tmp_path, capsys):
    assert main(["alerts", "--state-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert f"{tmp_path}/gradwatch.db: no state database" in err
    assert main(["alerts", "--state-dir", str(tmp_path), "--since", "soon"]) == 3
    assert "--since: expected a duration like 30m, 2h or 7d, got 'soon'" in capsys.readouterr().err


def event(kind: str, starts_at: float, severity: str = "warning", run: str = "r", **more) -> AlertEvent:
    return AlertEvent(
        rule="x", run=run, tag="t", kind=kind, severity=severity, previous=None, step=more.pop("step", 1),
        value=more.pop("value", 1.0), wall_time=0.0, threshold=None, starts_at=starts_at,
        ends_at=more.pop("ends_at", None), **more,
    )  # fmt: skip


def test_episodes_follow_escalation_and_resolution_and_keep_undecodable_run_names():
    conn = sqlite3.connect(":memory:")
    create_schema(conn)
    run = "seed-\udcff"  # a run directory whose name is not UTF-8
    record(
        conn, [event("firing", 1000.0, run=run, annotations={"summary": f"t = 1 on run {run}"})], now=1000.0
    )
    record(conn, [event("escalated", 1000.0, "critical", run=run, step=2, value=float("nan"))], now=1001.0)
    record(conn, [event("resolved", 1000.0, "critical", run=run, step=3, ends_at=1010.0)], now=1010.0)
    (ep,) = episodes(conn, Query(since=0.0))
    assert (ep.run, ep.worst, ep.severity, ep.first_step, ep.last_step, ep.ends_at) == (
        run, "critical", "critical", 1, 3, 1010.0,
    )  # fmt: skip
    assert ep.transitions == 3 and ep.duration(now=5000.0) == 10.0
    assert ep.summary == f"t = 1 on run {run}"
    assert episodes(conn, Query(since=1011.0)) == []  # ended before "since"


def test_retention_is_bounded_in_time_and_count():
    conn = sqlite3.connect(":memory:")
    create_schema(conn)
    record(conn, [event("firing", 0.0), event("resolved", 0.0, ends_at=10.0)], now=10.0)
    record(conn, [event("firing", 1.0, run="still")], now=10.0)  # still firing: kept however old
    record(conn, [event("firing", KEEP_SECONDS + 20, run="new")], now=KEEP_SECONDS + 20)
    assert {e.run for e in episodes(conn, Query(since=0.0))} == {"still", "new"}
    record(
        conn,
        [event("firing", 100.0 + i, run=f"r{i}") for i in range(MAX_EPISODES + 5)],
        now=KEEP_SECONDS + 30,
    )
    assert conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] == MAX_EPISODES
