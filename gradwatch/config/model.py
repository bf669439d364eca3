"""The daemon's configuration file (``gradwatch.yaml``) and its defaults.

Command-line flags override the file. Relative paths in the file (rules,
state_dir) are relative to the file, as Prometheus does for rule_files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from gradwatch.config.channels import ChannelConfig, read_channels
from gradwatch.config.yaml import ConfigError, Problem, Section, load_yaml_file
from gradwatch.events.remote import is_remote
from gradwatch.events.shard import Shard, parse_shard
from gradwatch.severity import SEVERITY_NAMES
from gradwatch.templates import template_fields
from gradwatch.trainer import DEFAULT_STOP_FILE

DEFAULT_LISTEN = "127.0.0.1:9723"
DEFAULT_RESCAN = 30.0
DEFAULT_FORGET_AFTER = 300.0
# seconds between two listings of an s3:// or gs:// logdir (one LIST request per 1,000 objects)
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_OUTBOX_MAX_AGE = 86400.0


@dataclass
class Config:
    logdir: str | None = None
    rules: list[str] | None = None  # None: the packaged default rules
    state_dir: str | None = None
    poll: float | None = None  # seconds; None: inotify, polling only as fallback
    rescan_interval: float = DEFAULT_RESCAN
    poll_interval: float = DEFAULT_POLL_INTERVAL  # a remote logdir's listings (docs/remote.md)
    endpoint_url: str | None = None  # a remote logdir's store (MinIO): else the SDK's environment
    listen: str | None = DEFAULT_LISTEN  # None/"" disables the HTTP endpoint
    log_format: str = "text"
    stop_file: str = DEFAULT_STOP_FILE
    stop_severity: str | None = "critical"  # rules without `stop:` use this; None: never
    stop_severity_override: bool = False  # --stop-severity, or `never`: wins over every rule's `stop:`
    tensorboard_flags: bool = False
    forget_after: float = DEFAULT_FORGET_AFTER
    export_tags: list[str] = field(default_factory=list)
    catchup_notify: bool = True  # after first catch-up, notify what is still firing (once)
    outbox_max_age: float = DEFAULT_OUTBOX_MAX_AGE
    # one typed, checked config per channel; gradwatch.notify.registry builds the channels from them
    notifiers: list[ChannelConfig] = field(default_factory=list)
    source: str | None = None
    shard: Shard | None = None  # only the runs of this shard (docs/remote.md, Shards)

    def resolved_state_dir(self) -> str:
        if self.state_dir:
            return self.state_dir
        base = os.environ.get("STATE_DIRECTORY") or os.path.join(
            os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "gradwatch"
        )
        # one state per logdir, so several instances never share offsets
        logdir = self.logdir or "."
        where = logdir if is_remote(logdir) else os.path.abspath(logdir)  # a URL is the same from any cwd
        key = hashlib.sha256(where.encode()).hexdigest()[:12]
        if self.shard is not None:  # and one per shard: replicas on one logdir never share a lock
            key += f"-shard-{self.shard.index}-of-{self.shard.count}"
        return os.path.join(base.split(":")[0], key)


def parse_listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``[V6]:PORT``; None when malformed. ``:PORT`` is refused: listening on
    every interface must be said (``0.0.0.0:PORT``, ``[::]:PORT``), never implied."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


def listen_usage(text: object) -> str:
    """Why ``text`` is no listen address, and what to write instead."""
    port = text[1:] if isinstance(text, str) and text.startswith(":") else ""
    if port.isdigit():
        return (
            f"{text!r} has no host; say which: 127.0.0.1:{port} (this machine only), "
            f"0.0.0.0:{port} or [::]:{port} (every interface)"
        )
    return f"expected HOST:PORT like 127.0.0.1:9723, got {text!r}"


def load_config(path: str) -> Config:
    problems: list[Problem] = []
    data = load_yaml_file(path)
    top = Section(data, path, "", problems, line=1)
    cfg = Config(source=path)
    _read_paths(top, cfg, os.path.dirname(os.path.abspath(path)))
    _read_watching(top, cfg)
    _read_stop_file(top.section("stop_file"), cfg)
    metrics = top.section("metrics")
    cfg.export_tags = metrics.strings("export_tags", [])
    metrics.finish()
    _read_outbox(top.section("outbox"), cfg)
    sections = list(top.sections("notifiers"))
    top.finish()
    # read and checked (secrets read) once, here: the daemon and `config check` build from these
    cfg.notifiers = read_channels(sections)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))
    return cfg


def _read_paths(top: Section, cfg: Config, base: str) -> None:
    """logdir, rules, state_dir: relative to the config file, as Prometheus does for rule_files."""

    def rel(p: str) -> str:
        return p if os.path.isabs(p) or is_remote(p) else os.path.join(base, p)

    logdir = top.string("logdir")
    cfg.logdir = rel(logdir) if logdir else None
    rules = top.strings("rules")
    cfg.rules = [rel(r) for r in rules] if rules else None
    state_dir = top.string("state_dir")
    cfg.state_dir = rel(state_dir) if state_dir else None


def _read_watching(top: Section, cfg: Config) -> None:
    """How the daemon watches, logs and listens."""
    cfg.poll = top.duration("poll")
    if cfg.poll is not None and cfg.poll <= 0:
        top.error("poll", "expected a positive interval")
    cfg.rescan_interval = top.duration("rescan_interval", DEFAULT_RESCAN)
    poll_interval = top.duration("poll_interval", DEFAULT_POLL_INTERVAL)
    if poll_interval is not None and poll_interval <= 0:
        top.error("poll_interval", "expected a positive interval")
    else:
        cfg.poll_interval = poll_interval or DEFAULT_POLL_INTERVAL
    cfg.endpoint_url = top.string("endpoint_url")
    cfg.forget_after = top.duration("forget_after", DEFAULT_FORGET_AFTER)
    cfg.log_format = top.choice("log_format", ("text", "json"), "text")
    listen = top.raw("listen", DEFAULT_LISTEN)
    if listen in (None, False, ""):
        cfg.listen = None
    elif not isinstance(listen, str) or parse_listen(listen) is None:
        top.error("listen", listen_usage(listen))
    else:
        cfg.listen = listen
    cfg.tensorboard_flags = top.boolean("tensorboard_flags", False)
    cfg.catchup_notify = top.boolean("catchup_notify", True)
    shard = top.string("shard")
    if shard:
        try:
            cfg.shard = parse_shard(shard)
        except ValueError as e:
            top.error("shard", str(e))


def _read_stop_file(stop: Section, cfg: Config) -> None:
    cfg.stop_file = stop.string("path", DEFAULT_STOP_FILE)
    sev = stop.choice("severity", (*SEVERITY_NAMES, "never"), "critical")
    cfg.stop_severity = None if sev == "never" else sev
    cfg.stop_severity_override = sev == "never"
    if cfg.stop_file:
        try:
            check_stop_file_template(cfg.stop_file)
        except ValueError as e:
            stop.error("path", f"bad template (fields: {{run_dir}}, {{run}}, {{logdir}}): {e}")
    stop.finish()


def _read_outbox(outbox: Section, cfg: Config) -> None:
    cfg.outbox_max_age = outbox.duration("max_age", DEFAULT_OUTBOX_MAX_AGE)
    if cfg.outbox_max_age <= 0:
        outbox.error("max_age", "must be more than 0 (0 would drop every notification unsent)")
        cfg.outbox_max_age = DEFAULT_OUTBOX_MAX_AGE
    outbox.finish()


STOP_FILE_FIELDS = ("run_dir", "run", "logdir")


def check_stop_file_template(text: str) -> None:
    """ValueError unless ``text`` uses only {run_dir}, {run}, {logdir}: no attributes, bounded widths."""
    if "\0" in text:
        raise ValueError("a path cannot hold a NUL byte")
    template_fields(text, STOP_FILE_FIELDS)
    text.format(run_dir="r", run="r", logdir="l")  # what parsing cannot see: a bad format spec
