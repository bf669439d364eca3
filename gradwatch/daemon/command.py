"""``gradwatch watch`` and ``gradwatch config check``: their arguments next to their handlers."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from gradwatch.config import (
    Config,
    check_stop_file_template,
    listen_usage,
    load_config,
    parse_listen,
)
from gradwatch.config.rulefiles import load_rules
from gradwatch.config.yaml import ConfigError, Problem
from gradwatch.daemon.errors import ListenError
from gradwatch.daemon.loop import Daemon
from gradwatch.events.logdir import LogdirError, remote_logdir
from gradwatch.events.remote import is_remote
from gradwatch.events.shard import parse_shard
from gradwatch.logjson import setup_logging
from gradwatch.notify.registry import build_notifiers

log = logging.getLogger("gradwatch")


def add_arguments(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("watch", help="follow a logdir live and alert (the daemon)")
    w.add_argument("logdir", nargs="?", help="the logdir to watch (or `logdir:` in --config)")
    w.add_argument("--config", metavar="FILE", help="gradwatch.yaml")
    w.add_argument(
        "--rules", action="append", metavar="FILE|DIR", help="rule file, directory or glob (repeatable)"
    )
    w.add_argument("--state-dir", metavar="DIR", help="where the state DB lives (default: per logdir)")
    w.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="metrics/health endpoint (default 127.0.0.1:9723; every interface: 0.0.0.0:PORT; '' off)",
    )
    w.add_argument("--poll", type=float, metavar="SECONDS", help="poll instead of inotify (NFS, network FS)")
    w.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="s3:// and gs:// logdirs: seconds between listings, jittered ±20%% (default 5)",
    )
    w.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="for an s3:// or gs:// logdir: the store's URL (MinIO, an emulator); "
        "default: AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST or the cloud's own",
    )
    w.add_argument("--shard", metavar="I/N", help="only the runs of shard I of N, I from 0 (docs/remote.md)")
    w.add_argument(
        "--stop-file", metavar="TEMPLATE", help="stop-file path template ({run_dir}, {run}, {logdir})"
    )
    w.add_argument("--stop-severity", choices=("info", "warning", "critical", "never"))
    w.add_argument("--tensorboard-flags", action="store_true", help="write alerts/<rule>/<severity> flags")
    w.add_argument("--log-format", choices=("text", "json"), default=None)
    w.set_defaults(func=cmd_watch)

    c = sub.add_parser("config", help="validate a gradwatch.yaml")
    csub = c.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    cc = csub.add_parser("check", help="validate a config file (secrets are never printed)")
    cc.add_argument("file")
    cc.set_defaults(func=cmd_config_check)


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file (if any) with the command-line flags on top; also what SIGHUP re-reads."""
    cfg = load_config(args.config) if args.config else Config()
    if args.logdir:
        cfg.logdir = args.logdir
    if args.rules:
        cfg.rules = args.rules
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.listen is not None:
        cfg.listen = args.listen or None
        if cfg.listen and parse_listen(cfg.listen) is None:
            raise ConfigError([_usage(f"--listen: {listen_usage(args.listen)}")])
    cfg.poll = _seconds("--poll", args.poll, cfg.poll)
    cfg.poll_interval = _seconds("--poll-interval", args.poll_interval, cfg.poll_interval)  # type: ignore[assignment]
    if args.endpoint_url:
        cfg.endpoint_url = args.endpoint_url
    _apply_shard(cfg, args.shard)
    if args.stop_file:
        try:
            check_stop_file_template(args.stop_file)
        except ValueError as e:
            raise ConfigError(
                [_usage(f"--stop-file: bad template (fields: {{run_dir}}, {{run}}, {{logdir}}): {e}")]
            ) from None
        cfg.stop_file = args.stop_file
    if args.stop_severity:
        cfg.stop_severity = None if args.stop_severity == "never" else args.stop_severity
        cfg.stop_severity_override = True  # flags override files, the rules' `stop:` included
    if args.tensorboard_flags:
        cfg.tensorboard_flags = True
    if args.log_format:
        cfg.log_format = args.log_format
    if not cfg.logdir:
        raise ConfigError([_usage("no logdir: give one on the command line or as `logdir:` in --config")])
    if cfg.endpoint_url and not is_remote(cfg.logdir):
        raise ConfigError([_usage("--endpoint-url / endpoint_url: is for s3:// and gs:// logdirs")])
    return cfg


def _seconds(flag: str, value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    if not value > 0:
        raise ConfigError([_usage(f"{flag}: expected a positive number of seconds")])
    return value


def _use_endpoint(cfg: Config) -> None:
    """Point a remote logdir's client at the configured endpoint before the daemon lists it
    (once: a reload keeps the client; a restart applies a new endpoint)."""
    if cfg.endpoint_url and cfg.logdir:
        try:
            remote_logdir(cfg.logdir, cfg.endpoint_url)
        except LogdirError as e:
            raise ConfigError([_usage(str(e))]) from None


def _apply_shard(cfg: Config, flag: str | None) -> None:
    """--shard I/N: this replica's share of the logdir's runs (wins over `shard:` in the file)."""
    if flag:
        try:
            cfg.shard = parse_shard(flag)
        except ValueError as e:
            raise ConfigError([_usage(f"--shard: {e}")]) from None


def _usage(message: str) -> Problem:
    return Problem("gradwatch watch", 0, "", message)


def cmd_watch(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    setup_logging(args.verbose, args.quiet, cfg.log_format)
    _use_endpoint(cfg)
    daemon = Daemon(cfg, config_loader=lambda: config_from_args(args))
    install_signals(daemon)
    try:
        daemon.run()
    except ListenError as e:
        log.error("%s", e)
        # a port still held by a stopping instance is worth a restart; a wrong address is not
        return 1 if e.in_use else 3
    return 0


def install_signals(daemon: Daemon) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame) -> None:
        daemon.stop()
        # a second Ctrl-C interrupts a shutdown that hangs
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    rules = load_rules(cfg.rules)
    notifiers = build_notifiers(cfg)
    names = ", ".join(getattr(n, "name", "?") for n in notifiers) or "console only"
    print(
        f"{args.file}: SUCCESS: logdir {cfg.logdir or '(from the command line)'}, {len(rules)} rules, "
        f"{len(notifiers)} notifiers ({names})"
    )
    return 0
