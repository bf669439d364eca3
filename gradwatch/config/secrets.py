"""Secrets in the config: ``${ENV}`` values, ``<key>_file`` files, and redaction.

A Slack incoming-webhook URL *is* the credential, and webhook/Alertmanager
URLs often carry tokens in their path or query, so every URL a notifier holds
is a :class:`Secret`: its ``repr``/``str`` show only scheme and host, and code
must call :meth:`Secret.reveal` to get the value (only when sending). Config
problems name the key and the environment variable or file, never the value.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import urlsplit

from gradwatch.config.yaml import Section

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# Libraries log request URLs (urllib3: the path at DEBUG, and on retries at WARNING);
# every secret is registered here and scrubbed from their log records.
_known: set[str] = set()
_known_lock = threading.Lock()
THIRD_PARTY_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
)


class ScrubFilter(logging.Filter):
    """Replaces registered secrets in a record's message (for loggers we do not control)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _known_lock:
            known = list(_known)
        if not known:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a broken record is the logging module's problem, not ours
            return True
        clean = scrub(msg, known)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


_filter = ScrubFilter()
for _name in THIRD_PARTY_LOGGERS:
    logging.getLogger(_name).addFilter(_filter)


class Secret:
    """A string that does not show itself in logs, reprs or tracebacks."""

    __slots__ = ("_hint", "_value")

    def __init__(self, value: str, hint: str = "***") -> None:
        self._value = value
        self._hint = hint
        with _known_lock:
            _known.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self._hint!r})"

    def __str__(self) -> str:
        return self._hint

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def secret_url(url: str) -> Secret:
    return Secret(url, redact(url))


