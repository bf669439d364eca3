"""Rule files: YAML -> :class:`gradwatch.rules.Rule`, with ``file:line`` errors.

The language is described in docs/rules.md. Every problem of every file is
collected and raised together as one :class:`ConfigError`, so one run of
``gradwatch rules check`` shows all of them.
"""

from __future__ import annotations

import glob
import os
import re

from gradwatch.config.conditions import CONDITIONS, severity_level
from gradwatch.config.packaged_rules import load_packaged
from gradwatch.config.yaml import (
    ConfigError,
    Problem,
    Section,
    load_yaml_text,
    parse_duration,
    read_yaml_file,
)
from gradwatch.match import Match, Pattern
from gradwatch.rules import Rule
from gradwatch.severity import SEVERITY_NAMES
from gradwatch.templates import Template

DEFAULT_RULES = "gradient_explosion.yaml"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")

# the keys that choose a rule's kind, in KINDS order
CONDITION_KEYS = {
    "thresholds": "thresholds",
    "nonfinite": "nonfinite",
    "growth": "growth",
    "absent_for": "absent",
    "anomaly": "anomaly",
    "baseline": "baseline",
}
RULE_KEYS = (
    "name",
    "description",
    "match",
    *CONDITION_KEYS,
    "severity",
    "for",
    "keep_firing_for",
    "repeat_interval",
    "stop",
    "labels",
    "annotations",
)

DEFAULT_ANNOTATIONS = {
    "thresholds": "{tag} = {value} at step {step} on run {run}: {severity}, {direction} {threshold}",
    "nonfinite": "{tag} = {value} at step {step} on run {run}: not a finite number",
    "growth": "{tag} = {value} at step {step} on run {run}: grew x{ratio:.1f} within {within} steps",
    "absent": "{tag} on run {run} has not logged for {threshold} s (last step {step})",
    "anomaly": "{tag} = {value} at step {step} on run {run}: {zscore:.1f} standard deviations "
    "from its recent points",
    "baseline": "{tag} = {value} at step {step} on run {run}: x{ratio:.1f} the baseline's {baseline} "
    "at step {baseline_step}",
}


def default_rules_path() -> str:
    # the package's own directory, as importlib.resources.files("gradwatch") gives it for an
    # installed package (a zip import could not open that path either); importlib.resources
    # costs one-shot commands ~5 ms of imports (zipfile, tempfile, shutil) at start-up
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "default_rules", DEFAULT_RULES)


