#!/usr/bin/env python3
"""A mutation smoke check: break one documented promise at a time and see whether the tests notice.

Each mutation replaces one unique code snippet (found by its text, not a line number, so the check
survives code moving around) in a temporary copy of the repository, then runs the tests that should
notice. A mutation is *caught* when those tests fail, *missed* when they pass (the promise is not
guarded), *site not found* when the snippet is no longer in the code (update the mutation: the code
changed shape). The score is caught / (caught + missed).

Slow (minutes: every mutation runs real daemons and servers), so not part of CI. Run it before a
refactor and after, from the repository root:

    .venv/bin/python tools/mutation_smoke.py              # all mutations
    .venv/bin/python tools/mutation_smoke.py --list       # what each breaks, and whether its site is found
    .venv/bin/python tools/mutation_smoke.py backoff-constant pacing-per-channel
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what a copy of the repository leaves out: environments, caches, build output
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "*.egg-info", "bench"
)
TIMEOUT = 1200.0  # seconds per mutation; a hang the mutation causes counts as caught


@dataclass(frozen=True)
class Mutation:
    name: str
    claim: str  # the documented promise it breaks
    path: str  # file, relative to the repository
    find: str  # a snippet that occurs exactly once in that file
    replace: str
    tests: tuple[str, ...]  # pytest arguments: the tests that should notice


MUTATIONS = (
    Mutation(
        "backoff-constant",
        "notifications.md: retries back off from 1 s, doubling to 5 min",
        "gradwatch/notify/outbox.py",
        "cap = min(self.backoff_max, self.backoff_base * 2 ** min(attempts - 1, 30))",
        "cap = self.backoff_base",
        ("tests/test_outbox.py", "tests/test_notify_slack.py", "tests/test_notify_webhook.py"),
    ),
    Mutation(
        "pacing-per-channel",
        "notifications.md: Slack waits 1 s per webhook URL, even across channels that share it",
        "gradwatch/notify/slack.py",
        "_pacer.wait(self.url.reveal(), self.min_interval)",
        "_pacer.wait(self.name, self.min_interval)",
        ("tests/test_notify_slack.py",),
    ),
    Mutation(
        "retry-after-date-ignored",
        "notifications.md: Retry-After is honoured in both forms, seconds and an HTTP date",
        "gradwatch/notify/http.py",
        "seconds = when.timestamp() - (time.time() if now is None else now)",
        "return None",
        ("tests/test_notify_contract.py", "tests/test_notify_slack.py", "tests/test_outbox.py"),
    ),
    Mutation(
        "retention-without-repeat-interval",
        "notifications.md: finished rows are kept a day, or the channel's repeat_interval if longer",
        "gradwatch/notify/outbox.py",
        "keep = max(self.outbox.keep_done, self.notifier.repeat_interval or 0.0)",
        "keep = self.outbox.keep_done",
        ("tests/test_outbox.py",),
    ),
    Mutation(
        "sigterm-outbox-no-grace",
        "commands.md/deployment.md: on SIGTERM the outbox gets a few seconds to deliver what is ready",
        "gradwatch/daemon/loop.py",
        "self.outbox.stop(timeout=5)",
        "self.outbox.stop(timeout=0)",
        ("tests/test_daemon_delivery.py", "tests/test_daemon_live.py", "tests/test_daemon_restart.py"),
    ),
    Mutation(
        "shutdown-without-checkpoint",
        "commands.md: SIGTERM/SIGINT stop gracefully, state flushed",
        "gradwatch/daemon/loop.py",
        "            self.checkpoint()\n        finally:",
        "            pass\n        finally:",
        ("tests/test_daemon_shutdown.py", "tests/test_daemon_restart.py", "tests/test_daemon_inprocess.py"),
    ),
    Mutation(
        "shutdown-without-stopping",
        "deployment.md: under systemd Type=notify the daemon sends STOPPING=1",
        "gradwatch/daemon/loop.py",
        "        sdnotify.stopping()\n        self.watcher.stop()",
        "        self.watcher.stop()",
        ("tests/test_systemd_notify_daemon.py",),
    ),
    Mutation(
        "reload-forgets-unchanged-rules",
        "configuration.md: on reload a rule whose definition did not change keeps its state",
        "gradwatch/daemon/reload.py",
        "s.states[i] = old.states[j]",
        "pass",
        ("tests/test_daemon_inprocess.py",),
    ),
    Mutation(
        "reload-invalid-config-is-fatal",
        "configuration.md: an invalid new config on SIGHUP is logged, the running one stays in force",
        "gradwatch/daemon/reload.py",
        '        log.error("reload failed, keeping the running configuration:\\n%s", e)\n',
        "        raise\n",
        ("tests/test_daemon_reload.py", "tests/test_daemon_inprocess.py", "tests/test_metrics_daemon.py"),
    ),
    Mutation(
        "reload-keeps-the-old-outbox",
        "configuration.md: notifier settings apply at once on reload (a rotated secret file too)",
        "gradwatch/daemon/loop.py",
        "            self._replace_outbox(build_notifiers(config))",
        "            pass",
        ("tests/test_daemon_delivery.py",),
    ),
)


def copy_tree(dest: Path) -> None:
    shutil.copytree(ROOT, dest, ignore=IGNORE, symlinks=True)


def apply(mutation: Mutation, tree: Path) -> str | None:
    """Mutate ``tree`` in place; None when done, else why it could not be (the site moved)."""
    target = tree / mutation.path
    if not target.is_file():
        return f"site not found: {mutation.path} does not exist"
    text = target.read_text()
    count = text.count(mutation.find)
    if count != 1:
        what = "site not found" if count == 0 else f"site ambiguous ({count} matches)"
        return f"{what}: {mutation.find.strip().splitlines()[0]!r} in {mutation.path}"
    target.write_text(text.replace(mutation.find, mutation.replace))
    return None


def isolated_env(tree: Path) -> dict[str, str]:
    """Tests and the daemons they start import gradwatch from the mutated copy, not the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # a missing binary skips: not a catch
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def imports_from(tree: Path) -> bool:
    code = "import gradwatch, sys; sys.stdout.write(gradwatch.__file__)"
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=isolated_env(tree),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return p.returncode == 0 and Path(p.stdout).resolve().is_relative_to(tree.resolve())


