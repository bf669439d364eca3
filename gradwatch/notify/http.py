"""HTTP for channels: one POST, bounded in time as a whole, every failure a classified DeliveryError.

requests' ``timeout`` bounds each socket operation, so a receiver that
trickles one byte every 2 s keeps a 3 s timeout from ever firing. Each POST
here also has a deadline: when it passes, the request's sockets are shut
down, which ends any blocked connect, send or read at once.

requests and urllib3 (with ssl, about 9 MiB of a process's memory) are imported at the first
session or POST: a daemon whose only channel is the console never loads them.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import math
import re
import socket
import threading
import time
from datetime import timezone
from typing import TYPE_CHECKING, Any

from gradwatch.config.secrets import Secret, scrub
from gradwatch.notify.errors import DeliveryError

if TYPE_CHECKING:
    import requests

USER_AGENT = "gradwatch"
RETRYABLE_4XX = (408, 425, 429)
ERROR_BODY_MAX = 200  # characters of a receiver's error body kept in messages
# bytes of an answer ever read: a receiver's 50 MB error page is never held whole; far more
# than ERROR_BODY_MAX, so a secret cut at this end is past the cut of the message anyway
BODY_READ_MAX = 4096

# the deadline of the request this thread is making (set by post())
_local = threading.local()


class _Deadline:
    """Shuts down the sockets a request uses once ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> _Deadline:
        _local.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        _local.deadline = None
        with self._lock:
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    # the plain socket method, also for an SSLSocket: its own shutdown() unwraps
    # the TLS object under the feet of the thread blocked in a read
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watch(sock: socket.socket | None) -> None:
    deadline = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _DeadlineSockets:
    """Mixed into urllib3's connections: the request's deadline may shut down their sockets."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _watch(sock)  # from the TCP connect on (covers a TLS handshake that trickles)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        # a kept-alive connection from an earlier request; for TLS the wrapped socket
        # (the plain one is detached by the wrap)
        _watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


@functools.cache
def _adapter_class() -> type:
    """requests' adapter, with connections whose sockets a deadline can shut down (built at the
    first session: requests and urllib3 are imported then)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _DeadlineHTTPConnection(_DeadlineSockets, HTTPConnection):
        pass

    class _DeadlineHTTPSConnection(_DeadlineSockets, HTTPSConnection):
        pass

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _DeadlineHTTPConnection

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _DeadlineHTTPSConnection

    class _DeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if hasattr(manager, "pool_classes_by_scheme"):
                manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
            return manager

    return _DeadlineAdapter


def make_session() -> requests.Session:
    """A Session without automatic retries, whose requests a deadline can end.

    The outbox retries, with backoff, persistence and Retry-After; a POST
    that urllib3 retried on its own could reach the receiver twice.
    """
    import requests
    from urllib3.util.retry import Retry

    s = requests.Session()
    adapter = _adapter_class()(max_retries=Retry(total=0, read=False, redirect=0, raise_on_status=False))
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = USER_AGENT
    return s


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def post(
    session: requests.Session,
    url: Secret,
    *,
    data: bytes,
    headers: dict[str, str],
    timeout: float,
    secrets: list[Secret | None],
) -> requests.Response:
    """POST within ``timeout`` s in all (connect, send, whole answer); failures as DeliveryError.

    2xx is success. 5xx, 408/425/429, network errors and timeouts are
    retryable; 3xx (redirects are not followed) and other 4xx are permanent.
    No message holds a secret.
    """
    import requests

    where = str(url)
    timed_out = f"POST {where}: timed out after {timeout:g} s"
    secrets = [url, *secrets]
    deadline = _Deadline(timeout)
    try:
        with deadline:
            r = session.post(
                url.reveal(), data=data, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            )
            _read_bounded(r)  # within the deadline too: a trickled body ends with it
    except requests.Timeout as e:
        phase = "connecting" if isinstance(e, requests.ConnectTimeout) else "waiting for an answer"
        raise DeliveryError(f"{timed_out} {phase}") from None
    except Exception as e:  # a shut-down socket surfaces as many exception types
        if deadline.expired:  # the whole request, answer included, must finish within ``timeout``
            raise DeliveryError(f"{timed_out} waiting for an answer") from None
        if not isinstance(e, requests.RequestException):
            raise
        raise DeliveryError(f"POST {where}: {network_reason(e, secrets)}") from None
    if 200 <= r.status_code < 300:
        return r
    raise status_error(where, r, secrets)


def _read_bounded(r: requests.Response, limit: int = BODY_READ_MAX) -> None:
    """Read at most ``limit`` bytes of the answer into ``r.content``, then close it.

    A body read to its end gives the connection back to the pool; a longer one
    closes it (the rest is never read).
    """
    got = bytearray()
    for chunk in r.iter_content(1024):
        got += chunk
        if len(got) >= limit:
            break
    r.close()
    r._content = bytes(got[:limit])  # what r.text decodes, as requests does after its own read


def status_error(where: str, r: requests.Response, secrets: list[Secret | None]) -> DeliveryError:
    """The DeliveryError for a non-2xx answer: retryable or permanent, with Retry-After."""
    # scrub the whole (bounded) body first, then cut: a cut can leave a secret's start that no
    # longer matches
    body = scrub((r.text or "").strip(), secrets)[:ERROR_BODY_MAX]
    msg = f"POST {where}: HTTP {r.status_code}{' ' + body if body else ''}"
    code = r.status_code
    if 300 <= code < 400:
        return DeliveryError(msg + " (redirects are not followed; fix the URL)", permanent=True, status=code)
    if code >= 500 or code in RETRYABLE_4XX:
        return DeliveryError(msg, retry_after=parse_retry_after(r.headers.get("Retry-After")), status=code)
    return DeliveryError(msg, permanent=True, status=code)


def network_reason(e: BaseException, secrets: list[Secret | None]) -> str:
    """A short cause ("[Errno 111] Connection refused") from requests' nested exceptions."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if m:
        return m.group(0).strip()
    for pattern in ("Name or service not known", "Temporary failure in name resolution", "Connection reset"):
        if pattern in text:
            return pattern
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the receiver closed the connection without answering"
    from requests.exceptions import SSLError

    if isinstance(e, SSLError):
        return "TLS error: " + scrub(text, secrets)[:ERROR_BODY_MAX]
    return f"{type(e).__name__}: {scrub(text, secrets)[:ERROR_BODY_MAX]}"
