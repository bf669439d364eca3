"""``gradwatch rules test``: promtool-style unit tests for rules."""

import subprocess
import sys
from pathlib import Path

import pytest

from gradwatch.cli import main

REPO = Path(__file__).resolve().parent.parent

RULES = """
rules:
  - name: explosion
    match: {tags: "*norm"}
    thresholds: {warning: 10000, critical: 50000}
    annotations:
      summary: "{tag} = {value} at step {step} ({severity})"
  - name: stalled
    absent_for: 10m
"""

PASSING = """
rule_files: [rules.yaml]
tests:
  - name: seed
    series:
      - run: td3
        tag: grad_norm
        steps: [100, 200, 300]
        values: [5191, 130486, 826256]
    expect:
      - rule: explosion
        run: td3
        tag: grad_norm
        severity: critical
        step: 200
        annotations: {summary: "grad_norm = 130,486 at step 200 (critical)"}
  - name: values as a string, nan and inf, back to ok
    series:
      - tag: grad_norm
        values: "1 20000 nan +Inf 3"
    expect:
      - {rule: explosion, tag: grad_norm, severity: warning, step: 1}
      - {rule: explosion, tag: grad_norm, severity: ok, step: 4}
  - name: a step-less expectation matches any step; a gap in wall time
    series:
      - tag: loss
        start: 10
        interval: 10
        seconds_per_step: 60
        values: [1, 1, 1, 1]
      - tag: other_loss
        steps: [1, 2]
        wall_times: [0, 3600]
        values: [1, 1]
    expect:
      - {rule: stalled, tag: other_loss, severity: warning}
  - name: nothing fires
    series:
      - {tag: grad_norm, values: [1, 2, 3]}
"""


def write(tmp_path: Path, rules: str = RULES, tests: str = PASSING) -> str:
    (tmp_path / "rules.yaml").write_text(rules)
    path = tmp_path / "rules_test.yaml"
    path.write_text(tests)
    return str(path)


def test_passing_tests(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["rules", "test", path]) == 0
    assert capsys.readouterr().out == (
        f"Unit testing: {path}\n"
        "  PASS  seed\n"
        "  PASS  values as a string, nan and inf, back to ok\n"
        "  PASS  a step-less expectation matches any step; a gap in wall time\n"
        "  PASS  nothing fires\n"
        "\n"
        "SUCCESS\n"
    )


def test_failing_tests_show_a_readable_diff(tmp_path, capsys):
    path = write(
        tmp_path,
        tests="""
rule_files: [rules.yaml]
tests:
  - name: wrong step and severity
    series:
      - {run: td3, tag: grad_norm, steps: [100, 200, 300], values: [5191, 30000, 826256]}
    expect:
      - {rule: explosion, run: td3, tag: grad_norm, severity: critical, step: 200}
  - name: wrong summary
    series:
      - {tag: grad_norm, values: [60000]}
    expect:
      - rule: explosion
        tag: grad_norm
        severity: critical
        step: 0
        annotations: {summary: "grad_norm exploded"}
  - name: a rule that does not exist
    series:
      - {tag: grad_norm, values: [1]}
    expect:
      - {rule: explosoin, tag: grad_norm, severity: critical}
""",
    )
    assert main(["rules", "test", path]) == 1
    assert capsys.readouterr().out == (
        f"Unit testing: {path}\n"
        f"  FAIL  wrong step and severity ({path}:4)\n"
        "          - expected, did not fire: critical explosion run=td3 tag=grad_norm at step 200\n"
        "          + fired, not expected:    warning explosion run=td3 tag=grad_norm at step 200\n"
        "          + fired, not expected:    critical explosion run=td3 tag=grad_norm at step 300\n"
        "          all alerts that fired, in order:\n"
        "            warning explosion run=td3 tag=grad_norm at step 200\n"
        "            critical explosion run=td3 tag=grad_norm at step 300\n"
        f"  FAIL  wrong summary ({path}:9)\n"
        "          ~ critical explosion run=. tag=grad_norm at step 0: annotation summary:\n"
        "              expected: 'grad_norm exploded'\n"
        "              got:      'grad_norm = 60,000 at step 0 (critical)'\n"
        "          all alerts that fired, in order:\n"
        "            critical explosion run=. tag=grad_norm at step 0\n"
        f"  FAIL  a rule that does not exist ({path}:18)\n"
        "          ! no rule named 'explosoin' in the rule files (rules: explosion, stalled)\n"
        "          - expected, did not fire: critical explosoin run=. tag=grad_norm\n"
        "          all alerts that fired, in order:\n"
        "            (none)\n"
        "\n"
        "FAILED: 3 tests failed\n"
    )


