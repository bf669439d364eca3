"""Config holds data only; the registry turns each typed channel config into a Notifier."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap

from receivers import make_event

from gradwatch.config import load_config
from gradwatch.config.channels import TYPES, ConsoleConfig, SlackConfig
from gradwatch.notify.base import Notifier
from gradwatch.notify.console import ConsoleNotifier
from gradwatch.notify.registry import CLASSES, build_notifiers

CONFIG = """\
    logdir: runs
    notifiers:
      - {name: ml-slack, type: slack, url: "https://hooks.slack.com/services/T0/B0/x", min_severity: warning}
      - {name: hook, type: webhook, url: "http://127.0.0.1:9/hook", max_alerts: 3}
      - {name: am, type: alertmanager, urls: ["http://127.0.0.1:1"]}
      - {name: term, type: console, format: json, send_resolved: false}
"""


def config(tmp_path):
    path = tmp_path / "gradwatch.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return load_config(str(path))


def test_every_channel_type_has_a_notifier_class_console_included():
    assert set(CLASSES) == set(TYPES)
    assert all(issubclass(cls, Notifier) for cls in CLASSES.values())


def test_config_holds_typed_data_and_no_channel_object(tmp_path):
    cfg = config(tmp_path)
    assert [type(c).__name__ for c in cfg.notifiers] == [
        "SlackConfig",
        "WebhookConfig",
        "AlertmanagerConfig",
        "ConsoleConfig",
    ]
    values = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    values += [getattr(c, f.name) for c in cfg.notifiers for f in dataclasses.fields(c)]
    assert not any(isinstance(v, Notifier) for v in values)
    slack = cfg.notifiers[0]
    assert isinstance(slack, SlackConfig) and slack.min_severity == "warning"
    assert slack.group_wait is None  # the channel type's default applies when it is built


def test_the_config_package_imports_neither_notify_nor_actions():
    code = (
        "import sys, gradwatch.config, gradwatch.config.channels, gradwatch.config.rulefiles\n"
        "print(sorted(m for m in sys.modules if m.startswith(('gradwatch.notify', 'gradwatch.daemon'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_build_makes_new_channels_from_the_same_config(tmp_path):
    cfg = config(tmp_path)
    first, second = build_notifiers(cfg), build_notifiers(cfg)
    try:
        assert [(n.type, n.name) for n in first] == [(c.type, c.name) for c in cfg.notifiers]
        assert not set(map(id, first)) & set(map(id, second))  # a reload closes the old, uses the new
        hook, term = first[1], first[3]
        assert hook.max_alerts == 3 and hook.group_wait == type(hook).default_group_wait
        assert isinstance(term, ConsoleNotifier) and term.fmt == "json" and not term.send_resolved
    finally:
        for n in first + second:
            n.close()


def test_a_console_channel_filters_like_any_channel():
    out = io.StringIO()
    (term,) = build_notifiers([ConsoleConfig(name="term", min_severity="critical", fmt="line")])
    term.out = out
    warning, critical = make_event(severity="warning"), make_event(severity="critical")
    assert not term.accepts(warning) and term.accepts(critical)
    term.send([critical])
    assert out.getvalue().split()[1] == "FIRING"


def test_requests_is_imported_only_by_a_channel_that_posts(tmp_path):
    """A daemon whose only channel is the console never loads requests, urllib3 and ssl (about
    9 MiB of its memory, bench/README.md "Daemon catch-up"); a webhook channel loads them when it
    makes its session, and still posts through the deadline adapter."""
    probe = textwrap.dedent(
        f"""
        import sys
        from gradwatch.config import Config
        from gradwatch.daemon import Daemon
        d = Daemon(Config(logdir={str(tmp_path)!r}, state_dir={str(tmp_path / "state")!r}, listen=None))
        d.catch_up()
        d.checkpoint()
        print(sorted(m for m in ("requests", "urllib3", "ssl") if m in sys.modules))
        from gradwatch.notify.http import make_session
        adapter = make_session().get_adapter("https://example.invalid/")
        print(sorted(m for m in ("requests", "urllib3") if m in sys.modules), type(adapter).__name__)
        d.shutdown()
        """
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.stdout.splitlines() == ["[]", "['requests', 'urllib3'] _DeadlineAdapter"], (p.stdout, p.stderr)
