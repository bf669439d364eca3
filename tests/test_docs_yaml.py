"""Every YAML example in docs/rules.md, docs/notifications.md and docs/deployment.md is
accepted by what reads it: gradwatch's rule loader, its config loader (with the secrets it
names), `gradwatch rules test`, amtool, and kubernetes-validate. A fragment (one key of a
rule, one channel of `notifiers:`) is checked inside the smallest whole it belongs to."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import require_binary
from snippets import ROOT, fenced_blocks

from gradwatch.config import load_config
from gradwatch.config.rulefiles import default_rules_path, load_rules

CONDITIONS = ("thresholds", "nonfinite", "growth", "absent_for", "anomaly", "baseline")
RULE_BLOCKS = fenced_blocks("docs/rules.md", "yaml")
CHANNEL_BLOCKS = fenced_blocks("docs/notifications.md", "yaml")


def _rule_file(block: str) -> str:
    """A whole rule file: the block itself, or one rule holding the fragment."""
    if block.lstrip().startswith("rules:"):
        return block
    doc = yaml.safe_load(block)
    extra = "" if any(k in doc for k in CONDITIONS) else "thresholds: {warning: 1}\n"
    body = "name: doc_example\n" + ("" if "match" in doc else "match: {tags: ['*']}\n") + extra + block
    return "rules:\n  - " + textwrap.indent(body, "    ").lstrip()


@pytest.mark.parametrize(
    "block", [b for b in RULE_BLOCKS if not b.lstrip().startswith("rule_files:")], ids=lambda b: b.split()[0]
)
def test_rule_examples_load(tmp_path, block):
    path = tmp_path / "rules.yaml"
    path.write_text(_rule_file(block))
    assert load_rules([str(path)])


def test_the_rules_test_example_passes_against_the_packaged_rules(tmp_path):
    (block,) = [b for b in RULE_BLOCKS if b.lstrip().startswith("rule_files:")]
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(default_rules_path(), tmp_path / "gradient_explosion.yaml")  # ../ of the example
    (tests / "example_test.yaml").write_text(block)
    p = subprocess.run(
        [sys.executable, "-m", "gradwatch", "rules", "test", str(tests / "example_test.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def _channels(block: str) -> str | None:
    """A `notifiers:` list holding the block, or None for a block that is not gradwatch's."""
    if block.lstrip().startswith("notifiers:"):
        return block
    if block.lstrip().startswith("- name:"):
        return "notifiers:\n" + textwrap.indent(block, "  ")
    return None


@pytest.mark.parametrize(
    "block", [b for b in CHANNEL_BLOCKS if _channels(b) is not None], ids=lambda b: b.split()[2]
)
def test_notifier_examples_load(tmp_path, monkeypatch, block):
    for name in re.findall(r"\$\{(\w+)\}", block):  # the environment the example names
        monkeypatch.setenv(name, "https://hooks.slack.com/services/T0/B0/doc-example-secret")
    doc = yaml.safe_load(_channels(block))
    for channel in doc["notifiers"]:
        for key in [k for k in channel if k.endswith("_file")]:
            secret = tmp_path / f"{channel['name']}-{key}"
            secret.write_text("https://hooks.slack.com/services/T0/B0/doc-example-secret\n")
            channel[key] = str(secret)
    config = tmp_path / "gradwatch.yaml"
    config.write_text(yaml.safe_dump({"logdir": str(tmp_path), **doc}))
    assert load_config(str(config)).notifiers


def test_the_alertmanager_routing_example_passes_amtool(tmp_path):
    amtool = require_binary("amtool")
    (block,) = [b for b in CHANNEL_BLOCKS if b.lstrip().startswith("# alertmanager.yml")]
    (tmp_path / "alertmanager.yml").write_text(block)
    p = subprocess.run(
        [amtool, "check-config", str(tmp_path / "alertmanager.yml")], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_threat_models_network_policy_is_a_valid_manifest():
    import kubernetes_validate

    (block,) = fenced_blocks("docs/deployment.md", "yaml")
    for doc in yaml.safe_load_all(block):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
