"""deploy/prometheus: promtool checks the rules, runs their unit tests and checks the scrape config.

The rules are also evaluated by a real Prometheus against real gradwatch
metrics in test_prometheus.py.
"""

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from conftest import require_binary

PROM = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_rules_check():
    p = promtool("check", "rules", str(PROM / "gradwatch_rules.yml"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 12 rules found" in p.stdout


def test_rule_unit_tests_pass(tmp_path):
    # from an unrelated cwd: rule_files resolve relative to the test file
    p = promtool("test", "rules", str(PROM / "gradwatch_rules_test.yml"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_rule_unit_tests_can_fail(tmp_path):
    # a copy whose critical level moved: the unit tests notice
    for name in ("gradwatch_rules.yml", "gradwatch_rules_test.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    rules = tmp_path / "gradwatch_rules.yml"
    rules.write_text(
        rules.read_text().replace(
            "run:gradwatch_gradient_norm:max > 50000", "run:gradwatch_gradient_norm:max > 500000"
        )
    )
    p = promtool("test", "rules", str(tmp_path / "gradwatch_rules_test.yml"))
    assert p.returncode == 1 and "GradientNormCritical" in p.stdout + p.stderr


def test_scrape_config_check():
    p = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 1 rule files found" in p.stdout


def test_promql_examples_in_the_docs_parse(tmp_path):
    doc = (PROM.parent.parent / "docs" / "operating.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", doc, re.S)
    exprs = [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]
    assert len(exprs) >= 5
    rules = {
        "groups": [{"name": "docs", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    f = tmp_path / "docs.yml"
    f.write_text(yaml.safe_dump(rules))
    p = promtool("check", "rules", str(f))
    assert p.returncode == 0, p.stdout + p.stderr
