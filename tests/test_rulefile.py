"""Rule files: what loads, and the exact ``file:line: path: message`` of what does not."""

import os
from pathlib import Path

import pytest

from gradwatch.cli import main
from gradwatch.config.rulefiles import default_rules_path, expand_rule_paths, load_rules
from gradwatch.config.yaml import ConfigError, parse_duration
from gradwatch.severity import Severity

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems_of(*paths: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_rules(list(paths))
    return str(e.value).splitlines()


# -- what ships -----------------------------------------------------------------


def test_default_rules_are_packaged_and_used_without_arguments():
    path = default_rules_path()
    assert os.path.isfile(path)
    assert Path(path).parent.name == "default_rules"
    rules = load_rules(None)
    assert [r.name for r in rules] == ["gradient_explosion", "gradient_nonfinite", "gradient_growth"]
    explosion = rules[0]
    assert explosion.kind == "thresholds"
    assert explosion.levels == [
        (Severity.CRITICAL, "critical", 50000.0),
        (Severity.WARNING, "warning", 10000.0),
    ]
    assert explosion.stop == "critical"
    assert explosion.labels == {"category": "gradients"}
    assert "recommendation" in explosion.annotations


def test_every_shipped_rule_file_loads():
    files = sorted(str(p) for p in (REPO / "rules").rglob("*.yaml") if p.parent.name != "tests")
    assert len(files) >= 6
    rules = load_rules(files)
    names = {r.name for r in rules}
    assert {"loss_nonfinite", "q_value_explosion", "learning_rate_collapse", "training_stalled"} <= names


def test_directories_and_globs_expand_in_a_stable_order(tmp_path):
    write(tmp_path, "rules:\n  - name: b\n    nonfinite: critical\n", "b.yml")
    write(tmp_path, "rules:\n  - name: a\n    nonfinite: critical\n", "a.yaml")
    write(tmp_path, "not rules", "notes.txt")
    assert [r.name for r in load_rules([str(tmp_path)])] == ["a", "b"]
    assert [r.name for r in load_rules([str(tmp_path / "*.y*ml")])] == ["a", "b"]
    # the same file twice (a directory and a glob) is read once, not a duplicate name
    assert len(expand_rule_paths([str(tmp_path), str(tmp_path / "a.yaml")])) == 2


def test_rule_options_load(tmp_path):
    path = write(
        tmp_path,
        """
rules:
  - name: q
    description: Q diverging
    match: {runs: "td3*", tag_regex: "q"}
    thresholds: {direction: absolute, warning: 1e5, critical: 1e6}
    for: 2
    keep_firing_for: 5m
    repeat_interval: 1h
    stop: never
    labels: {team: rl, tier: 1}
  - name: p
    nonfinite: critical
    keep_firing_for: 3
""",
    )
    q, p = load_rules([path])
    assert q.absolute and q.for_points == 2
    assert q.levels[0][2] == 1e6  # YAML 1.1 reads 1e6 as text; it is a number here
    assert (q.keep_firing_for_seconds, q.keep_firing_for_points) == (300.0, 0)
    assert (p.keep_firing_for_seconds, p.keep_firing_for_points) == (0.0, 3)
    assert q.repeat_interval == 3600.0
    assert q.stop == "never"  # not None: None means "the daemon's default"
    assert p.stop is None
    assert q.labels == {"team": "rl", "tier": "1"}
    assert q.description == "Q diverging"
    assert q.source == f"{path}:3"


def test_durations():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration(45) == 45
    for bad in ("5 minutes", "", "10", "-5s", True, None, [1]):
        assert parse_duration(bad) is None, bad


# -- every problem: its message, its line ----------------------------------------

ANNOTATED = "rules:\n  - name: t\n    nonfinite: critical\n    annotations:\n      summary: "

BAD = {
    # the shape the issue asks for, exactly
    "words": (
        "rules:\n  - name: a\n    nonfinite: critical\n  - name: b\n    nonfinite: warning\n"
        "  - name: c\n    thresholds:\n      warning: ten thousand\n      critical: 50000\n",
        ["{f}:8: rules[2].thresholds.warning: expected a number, got 'ten thousand'"],
    ),
    "syntax": (
        "rules:\n  - name: a\n    thresholds: {warning: 1\n",
        ["{f}:4: invalid YAML: while parsing a flow mapping: expected ',' or '}', but got '<stream end>'"],
    ),
    "tab": (
        "rules:\n\t- name: a\n",
        ["{f}:2: invalid YAML: tabs are not allowed for indentation; use spaces"],
    ),
    "tab inside a rule": (
        "rules:\n  - name: a\n\t  nonfinite: critical\n",
        ["{f}:3: invalid YAML: tabs are not allowed for indentation; use spaces"],
    ),
    "stop typo": (
        "rules:\n  - name: a\n    nonfinite: critical\n    stop: critcal\n",
        [
            "{f}:4: rules[0].stop: expected one of info, warning, critical, never, got 'critcal' "
            "(did you mean 'critical'?)"
        ],
    ),
    "nested quantifier": (
        "rules:\n  - name: r\n    match:\n      tag_regex: '(\\w+\\s?)*$'\n    nonfinite: critical\n",
        [
            "{f}:4: rules[0].match.tag_regex: regular expression '(\\\\w+\\\\s?)*$' repeats a group "
            "that holds a repeat (like (a+)+)"
        ],
    ),
    "nested quantifier in a run regex": (
        "rules:\n  - name: r\n    match:\n      run_regex: '^(a|b+)*x'\n    nonfinite: critical\n",
        ["{f}:4: rules[0].match.run_regex: regular expression '^(a|b+)*x' repeats a group"],
    ),
    "template attribute access": (
        ANNOTATED + "'{labels.__class__}'\n",
        ["{f}:5: rules[0].annotations.summary: field {labels.__class__}: no attribute or index access"],
    ),
    "template index on a number": (
        ANNOTATED + "'{value[0]}'\n",
        ["{f}:5: rules[0].annotations.summary: field {value[0]}: no attribute or index access"],
    ),
    "template huge width": (
        ANNOTATED + "'{value:>999999999}'\n",
        [
            "{f}:5: rules[0].annotations.summary: field {value:>999999999}: "
            "format width and precision are limited to 100"
        ],
    ),
    "template huge precision": (
        ANNOTATED + "'{value:.5000f}'\n",
        ["{f}:5: rules[0].annotations.summary: field {value:.5000f}: format width and precision are limited"],
    ),
    "template nested spec": (
        ANNOTATED + "'{value:{step}}'\n",
        [
            "{f}:5: rules[0].annotations.summary: field {value:{step}}: "
            "a format spec cannot hold another field"
        ],
    ),
    "nested 5,000 levels (flow)": (
        "rules:\n  - " + "[" * 5000 + "]" * 5000 + "\n",
        ["{f}:2: nesting too deep (more than 64 levels of mappings and lists)"],
    ),
    "nested 5,000 levels (block)": (
        "rules:\n" + "".join("  " * i + f"- k{i}:\n" for i in range(5000)),
        ["{f}:33: nesting too deep (more than 64 levels of mappings and lists)"],
    ),
    "empty": ("", ["{f}:1: the file is empty; expected a mapping with a 'rules' list"]),
    "comments only": (
        "# nothing yet\n",
        ["{f}:1: the file is empty; expected a mapping with a 'rules' list"],
    ),
    "not a mapping": ("- name: a\n  nonfinite: critical\n", ["{f}:1: expected a mapping, got a list"]),
    "a scalar": ("hello\n", ["{f}:1: expected a mapping, got 'hello'"]),
    "no rules key": ("groups: []\n", ["{f}:1: missing required key 'rules'", "{f}:1: groups: unknown key"]),
    "rules null": ("rules:\n", ["{f}:1: rules: is empty; expected a list of rules"]),
    "rules not a list": ("rules: {name: a}\n", ["{f}:1: rules: expected a list, got a mapping"]),
    "rule not a mapping": (
        "rules:\n  - gradient_explosion\n",
        ["{f}:2: rules[0]: expected a mapping, got 'gradient_explosion'"],
    ),
    "duplicate key": (
        "rules:\n  - name: a\n    nonfinite: critical\n    name: b\n",
        ["{f}:4: invalid YAML: duplicate key 'name' (first on line 2)"],
    ),
    "bad regex": (
        "rules:\n  - name: r\n    match:\n      tag_regex: 'grad(norm'\n    nonfinite: critical\n",
        ["{f}:4: rules[0].match.tag_regex: invalid regular expression 'grad(norm': missing ), unterminated"],
    ),
    "bad glob type": (
        "rules:\n  - name: g\n    match:\n      tags: 5\n    nonfinite: critical\n",
        ["{f}:4: rules[0].match.tags: expected a string or a list of strings, got 5"],
    ),
    "globs and regex": (
        "rules:\n  - name: g\n    match: {tags: '*', tag_regex: x}\n    nonfinite: critical\n",
        ["{f}:3: rules[0].match.tag_regex: use either tags (globs) or tag_regex, not both"],
    ),
    "bad duration": (
        "rules:\n  - name: d\n    absent_for: 5 minutes\n",
        ["{f}:3: rules[0].absent_for: expected a duration like 30s, 10m or 1h, got '5 minutes'"],
    ),
    "zero duration": (
        "rules:\n  - name: d\n    absent_for: 0s\n",
        ["{f}:3: rules[0].absent_for: expected a duration"],
    ),
    "bad template field": (
        ANNOTATED + "'{valu} at {step}'\n",
        ["{f}:5: rules[0].annotations.summary: unknown field {valu} (fields: rule, run, tag, step, value,"],
    ),
    "bad format spec": (
        ANNOTATED + "'{value:.2q}'\n",
        [
            "{f}:5: rules[0].annotations.summary: cannot render: "
            "Unknown format code 'q' for object of type 'float'"
        ],
    ),
    "missing label in template": (
        ANNOTATED + "'{labels[team]}'\n",
        ["{f}:5: rules[0].annotations.summary: no label 'team' in this rule's labels"],
    ),
    "unbalanced brace": (
        ANNOTATED + "'value {value'\n",
        ["{f}:5: rules[0].annotations.summary: bad template: expected '}' before end of string"],
    ),
    "two kinds": (
        "rules:\n  - name: t\n    nonfinite: critical\n    thresholds: {warning: 5}\n",
        ["{f}:2: rules[0]: a rule has one condition, this one has thresholds and nonfinite: split it"],
    ),
    "no condition": (
        "rules:\n  - name: t\n    labels: {a: b}\n",
        [
            "{f}:2: rules[0]: a rule needs one condition: "
            "thresholds, nonfinite, growth, absent_for, anomaly or baseline"
        ],
    ),
    "typo in a condition": (
        "rules:\n  - name: t\n    tresholds: {warning: 5}\n",
        [
            "{f}:2: rules[0]: a rule needs one condition",
            "{f}:3: rules[0].tresholds: unknown key (did you mean 'thresholds'? known keys here:",
        ],
    ),
    "typo in a level": (
        "rules:\n  - name: t\n    thresholds: {warning: 5, critcal: 10}\n",
        ["{f}:3: rules[0].thresholds.critcal: unknown key (did you mean 'critical'?"],
    ),
    "levels in the wrong order": (
        "rules:\n  - name: t\n    thresholds: {warning: 50000, critical: 10000}\n",
        ["{f}:3: rules[0].thresholds.critical: critical (10,000) must be above warning (50,000), or warning"],
    ),
    "below levels in the wrong order": (
        "rules:\n  - name: t\n    thresholds: {direction: below, warning: 1e-9, critical: 1e-7}\n",
        ["{f}:3: rules[0].thresholds.critical: critical (1e-07) must be below warning (1e-09)"],
    ),
    "no levels": (
        "rules:\n  - name: t\n    thresholds: {}\n",
        ["{f}:3: rules[0].thresholds: thresholds needs"],
    ),
    "bad direction": (
        "rules:\n  - name: t\n    thresholds: {direction: up, warning: 5}\n",
        ["{f}:3: rules[0].thresholds.direction: expected one of above, below, absolute, got 'up'"],
    ),
    "growth factor": (
        "rules:\n  - name: g\n    growth: {within_steps: 100, warning: 0.5}\n",
        ["{f}:3: rules[0].growth.warning: expected a growth factor above 1, got 0.5"],
    ),
    "growth window": (
        "rules:\n  - name: g\n    growth: {warning: 10}\n",
        ["{f}:3: rules[0].growth: missing required key 'within_steps'"],
    ),
    "for as a duration": (
        "rules:\n  - name: t\n    thresholds: {warning: 5}\n    for: 5m\n",
        ["{f}:4: rules[0].for: expected a number of consecutive points (a whole number >= 1), got '5m'"],
    ),
    "severity on thresholds": (
        "rules:\n  - name: t\n    thresholds: {warning: 5}\n    severity: critical\n",
        ["{f}:4: rules[0].severity: only absent_for rules take 'severity'"],
    ),
    "bad severity": (
        "rules:\n  - name: t\n    nonfinite: fatal\n",
        ["{f}:3: rules[0].nonfinite: expected one of info, warning, critical, got 'fatal'"],
    ),
    "bad name and stop": (
        "rules:\n  - name: 9 lives\n    nonfinite: critical\n    stop: sometimes\n",
        [
            "{f}:2: rules[0].name: expected a name of letters, digits and _.:- starting with a letter",
            "{f}:4: rules[0].stop: expected one of info, warning, critical, never, got 'sometimes'",
        ],
    ),
    "no name": ("rules:\n  - nonfinite: critical\n", ["{f}:2: rules[0]: missing required key 'name'"]),
    "bad labels": (
        "rules:\n  - name: t\n    nonfinite: critical\n    labels: {team: [a, b]}\n",
        ["{f}:4: rules[0].labels: expected a mapping of names to strings, got a mapping"],
    ),
    "bad label name": (
        "rules:\n  - name: t\n    nonfinite: critical\n    labels: {my-team: rl}\n",
        ["{f}:4: rules[0].labels: label name 'my-team': expected letters, digits and _"],
    ),
    "bad keep_firing_for": (
        "rules:\n  - name: t\n    nonfinite: critical\n    keep_firing_for: 1.5\n",
        ["{f}:4: rules[0].keep_firing_for: expected a number of points or a duration like 5m, got 1.5"],
    ),
    "python tag": (
        "rules: !!python/object:os.system {}\n",
        ["{f}:1: invalid YAML: could not determine a constructor for the tag"],
    ),
}


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    from tensorboardX import SummaryWriter

    root = tmp_path_factory.mktemp("logdir")
    w = SummaryWriter(str(root / "run"))
    w.add_scalar("grad_norm", 1.0, 0)
    w.close()
    return str(root)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rules_report_file_line_path_and_message(tmp_path, case, logdir, capsys):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    got = problems_of(path)
    assert len(got) == len(expected), got
    for line, want in zip(got, expected):
        want = want.replace("{f}", path)
        assert line.startswith(want), f"{line!r} does not start with {want!r}"
    # the same lines, and UNKNOWN, from both commands that read rules
    assert main(["rules", "check", path]) == 3
    assert capsys.readouterr().err.splitlines() == ["  FAILED:", *got]
    assert main(["check", logdir, "--rules", path]) == 3
    assert capsys.readouterr().err.splitlines() == got


def test_all_problems_of_a_file_are_reported_together(tmp_path):
    path = write(
        tmp_path,
        "rules:\n"
        "  - name: a\n    thresholds: {warning: lots}\n"
        "  - name: b\n    nonfinite: critical\n"
        "  - name: c\n    absent_for: soon\n",
    )
    got = problems_of(path)
    assert [line.split(": ")[0] for line in got] == [f"{path}:3", f"{path}:7"]


def test_duplicate_rule_names_across_files(tmp_path):
    one = write(tmp_path, "rules:\n  - name: a\n    nonfinite: critical\n", "one.yaml")
    two = write(
        tmp_path,
        "rules:\n  - name: b\n    nonfinite: info\n  - name: a\n    thresholds: {warning: 5}\n",
        "two.yaml",
    )
    assert problems_of(one, two) == [f"{two}:4: rule name 'a' already used at {one}:2"]


def test_unreadable_and_missing_files(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert problems_of(missing) == [f"{missing}: cannot read: No such file or directory"]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert problems_of(str(binary)) == [f"{binary}: not a UTF-8 text file"]
    assert problems_of(str(tmp_path / "*.nothing")) == [f"{tmp_path}/*.nothing: pattern matches no files"]
    (tmp_path / "empty").mkdir()
    assert problems_of(str(tmp_path / "empty")) == [
        f"{tmp_path}/empty: directory holds no .yaml or .yml rule files"
    ]


def test_no_input_gives_a_traceback(tmp_path):
    """Random rules built from every key and many wrong values: ConfigError or rules, nothing else."""
    import random

    import yaml

    rng = random.Random(1234)
    keys = [
        *("name", "description", "match", "thresholds", "nonfinite", "growth", "absent_for", "severity"),
        *("for", "keep_firing_for", "repeat_interval", "stop", "labels", "annotations", "runs", "tags"),
        *("tag_regex", "run_regex", "exclude_tags", "exclude_runs", "direction", "info", "warning"),
        *("critical", "within_steps", "min_value", "summary", "recommendation", 7, True),
    ]
    values = [
        *(None, 0, -1, 1, 2.5, 1e6, "x", "", "10m", "critical", "above", "below", "absolute", "(", "*"),
        *("{value}", "{valu}", "{value:.2q}", "{labels[a]}", "{", [], [1], ["a", "b"], {}, {"a": "b"}),
        *({"a": [1]}, True, float("nan"), float("inf")),
    ]

    def thing(depth: int):
        if depth > 2 or rng.random() < 0.5:
            return rng.choice(values)
        return {rng.choice(keys): thing(depth + 1) for _ in range(rng.randint(0, 5))}

    for i in range(400):
        rules = []
        for j in range(3):
            body = thing(0)
            rules.append({"name": f"r{i}_{j}", **(body if isinstance(body, dict) else {})})
        rules.append(thing(0))
        path = tmp_path / f"r{i}.yaml"
        path.write_text(yaml.safe_dump({"rules": rules} if i % 7 else rng.choice([rules, thing(0), None])))
        try:
            load_rules([str(path)])
        except ConfigError as e:
            for line in str(e).splitlines():
                assert line.startswith(f"{path}:"), line


def test_a_files_problems_come_in_line_order(tmp_path):
    # parsed in key order (stop before annotations, unknown keys last), reported in line order
    path = write(
        tmp_path,
        "rules:\n"
        "  - name: a\n"
        "    colour: red\n"
        "    annotations: {summary: '{nope}'}\n"
        "    nonfinite: critical\n"
        "    stop: loud\n",
    )
    got = problems_of(path)
    assert [line.split(": ")[0] for line in got] == [f"{path}:3", f"{path}:4", f"{path}:6"], got


def test_a_dangling_symlink_says_so(tmp_path, capsys):
    link = tmp_path / "gradient_explosion.yaml"
    link.symlink_to("../gradwatch/default_rules/gradient_explosion.yaml")
    want = f"{link}: cannot read: dangling symlink to ../gradwatch/default_rules/gradient_explosion.yaml"
    assert problems_of(str(link)) == [want]
    assert main(["rules", "check", str(link)]) == 3
    assert want in capsys.readouterr().err.splitlines()
