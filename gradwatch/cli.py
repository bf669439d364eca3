"""Command line: ``gradwatch watch / check / export / report / rules / demo``.

One-shot commands exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad input,
bad config, usage), the monitoring-plugin convention.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

from gradwatch import __version__
from gradwatch.config.yaml import ConfigError, close_matches
from gradwatch.events.logdir import LogdirError, ProblemLog, remote_logdir
from gradwatch.events.remote import is_remote
from gradwatch.events.shard import Shard, parse_shard
from gradwatch.fmt import escape
from gradwatch.logjson import setup_logging
from gradwatch.oneshot.check import UNKNOWN

log = logging.getLogger("gradwatch")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are UNKNOWN (3), not argparse's 2
        self.print_usage(sys.stderr)
        self.exit(UNKNOWN, f"{self.prog}: error: {message}\n")


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected steps like 100,200,300, got {text!r}") from None


def build_parser(daemon_commands: bool = True) -> argparse.ArgumentParser:
    """Every command's parser; without ``daemon_commands`` (a one-shot command was asked for)
    ``watch`` and ``demo`` are left out, and with them the import of the daemon (~0.1 s of start-up)."""
    p = _Parser(
        prog="gradwatch", description="Watch ML training from the outside: rules on TensorBoard scalars."
    )
    p.add_argument("--version", action="version", version=f"gradwatch {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    p.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("check", help="evaluate every existing point of a logdir against the rules")
    c.add_argument("logdir")
    c.add_argument(
        "--rules", action="append", metavar="FILE|DIR", help="rule file, directory or glob (repeatable)"
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    _add_shard_flag(c)
    c.set_defaults(func=cmd_check)

    e = sub.add_parser("export", help="write every scalar point as JSON lines or CSV")
    e.add_argument("logdir")
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("--run", action="append", metavar="GLOB", help="only runs matching GLOB (repeatable)")
    e.add_argument("--tag", action="append", metavar="GLOB", help="only tags matching GLOB (repeatable)")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    _add_shard_flag(e)
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("report", help="one tag across runs, side by side at chosen steps")
    r.add_argument("logdir")
    r.add_argument("--tag", required=True)
    r.add_argument(
        "--run", action="append", metavar="RUN", help="runs (globs) in order; the first is the baseline"
    )
    r.add_argument(
        "--steps",
        type=_steps,
        metavar="S1,S2,...",
        help="steps to show (default: 10 logged steps spread out, plus where a rule first fired)",
    )
    r.add_argument(
        "--rules",
        action="append",
        metavar="FILE|DIR",
        help="rules whose first alerts become rows (repeatable)",
    )
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    _add_endpoint_flag(r)
    r.set_defaults(func=cmd_report)

    rules = sub.add_parser("rules", help="validate and unit-test rule files")
    rsub = rules.add_subparsers(dest="rules_command", metavar="COMMAND", parser_class=_Parser, required=True)
    rc = rsub.add_parser("check", help="validate rule files (like promtool check rules)")
    rc.add_argument("files", nargs="*", metavar="FILE|DIR", help="default: the packaged rules")
    rc.set_defaults(func=cmd_rules_check)
    rt = rsub.add_parser("test", help="run rule unit tests (like promtool test rules)")
    rt.add_argument("files", nargs="+", metavar="FILE")
    rt.set_defaults(func=cmd_rules_test)

    _add_alerts_command(sub)
    if daemon_commands:
        _add_daemon_commands(sub)
    _log_flags_after_commands(sub)
    return p


def _add_shard_flag(parser: argparse.ArgumentParser) -> None:
    def shard(text: str) -> Shard:
        try:
            return parse_shard(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parser.add_argument(
        "--shard", type=shard, metavar="I/N", help="only the runs of shard I of N, I from 0 (docs/remote.md)"
    )
    _add_endpoint_flag(parser)


def _add_endpoint_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="for an s3:// or gs:// logdir: the store's URL (MinIO, an emulator); "
        "default: AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST or the cloud's own",
    )


def _use_endpoint(args) -> None:
    """Point the logdir's client at --endpoint-url before anything reads it."""
    if getattr(args, "endpoint_url", None):
        if not is_remote(args.logdir):
            raise UsageError("--endpoint-url is for s3:// and gs:// logdirs")
        remote_logdir(args.logdir, args.endpoint_url)