def redact(url: str) -> str:
    """``https://hooks.slack.com/***``: scheme and host only, never userinfo, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
    return f"{parts.scheme}://{netloc}/***" if hidden else f"{parts.scheme}://{netloc}"


# a run of at least this many characters equal to the start of a secret is scrubbed too:
# a receiver (or a log line) that quotes a token cut short still leaks most of it
PARTIAL_MIN = 8
# URL path segments this long are treated as tokens (Slack's are 9 to 24 characters);
# shorter ones are words like "services" or "alerts"
TOKEN_SEGMENT_MIN = 9


def scrub(text: str, secrets: list[Secret | str | None]) -> str:
    """``text`` with every secret (and every URL path of one) replaced by ``***``.

    For messages we did not write ourselves (exceptions from requests quote
    the request path, e.g. ``Max retries exceeded with url: /services/T/B/X``;
    a receiver's error body may quote the bearer token). A secret's start
    (``PARTIAL_MIN`` characters or more) is scrubbed as well, so a quote cut
    short, by the receiver or by us, does not leak the rest. Scrub a text
    before cutting it.
    """
    for s in secrets:
        if s is None:
            continue
        value = s.reveal() if isinstance(s, Secret) else s
        for piece in sorted(_pieces(value), key=len, reverse=True):
            if len(piece) >= 4:  # never blank out single characters of ordinary text
                text = text.replace(piece, "***")
        for piece in _pieces(value, whole_url=False):
            if len(piece) >= PARTIAL_MIN:
                text = _scrub_prefixes(text, piece)
    return text


def _pieces(value: str, whole_url: bool = True) -> set[str]:
    """The secret and its secret parts when it is a URL (path and query, password, and path
    segments long enough to be tokens: a receiver may quote just the token of a webhook URL).

    With ``whole_url=False`` a URL contributes only those parts: its start
    (scheme and host) is not secret, and must stay readable in messages.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        return {value}
    if not (parts.scheme and parts.netloc):
        return {value}
    pieces = {value} if whole_url else set()
    if len(parts.path) > 1:
        pieces |= {parts.path + (f"?{parts.query}" if parts.query else ""), parts.path}
        pieces |= {seg for seg in parts.path.split("/") if len(seg) >= TOKEN_SEGMENT_MIN}
    if parts.query:
        pieces.add(parts.query)
    if parts.password:
        pieces.add(parts.password)
    return pieces


def _scrub_prefixes(text: str, secret: str) -> str:
    """Replace every run of text that is the first PARTIAL_MIN+ characters of ``secret``."""
    head = secret[:PARTIAL_MIN]
    out: list[str] = []
    i = 0
    while (at := text.find(head, i)) >= 0:
        end = at + PARTIAL_MIN
        while end < len(text) and end - at < len(secret) and text[end] == secret[end - at]:
            end += 1
        out.append(text[i:at] + "***")
        i = end
    out.append(text[i:])
    return "".join(out)


def expand(value: str) -> str:
    """Replace ``${NAME}`` by the environment variable; KeyError(NAME) if unset or empty."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        got = os.environ.get(name)
        if not got:
            raise KeyError(name)
        return got

    return _ENV.sub(sub, value)


def read_secret_file(path: str) -> str:
    """The file's text without its trailing newline(s); OSError/ValueError with a safe message."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = text.rstrip("\r\n")
    if not text.strip():
        raise ValueError("the file is empty")
    if "\n" in text:
        raise ValueError("the file holds more than one line")
    return text


def get_secret(sec: Section, key: str, required: bool = False, url: bool = False) -> Secret | None:
    """``key: value-or-${ENV}`` or ``key_file: PATH`` (exactly one), as a Secret.

    Problems never quote the value: a misplaced token in a config file must
    not end up in a CI log through ``gradwatch check``.
    """
    file_key = f"{key}_file"
    inline = sec.raw(key)
    path = sec.raw(file_key)
    if inline is not None and path is not None:
        sec.error(file_key, f"give either '{key}' or '{file_key}', not both")
        return None
    if inline is None and path is None:
        if required:
            sec.error("", f"missing required key '{key}' (or '{file_key}')")
        return None
    if path is not None:
        if not isinstance(path, str) or not path:
            sec.error(file_key, "expected a file path")
            return None
        try:
            value = read_secret_file(os.path.expanduser(path))
        except OSError as e:
            sec.error(file_key, f"cannot read {path}: {e.strerror or type(e).__name__}")
            return None
        except (UnicodeDecodeError, ValueError) as e:
            why = "not a UTF-8 text file" if isinstance(e, UnicodeDecodeError) else str(e)
            sec.error(file_key, f"{path}: {why}")
            return None
        where = file_key
    else:
        if not isinstance(inline, str) or not inline:
            # no repr of the value: it may be a secret typed into the wrong place
            sec.error(key, "expected a non-empty string")
            return None
        try:
            value = expand(inline)
        except KeyError as e:
            sec.error(key, f"environment variable {e.args[0]} is not set or is empty")
            return None
        where = key
    if url:
        problem = url_problem(value)
        if problem:
            sec.error(where, problem)
            return None
        return secret_url(value)
    return Secret(value)


def url_problem(value: str) -> str | None:
    """What is wrong with an http(s) URL, without quoting it."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if not parts.hostname:
        return "the URL has no host"
    if any(c.isspace() for c in value):
        return "the URL contains white space"
    return None


def get_headers(sec: Section, key: str = "headers") -> dict[str, Secret]:
    """A mapping of HTTP header names to values (``${ENV}`` allowed); values are secrets."""
    raw = sec.raw(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        sec.error(key, "expected a mapping of header names to values")
        return {}
    out: dict[str, Secret] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            sec.error(key, f"{name!r} is not a valid HTTP header name")
            continue
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            sec.error(key, f"{name}: expected a string value")
            continue
        try:
            text = expand(str(value))
        except KeyError as e:
            sec.error(key, f"{name}: environment variable {e.args[0]} is not set or is empty")
            continue
        if "\n" in text or "\r" in text:
            sec.error(key, f"{name}: header values cannot contain line breaks")
            continue
        out[name] = Secret(text)
    return out
