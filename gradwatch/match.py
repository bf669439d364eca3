"""Which series a rule watches: run and tag globs or regexes, at a bounded cost.

Run and tag names come from the trainer's files (untrusted): a regex is
compiled by RE2 when installed, patterns whose matching time can explode are
refused whichever engine runs them, and names over :data:`MAX_NAME_BYTES`
never reach a regex (the engine reports them once and skips them).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:  # linear-time matching when the optional extra is installed (pip install 'gradwatch[re2]')
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

try:
    from re import _parser as _sre_parse  # Python >= 3.11
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]


# Run and tag names longer than this (in UTF-8 bytes) are never matched against rules: TensorBoard
# tags are short, and a backtracking regex such as '(?i)grad.*norm' costs O(length^2) on a hostile
# 128 KiB tag (50 s of a frozen daemon). The engine reports such a series once and skips it.
MAX_NAME_BYTES = 1024


def name_too_long(name: str) -> bool:
    """True when ``name`` is over :data:`MAX_NAME_BYTES` (checked cheaply before encoding)."""
    if len(name) > MAX_NAME_BYTES:
        return True
    # surrogatepass: run names carry undecodable bytes as lone surrogates (surrogateescape)
    return len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES


_REPEATS = (_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT, getattr(_sre_parse, "POSSESSIVE_REPEAT", None))


def _children(av: Any) -> list:
    """The sub-patterns held by one parsed regex node's argument (groups, branches, repeats)."""
    items = av if isinstance(av, (tuple, list)) else (av,)
    out = []
    for x in items:
        if isinstance(x, _sre_parse.SubPattern):
            out.append(x)
        elif isinstance(x, list):
            out.extend(y for y in x if isinstance(y, _sre_parse.SubPattern))
    return out


def _has_unbounded_repeat(pattern) -> bool:
    for op, av in pattern:
        if op in _REPEATS and av[1] is _sre_parse.MAXREPEAT:
            return True
        if any(_has_unbounded_repeat(c) for c in _children(av)):
            return True
    return False


def _nested_quantifier(pattern) -> bool:
    """A repeated group holding an unbounded repeat, like ``(a+)+`` or ``(\\w+\\s?)*``: exponential."""
    for op, av in pattern:
        if op in _REPEATS and av[1] != 1 and _has_unbounded_repeat(av[2]):
            return True
        if any(_nested_quantifier(c) for c in _children(av)):
            return True
    return False


class Pattern:
    """A rule regex with bounded cost: compiled by RE2 when installed, Python's ``re`` otherwise.

    Patterns with nested quantifiers are refused (ValueError) whichever engine runs them, so a rule
    file valid on one machine is valid on every machine; names over :data:`MAX_NAME_BYTES` never
    reach ``search`` (the engine skips them).
    """

    def __init__(self, text: str) -> None:
        try:
            compiled = re.compile(text)
        except re.error as e:
            raise ValueError(f"invalid regular expression {text!r}: {e.msg} at position {e.pos}") from None
        if _nested_quantifier(_sre_parse.parse(text)):
            raise ValueError(
                f"regular expression {text!r} repeats a group that holds a repeat (like (a+)+): "
                "its matching time can explode; write it without the nested quantifier"
            )
        self.text = text
        self.engine = "re"
        self._search: Callable[[str], Any] = compiled.search
        self._fallback = compiled.search
        if _re2 is not None:
            options = _re2.Options()
            options.log_errors = False  # a pattern RE2 cannot run is not an error: re runs it
            try:
                self._search = _re2.compile(text, options).search
                self.engine = "re2"
            except _re2.error:  # RE2 lacks backreferences and lookaround: keep re
                pass

    def search(self, name: str) -> bool:
        try:
            return self._search(name) is not None
        except UnicodeEncodeError:  # RE2 takes UTF-8; undecodable bytes (surrogates) go to re
            return self._fallback(name) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.text!r}, engine={self.engine})"


# Most names a Match remembers its verdict for, per half (runs, tags); past this it starts over.
# Names come from the logdir (untrusted): the memory is bounded whatever a trainer writes.
MAX_REMEMBERED_NAMES = 4096


@dataclass
class Match:
    """Which series a rule watches: run and tag globs (whole name) or regexes (searched).

    A series matches when its run matches the run half and its tag the tag half, each half
    independent of the other's name: each half's verdict is remembered per name, so 200 runs
    of the same 5 tags cost 200 + 5 pattern tests, not 1,000 of each (the patterns must not
    change once the rule matches series: a rule file is loaded into new ``Match`` objects).
    """

    runs: list[str] = field(default_factory=lambda: ["*"])
    tags: list[str] = field(default_factory=lambda: ["*"])
    run_regex: Pattern | None = None
    tag_regex: Pattern | None = None
    exclude_tags: list[str] = field(default_factory=list)
    exclude_runs: list[str] = field(default_factory=list)
    _run_verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _tag_verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def matches(self, run: str, tag: str) -> bool:
        return self.matches_run(run) and self.matches_tag(tag)

    def matches_run(self, run: str) -> bool:
        """The run half of :meth:`matches`: the run patterns, then ``exclude_runs``."""
        verdict = self._run_verdicts.get(run)
        if verdict is None:
            verdict = _remember(self._run_verdicts, run, self.run_regex, self.runs, self.exclude_runs)
        return verdict

    def matches_tag(self, tag: str) -> bool:
        """The tag half of :meth:`matches` (a baseline rule's reference runs are chosen by name)."""
        verdict = self._tag_verdicts.get(tag)
        if verdict is None:
            verdict = _remember(self._tag_verdicts, tag, self.tag_regex, self.tags, self.exclude_tags)
        return verdict


def _remember(
    verdicts: dict[str, bool], name: str, regex: Pattern | None, globs: list[str], excludes: list[str]
) -> bool:
    """One half's verdict on ``name`` (its regex, else its globs; then its excludes), remembered."""
    found = regex.search(name) if regex is not None else any(fnmatch.fnmatchcase(name, g) for g in globs)
    verdict = bool(found) and not any(fnmatch.fnmatchcase(name, g) for g in excludes)
    if len(verdicts) >= MAX_REMEMBERED_NAMES:
        verdicts.clear()
    verdicts[name] = verdict
    return verdict
