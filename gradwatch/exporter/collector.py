"""Prometheus collector over the daemon's status snapshot (pull only).

API::

    metrics = Metrics(lambda: daemon.status)   # any callable returning a gradwatch.daemon.Status
    metrics.serve("127.0.0.1", 9723)           # background thread; port 0 = any free port; OSError if
                                               # taken (gradwatch/exporter/render.py: /metrics rendered at
                                               # most once a second, and again after each rare change)
    metrics.port                               # the bound port
    metrics.stop()                             # stops the HTTP server

A scrape reads one immutable :class:`~gradwatch.daemon.status.Status` (plain
tuples, replaced by the daemon thread once per loop iteration), so it never
sees half an update, never iterates a dict another thread changes, and the
per-point path does no metric work. Exported families are listed in
:data:`FAMILIES`; docs/operating.md says what each means and which values
are healthy.
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gradwatch import __version__
from gradwatch.daemon.status import AlertRow, SeriesRow, Status
from gradwatch.events import logdir
from gradwatch.exporter.http import MetricsServer
from gradwatch.severity import Severity

log = logging.getLogger("gradwatch.metrics")

# Problem kinds the reader reports, pre-set to 0 so that increase() sees the first one.
PROBLEM_KINDS = logdir.PROBLEM_KINDS
OUTBOX_FIELDS = ("sent", "failed", "queued", "dropped")

DEFAULT_MAX_SERIES = 10_000

# name (as scraped) -> (type, labels, help). The single source of truth for
# the collector's help texts, the docs and the tests.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "gradwatch_build_info": (
        "gauge",
        ("version", "python_version", "shard"),
        "Always 1; labels say which gradwatch runs (shard: I/N of --shard, empty without).",
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


def _family(name: str) -> Metric:
    kind, labels, help_text = FAMILIES[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _label(name: str) -> str:
    """A run or tag name as a label value: bytes that are not UTF-8 (Linux names) shown as \\xNN.

    Everything else is kept exact: label values are data (the exposition format escapes
    backslash, quote and newline itself); escaping more would change the series' identity.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _alert_labels(alerts: tuple[AlertRow, ...]) -> dict[tuple[str, str, str], str]:
    """One severity per alert (the highest if a row repeats one), names as label values."""
    out: dict[tuple[str, str, str], str] = {}
    for rule, run, tag, severity in alerts:
        key = (rule, _label(run), _label(tag))
        if Severity.parse(severity) >= Severity.parse(out.get(key, "")):
            out[key] = severity
    return out


class Metrics:
    """The registry, its collector and the HTTP server, all reading ``status()``."""

    def __init__(
        self,
        status: Callable[[], Status],
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
        shard: str = "",
    ) -> None:
        if not callable(status):
            raise TypeError(f"Metrics(status) must be a callable returning a Status, got {status!r}")
        self.status = status
        self.shard = shard  # "I/N" of a replica of a sharded logdir (docs/remote.md), else ""
        self.max_series = max_series
        self.server: MetricsServer | None = None
        self._warned_over_limit = False
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    @property
    def changes(self) -> int:
        """Bumped by each rare change (transition, readiness, reload): no cached /metrics from before."""
        return self.status().changes

    # -- HTTP -----------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 9723) -> MetricsServer:
        """Start serving /metrics, /-/healthy and /-/ready (gradwatch/exporter/http.py); raises
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

    # -- scrape -----------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        info = _family("gradwatch_build_info")
        info.add_metric([__version__, platform.python_version(), self.shard], 1)
        yield info
        yield from self._gauges(st)
        yield from self._series_families(st.series)
        yield from self._alert_families(st)
        yield from self._read_families(st)
        yield from self._outbox_families(st)

    def _gauges(self, st: Status) -> Iterator[Metric]:
        for name, value in (
            ("gradwatch_ready", float(st.ready)),
            ("gradwatch_rules", st.rules),
            ("gradwatch_runs", st.runs),
            ("gradwatch_event_files", st.files),
            ("gradwatch_series_tracked", len(st.series)),
            ("gradwatch_series_watched", st.series_watched),
            ("gradwatch_config_last_reload_successful", float(st.reload_ok)),
            ("gradwatch_config_last_reload_success_timestamp_seconds", st.reload_time),
            ("gradwatch_state_save_failing", float(st.state_save_error is not None)),
            ("gradwatch_state_save_errors_total", st.state_save_errors),
        ):
            fam = _family(name)
            fam.add_metric([], value)
            yield fam

    def _alert_families(self, st: Status) -> Iterator[Metric]:
        fam = _family("gradwatch_alert")
        for (rule, run, tag), severity in sorted(_alert_labels(st.alerts).items()):
            fam.add_metric([rule, run, tag, severity], 1)
        yield fam
        fam = _family("gradwatch_alert_transitions_total")
        for labels, n in st.transitions:
            fam.add_metric(list(labels), n)
        yield fam

    def _read_families(self, st: Status) -> Iterator[Metric]:
        for name, value in (
            ("gradwatch_records_read_total", st.records),
            ("gradwatch_points_read_total", st.points),
        ):
            fam = _family(name)
            fam.add_metric([], value)
            yield fam
        problems = dict.fromkeys(PROBLEM_KINDS, 0)
        problems.update(st.problems)
        fam = _family("gradwatch_read_problems_total")
        for kind, n in sorted(problems.items()):
            fam.add_metric([kind], n)
        yield fam

    def _outbox_families(self, st: Status) -> Iterator[Metric]:
        # an OutboxRow is (channel, *OUTBOX_FIELDS)
        for column, field in enumerate(OUTBOX_FIELDS, start=1):
            name = f"gradwatch_notifications_{field}" + ("" if field == "queued" else "_total")
            fam = _family(name)
            for row in st.outbox:
                fam.add_metric([row[0]], row[column])
            yield fam

    def _series_families(self, series: tuple[SeriesRow, ...]) -> Iterator[Metric]:
        value = _family("gradwatch_scalar_value")
        step = _family("gradwatch_scalar_step")
        last: dict[str, float] = {}
        exported = 0
        for run, tag, s_step, wall_time, s_value in series:
            if not wall_time and math.isnan(s_value):
                continue  # tracked but no point yet
            run_label = _label(run)
            if wall_time > last.get(run_label, -math.inf):
                last[run_label] = wall_time
            if exported >= self.max_series:
                continue
            exported += 1
            value.add_metric([run_label, _label(tag)], s_value)
            step.add_metric([run_label, _label(tag)], s_step)
        if len(series) > self.max_series and not self._warned_over_limit:
            self._warned_over_limit = True
            log.warning(
                "metrics: %d series tracked, exporting the first %d; narrow metrics.export_tags",
                len(series),
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