def _log_flags_after_commands(sub) -> None:
    """``gradwatch check -q DIR`` works like ``gradwatch -q check DIR``, for every (sub)command."""
    for parser in set(sub.choices.values()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _log_flags_after_commands(action)
        # SUPPRESS: when absent here, the value given before the command stays
        parser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug details"
        )
        parser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log only errors"
        )


def _add_alerts_command(sub) -> None:
    a = sub.add_parser("alerts", help="alert history from the daemon's state: what fired, what was sent")
    a.add_argument("logdir", nargs="?", help="the logdir the daemon watched (to find its state directory)")
    a.add_argument("--config", metavar="FILE", help="the daemon's gradwatch.yaml (its logdir and state_dir)")
    a.add_argument("--state-dir", metavar="DIR", help="the daemon's state directory")
    a.add_argument(
        "--since", default="24h", metavar="DURATION", help="alerts firing since then (default 24h)"
    )
    a.add_argument("--run", action="append", metavar="GLOB", help="only runs matching GLOB (repeatable)")
    a.add_argument("--rule", action="append", metavar="GLOB", help="only rules matching GLOB (repeatable)")
    a.add_argument("--severity", choices=("info", "warning", "critical"), help="only alerts reaching it")
    fmt = a.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    a.set_defaults(func=cmd_alerts)


def cmd_alerts(args) -> int:
    """``gradwatch alerts``: 0 when the history could be read (whatever it holds), 3 when not."""
    import time

    from gradwatch import alertlog
    from gradwatch.config import Config, load_config
    from gradwatch.config.yaml import parse_duration
    from gradwatch.history import Query

    since = parse_duration(args.since)
    if since is None or since < 0:
        raise UsageError(f"--since: expected a duration like 30m, 2h or 7d, got {args.since!r}")
    cfg = load_config(args.config) if args.config else Config()
    cfg.logdir = args.logdir or cfg.logdir
    cfg.state_dir = args.state_dir or cfg.state_dir
    if not (cfg.logdir or cfg.state_dir):
        raise UsageError("give the logdir the daemon watched, --state-dir DIR or --config FILE")
    now = time.time()
    query = Query(now - since, args.run or [], args.rule or [], args.severity)
    try:
        found = alertlog.load(cfg.resolved_state_dir(), query)
    except alertlog.AlertLogError as e:
        raise UsageError(str(e)) from None
    writer = alertlog.write_json if args.json else alertlog.write_csv if args.csv else alertlog.write_table
    writer(found, sys.stdout, now, query.since)
    return 0


def _add_daemon_commands(sub) -> None:
    from gradwatch import demo
    from gradwatch.daemon import command

    command.add_arguments(sub)
    demo.add_arguments(sub)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if not path or path == "-":
        yield sys.stdout
        return
    try:
        f = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (errors reported, not raised)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    with f:
        yield f