def run_tests(tests: tuple[str, ...], tree: Path) -> tuple[str, str]:
    """('caught' | 'missed' | 'error' | 'timeout', detail): did ``tests`` fail in ``tree``?"""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        p = subprocess.run(
            cmd, cwd=tree, env=isolated_env(tree), capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return "timeout", f"the tests did not finish within {TIMEOUT:.0f} s"
    last = (p.stdout.strip().splitlines() or ["(no output)"])[-1]
    if p.returncode == 1:
        failed = [line for line in p.stdout.splitlines() if line.startswith("FAILED ")]
        return "caught", (failed[0] if failed else last)
    if p.returncode == 0:
        return "missed", last
    return "error", f"pytest exit {p.returncode}: {last}\n{p.stderr[-2000:]}"


def failing_baselines(chosen: list[Mutation]) -> dict[tuple[str, ...], str]:
    """The test sets that already fail without any mutation (a flaky or broken test would pass
    for a catch): {tests: why}. Each distinct set runs once, in an unmutated copy."""
    failing = {}
    with tempfile.TemporaryDirectory(prefix="gradwatch-baseline-") as tmp:
        tree = Path(tmp) / "repo"
        copy_tree(tree)
        for tests in dict.fromkeys(m.tests for m in chosen):
            outcome, detail = run_tests(tests, tree)
            if outcome != "missed":  # "missed" = the tests pass, as they should without a mutation
                failing[tests] = f"{outcome}: {detail}"
    return failing


def check(mutation: Mutation) -> tuple[str, str, float]:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"gradwatch-mutant-{mutation.name}-") as tmp:
        tree = Path(tmp) / "repo"
        copy_tree(tree)
        problem = apply(mutation, tree)
        if problem is not None:
            return "site not found", problem, time.monotonic() - start
        if not imports_from(tree):
            return (
                "error",
                "the copy's gradwatch is not the one imported (PYTHONPATH)",
                time.monotonic() - start,
            )
        outcome, detail = run_tests(mutation.tests, tree)
    return outcome, detail, time.monotonic() - start


def score(outcomes: list[str]) -> str:
    caught = sum(o in ("caught", "timeout") for o in outcomes)
    judged = caught + outcomes.count("missed")
    return f"{caught}/{judged}" + (f" ({100 * caught / judged:.0f}%)" if judged else "")


def list_sites() -> int:
    for m in MUTATIONS:
        text = (ROOT / m.path).read_text() if (ROOT / m.path).is_file() else ""
        found = {0: "SITE NOT FOUND", 1: "site found"}.get(text.count(m.find), "SITE AMBIGUOUS")
        print(f"{m.name:34} {found:15} {m.path}\n{'':34} {m.claim}\n{'':34} tests: {' '.join(m.tests)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument(
        "--list", action="store_true", help="list the mutations and whether their sites exist"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tests once unmutated first (faster)"
    )
    args = parser.parse_args(argv)
    if args.list:
        return list_sites()
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; one of: {', '.join(known)}")
    chosen = [known[n] for n in args.names] if args.names else list(MUTATIONS)
    failing = {} if args.no_baseline else failing_baselines(chosen)
    outcomes = []
    for m in chosen:
        print(f"{m.name}: {m.claim}", flush=True)
        if m.tests in failing:
            outcome, detail, took = "error", f"the tests fail without the mutation: {failing[m.tests]}", 0.0
        else:
            outcome, detail, took = check(m)
        outcomes.append(outcome)
        print(f"  {outcome.upper()} in {took:.0f} s: {detail}", flush=True)
    print(
        f"\nscore {score(outcomes)} caught; "
        + ", ".join(f"{outcomes.count(o)} {o}" for o in dict.fromkeys(outcomes))
    )
    missed = [m.name for m, o in zip(chosen, outcomes) if o == "missed"]
    if missed:
        print("unguarded promises: " + ", ".join(missed))
    return 1 if missed or "error" in outcomes else 0


if __name__ == "__main__":
    sys.exit(main())
