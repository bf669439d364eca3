"""Rule files: YAML -> :class:`gradwatch.rules.Rule`, with ``file:line`` errors.

The language is described in docs/rules.md. Every problem of every file is
collected and raised together as one :class:`ConfigError`, so one run of
``gradwatch rules check`` shows all of them.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
from importlib import resources

from gradwatch.anomaly import DEFAULTS as ANOMALY_DEFAULTS
from gradwatch.anomaly import DIRECTIONS as ANOMALY_DIRECTIONS
from gradwatch.anomaly import Detector
from gradwatch.baseline import DIRECTIONS as BASELINE_DIRECTIONS
from gradwatch.baseline import Baseline
from gradwatch.rules import DIRECTIONS, RANK, SEVERITIES, Match, Num, Pattern, Rule, Template
from gradwatch.yamlconf import ConfigError, Problem, Section, load_yaml_file, parse_duration

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
    return str(resources.files("gradwatch").joinpath("default_rules", DEFAULT_RULES))


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
        rules = parse_rules(load_yaml_file(path), path, found)
    except ConfigError as e:
        found.extend(e.problems)
        rules = []
    problems.extend(sorted(found, key=lambda p: p.line))  # stable: one line's problems keep their order
    return rules


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


def _levels(
    sec: Section, key: str, what: str, descending: bool = False, factor: bool = False
) -> list[tuple[int, str, float]]:
    """Severity levels of a section; a higher severity must be further from normal."""
    levels: list[tuple[int, str, float]] = []
    for severity in SEVERITIES:
        value = sec.number(severity)
        if value is None:
            continue
        if factor and value <= 1:
            sec.error(severity, f"expected a growth factor above 1, got {value:g}")
            continue
        levels.append((RANK[severity], severity, value))
    if not levels and not any(p.path.startswith(sec.path + ".") for p in sec.problems):
        sec.error("", f"{key} needs at least one of {', '.join(SEVERITIES)} with {what}")
    # each severity must be reached strictly after the one below it, or it can never fire
    for (_, low_sev, low), (_, high_sev, high) in itertools.pairwise(levels):
        if (high >= low) if descending else (high <= low):
            rel = "below" if descending else "above"
            sec.error(
                high_sev,
                f"{high_sev} ({Num(high)}) must be {rel} {low_sev} ({Num(low)}), or {low_sev} can never fire",
            )
    levels.sort(reverse=True)
    return levels


def _severity(sec: Section, key: str, default: str) -> list[tuple[int, str, float]]:
    sev = sec.choice(key, SEVERITIES, default=default) or default
    return [(RANK[sev], sev, 0.0)]


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
    kinds = [kind for key, kind in CONDITION_KEYS.items() if sec.has(key)]
    if not kinds:
        *most, last = CONDITION_KEYS
        sec.error("", f"a rule needs one condition: {', '.join(most)} or {last}")
    elif len(kinds) > 1:
        keys = [k for k in CONDITION_KEYS if sec.has(k)]
        sec.error("", f"a rule has one condition, this one has {' and '.join(keys)}: split it into rules")
    kind = kinds[0] if len(kinds) == 1 else "thresholds"

    match = _parse_match(sec.section("match")) if sec.has("match") else Match()
    direction = "above"
    within = 0
    absent_for = 0.0
    min_value = 0.0
    levels: list[tuple[int, str, float]] = []
    detector: Detector | None = None
    baseline: Baseline | None = None
    if len(kinds) != 1:
        pass  # reported above; parsing a guessed kind would only add noise
    elif kind == "thresholds":
        th = sec.section("thresholds")
        direction = th.choice("direction", DIRECTIONS, default="above") or "above"
        levels = _levels(th, "thresholds", "a value", descending=direction == "below")
        if direction == "absolute":
            for _, sev, level in levels:
                if level < 0:
                    th.error(sev, f"with direction absolute the level is a magnitude, got {Num(level)}")
        th.finish()
    elif kind == "nonfinite":
        levels = _severity(sec, "nonfinite", "critical")
    elif kind == "growth":
        gr = sec.section("growth")
        within = gr.integer("within_steps", required=True, minimum=1) or 0
        min_value = gr.number("min_value", default=0.0)
        levels = _levels(gr, "growth", "a factor such as 10", factor=True)
        gr.finish()
    elif kind == "anomaly":
        levels, detector = _parse_anomaly(sec.section("anomaly"))
    elif kind == "baseline":
        levels, baseline = _parse_baseline(sec.section("baseline"))
    else:
        absent_for = sec.duration("absent_for", required=True)
        if absent_for is not None and absent_for <= 0:
            sec.error("absent_for", "expected a duration above zero")
        absent_for = absent_for or 0.0
    if kind == "absent":
        levels = _severity(sec, "severity", "warning")
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
    keep = sec.raw("keep_firing_for")
    keep_points, keep_seconds = 0, 0.0
    if keep is not None:
        if isinstance(keep, int) and not isinstance(keep, bool) and keep >= 0:
            keep_points = keep
        elif isinstance(keep, str) and parse_duration(keep) is not None:
            keep_seconds = parse_duration(keep) or 0.0
        else:
            sec.error("keep_firing_for", f"expected a number of points or a duration like 5m, got {keep!r}")
    repeat = sec.duration("repeat_interval")
    if repeat is not None and repeat <= 0:
        sec.error("repeat_interval", "expected a duration above zero")
    stop = sec.choice("stop", (*SEVERITIES, "never"), default=None)
    labels = sec.mapping("labels")
    for key in labels:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            sec.error(
                "labels", f"label name {key!r}: expected letters, digits and _ (Prometheus label names)"
            )
    description = sec.string("description", default="")
    annotations = _parse_annotations(sec, kind)
    sec.finish()
    if len(sec.problems) > before or name is None:
        return None
    rule = Rule(
        name=name,
        kind=kind,
        match=match,
        levels=levels,
        below=direction == "below",
        absolute=direction == "absolute",
        for_points=for_points,
        within_steps=within,
        min_value=min_value,
        absent_for=absent_for,
        keep_firing_for_points=keep_points,
        keep_firing_for_seconds=keep_seconds,
        repeat_interval=repeat,
        stop=stop,
        labels=labels,
        annotations=annotations,
        description=description,
        source=f"{sec.file}:{sec.line}",
        detector=detector,
        baseline=baseline,
    )
    _check_templates(sec, rule)
    return rule if len(sec.problems) == before else None


def _parse_anomaly(sec: Section) -> tuple[list[tuple[int, str, float]], Detector | None]:
    """``anomaly:`` -- every key optional (``anomaly: {}`` is the defaults); levels in standard deviations."""
    before = len(sec.problems)
    window = sec.integer("window", default=ANOMALY_DEFAULTS["window"], minimum=2)
    min_points = sec.integer("min_points", minimum=2)
    direction = sec.choice("direction", ANOMALY_DIRECTIONS, default=ANOMALY_DEFAULTS["direction"])
    log = sec.boolean("log", default=False)
    robust = sec.boolean("robust", default=False)
    if any(sec.has(severity) for severity in SEVERITIES):
        levels = _levels(sec, "anomaly", "a number of standard deviations")
        for _, severity, sigmas in levels:
            if sigmas <= 0:
                sec.error(severity, f"expected a number of standard deviations above 0, got {Num(sigmas)}")
    else:
        levels = [(RANK[sev], sev, float(ANOMALY_DEFAULTS[sev])) for sev in ("critical", "warning")]
    if min_points is not None and window is not None and min_points > window:
        sec.error("min_points", f"min_points ({min_points}) cannot be above window ({window})")
    sec.finish()
    if len(sec.problems) > before or window is None:
        return levels, None
    return levels, Detector(levels, window, min_points, direction, bool(log), bool(robust))


def _parse_baseline(sec: Section) -> tuple[list[tuple[int, str, float]], Baseline | None]:
    """``baseline:`` -- ``run`` (one name) or ``runs`` (globs, the median), ``factor`` or levels."""
    before = len(sec.problems)
    run = sec.string("run")
    runs = sec.strings("runs")
    if (run is None) == (runs is None) and len(sec.problems) == before:
        sec.error("", "name the reference: either run (one run) or runs (globs: the median of those runs)")
    references = [glob.escape(run)] if run is not None else runs or []
    tolerance = sec.integer("tolerance")
    direction = sec.choice("direction", BASELINE_DIRECTIONS, default="above")
    if sec.has("factor"):
        if any(sec.has(severity) for severity in SEVERITIES):
            sec.error("factor", "use either factor (with severity) or factors per severity, not both")
            sec.allow(*SEVERITIES)
        factor = sec.number("factor", required=True)
        severity = sec.choice("severity", SEVERITIES, default="warning") or "warning"
        levels = [(RANK[severity], severity, factor)] if factor is not None else []
        if factor is not None and factor <= 1:
            sec.error("factor", f"expected a factor above 1, got {Num(factor)}")
    else:
        sec.allow("severity")
        if sec.has("severity"):
            sec.error("severity", "severity goes with factor; with per-severity factors it is their key")
        levels = _levels(sec, "baseline", "a factor such as 10 (or factor: 10)", factor=True)
    sec.finish()
    if len(sec.problems) > before or not levels:
        return levels, None
    return levels, Baseline(levels, references, tolerance, direction)


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
