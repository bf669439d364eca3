"""Prometheus exporter and the daemon's HTTP endpoints.

API (what the daemon calls)
---------------------------
State that lives elsewhere is read at scrape time through callables, so the
per-point path does no metric work and nothing can drift out of sync::

    metrics = Metrics(
        series=lambda: engine.all_series(),          # Series objects (run, tag, step, wall_time, value)
        alerts=lambda: ((a.rule, a.run, a.tag, SEVERITY_OF_RANK[a.rank]) for a in book.firing()),
        problems=lambda: problem_log.counts,         # {kind: count}
        outbox_stats=outbox.stats,                   # {channel: {sent, failed, queued, dropped}}
        rules=lambda: rules,                         # the loaded Rule objects
        watch=lambda: (n_runs, n_files),             # runs and event files followed
        counts=lambda: {"points": n_points},         # monotonic totals kept elsewhere (records, points)
    )
    metrics = Metrics(daemon)          # the same, from a gradwatch.daemon.Daemon's attributes
    metrics.serve("127.0.0.1", 9723)   # background thread; port 0 = any free port; OSError if taken
                                       # (gradwatch/metrics_http.py: /metrics rendered at most once a
                                       # second and on each push below, whatever the clients do)
    metrics.port                       # the bound port
    metrics.records_read(n, points=m)  # once per read pass, not per record (without ``counts``)
    metrics.transition(event)          # each AlertEvent after it is committed
    metrics.set_ready(True)            # first catch-up done: /-/ready turns 200
    metrics.config_reloaded(ok)        # after each SIGHUP
    metrics.state_save_failed(error)   # the state DB refused a commit (None: works again); /-/healthy says so
    metrics.stop()                     # stops the HTTP server

Every source is optional; without one, the matching push method keeps the
state: ``transition`` (and ``set_alert`` / ``clear_alerts``) the alert gauge,
``observe_problem(kind)`` the problem counts, ``set_rules`` and ``set_watch``
their gauges, ``records_read`` the totals. A source that raises
``RuntimeError`` (a dict changed size while the daemon thread updated it) is
read again, then the previous scrape's copy is served; any other exception
is logged once and only that source's metrics are left out.

Every method is thread-safe and cheap. Exported families are listed in
:data:`FAMILIES`; docs/operating.md says what each means and which values
are healthy.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gradwatch import __version__
from gradwatch.alerts import DEESCALATED, ESCALATED, FIRING, REPEAT, RESOLVED, AlertEvent
from gradwatch.events import logdir
from gradwatch.metrics_http import MetricsServer
from gradwatch.rules import RANK, SEVERITY_OF_RANK, Rule, Series

log = logging.getLogger("gradwatch.metrics")

# Problem kinds the reader reports, pre-set to 0 so that increase() sees the first one.
PROBLEM_KINDS = logdir.PROBLEM_KINDS
TRANSITION_KINDS = (FIRING, ESCALATED, DEESCALATED, RESOLVED, REPEAT)
OUTBOX_FIELDS = ("sent", "failed", "queued", "dropped")

DEFAULT_MAX_SERIES = 10_000
# A scrape copies the daemon's dicts while its thread may add to them; the
# copy is retried this often, then the last good copy is served.
_SNAPSHOT_ATTEMPTS = 5

SeriesSource = Callable[[], Iterable[Series]]
AlertsSource = Callable[[], Iterable[tuple[str, str, str, str]]]  # (rule, run, tag, severity)
CountsSource = Callable[[], Mapping[str, int]]
RulesSource = Callable[[], Iterable[Rule]]
WatchSource = Callable[[], tuple[int, int]]  # (runs, event files)
StatsSource = Callable[[], Mapping[str, Mapping[str, int]]]

# name (as scraped) -> (type, labels, help). The single source of truth for
# the collector's help texts, the docs and the tests.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "gradwatch_build_info": (
        "gauge",
        ("version", "python_version"),
        "Always 1; labels say which gradwatch runs.",
    ),
    "gradwatch_ready": ("gauge", (), "1 once the first catch-up on existing event files is done, else 0."),
    "gradwatch_rules": ("gauge", (), "Rules loaded."),
    "gradwatch_runs": ("gauge", (), "Runs (directories holding event files) under the logdir."),
    "gradwatch_event_files": ("gauge", (), "Event files being followed."),
    "gradwatch_series_tracked": (
        "gauge",
        (),
        "Series (run, tag) kept in memory: rule-matched tags plus metrics.export_tags.",
    ),
    "gradwatch_series_watched": ("gauge", (), "Series (run, tag) that at least one rule evaluates."),
    "gradwatch_scalar_value": (
        "gauge",
        ("run", "tag"),
        "Latest value of a tracked scalar series, as logged by the trainer.",
    ),
    "gradwatch_scalar_step": (
        "gauge",
        ("run", "tag"),
        "Training step of the latest point of a tracked series.",
    ),
    "gradwatch_run_last_event_timestamp_seconds": (
        "gauge",
        ("run",),
        "Wall time (Unix seconds, from the event) of the newest point of any tracked series of a run.",
    ),
    "gradwatch_alert": (
        "gauge",
        ("rule", "run", "tag", "severity"),
        "1 while a gradwatch rule fires for a series, at its current severity (like Prometheus' ALERTS).",
    ),
    "gradwatch_alert_transitions_total": (
        "counter",
        ("rule", "severity", "kind"),
        "Alert transitions: firing, escalated, deescalated, resolved, repeat.",
    ),
    "gradwatch_records_read_total": ("counter", (), "TFRecords read and checksum-verified."),
    "gradwatch_points_read_total": ("counter", (), "Scalar points decoded from event files."),
    "gradwatch_read_problems_total": (
        "counter",
        ("kind",),
        "Problems met while reading (corrupt or truncated records, unreadable or vanished files, ...).",
    ),
    "gradwatch_notifications_sent_total": ("counter", ("channel",), "Notifications delivered per channel."),
    "gradwatch_notifications_failed_total": (
        "counter",
        ("channel",),
        "Failed delivery attempts per channel (retried until they succeed or are dropped).",
    ),
    "gradwatch_notifications_dropped_total": (
        "counter",
        ("channel",),
        "Notifications given up on per channel (permanent error or older than the outbox max age).",
    ),
    "gradwatch_notifications_queued": (
        "gauge",
        ("channel",),
        "Notifications waiting in the outbox per channel.",
    ),
    "gradwatch_state_save_failing": (
        "gauge",
        (),
        "1 while the state DB refuses commits (a full disk): alerts reach the console, notifications wait.",
    ),
    "gradwatch_state_save_errors_total": ("counter", (), "Commits of the state DB that failed."),
    "gradwatch_config_last_reload_successful": (
        "gauge",
        (),
        "1 if the last configuration (re)load succeeded.",
    ),
    "gradwatch_config_last_reload_success_timestamp_seconds": (
        "gauge",
        (),
        "Unix time of the last successful configuration (re)load.",
    ),
}


def _family(name: str) -> Metric:
    kind, labels, help_text = FAMILIES[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _possible_transitions(rule: Rule) -> Iterator[tuple[str, str, str]]:
    """(rule, severity, kind) combinations a rule can produce; the severity is the new one."""
    ranks = sorted(rank for rank, _, _ in rule.levels)
    for rank, severity, _ in rule.levels:
        for kind in TRANSITION_KINDS:
            if kind == ESCALATED and rank == ranks[0]:
                continue  # nothing lower to escalate from
            if kind == DEESCALATED and rank == ranks[-1]:
                continue
            yield (rule.name, severity, kind)


def _label(name: str) -> str:
    """A run or tag name as a label value: bytes that are not UTF-8 (Linux names) shown as \\xNN.

    Everything else is kept exact: label values are data (the exposition format escapes
    backslash, quote and newline itself); escaping more would change the series' identity.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _series_copy(series: Iterable[Series]) -> list[tuple[str, str, int, float, float]]:
    return [(_label(s.run), _label(s.tag), s.step, s.wall_time, s.value) for s in series]