def expand_rule_paths(paths: list[str], problems: list[Problem] | None = None) -> list[str]:
    """Files from files, directories (their *.yaml/*.yml) and globs, in a stable order."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(
                os.path.join(p, n)
                for n in os.listdir(p)
                if n.endswith((".yaml", ".yml")) and not n.startswith(".")
            )
            if not found and problems is not None:
                problems.append(Problem(p, 0, "", "directory holds no .yaml or .yml rule files"))
            out.extend(found)
        elif any(c in p for c in "*?[") and not os.path.exists(p):
            found = sorted(glob.glob(p))
            if not found and problems is not None:
                problems.append(Problem(p, 0, "", "pattern matches no files"))
            out.extend(found)
        else:
            out.append(p)
    # a file named twice (a directory and a glob) must not look like duplicate rule names
    seen: set[str] = set()
    return [f for f in out if not (os.path.realpath(f) in seen or seen.add(os.path.realpath(f)))]


def load_rule_file(path: str, problems: list[Problem]) -> list[Rule]:
    """The valid rules of one file; its problems are appended to ``problems``, in line order."""
    found: list[Problem] = []
    try:
        rules = parse_rules(_rule_yaml(path), path, found)
    except ConfigError as e:
        found.extend(e.problems)
        rules = []
    problems.extend(sorted(found, key=lambda p: p.line))  # stable: one line's problems keep their order
    return rules


def _rule_yaml(path: str):
    """A rule file's parsed YAML; the packaged rules' comes without PyYAML (packaged_rules.py)."""
    text = read_yaml_file(path)
    known, data = load_packaged(text)
    return data if known else load_yaml_text(text, path)


def duplicate_names(rules: list[Rule]) -> list[Problem]:
    """Two rules with one name would share alert identities: each later one is a problem."""
    out: list[Problem] = []
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.name in seen:
            file, _, line = rule.source.rpartition(":")
            out.append(
                Problem(
                    file, int(line or 0), "", f"rule name '{rule.name}' already used at {seen[rule.name]}"
                )
            )
        else:
            seen[rule.name] = rule.source
    return out


def load_rules(paths: list[str] | None = None) -> list[Rule]:
    """Rules from files/dirs/globs, or the packaged defaults; raises ConfigError."""
    problems: list[Problem] = []
    files = expand_rule_paths(paths, problems) if paths else [default_rules_path()]
    rules: list[Rule] = []
    for path in files:
        rules.extend(load_rule_file(path, problems))
    problems.extend(duplicate_names(rules))
    if problems:
        raise ConfigError(problems)
    return rules


def parse_rules(data, file: str, problems: list[Problem]) -> list[Rule]:
    top = Section(data, file, "", problems, line=1)
    if data is None:
        top.error("", "the file is empty; expected a mapping with a 'rules' list")
        return []
    if not isinstance(data, dict):
        return []  # Section reported "expected a mapping"
    if "rules" in data and data["rules"] is None:
        top.error("rules", "is empty; expected a list of rules")
        top.allow("rules")
        top.finish()
        return []
    rules = [r for s in top.sections("rules", required=True) if (r := _parse_rule(s)) is not None]
    top.finish()
    return rules


def _compile(sec: Section, key: str) -> Pattern | None:
    text = sec.string(key)
    if text is None:
        return None
    try:
        return Pattern(text)
    except ValueError as e:
        sec.error(key, str(e))
        return None


def _parse_match(sec: Section) -> Match:
    m = Match(
        runs=sec.strings("runs", ["*"]),
        tags=sec.strings("tags", ["*"]),
        run_regex=_compile(sec, "run_regex"),
        tag_regex=_compile(sec, "tag_regex"),
        exclude_tags=sec.strings("exclude_tags", []),
        exclude_runs=sec.strings("exclude_runs", []),
    )
    for globs, regex in (("tags", "tag_regex"), ("runs", "run_regex")):
        if sec.has(globs) and sec.has(regex):
            sec.error(regex, f"use either {globs} (globs) or {regex}, not both")
    sec.finish()
    return m


def _parse_rule(sec: Section) -> Rule | None:
    if not sec.valid:
        return None
    before = len(sec.problems)
    sec.allow(*RULE_KEYS)
    name = sec.string("name", required=True)
    if name is not None and not _NAME.match(name):
        sec.error("name", f"expected a name of letters, digits and _.:- starting with a letter, got {name!r}")
    kind, one = _rule_kind(sec)
    match = _parse_match(sec.section("match")) if sec.has("match") else Match()
    # reported by _rule_kind when not exactly one; parsing a guessed kind would only add noise
    condition = CONDITIONS[kind](sec) if one else {}
    if kind == "absent":
        condition["levels"] = severity_level(sec, "severity", "warning")
    elif sec.has("severity"):
        sec.error(
            "severity",
            "only absent_for rules take 'severity'; thresholds, growth, anomaly and baseline name it "
            "per level, "
            "nonfinite takes it as its value (nonfinite: critical)",
        )
    for_points = sec.get(
        "for",
        lambda v: v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None,
        "a number of consecutive points (a whole number >= 1)",
        default=1,
    )
    keep_points, keep_seconds = _keep_firing_for(sec)
    repeat = sec.duration("repeat_interval")
    if repeat is not None and repeat <= 0:
        sec.error("repeat_interval", "expected a duration above zero")
    stop = sec.choice("stop", (*SEVERITY_NAMES, "never"), default=None)
    labels = _labels(sec)
    description = sec.string("description", default="")
    annotations = _parse_annotations(sec, kind)
    sec.finish()
    if len(sec.problems) > before or name is None:
        return None
    rule = Rule(
        name=name,
        kind=kind,
        match=match,
        levels=condition.pop("levels", []),
        for_points=for_points,
        keep_firing_for_points=keep_points,
        keep_firing_for_seconds=keep_seconds,
        repeat_interval=repeat,
        stop=stop,
        labels=labels,
        annotations=annotations,
        description=description,
        source=f"{sec.file}:{sec.line}",
        **condition,
    )
    _check_templates(sec, rule)
    return rule if len(sec.problems) == before else None


def _rule_kind(sec: Section) -> tuple[str, bool]:
    """The rule's condition kind, and whether it has exactly one (else that is reported)."""
    kinds = [kind for key, kind in CONDITION_KEYS.items() if sec.has(key)]
    if not kinds:
        *most, last = CONDITION_KEYS
        sec.error("", f"a rule needs one condition: {', '.join(most)} or {last}")
    elif len(kinds) > 1:
        keys = [k for k in CONDITION_KEYS if sec.has(k)]
        sec.error("", f"a rule has one condition, this one has {' and '.join(keys)}: split it into rules")
    return (kinds[0], True) if len(kinds) == 1 else ("thresholds", False)


def _keep_firing_for(sec: Section) -> tuple[int, float]:
    """``keep_firing_for``: a number of points or a duration; (points, seconds)."""
    keep = sec.raw("keep_firing_for")
    if keep is None:
        return 0, 0.0
    if isinstance(keep, int) and not isinstance(keep, bool) and keep >= 0:
        return keep, 0.0
    if isinstance(keep, str) and parse_duration(keep) is not None:
        return 0, parse_duration(keep) or 0.0
    sec.error("keep_firing_for", f"expected a number of points or a duration like 5m, got {keep!r}")
    return 0, 0.0


def _labels(sec: Section) -> dict[str, str]:
    labels = sec.mapping("labels")
    for key in labels:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            sec.error(
                "labels", f"label name {key!r}: expected letters, digits and _ (Prometheus label names)"
            )
    return labels


def _parse_annotations(sec: Section, kind: str) -> dict[str, Template]:
    raw = sec.mapping("annotations")
    lines = sec.section("annotations")
    out: dict[str, Template] = {}
    for key, text in raw.items():
        try:
            out[key] = Template(text)
        except ValueError as e:
            sec.problems.append(Problem(sec.file, lines.line_of(key), sec.sub(f"annotations.{key}"), str(e)))
    if "summary" not in raw:
        out = {"summary": Template(DEFAULT_ANNOTATIONS[kind]), **out}
    return out


def _check_templates(sec: Section, rule: Rule) -> None:
    """Render every annotation for each severity, so a bad format spec fails at load time."""
    lines = sec.section("annotations")
    for rank, _, _ in rule.levels:
        fields = rule.fields("run", "tag", 1, 1.5, rank, rule.new_state())
        for key, template in rule.annotations.items():
            try:
                template.check(fields)
            except ValueError as e:
                sec.problems.append(
                    Problem(sec.file, lines.line_of(key), sec.sub(f"annotations.{key}"), str(e))
                )
                return


__all__ = [
    "DEFAULT_RULES",
    "ConfigError",
    "default_rules_path",
    "duplicate_names",
    "expand_rule_paths",
    "load_rule_file",
    "load_rules",
]
