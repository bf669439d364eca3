"""``/metrics`` bodies: the registry collected at most once per interval, encoded per format,
``name[]`` filter and compression, and shared by every request in that interval (the HTTP side,
gradwatch/exporter/http.py, says why: a client must not be able to make the daemon render)."""

from __future__ import annotations

import copy
import gzip
import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

log = logging.getLogger("gradwatch.metrics")

RENDER_INTERVAL = 1.0
_MAX_CACHED_FORMATS = 16  # format x gzip x name[] filter: bounded, a client picks the keys
_MAX_NAMES = 64  # name[] values of one request that are honoured (sorted, de-duplicated)

Headers = list[tuple[str, str]]


class MetricsRenderer:
    """``/metrics`` bodies, rendered at most once per ``interval`` per format and shared."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = RENDER_INTERVAL,
        changes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.changes = changes  # a new value makes the cached bodies stale at once
        self.renders = 0  # how many times the registry was collected (tests, debugging)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, bool, tuple[str, ...]], tuple[float, int, bytes]] = {}
        self._collected: tuple[float, int, list] | None = None  # (when, changes, families)

    def render(
        self, accept: str = "", accept_encoding: str = "", names: tuple[str, ...] = ()
    ) -> tuple[Headers, bytes]:
        """Headers and body for a request with these ``Accept``/``Accept-Encoding`` and ``name[]``."""
        encoder, content_type = choose_encoder(accept)
        compress = gzip_accepted(accept_encoding)
        # a client picks name[]: the same set in another order or repeated is the same key
        names = tuple(sorted(set(names)))[:_MAX_NAMES]
        key = (content_type, compress, names)
        with self._lock:  # one render at a time; whoever waited finds it fresh
            cached = self._cache.get(key)
            changes = self.changes()
            if cached is None or cached[1] != changes or time.monotonic() - cached[0] >= self.interval:
                collected_at, families = self._collect(changes)
                body = encoder(_Families(_restricted(families, names) if names else families))
                log.debug("metrics: encoded /metrics (%s, %d bytes)", content_type, len(body))
                cached = (collected_at, changes, gzip.compress(body) if compress else body)
                self._evict_for(key)
                self._cache[key] = cached
        headers = [("Content-Type", content_type)]
        if compress:
            headers.append(("Content-Encoding", "gzip"))
        return headers, cached[2]

    def _collect(self, changes: int) -> tuple[float, list]:
        """The registry's families, collected at most once per interval (or on a change) for
        every format and name[] filter: varying name[] cannot force a render per request."""
        got = self._collected
        if got is None or got[1] != changes or time.monotonic() - got[0] >= self.interval:
            got = self._collected = (time.monotonic(), changes, list(self.registry.collect()))
            self.renders += 1
            # the change and the time let a test check "once per interval" without a clock of its own
            log.debug(
                "metrics: rendered /metrics (%d families; change %d at monotonic %.3f s)",
                len(got[2]),
                changes,
                got[0],
            )
        return got[0], got[2]

    def _evict_for(self, key: tuple[str, bool, tuple[str, ...]]) -> None:
        """Room for ``key``: filtered bodies go first, so the plain /metrics body stays cached."""
        if len(self._cache) < _MAX_CACHED_FORMATS or key in self._cache:
            return
        for old in [k for k in self._cache if k[2]]:
            del self._cache[old]
        if len(self._cache) >= _MAX_CACHED_FORMATS:
            self._cache.clear()


class _Families:
    """A registry stand-in for the encoders: families already collected."""

    def __init__(self, families: list) -> None:
        self._families = families

    def collect(self) -> list:
        return self._families


def _restricted(families: list, names: tuple[str, ...]) -> list:
    """The families with samples named in ``names`` (prometheus_client's name[] rule), those only."""
    wanted = set(names)
    out = []
    for family in families:
        samples = [s for s in family.samples if s.name in wanted]
        if samples:
            part = copy.copy(family)
            part.samples = samples
            out.append(part)
    return out