def _alerts_copy(alerts: Iterable[tuple[str, str, str, str]]) -> dict[tuple[str, str, str], str]:
    # one severity per alert: the highest if a source repeats one
    out: dict[tuple[str, str, str], str] = {}
    for rule, run, tag, severity in alerts:
        key = (str(rule), _label(str(run)), _label(str(tag)))
        if RANK.get(severity, 0) >= RANK.get(out.get(key, ""), 0):
            out[key] = str(severity)
    return out


def _counts_copy(counts: Mapping[str, int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in dict(counts).items()}


def _outbox_copy(stats: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {str(ch): {f: int(st.get(f, 0)) for f in OUTBOX_FIELDS} for ch, st in dict(stats).items()}


def _pair(value: tuple[int, int]) -> tuple[int, int]:
    a, b = value
    return int(a), int(b)


def _daemon_sources(daemon: Any) -> tuple[Callable[[], Any], ...]:
    """Sources reading a gradwatch.daemon.Daemon at scrape time (attributes looked up each time,
    so an engine or outbox replaced on reload is followed)."""

    def outbox_stats() -> Mapping[str, Mapping[str, int]]:
        outbox = getattr(daemon, "outbox", None)
        return outbox.stats() if outbox is not None else {}

    def watch() -> tuple[int, int]:
        readers = dict(daemon.reader.readers)  # path -> (run, reader)
        return len({run for run, _ in readers.values()}), len(readers)

    return (
        lambda: daemon.engine.all_series(),
        outbox_stats,
        lambda: (
            (a.rule, a.run, a.tag, SEVERITY_OF_RANK.get(a.rank, "warning")) for a in daemon.book.firing()
        ),
        lambda: daemon.problems.counts,
        lambda: daemon.rules,
        watch,
        lambda: {
            "points": daemon.points,
            "records": getattr(daemon, "records", 0),
            "series_watched": getattr(daemon, "series_watched", 0),
        },
    )


class Metrics:
    """State the daemon pushes (rare events) plus sources read at scrape time."""

    def __init__(
        self,
        series: SeriesSource | None = None,
        outbox_stats: StatsSource | None = None,
        *,
        alerts: AlertsSource | None = None,
        problems: CountsSource | None = None,
        rules: RulesSource | None = None,
        watch: WatchSource | None = None,
        counts: CountsSource | None = None,  # {"records": n, "points": m}, totals since start
        max_series: int = DEFAULT_MAX_SERIES,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
    ) -> None:
        if series is not None and not callable(series) and hasattr(series, "engine"):
            series, outbox_stats, alerts, problems, rules, watch, counts = _daemon_sources(series)
        for name, source in (
            ("series", series),
            ("outbox_stats", outbox_stats),
            ("alerts", alerts),
            ("problems", problems),
            ("rules", rules),
            ("watch", watch),
            ("counts", counts),
        ):
            if source is not None and not callable(source):
                raise TypeError(f"Metrics({name}=...) must be a callable read at scrape time, got {source!r}")
        self.series_source = series
        self.outbox_stats = outbox_stats
        self.alerts_source = alerts
        self.problems_source = problems
        self.rules_source = rules
        self.watch_source = watch
        self.counts_source = counts
        self.max_series = max_series
        self.server: MetricsServer | None = None
        self._lock = threading.Lock()
        self._records = 0
        self._points = 0
        self._problems: dict[str, int] = {}
        self._transitions: dict[tuple[str, str, str], int] = {}
        self._alerts: dict[tuple[str, str, str], str] = {}
        self._rules = 0
        self._runs = 0
        self._files = 0
        self._ready = False
        # bumped by each rare pushed change (alert, reload, readiness, rules), so the HTTP side
        # never serves a cached /metrics body rendered before one (gradwatch/metrics_http.py)
        self.changes = 0
        self._reload_ok = True
        self.state_save_error: str | None = None  # set by the daemon while commits fail
        self._state_save_errors = 0
        self._reload_time = time.time()
        self._last: dict[str, Any] = {}  # source name -> its last good copy
        self._warned_over_limit = False
        self._failed_sources: set[str] = set()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # -- HTTP -----------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 9723) -> MetricsServer:
        """Start serving /metrics, /-/healthy and /-/ready (gradwatch/metrics_http.py); raises
        OSError when the address is taken."""
        server = MetricsServer(self, host, port)
        server.start()
        self.server = server
        return server

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("Metrics.port is known only after serve()")
        return self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- pushed by the daemon -------------------------------------------------

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Count the rules and pre-set their transition counters to 0 (so increase() sees the first)."""
        self.changes += 1
        rules = list(rules)
        with self._lock:
            self._rules = len(rules)
            for rule in rules:
                for key in _possible_transitions(rule):
                    self._transitions.setdefault(key, 0)

    def records_read(self, n: int, points: int = 0) -> None:
        with self._lock:
            self._records += n
            self._points += points

    def observe_problem(self, kind: str) -> None:
        """Count a read problem (used when no ``problems`` source is given)."""
        with self._lock:
            self._problems[kind] = self._problems.get(kind, 0) + 1

    def transition(self, event: AlertEvent) -> None:
        """Count a committed transition; without an ``alerts`` source also track the alert's state."""
        self.changes += 1
        key = (event.rule, event.severity, event.kind)
        with self._lock:
            self._transitions[key] = self._transitions.get(key, 0) + 1
        if self.alerts_source is None:
            self.set_alert(
                event.rule, event.run, event.tag, None if event.kind == RESOLVED else event.severity
            )

    def set_alert(self, rule: str, run: str, tag: str, severity: str | None) -> None:
        """The alert's current severity; ``None`` (resolved) removes its series, as Prometheus does."""
        self.changes += 1
        with self._lock:
            if severity:
                self._alerts[(rule, run, tag)] = severity
            else:
                self._alerts.pop((rule, run, tag), None)

    def clear_alerts(self) -> None:
        """Forget every pushed alert (e.g. before restoring the set from the state DB)."""
        self.changes += 1
        with self._lock:
            self._alerts.clear()

    def set_watch(self, runs: int, files: int) -> None:
        with self._lock:
            self._runs, self._files = runs, files

    def set_ready(self, ready: bool = True) -> None:
        self.changes += 1
        self._ready = bool(ready)

    @property
    def ready(self) -> bool:
        return self._ready

    def state_save_failed(self, error: str | None) -> None:
        """The daemon's last commit failed with ``error`` (counted), or worked again (None)."""
        with self._lock:
            self.state_save_error = error
            if error is not None:
                self._state_save_errors += 1

    def config_reloaded(self, ok: bool) -> None:
        self.changes += 1
        with self._lock:
            self._reload_ok = bool(ok)
            if ok:
                self._reload_time = time.time()

    # -- read at scrape time ----------------------------------------------------

    def _read(self, name: str, source: Callable[[], Any] | None, convert: Callable[[Any], Any]) -> Any:
        """``convert(source())``, retried while the daemon thread changes the dict under it."""
        if source is None:
            return None
        for _ in range(_SNAPSHOT_ATTEMPTS):
            try:
                copy = convert(source())
            except RuntimeError:
                continue  # "dictionary changed size during iteration": copy again
            except Exception:
                if name not in self._failed_sources:  # once: it would fail on every scrape
                    self._failed_sources.add(name)
                    log.error("metrics: reading %s failed; its metrics are left out", name, exc_info=True)
                return None
            self._last[name] = copy
            return copy
        log.debug("metrics: %s changed during %d copies; serving the last copy", name, _SNAPSHOT_ATTEMPTS)
        return self._last.get(name)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            records_total, points_total = self._records, self._points
            series_watched = 0
            pushed_problems = dict(self._problems)
            transitions = dict(self._transitions)
            pushed_alerts = dict(self._alerts)
            n_rules, runs, files = self._rules, self._runs, self._files
            reload_ok, reload_time = self._reload_ok, self._reload_time
            save_failing, save_errors = self.state_save_error is not None, self._state_save_errors
        snap = self._read("series", self.series_source, _series_copy) or []
        alerts = (
            pushed_alerts
            if self.alerts_source is None
            else self._read("alerts", self.alerts_source, _alerts_copy) or {}
        )
        problems = dict.fromkeys(PROBLEM_KINDS, 0)
        if self.problems_source is None:
            problems.update(pushed_problems)
        else:
            problems.update(self._read("problems", self.problems_source, _counts_copy) or {})
        outbox = self._read("outbox_stats", self.outbox_stats, _outbox_copy) or {}
        if self.rules_source is not None:
            rules = self._read("rules", self.rules_source, list)
            if rules is not None:
                n_rules = len(rules)
                for key in (k for r in rules for k in _possible_transitions(r)):
                    transitions.setdefault(key, 0)
        if self.watch_source is not None:
            runs, files = self._read("watch", self.watch_source, _pair) or (0, 0)
        if self.counts_source is not None:
            totals = self._read("counts", self.counts_source, _counts_copy) or {}
            records_total = totals.get("records", records_total)
            points_total = totals.get("points", points_total)
            series_watched = totals.get("series_watched", 0)

        info = _family("gradwatch_build_info")
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        for name, value in (
            ("gradwatch_ready", float(self._ready)),
            ("gradwatch_rules", n_rules),
            ("gradwatch_runs", runs),
            ("gradwatch_event_files", files),
            ("gradwatch_series_tracked", len(snap)),
            ("gradwatch_series_watched", series_watched),
            ("gradwatch_config_last_reload_successful", float(reload_ok)),
            ("gradwatch_config_last_reload_success_timestamp_seconds", reload_time),
            ("gradwatch_state_save_failing", float(save_failing)),
            ("gradwatch_state_save_errors_total", save_errors),
        ):
            fam = _family(name)
            fam.add_metric([], value)
            yield fam

        yield from self._series_families(snap)

        fam = _family("gradwatch_alert")
        for (rule, run, tag), severity in sorted(alerts.items()):
            fam.add_metric([rule, run, tag, severity], 1)
        yield fam
        fam = _family("gradwatch_alert_transitions_total")
        for labels, n in sorted(transitions.items()):
            fam.add_metric(list(labels), n)
        yield fam

        for name, value in (
            ("gradwatch_records_read_total", records_total),
            ("gradwatch_points_read_total", points_total),
        ):
            fam = _family(name)
            fam.add_metric([], value)
            yield fam
        fam = _family("gradwatch_read_problems_total")
        for kind, n in sorted(problems.items()):
            fam.add_metric([kind], n)
        yield fam

        for field in OUTBOX_FIELDS:
            name = f"gradwatch_notifications_{field}" + ("" if field == "queued" else "_total")
            fam = _family(name)
            for channel, stats in sorted(outbox.items()):
                fam.add_metric([channel], stats[field])
            yield fam

    def _series_families(self, snap: list[tuple[str, str, int, float, float]]) -> Iterator[Metric]:
        value = _family("gradwatch_scalar_value")
        step = _family("gradwatch_scalar_step")
        last: dict[str, float] = {}
        exported = 0
        for run, tag, s_step, wall_time, s_value in snap:
            if not wall_time and math.isnan(s_value):
                continue  # tracked but no point yet
            if wall_time > last.get(run, -math.inf):
                last[run] = wall_time
            if exported >= self.max_series:
                continue
            exported += 1
            value.add_metric([run, tag], s_value)
            step.add_metric([run, tag], s_step)
        if len(snap) > self.max_series and not self._warned_over_limit:
            self._warned_over_limit = True
            log.warning(
                "metrics: %d series tracked, exporting the first %d; narrow metrics.export_tags",
                len(snap),
                self.max_series,
            )
        yield value
        yield step
        fam = _family("gradwatch_run_last_event_timestamp_seconds")
        for run, t in sorted(last.items()):
            fam.add_metric([run], t)
        yield fam


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()


__all__ = ["FAMILIES", "PROBLEM_KINDS", "Metrics", "MetricsServer"]