BAD_TESTS = {
    "not yaml": ("tests: [\n", "{f}:2: invalid YAML"),
    "no tests": ("rule_files: [rules.yaml]\n", "{f}:1: missing required key 'tests'"),
    "empty tests": ("tests: []\n", "{f}:1: tests: is empty: a test file needs at least one test"),
    "bad value": (
        "tests:\n  - series:\n      - {tag: a, values: [1, lots]}\n",
        "{f}:3: tests[0].series[0].values: expected a list of numbers (nan, inf, -inf allowed)",
    ),
    "steps and values differ": (
        "tests:\n  - series:\n      - {tag: a, steps: [1, 2], values: [1]}\n",
        "{f}:3: tests[0].series[0].steps: has 2 entries but values has 1",
    ),
    "bad severity": (
        "tests:\n  - series:\n      - {tag: a, values: [1]}\n"
        "    expect:\n      - {rule: r, tag: a, severity: bad}\n",
        "{f}:5: tests[0].expect[0].severity: expected one of info, warning, critical, ok, got 'bad'",
    ),
    "unknown key": (
        "tests:\n  - series:\n      - {tag: a, value: [1]}\n",
        "{f}:3: tests[0].series[0]: missing required key 'values'",
    ),
    "missing rule file": (
        "rule_files: [nope.yaml]\ntests:\n  - series:\n      - {tag: a, values: [1]}\n",
        "nope.yaml",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TESTS))
def test_bad_test_files_are_unknown_with_file_and_line(tmp_path, capsys, case):
    text, expected = BAD_TESTS[case]
    path = write(tmp_path, tests=text)
    assert main(["rules", "test", path]) == 3
    captured = capsys.readouterr()
    assert expected.replace("{f}", path) in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert "FAILED: 1 test files could not be run" in captured.out


def test_a_bad_rule_file_under_test(tmp_path, capsys):
    path = write(tmp_path, rules="rules:\n  - name: x\n    thresholds: {warning: ten thousand}\n")
    assert main(["rules", "test", path]) == 3
    err = capsys.readouterr().err
    assert (
        f"{tmp_path}/rules.yaml:3: rules[0].thresholds.warning: expected a number, got 'ten thousand'" in err
    )


def test_one_bad_file_does_not_stop_the_others(tmp_path, capsys):
    good = write(tmp_path)
    bad = tmp_path / "bad_test.yaml"
    bad.write_text("tests: 5\n")
    assert main(["rules", "test", str(bad), good]) == 3
    out = capsys.readouterr().out
    assert "PASS  seed" in out
    assert out.endswith("FAILED: 1 test files could not be run\n")


def test_without_rule_files_the_default_rules_are_tested(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(
        "tests:\n  - series:\n      - {tag: gradients/actor_cnn_norm, values: [5191, 130486]}\n"
        "    expect:\n"
        "      - {rule: gradient_explosion, tag: gradients/actor_cnn_norm, severity: critical, step: 1}\n"
        "      - {rule: gradient_growth, tag: gradients/actor_cnn_norm, severity: warning, step: 1}\n"
    )
    assert main(["rules", "test", str(path)]) == 0


def test_the_shipped_rule_tests_pass_through_the_console_script():
    script = Path(sys.executable).parent / "gradwatch"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gradwatch"]
    files = sorted(str(p) for p in (REPO / "rules" / "tests").glob("*.yaml"))
    assert len(files) >= 2
    p = subprocess.run([*cmd, "rules", "test", *files], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout
    assert p.stdout.count("PASS") >= 14
    assert p.stdout.endswith("SUCCESS\n")


def test_a_step_less_expectation_does_not_steal_a_stepped_one(tmp_path, capsys):
    path = write(
        tmp_path,
        tests="""
rule_files: [rules.yaml]
tests:
  - name: two warnings
    series:
      - {tag: grad_norm, values: [20000, 1, 20000]}
    expect:
      - {rule: explosion, tag: grad_norm, severity: warning}
      - {rule: explosion, tag: grad_norm, severity: warning, step: 0}
      - {rule: explosion, tag: grad_norm, severity: ok, step: 1}
""",
    )
    assert main(["rules", "test", path]) == 0, capsys.readouterr().out
