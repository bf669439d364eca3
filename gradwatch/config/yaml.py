"""YAML loading that remembers lines, and typed access that reports them.

Rules and the daemon config are both read through :class:`Section`, so every
problem is reported as ``file:line: path.to.key: what is wrong``, unknown keys
are errors (a typo must not silently disable an alert), and all problems of a
file are reported together instead of one per edit-run cycle.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


def close_matches(word: str, possibilities, n: int, cutoff: float) -> list[str]:
    """difflib's suggestions, imported only when there is something to suggest (start-up)."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=n, cutoff=cutoff)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a YAML file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Map(dict):
    line: int
    key_lines: dict[str, int]


class _Seq(list):
    line: int
    item_lines: list[int]


# Rule and config files need about 6 levels; PyYAML composes recursively, so a file nested
# thousands of levels deep would end in RecursionError (a traceback, or a dead daemon on SIGHUP).
MAX_NESTING = 64


@functools.cache
def _loader():
    """PyYAML's line-numbering loader, made on first use: importing PyYAML is ~15 ms that a
    command reading no YAML (``export``; ``check`` with the packaged rules) need not pay."""
    import yaml

    class _TooDeep(yaml.YAMLError):
        def __init__(self, mark) -> None:
            super().__init__()
            self.problem_mark = mark
            self.problem = f"nesting too deep (more than {MAX_NESTING} levels of mappings and lists)"

    class _LineLoader(yaml.SafeLoader):
        """SafeLoader whose mappings and sequences know their lines (1-based), nested at most
        MAX_NESTING deep."""

        _depth = 0

        def compose_node(self, parent, index):  # type: ignore[override]
            self._depth += 1
            try:
                if self._depth > MAX_NESTING:
                    raise _TooDeep(self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            # Duplicate keys are a classic silent override: refuse them.
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark
                    )
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = key_node.start_mark.line + 1
            out = _Map(super().construct_mapping(node, deep=True))
            out.line = node.start_mark.line + 1
            out.key_lines = {
                str(self.construct_object(k, deep=True)): k.start_mark.line + 1 for k, _ in node.value
            }
            return out

        def construct_sequence(self, node, deep=False):  # type: ignore[override]
            out = _Seq(super().construct_sequence(node, deep=True))
            out.line = node.start_mark.line + 1
            out.item_lines = [n.start_mark.line + 1 for n in node.value]
            return out

    _LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
    _LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_sequence)
    return yaml, _LineLoader, _TooDeep


