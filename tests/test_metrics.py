"""The exporter: a real Engine with real rules reading real event files, scraped over HTTP."""

import gzip
import logging
import math
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import require, require_binary
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tensorboardX import SummaryWriter

from gradwatch.alerts import AlertBook
from gradwatch.config.rulefiles import load_rules
from gradwatch.daemon.status import Status, alert_rows, series_rows, transition_rows
from gradwatch.engine import Engine
from gradwatch.events.logdir import LogdirReader, ProblemLog
from gradwatch.exporter.collector import FAMILIES, PROBLEM_KINDS, Metrics, MetricsServer

NORM = "gradients/actor_cnn_norm"
SEED = [(100, 5191.0), (200, 130486.0), (300, 826256.0)]


def write_seed(logdir, run="exploding"):
    """The founding case, written by a real TensorBoard writer."""
    with SummaryWriter(str(logdir / run)) as w:
        for step, norm in SEED:
            w.add_scalar(NORM, norm, step)
            w.add_scalar("q/mean", 1000.0 * step, step)
            w.add_scalar("loss/actor", -step / 100, step)


class Fed:
    """Engine, AlertBook and Metrics wired the way the daemon wires them: the daemon thread
    publishes a Status after each change, the exporter reads only that."""

    def __init__(self, export_tags=None, process_metrics=False):
        self.rules = load_rules()
        self.book = AlertBook(self.rules)
        self.engine = Engine(self.rules, self.book, export_tags=export_tags)
        self.problems = ProblemLog()
        self.transitions = {}
        self.totals = {}  # runs, files, records, points, outbox ...: whatever the test reads
        self.status = Status()
        self.metrics = Metrics(lambda: self.status, process_metrics=process_metrics)
        self.publish()

    def publish(self, **fields):
        self.totals.update(fields)
        self.status = Status(
            rules=len(self.rules),
            series=series_rows(self.engine.all_series()),
            series_watched=sum(1 for s in self.engine.all_series() if s.rules),
            alerts=alert_rows(self.book.firing()),
            transitions=transition_rows(self.rules, self.transitions),
            problems=tuple(sorted(self.problems.counts.items())),
            **self.totals,
        )

    def observe(self, run, tag, step, wall_time, value):
        self.engine.observe(run, tag, step, wall_time, value)
        for e in self.book.take_events():
            key = (e.rule, e.severity, e.kind)
            self.transitions[key] = self.transitions.get(key, 0) + 1
        self.publish()

    def read(self, logdir):
        reader = LogdirReader(str(logdir), problems=self.problems)
        runs = reader.refresh()
        n = 0
        for point in reader.read_all(final=True):
            self.observe(*point)
            n += 1
        records = sum(r.tail.records for _, r in reader.readers.values())
        self.publish(records=records, points=n, runs=len(runs), files=sum(len(p) for p in runs.values()))


def status_metrics(**fields):
    """A Metrics reading one fixed Status."""
    status = Status(**fields)
    return Metrics(lambda: status, process_metrics=False)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics, name, **labels):
    return samples(metrics)[(name, frozenset(labels.items()))]


@pytest.fixture
def fed(tmp_path):
    write_seed(tmp_path)
    f = Fed()
    f.read(tmp_path)
    return f


def test_series_values_come_from_the_engine(fed):
    assert value(fed.metrics, "gradwatch_scalar_value", run="exploding", tag=NORM) == 826256.0
    assert value(fed.metrics, "gradwatch_scalar_step", run="exploding", tag=NORM) == 300
    # q/mean matches no rule and no export glob: not exported (bounded cardinality)
    assert not any(
        k[0] == "gradwatch_scalar_value" and ("tag", "q/mean") in k[1] for k in samples(fed.metrics)
    )
    assert value(fed.metrics, "gradwatch_series_tracked") == 1
    assert value(fed.metrics, "gradwatch_runs") == 1
    assert value(fed.metrics, "gradwatch_event_files") == 1
    # 3 steps x 3 tags, plus the file_version record tensorboardX writes first
    assert value(fed.metrics, "gradwatch_points_read_total") == 9
    assert value(fed.metrics, "gradwatch_records_read_total") >= 4


def test_scrape_reads_the_latest_point_without_any_call(fed):
    fed.observe("exploding", NORM, 400, 1.7e9, 2860755.0)
    assert value(fed.metrics, "gradwatch_scalar_value", run="exploding", tag=NORM) == 2860755.0
    assert value(fed.metrics, "gradwatch_scalar_step", run="exploding", tag=NORM) == 400
    assert value(fed.metrics, "gradwatch_run_last_event_timestamp_seconds", run="exploding") == 1.7e9