# commands whose every failure is an exit code of the monitoring convention (the daemon has its own)
ONE_SHOT_COMMANDS = ("check", "export", "report", "rules")


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit 3."""


def _load_rules(paths: list[str] | None):
    from gradwatch.config.rulefiles import load_rules

    return load_rules(paths)


def cmd_check(args) -> int:
    from gradwatch.oneshot import check

    try:
        rules = _load_rules(args.rules)
        _use_endpoint(args)
        result = check.run_check(args.logdir, rules, ProblemLog(), args.shard)
    except Exception as e:
        # monitoring plugins read stdout: the status line goes there, the detail stays on stderr;
        # an unforeseen failure (main logs it) is UNKNOWN too, never a bare traceback
        known = isinstance(e, (ConfigError, LogdirError))
        shown = e if known else RuntimeError(f"check could not run: {type(e).__name__}: {e}")
        if args.json:
            check.write_error_json(args.logdir, str(shown), sys.stdout)
        else:
            check.write_error_text(shown, sys.stdout)
        raise
    (check.write_json if args.json else check.write_text)(result, sys.stdout)
    return result.exit_code


def cmd_export(args) -> int:
    from gradwatch.oneshot.export import export

    problems = ProblemLog()
    _use_endpoint(args)
    with _output(args.output) as out:
        n = export(args.logdir, out, args.format, args.run, args.tag, problems, args.shard)
    if not n:
        what = "matching --run/--tag " if args.run or args.tag else ""
        print(f"gradwatch: no {what}scalar points in {args.logdir}", file=sys.stderr)
        return UNKNOWN
    log.info("exported %d points", n)
    return 0


def cmd_report(args) -> int:
    from gradwatch.oneshot import report

    rules = _load_rules(args.rules)
    _use_endpoint(args)
    rep = report.build_report(args.logdir, args.tag, args.run, args.steps, ProblemLog(), rules)
    if rep.unmatched:
        have = ", ".join(rep.runs_with_tag) or "none"
        wanted = ", ".join(map(repr, rep.unmatched))
        raise UsageError(f"no run matching {wanted} has tag {args.tag!r} (runs with it: {have})")
    if not rep.runs:
        close = close_matches(args.tag, sorted(rep.tags_seen), n=5, cutoff=0.4)
        hint = f"; similar tags: {', '.join(close)}" if close else ""
        raise UsageError(f"no run in {args.logdir} has tag {args.tag!r}{hint}")
    writer = report.write_json if args.json else report.write_csv if args.csv else report.write_text
    writer(rep, sys.stdout)
    return 0


def cmd_rules_check(args) -> int:
    """Like ``promtool check rules``: per file "SUCCESS: N rules found" or FAILED and the problems."""
    from gradwatch.config.rulefiles import (
        default_rules_path,
        duplicate_names,
        expand_rule_paths,
        load_rule_file,
    )
    from gradwatch.config.yaml import Problem

    problems: list[Problem] = []
    files = expand_rule_paths(args.files or [default_rules_path()], problems)
    failed = bool(problems)
    for p in problems:
        print(p, file=sys.stderr)
    rules = []
    for path in files:
        print(f"Checking {path}")
        found: list[Problem] = []
        file_rules = load_rule_file(path, found)
        if found:
            failed = True
            print("  FAILED:", file=sys.stderr)
            for p in found:
                print(p, file=sys.stderr)
        else:
            print(f"  SUCCESS: {len(file_rules)} rules found")
        print()
        rules.extend(file_rules)
    duplicates = duplicate_names(rules)
    if duplicates:
        failed = True
        print("FAILED: rule names must be unique across files:", file=sys.stderr)
        for p in duplicates:
            print(p, file=sys.stderr)
    return UNKNOWN if failed else 0


def cmd_rules_test(args) -> int:
    """Like ``promtool test rules``: 0 all passed, 1 a test failed, 3 a test file is unusable."""
    from gradwatch.oneshot.ruletest import run_tests

    failed = broken = 0
    for path in args.files:
        print(f"Unit testing: {path}")
        try:
            failed += run_tests(path, sys.stdout)
        except ConfigError as e:
            broken += 1
            print("  FAILED:", file=sys.stderr)
            print(e, file=sys.stderr)
        print()
    if broken:
        also = f", {failed} tests failed" if failed else ""
        print(f"FAILED: {broken} test files could not be run{also}")
        return UNKNOWN
    print("SUCCESS" if not failed else f"FAILED: {failed} tests failed")
    return 1 if failed else 0


def _command_of(argv: list[str]) -> str | None:
    """The command named in ``argv``: its first word that is not a flag."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(daemon_commands=_command_of(words) not in (*ONE_SHOT_COMMANDS, "alerts"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (3) return like any command
        return e.code if isinstance(e.code, int) else UNKNOWN
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return UNKNOWN
    setup_logging(args.verbose, args.quiet, getattr(args, "log_format", "text"))
    # names are bytes: a run named b"run-\xff" reaching a strict UTF-8 stdout must not crash a command
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return UNKNOWN
    except (LogdirError, UsageError) as e:
        print(f"gradwatch: {escape(e)}", file=sys.stderr)  # may quote run names and tags
        return UNKNOWN
    except BrokenPipeError:
        # `gradwatch export ... | head`: the reader went away, not an error
        with contextlib.suppress(OSError):
            sys.stdout = None  # type: ignore[assignment]
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.command not in ONE_SHOT_COMMANDS:
            raise
        # a bug or an unforeseen failure: UNKNOWN (3) as commands.md says, not Python's 1 (WARNING
        # to a monitoring system); one escaped line, the traceback only with -v
        log.error("%s could not run: %s: %s", args.command, type(e).__name__, e, exc_info=args.verbose)
        return UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
