"""gradwatch.yaml, ``gradwatch config check`` and the command-line errors of ``gradwatch watch``."""

from __future__ import annotations

import os
import textwrap

import pytest

from gradwatch.cli import main
from gradwatch.config import Config, load_config, parse_listen
from gradwatch.config.yaml import ConfigError


def write(tmp_path, text: str, name: str = "gradwatch.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


FULL = """\
    logdir: runs
    rules: [rules/*.yaml]
    state_dir: state
    listen: ""
    poll: 2s
    rescan_interval: 1m
    forget_after: 10m
    log_format: json
    catchup_notify: false
    tensorboard_flags: true
    stop_file:
      path: "/stop/{run}.json"
      severity: never
    metrics:
      export_tags: ["q_values/*"]
    outbox:
      max_age: 1h
"""


def test_a_full_config_with_paths_relative_to_the_file(tmp_path):
    cfg = load_config(str(write(tmp_path, FULL)))
    assert cfg.logdir == str(tmp_path / "runs")
    assert cfg.rules == [str(tmp_path / "rules" / "*.yaml")]
    assert cfg.resolved_state_dir() == str(tmp_path / "state")
    assert (cfg.listen, cfg.poll, cfg.rescan_interval, cfg.forget_after) == (None, 2.0, 60.0, 600.0)
    assert (cfg.log_format, cfg.catchup_notify, cfg.tensorboard_flags) == ("json", False, True)
    assert (cfg.stop_file, cfg.stop_severity) == ("/stop/{run}.json", None)
    assert (cfg.export_tags, cfg.outbox_max_age) == (["q_values/*"], 3600.0)


def test_every_problem_is_reported_with_file_and_line(tmp_path):
    path = write(
        tmp_path,
        """\
        logdir: runs
        pol: 2s
        listen: nowhere
        forget_after: soon
        stop_file:
          path: "{run_dir}/{nope}.json"
          severity: fatal
        outbox:
          max_age: 0
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = str(err.value)
    for needle in (
        f"{path}:2: pol:",  # a typo is an error, not a silent default
        f"{path}:3: listen: expected HOST:PORT",
        f"{path}:4: forget_after:",
        f"{path}:7: stop_file.severity:",
        "bad template",
        f"{path}:9: outbox.max_age: must be more than 0",  # 0 would drop everything unsent
    ):
        assert needle in text, text


def test_state_dir_defaults_to_one_directory_per_logdir(monkeypatch, tmp_path):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    a, b = Config(logdir="/data/a").resolved_state_dir(), Config(logdir="/data/b").resolved_state_dir()
    assert a != b and os.path.dirname(a) == str(tmp_path / "xdg" / "gradwatch")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/gradwatch:/var/lib/other")  # systemd may list several
    assert os.path.dirname(Config(logdir="/data/a").resolved_state_dir()) == "/var/lib/gradwatch"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9723", ("127.0.0.1", 9723)),
        (":9723", None),  # every interface must be said: 0.0.0.0:9723 (tests/test_listen.py)
        ("0.0.0.0:9723", ("0.0.0.0", 9723)),
        ("[::1]:0", ("::1", 0)),
        ("localhost", None),
        ("host:99999", None),
        ("host:http", None),
    ],
)
def test_parse_listen(text, parsed):
    assert parse_listen(text) == parsed


def test_config_check_says_success_and_never_prints_secrets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.com/T000/B000/very-secret-token")
    path = write(
        tmp_path,
        """\
        logdir: /data/runs
        listen: ""
        notifiers:
          - name: bridge
            type: webhook
            url: ${HOOK_URL}
        """,
    )
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: SUCCESS: logdir /data/runs, 3 rules, 1 notifiers (bridge)")
    assert "very-secret-token" not in out


def test_config_check_fails_with_file_line_and_exit_3(tmp_path, capsys):
    path = write(tmp_path, "logdir: runs\nrules: [missing.yaml]\nstop_file: {severity: loud}\n")
    assert main(["config", "check", str(path)]) == 3
    err = capsys.readouterr().err
    assert f"{path}:3: stop_file.severity:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{run.__class__}.json", "field {run.__class__}: no attribute or index access"),
        ("{run.nope}.json", "field {run.nope}: no attribute or index access"),  # was a traceback
        ("{run[0]}.json", "field {run[0]}: no attribute or index access"),
        ("{run:>999999999}.json", "format width and precision are limited to 100"),
        ("{run:d}.json", "Unknown format code 'd'"),
        ("{0}.json", "positional fields like {} or {0} are not allowed; use {run_dir}, {run}, {logdir}"),
    ],
)
def test_stop_file_templates_are_bounded_and_named_fields_only(tmp_path, capsys, template, message):
    path = write(tmp_path, f"logdir: runs\nstop_file:\n  path: '{template}'\n")
    assert main(["config", "check", str(path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(
        f"{path}:3: stop_file.path: bad template (fields: {{run_dir}}, {{run}}, {{logdir}}): "
    )
    assert message in err and "Traceback" not in err


def test_config_check_of_a_config_nested_5000_deep_says_so(tmp_path, capsys):
    path = write(tmp_path, "logdir: runs\nmetrics:\n  export_tags: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["config", "check", str(path)]) == 3
    err = capsys.readouterr().err
    assert err == f"{path}:3: nesting too deep (more than 64 levels of mappings and lists)\n"


def test_config_problems_come_in_line_order(tmp_path, capsys):
    # stop_file (line 2) is read after poll (line 3) and the unknown key (line 1) is found last
    path = write(tmp_path, "colour: red\nstop_file: {severity: loud}\npoll: soon\n")
    assert main(["config", "check", str(path)]) == 3
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:1", f"{path}:2", f"{path}:3"], lines
    assert "did you mean 'critical'?" not in lines[1]  # "loud" is not close to any severity


def test_config_check_of_a_missing_file(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "nope.yaml")]) == 3
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--poll", "0"], "--poll: expected a positive number of seconds"),
        (["--poll", "nan"], "--poll: expected a positive number of seconds"),
        (["--listen", "nowhere"], "--listen: expected HOST:PORT like 127.0.0.1:9723, got 'nowhere'"),
        (["--stop-file", "{run_dir}/{oops}"], "--stop-file: bad template"),
        (["--stop-file", "{run_dir}/{run.nope}"], "--stop-file: bad template"),  # was an AttributeError
        (["--rules", "/nonexistent/rules.yaml"], "/nonexistent/rules.yaml"),
    ],
)
def test_watch_usage_errors_exit_3_with_a_message(tmp_path, capsys, args, message):
    assert main(["watch", str(tmp_path), "--state-dir", str(tmp_path / "s"), "--listen", "", *args]) == 3
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_watch_without_a_logdir(capsys):
    assert main(["watch", "--listen", ""]) == 3
    assert "no logdir: give one on the command line" in capsys.readouterr().err
