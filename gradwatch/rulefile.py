"""Rule files: YAML -> :class:`gradwatch.rules.Rule`, with ``file:line`` errors."""

from __future__ import annotations

import glob
import os
import re
from importlib import resources

from gradwatch.rules import KINDS, RANK, SEVERITIES, Match, Num, Rule, Template
from gradwatch.yamlconf import ConfigError, Problem, Section, load_yaml_file, parse_duration

DEFAULT_RULES = "gradient_explosion.yaml"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")

DEFAULT_ANNOTATIONS = {
    "thresholds": "{tag} = {value} at step {step} on run {run}: {severity}, {direction} {threshold}",
    "nonfinite": "{tag} = {value} at step {step} on run {run}: not a finite number",
    "growth": "{tag} = {value} at step {step} on run {run}: grew x{ratio} within {within} steps",
    "absent": "{tag} on run {run} has not logged for {threshold} s (last step {step})",
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
        elif any(c in p for c in "*?["):
            found = sorted(glob.glob(p))
            if not found and problems is not None:
                problems.append(Problem(p, 0, "", "pattern matches no files"))
            out.extend(found)
        else:
            out.append(p)
    return out


def load_rules(paths: list[str] | None = None) -> list[Rule]:
    """Rules from files/dirs/globs, or the packaged defaults; raises ConfigError."""
    problems: list[Problem] = []
    files = expand_rule_paths(paths, problems) if paths else [default_rules_path()]
    rules: list[Rule] = []
    for path in files:
        try:
            rules.extend(parse_rules(load_yaml_file(path), path, problems))
        except ConfigError as e:
            problems.extend(e.problems)
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.name in seen:
            file, _, line = rule.source.rpartition(":")
            problems.append(
                Problem(
                    file, int(line or 0), "", f"rule name '{rule.name}' already used at {seen[rule.name]}"
                )
            )
        else:
            seen[rule.name] = rule.source
    if problems:
        raise ConfigError(problems)
    return rules


def parse_rules(data, file: str, problems: list[Problem]) -> list[Rule]:
    top = Section(data, file, "", problems, line=1)
    if data is None:
        top.error("", "the file is empty; expected a mapping with a 'rules' list")
        return []
    rules = [r for s in top.sections("rules", required=True) if (r := _parse_rule(s)) is not None]
    top.finish()
    return rules


def _levels(sec: Section, key: str, what: str, positive: bool = False) -> list[tuple[int, str, float]]:
    levels: list[tuple[int, str, float]] = []
    for severity in SEVERITIES:
        value = sec.number(severity)
        if value is None:
            continue
        if positive and value <= 1:
            sec.error(severity, f"expected a growth factor above 1, got {value:g}")
            continue
        levels.append((RANK[severity], severity, value))
    if not levels and not any(p.path.startswith(sec.path + ".") for p in sec.problems):
        sec.error("", f"{key} needs at least one of {', '.join(SEVERITIES)} with {what}")
    levels.sort(reverse=True)
    return levels


def _severity(sec: Section, key: str, default: str) -> list[tuple[int, str, float]]:
    sev = sec.choice(key, SEVERITIES, default=default)
    return [(RANK[sev], sev, 0.0)]


def _compile(sec: Section, key: str) -> re.Pattern | None:
    text = sec.string(key)
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        sec.error(key, f"invalid regular expression {text!r}: {e.msg} at position {e.pos}")
        return None


def _parse_match(sec: Section) -> Match:
    m = Match(
        runs=sec.strings("runs", ["*"]),
        tags=sec.strings("tags", ["*"]),
        run_regex=_compile(sec, "run_regex"),
        tag_regex=_compile(sec, "tag_regex"),
        exclude_tags=sec.strings("exclude_tags", []),
    )
    if sec.has("tags") and sec.has("tag_regex"):
        sec.error("tag_regex", "use either tags (globs) or tag_regex, not both")
    sec.finish()
    return m


def _parse_rule(sec: Section) -> Rule | None:
    before = len(sec.problems)
    name = sec.string("name", required=True)
    if name is not None and not _NAME.match(name):
        sec.error("name", f"expected a name of letters, digits and _.:- starting with a letter, got {name!r}")
    kinds = [k for k in KINDS if sec.has(k) or (k == "absent" and sec.has("absent_for"))]
    if not kinds:
        sec.error("", "a rule needs one condition: thresholds, nonfinite, growth or absent_for")
    elif len(kinds) > 1:
        sec.error("", f"a rule has one condition, this one has {' and '.join(kinds)}: split it into rules")
    kind = kinds[0] if len(kinds) == 1 else "thresholds"

    match = _parse_match(sec.section("match")) if sec.has("match") else Match()
    below = False
    within = 0
    absent_for = 0.0
    levels: list[tuple[int, str, float]] = []
    if kind == "thresholds":
        th = sec.section("thresholds")
        below = th.choice("direction", ("above", "below"), default="above") == "below"
        levels = _levels(th, "thresholds", "a value")
        th.finish()
    elif kind == "nonfinite":
        levels = _severity(sec, "nonfinite", "critical")
    elif kind == "growth":
        gr = sec.section("growth")
        within = gr.integer("within_steps", required=True, minimum=1) or 0
        levels = _levels(gr, "growth", "a factor such as 10", positive=True)
        gr.finish()
    else:
        absent_for = sec.duration("absent_for", required=True) or 0.0
        levels = _severity(sec, "severity", "warning")

    for_points = sec.integer("for", default=1, minimum=1)
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
    stop = sec.choice("stop", (*SEVERITIES, "never"), default=None)
    labels = sec.mapping("labels")
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
        below=below,
        for_points=for_points,
        within_steps=within,
        absent_for=absent_for,
        keep_firing_for_points=keep_points,
        keep_firing_for_seconds=keep_seconds,
        repeat_interval=repeat,
        stop=None if stop == "never" else stop,
        labels=labels,
        annotations=annotations,
        description=description,
        source=f"{sec.file}:{sec.line}",
    )
    _check_templates(sec, rule)
    return rule if len(sec.problems) == before else None


def _parse_annotations(sec: Section, kind: str) -> dict[str, Template]:
    raw = sec.mapping("annotations")
    out: dict[str, Template] = {}
    for key, text in raw.items():
        try:
            out[key] = Template(text)
        except ValueError as e:
            sec.problems.append(
                Problem(
                    sec.file, sec.section("annotations").line_of(key), sec.sub(f"annotations.{key}"), str(e)
                )
            )
    if "summary" not in out:
        text = DEFAULT_ANNOTATIONS[kind]
        out = {"summary": Template(text), **out}
    return out


def _check_templates(sec: Section, rule: Rule) -> None:
    """Render every annotation once, so a bad format spec fails at load time."""
    rank = rule.levels[0][0]
    fields = rule.fields("run", "tag", 1, 1.5, rank, rule.new_state())
    for key, template in rule.annotations.items():
        rendered = template.render(fields)
        if "(template error:" in rendered:
            line = sec.section("annotations").line_of(key)
            sec.problems.append(
                Problem(
                    sec.file, line, sec.sub(f"annotations.{key}"), rendered.split("(template error:")[1][:-1]
                )
            )


__all__ = ["DEFAULT_RULES", "ConfigError", "Num", "default_rules_path", "load_rules"]