def test_export_tags_add_unruled_series(tmp_path):
    write_seed(tmp_path)
    f = Fed(export_tags=["q/*"])
    f.read(tmp_path)
    assert value(f.metrics, "gradwatch_scalar_value", run="exploding", tag="q/mean") == 300000.0
    assert value(f.metrics, "gradwatch_series_tracked") == 2


def test_alert_state_follows_the_engine(fed):
    labels = {"rule": "gradient_explosion", "run": "exploding", "tag": NORM}
    s = samples(fed.metrics)
    # 5,191 is healthy; 130,486 is critical; the seed never passes through "warning" alone
    assert s[("gradwatch_alert", frozenset({**labels, "severity": "critical"}.items()))] == 1
    assert ("gradwatch_alert", frozenset({**labels, "severity": "warning"}.items())) not in s
    t = {"rule": "gradient_explosion", "severity": "critical"}
    assert s[("gradwatch_alert_transitions_total", frozenset({**t, "kind": "firing"}.items()))] == 1
    # the growth rule (x10 within 200 steps) fired too: 5,191 -> 130,486 is x25
    assert s[
        ("gradwatch_alert", frozenset({**labels, "rule": "gradient_growth", "severity": "warning"}.items()))
    ]
    # back to healthy: the series disappears, as Prometheus' ALERTS does
    fed.observe("exploding", NORM, 400, 1.7e9, 12.0)
    s = samples(fed.metrics)
    assert not [k for k in s if k[0] == "gradwatch_alert" and ("rule", "gradient_explosion") in k[1]]
    assert s[("gradwatch_alert_transitions_total", frozenset({**t, "kind": "resolved"}.items()))] == 1


def alert_samples(m):
    return sorted(tuple(sorted(dict(k[1]).items())) for k in samples(m) if k[0] == "gradwatch_alert")


def test_an_alert_is_exported_once_at_its_highest_severity():
    m = status_metrics(
        alerts=(("r", "run", "tag", "warning"), ("r", "run", "tag", "critical"), ("r", "b", "tag", "info"))
    )
    assert alert_samples(m) == [
        (("rule", "r"), ("run", "b"), ("severity", "info"), ("tag", "tag")),
        (("rule", "r"), ("run", "run"), ("severity", "critical"), ("tag", "tag")),
    ]


def test_counters_start_at_zero_so_increase_sees_the_first(fed):
    s = samples(fed.metrics)
    for kind in PROBLEM_KINDS:
        assert s[("gradwatch_read_problems_total", frozenset({"kind": kind}.items()))] == 0
    kinds = {
        (dict(k[1])["rule"], dict(k[1])["severity"], dict(k[1])["kind"])
        for k in s
        if k[0] == "gradwatch_alert_transitions_total"
    }
    # escalation only into a higher level, de-escalation only into a lower one
    assert ("gradient_explosion", "critical", "escalated") in kinds
    assert ("gradient_explosion", "warning", "deescalated") in kinds
    assert ("gradient_explosion", "warning", "escalated") not in kinds
    assert ("gradient_nonfinite", "critical", "escalated") not in kinds
    assert ("gradient_nonfinite", "critical", "firing") in kinds
    assert value(fed.metrics, "gradwatch_rules") == 3


def test_read_problems_are_counted_by_kind(tmp_path):
    write_seed(tmp_path)
    path = next((tmp_path / "exploding").iterdir())
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # flip a byte inside the second record
    path.write_bytes(bytes(data) + b"\x01\x02\x03")  # and leave a torn record at the end
    f = Fed()
    f.read(tmp_path)
    assert value(f.metrics, "gradwatch_read_problems_total", kind="corrupt_record") == 1
    assert value(f.metrics, "gradwatch_read_problems_total", kind="truncated_record") == 1
    # the reader recovered: the last norm is still read
    assert value(f.metrics, "gradwatch_scalar_value", run="exploding", tag=NORM) == 826256.0


def test_nan_and_inf_are_exported_as_such():
    f = Fed()
    f.observe("r", "grad_norm", 1, 1.7e9, math.nan)
    f.observe("r", "critic_grad_norm", 1, 1.7e9, math.inf)
    assert math.isnan(value(f.metrics, "gradwatch_scalar_value", run="r", tag="grad_norm"))
    assert value(f.metrics, "gradwatch_scalar_value", run="r", tag="critic_grad_norm") == math.inf
    assert value(
        f.metrics, "gradwatch_alert", rule="gradient_nonfinite", run="r", tag="grad_norm", severity="critical"
    )


