"""The example configs in deploy/ load with gradwatch's own loader."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradwatch.config import load_config
from gradwatch.config.rulefiles import load_rules
from gradwatch.config.yaml import ConfigError
from gradwatch.daemon.writers import stop_path
from gradwatch.notify.registry import build_notifiers

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT / "deploy" / "gradwatch.yaml"
COMPOSE = ROOT / "deploy" / "docker" / "gradwatch.yaml"
SECRETS = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
    "ONCALL_WEBHOOK_URL": "https://oncall.example.internal/hooks/gradwatch",
    "ONCALL_WEBHOOK_TOKEN": "s3cr3t-token",
    "ALERTMANAGER_URL": "http://alertmanager.example.internal:9093",
}


@pytest.fixture
def secrets(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)


def test_full_example_loads(secrets):
    cfg = load_config(str(FULL))
    notifiers = build_notifiers(cfg)
    assert sorted(n.type for n in notifiers) == ["alertmanager", "slack", "webhook"]
    # secrets stay secret in what gradwatch prints about its channels
    described = " ".join(n.describe() for n in notifiers)
    for leak in ("T000/B000", "s3cr3t", "/hooks/gradwatch"):
        assert leak not in described
    assert cfg.listen == "127.0.0.1:9723"
    assert cfg.export_tags and cfg.stop_severity == "critical"
    assert stop_path(cfg.stop_file, "/logs", "td3/seed-1") == "/stop/td3__seed-1.json"
    assert load_rules(cfg.rules)  # no rules key: the packaged defaults


def test_full_example_holds_no_secret():
    text = FULL.read_text()
    checked = 0
    for key in ("url", "bearer_token", "token", "hmac_secret"):
        for m in re.finditer(rf"^\s*-?\s*{key}:\s*(\S+)", text, re.M):
            value = m.group(1)
            assert value.startswith("${"), f"{key}: {value}"
            checked += 1
    assert checked >= 3, "the example's secrets were not found: the check checked nothing"


def test_unset_secret_is_a_clear_start_up_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    p = subprocess.run(
        [sys.executable, "-m", "gradwatch", "watch", str(tmp_path), "--config", str(FULL), "--listen", ""],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == 3
    assert "Traceback" not in p.stderr
    for name in SECRETS:
        assert re.search(
            rf"gradwatch\.yaml:\d+: notifiers\[\d\]\.\w+: environment variable {name} is not set", p.stderr
        )


def test_compose_config_loads(monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", SECRETS["SLACK_WEBHOOK_URL"])
    cfg = load_config(str(COMPOSE))
    assert [n.type for n in build_notifiers(cfg)] == ["slack"]
    assert cfg.logdir == "/logs"


def test_compose_config_without_the_secret(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL is not set"):
        load_config(str(COMPOSE))