def load_yaml_text(text: str, file: str) -> Any:
    yaml, line_loader, too_deep = _loader()
    try:
        return yaml.load(text, Loader=line_loader)
    except too_deep as e:
        raise ConfigError([Problem(file, e.problem_mark.line + 1, "", e.problem)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        what = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        if "'\\t'" in what:  # PyYAML: "found character '\\t' that cannot start any token"
            what, context = "tabs are not allowed for indentation; use spaces", None
        msg = f"invalid YAML: {context + ': ' if context else ''}{what}"
        raise ConfigError([Problem(file, line, "", msg)]) from None


def load_yaml_file(path: str) -> Any:
    return load_yaml_text(read_yaml_file(path), path)


def read_yaml_file(path: str) -> str:
    """The text of a YAML file; ConfigError when it cannot be read or is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, 0, "", "not a UTF-8 text file")]) from None
    except OSError as e:
        raise ConfigError([Problem(path, 0, "", f"cannot read: {_why_unreadable(path, e)}")]) from None


def _why_unreadable(path: str, e: OSError) -> str:
    """The OS error, or "dangling symlink to TARGET" (``ls`` shows the link, so "no such file" misleads)."""
    if isinstance(e, FileNotFoundError) and os.path.islink(path):
        return f"dangling symlink to {os.readlink(path)}"
    return e.strerror or str(e)


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float | None:
    """Seconds from ``30``, ``"30s"``, ``"10m"``, ``"1h30m"``, ``"500ms"``; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 and math.isfinite(value) else None
    if not isinstance(value, str) or not value:
        return None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(value):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(value) else None


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


class Section:
    """A mapping in a YAML file, read key by key with types and line numbers.

    Every getter records a problem instead of raising, returns a usable
    default, and marks the key as known; ``finish()`` reports unknown keys.
    """

    def __init__(self, data: Any, file: str, path: str, problems: list[Problem], line: int = 0) -> None:
        self.file = file
        self.path = path
        self.problems = problems
        self.line = getattr(data, "line", line)
        if data is None:
            data = {}
        # False when the YAML held something else than a mapping (already reported)
        self.valid = isinstance(data, dict)
        if not self.valid:
            self.error("", f"expected a mapping, got {describe(data)}")
            data = {}
        self.data: dict = data
        self._used: set[str] = set()

    # -- reporting -----------------------------------------------------------
    def line_of(self, key: str) -> int:
        lines = getattr(self.data, "key_lines", {})
        return lines.get(key, self.line)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str, line: int | None = None) -> None:
        path = self.sub(key) if key else self.path
        self.problems.append(
            Problem(self.file, line or (self.line_of(key) if key else self.line), path, message)
        )

    # -- access --------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.data

    def allow(self, *keys: str) -> None:
        """Mark keys as known without reading them (read elsewhere, or exclusive alternatives)."""
        self._used.update(keys)

    def raw(self, key: str, default: Any = None) -> Any:
        self._used.add(key)
        return self.data.get(key, default)

    def get(
        self,
        key: str,
        convert: Callable[[Any], Any],
        expected: str,
        default: Any = None,
        required: bool = False,
        hint: str = "",
    ) -> Any:
        self._used.add(key)
        if key not in self.data:
            if required:
                self.error("", f"missing required key '{key}'")
            return default
        value = self.data[key]
        try:
            out = convert(value)
        except (TypeError, ValueError):
            out = None
        if out is None:
            self.error(key, f"expected {expected}, got {describe(value)}{hint}")
            return default
        return out

    def number(self, key: str, default: Any = None, required: bool = False) -> float | None:
        return self.get(key, to_number, "a number", default, required)

    def integer(self, key: str, default: Any = None, minimum: int = 0, required: bool = False) -> int | None:
        return self.get(
            key,
            lambda v: v if isinstance(v, int) and not isinstance(v, bool) and v >= minimum else None,
            f"a whole number >= {minimum}",
            default,
            required,
        )

    def string(self, key: str, default: Any = None, required: bool = False) -> str | None:
        return self.get(
            key, lambda v: v if isinstance(v, str) and v else None, "a non-empty string", default, required
        )

    def boolean(self, key: str, default: Any = None) -> bool | None:
        return self.get(key, lambda v: v if isinstance(v, bool) else None, "true or false", default)

    def duration(self, key: str, default: Any = None, required: bool = False) -> float | None:
        return self.get(key, parse_duration, "a duration like 30s, 10m or 1h", default, required)

    def strings(self, key: str, default: Any = None) -> list[str] | None:
        def conv(v: Any) -> list[str] | None:
            if isinstance(v, str) and v:
                return [v]
            if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
                return list(v)
            return None

        return self.get(key, conv, "a string or a list of strings", default)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = None, required: bool = False) -> Any:
        value = self.data.get(key)
        # a suggestion only for a wrong value (difflib is imported on first use)
        wrong = isinstance(value, str) and value not in choices
        close = close_matches(value, choices, n=1, cutoff=0.6) if wrong else []
        return self.get(
            key,
            lambda v: v if v in choices else None,
            "one of " + ", ".join(choices),
            default,
            required,
            hint=f" (did you mean '{close[0]}'?)" if close else "",
        )

    def section(self, key: str) -> Section:
        self._used.add(key)
        return Section(self.data.get(key), self.file, self.sub(key), self.problems, self.line_of(key))

    def sections(self, key: str, required: bool = False) -> Iterator[Section]:
        """Each mapping of a list under ``key``, as a Section named ``key[i]``."""
        self._used.add(key)
        items = self.data.get(key)
        if items is None:
            if required:
                self.error("", f"missing required key '{key}'")
            return
        if not isinstance(items, list):
            self.error(key, f"expected a list, got {describe(items)}")
            return
        lines = getattr(items, "item_lines", [])
        for i, item in enumerate(items):
            line = lines[i] if i < len(lines) else self.line_of(key)
            yield Section(item, self.file, f"{self.sub(key)}[{i}]", self.problems, line)

    def mapping(self, key: str) -> dict[str, str]:
        """A flat mapping of strings to strings (labels, headers)."""
        self._used.add(key)
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            self.error(key, f"expected a mapping of names to strings, got {describe(value)}")
            return {}
        return {k: str(v) for k, v in value.items()}

    def finish(self) -> None:
        for key in self.data:
            if key not in self._used:
                close = close_matches(str(key), self._used, n=1, cutoff=0.7)
                hint = f"did you mean '{close[0]}'? " if close else ""
                known = ", ".join(sorted(self._used)) or "none"
                self.error(str(key), f"unknown key ({hint}known keys here: {known})")


def to_number(value: Any) -> float | None:
    """A finite number; numeric strings such as ``1e4`` (YAML 1.1 reads them as text) too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            out = float(value.replace("_", ""))
        except ValueError:
            return None
        return out if math.isfinite(out) else None
    return None