def test_notification_stats_come_from_the_status():
    m = status_metrics(outbox=(("ops-webhook", 5, 0, 0, 0), ("slack", 3, 4, 2, 1)))
    s = samples(m)
    assert s[("gradwatch_notifications_sent_total", frozenset({"channel": "slack"}.items()))] == 3
    assert s[("gradwatch_notifications_failed_total", frozenset({"channel": "slack"}.items()))] == 4
    assert s[("gradwatch_notifications_queued", frozenset({"channel": "slack"}.items()))] == 2
    assert s[("gradwatch_notifications_dropped_total", frozenset({"channel": "slack"}.items()))] == 1
    assert s[("gradwatch_notifications_sent_total", frozenset({"channel": "ops-webhook"}.items()))] == 5
    assert s[("gradwatch_notifications_queued", frozenset({"channel": "ops-webhook"}.items()))] == 0


def test_watch_counts_and_totals_come_from_the_status():
    m = status_metrics(rules=3, runs=2, files=5, points=7, records=3, series_watched=4)
    assert value(m, "gradwatch_rules") == 3
    assert value(m, "gradwatch_runs") == 2 and value(m, "gradwatch_event_files") == 5
    assert value(m, "gradwatch_points_read_total") == 7
    assert value(m, "gradwatch_records_read_total") == 3
    assert value(m, "gradwatch_series_watched") == 4


def test_the_status_source_must_be_callable():
    with pytest.raises(TypeError, match=r"Metrics\(status\) must be a callable returning a Status"):
        Metrics(Status(), process_metrics=False)


def test_problem_kinds_unknown_to_the_exporter_are_exported_too():
    m = status_metrics(problems=(("corrupt_record", 2), ("some_new_kind", 1)))
    assert value(m, "gradwatch_read_problems_total", kind="corrupt_record") == 2
    assert value(m, "gradwatch_read_problems_total", kind="some_new_kind") == 1
    assert value(m, "gradwatch_read_problems_total", kind="vanished_file") == 0


def test_scrapes_survive_a_daemon_thread_adding_series():
    f = Fed()
    errors = []
    scraping = threading.Event()

    def daemon():
        scraping.wait(10)  # start adding once scrapes are under way, so the two really overlap
        for i in range(5_000):
            f.engine.observe(f"run{i % 50}", f"grad_norm/{i}", i, 1.7e9 + i, float(i))
            if i % 100 == 99:
                f.publish()  # the daemon thread publishes once per loop iteration

    t = threading.Thread(target=daemon)
    t.start()
    seen = []
    try:
        while t.is_alive():
            try:
                seen.append(value(f.metrics, "gradwatch_series_tracked"))
            except Exception as e:  # any exception here is the bug under test
                errors.append(e)
            scraping.set()
    finally:
        t.join()
    assert errors == []
    assert len(seen) >= 2, "no scrape overlapped the daemon thread: the test tested nothing"
    assert seen == sorted(seen)
    assert value(f.metrics, "gradwatch_series_tracked") == 5_000


def test_series_export_is_capped(caplog):
    f = Fed()
    f.metrics.max_series = 5
    for i in range(8):
        f.observe("r", f"grad_norm/{i}", 1, 1.7e9, float(i))
    with caplog.at_level(logging.WARNING, logger="gradwatch.metrics"):
        s = samples(f.metrics)
        samples(f.metrics)
    assert len([k for k in s if k[0] == "gradwatch_scalar_value"]) == 5
    assert s[("gradwatch_series_tracked", frozenset())] == 8
    assert [r.getMessage() for r in caplog.records] == [
        "metrics: 8 series tracked, exporting the first 5; narrow metrics.export_tags"
    ]


def test_reload_and_ready_state():
    m = status_metrics(reload_time=1.7e9)
    assert value(m, "gradwatch_config_last_reload_successful") == 1
    assert value(m, "gradwatch_config_last_reload_success_timestamp_seconds") == 1.7e9
    assert value(m, "gradwatch_ready") == 0
    m = status_metrics(reload_ok=False, reload_time=1.7e9, ready=True)
    assert value(m, "gradwatch_config_last_reload_successful") == 0
    assert value(m, "gradwatch_config_last_reload_success_timestamp_seconds") == 1.7e9
    assert value(m, "gradwatch_ready") == 1


def test_every_documented_family_is_exported(fed):
    fed.publish(outbox=(("slack", 1, 0, 0, 0),))
    names = {k[0] for k in samples(fed.metrics)}
    assert set(FAMILIES) <= names


def test_output_passes_promtool_check_metrics(fed):
    promtool = require_binary("promtool")
    fed.problems("corrupt_record", "events.out.tfevents.1", 40, "bad crc")
    fed.publish(outbox=(("slack", 1, 2, 3, 0),))
    m = Metrics(lambda: fed.status)  # with process, platform and GC collectors, as the daemon runs it
    for registry in (fed.metrics.registry, m.registry):
        p = subprocess.run(
            [promtool, "check", "metrics"],
            input=generate_latest(registry),
            capture_output=True,
            timeout=30,
        )
        assert (p.returncode, p.stderr.decode()) == (0, "")


# -- HTTP ---------------------------------------------------------------------


def get(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def server(fed):
    srv = MetricsServer(fed.metrics, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()


def test_metrics_endpoint(server):
    status, headers, body = get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert f'gradwatch_scalar_value{{run="exploding",tag="{NORM}"}} 826256.0' in body.decode()


def test_metrics_endpoint_speaks_what_prometheus_asks_for(server):
    # Prometheus 2.x asks for OpenMetrics and gzip
    status, headers, body = get(
        server.url + "/metrics",
        {
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "Accept-Encoding": "gzip",
        },
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert "gradwatch_records_read_total" in text and text.endswith("# EOF\n")


def test_health_and_readiness(server, fed):
    assert get(server.url + "/-/healthy")[0] == 200
    status, _, body = get(server.url + "/-/ready")
    assert (status, body) == (503, b"gradwatch is catching up on existing event files.\n")
    fed.publish(ready=True)
    assert get(server.url + "/-/ready")[:3:2] == (200, b"gradwatch is ready.\n")
    status, headers, body = get(server.url + "/-/healthy", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "22")


def test_unknown_paths_and_methods(server):
    status, _, body = get(server.url + "/nope")
    assert status == 404 and b"/metrics" in body
    status, headers, _ = get(server.url + "/-/healthy", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(server.url + "/")[0] == 200


def test_stop_releases_the_port_and_the_thread(fed):
    srv = MetricsServer(fed.metrics, "127.0.0.1", 0)
    srv.start()
    port = srv.port
    assert get(srv.url + "/-/healthy")[0] == 200
    srv.stop()
    srv.stop()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "gradwatch-http"]
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=5)
    # closed, not answering with an error status (HTTPError is a URLError too)
    assert isinstance(err.value.reason, ConnectionRefusedError)
    again = MetricsServer(fed.metrics, "127.0.0.1", port)  # the same port binds again at once
    again.start()
    assert again.port == port
    again.stop()


def test_address_in_use_is_a_clear_error(fed):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = MetricsServer(fed.metrics, "127.0.0.1", port)
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use"):
            srv.start()
    with pytest.raises(RuntimeError, match="only after start"):
        srv.port  # noqa: B018


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:  # no IPv6 in this kernel, or ::1 not configured (some containers)
        return False
    return True


def test_ipv6_loopback(fed):
    require(ipv6_loopback_available(), "no IPv6 loopback (::1) on this machine")
    with MetricsServer(fed.metrics, "::1", 0) as srv:
        assert srv.url.startswith("http://[::1]:")
        assert get(srv.url + "/-/healthy")[0] == 200


def test_docs_describe_exactly_the_exported_families():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operating.md").read_text()
    documented = set(re.findall(r"`(gradwatch_[a-z_]+)`", doc))
    assert documented == set(FAMILIES)
    mentioned = set(re.findall(r"\bgradwatch_[a-z_]+", doc))
    assert mentioned <= set(FAMILIES), mentioned - set(FAMILIES)


def test_every_problem_kind_the_reader_reports_starts_at_zero():
    # increase() only sees a counter's first increment if the series existed at 0 before
    from gradwatch.events import records
    from gradwatch.events.logdir import PROBLEM_KINDS

    reported = {
        v
        for k, v in vars(records).items()
        if k.isupper() and k[0] != "_" and isinstance(v, str) and v.islower()
    }
    assert reported <= set(PROBLEM_KINDS)
    text = generate_latest(status_metrics().registry).decode()
    for kind in PROBLEM_KINDS:
        assert f'gradwatch_read_problems_total{{kind="{kind}"}} 0.0' in text


def test_label_values_are_data_and_round_trip_a_real_scrape():
    """Review 6: label values are kept exact (a line break, a quote, a bidi override): the
    exposition format escapes \\, " and newline itself, and escaping them again would change the
    series' identity. Only bytes that are not UTF-8 (Linux names) become \\xNN."""
    from gradwatch.rules import Series

    run, tag = 'evil\n"run"\\\u202e', "grad\udcffnorm"
    s = Series(run, tag, [])
    s.step, s.wall_time, s.value = 7, 1.0, 3.5
    status = Status(series=series_rows([s]))
    with MetricsServer(Metrics(lambda: status, process_metrics=False), "127.0.0.1", 0) as srv:
        status, _, body = get(srv.url + "/metrics")
    assert status == 200
    families = text_string_to_metric_families(body.decode())
    (family,) = [f for f in families if f.name == "gradwatch_scalar_value"]
    assert [sample.labels for sample in family.samples] == [{"run": run, "tag": "grad\\xffnorm"}]
