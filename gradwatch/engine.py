"""Points -> rule decisions.

The engine finds (once per series) the rules that match it and evaluates
them on every point. It calls the sink only when a rule's severity is or was
non-zero, so a healthy series costs two dict lookups per point and one call
per matching rule.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from gradwatch.baseline import References
from gradwatch.events.logdir import ProblemLog
from gradwatch.fmt import shown_name
from gradwatch.match import MAX_NAME_BYTES, name_too_long
from gradwatch.rules import Rule, Series, series_rules

NAME_TOO_LONG = "name_too_long"

# sink(series, rule index, rank, previous rank, step, wall_time, value)
Sink = Callable[[Series, int, int, int, int, float, float], None]


class Engine:
    """``export_tags`` (globs) makes series tracked (for metrics) without a rule."""

    def __init__(
        self,
        rules: list[Rule],
        sink: Sink,
        export_tags: list[str] | None = None,
        on_new_series: Callable[[Series], None] | None = None,
        problems: Callable[[str, str, int, str], None] | None = None,
    ) -> None:
        self.rules = rules
        self.sink = sink
        self.export_tags = export_tags or []
        # called once per new series (the daemon restores persisted rule states)
        self.on_new_series = on_new_series
        # run -> tag -> Series, or None when no rule matches the series
        self.runs: dict[str, dict[str, Series | None]] = {}
        # where a skipped series is reported (a ProblemLog: counted, logged once)
        self.problems = problems or ProblemLog()
        # the points of baseline rules' reference series, bounded per series (kept across reloads)
        self.references = References()

    def series(self, run: str, tag: str) -> Series | None:
        tags = self.runs.setdefault(run, {})
        if tag not in tags:
            if self._too_long(run, tag):
                tags[tag] = None
                return None
            matched = series_rules(self.rules, run, tag)
            reference = self.is_reference(run, tag)
            tracked = matched or reference or any(fnmatch.fnmatchcase(tag, g) for g in self.export_tags)
            s = tags[tag] = Series(run, tag, matched) if tracked else None
            if s is not None:
                self._bind_baselines(s, reference)
            if s is not None and self.on_new_series is not None:
                self.on_new_series(s)
        return tags[tag]

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    @rules.setter
    def rules(self, rules: list[Rule]) -> None:
        # the daemon's reload assigns new rules: the baseline rules among them go with them
        self._rules = rules
        self._baselines = [r for r in rules if r.baseline is not None]

    def is_reference(self, run: str, tag: str) -> bool:
        """Whether some baseline rule compares other runs with this series."""
        return any(r.baseline.is_reference(run) and r.match.matches_tag(tag) for r in self._baselines)  # type: ignore[union-attr]

    def is_reference_run(self, run: str) -> bool:
        """Whether some baseline rule compares other runs with this run (any tag)."""
        return any(r.baseline.is_reference(run) for r in self._baselines)  # type: ignore[union-attr]

    @property
    def has_baselines(self) -> bool:
        return bool(self._baselines)

    def _bind_baselines(self, s: Series, reference: bool) -> None:
        if reference:
            s.history = self.references.history(s.run, s.tag)
        for rule, state in zip(s.rules, s.states):
            if rule.baseline is not None:
                state.extra.bind(self.references, s.run, s.tag)  # type: ignore[union-attr]

    def _too_long(self, run: str, tag: str) -> bool:
        """Names over MAX_NAME_BYTES never reach a rule's regex: reported once (the series is cached)."""
        where = f"run {shown_name(run)}"
        if not name_too_long(run):
            if not name_too_long(tag):
                return False
            where += f", tag {shown_name(tag)}"
        limit = f"over {MAX_NAME_BYTES:,} bytes, longer than any TensorBoard name; not matched against rules"
        self.problems(NAME_TOO_LONG, where, -1, limit)
        return True

    def observe(self, run: str, tag: str, step: int, wall_time: float, value: float) -> None:
        tags = self.runs.get(run)
        s = tags.get(tag, False) if tags is not None else False
        if s is False:
            s = self.series(run, tag)
        if s is None:
            return
        s.step = step
        s.wall_time = wall_time
        s.value = value
        history = s.history
        if history is not None:
            history.add(step, value)
        ranks = s.ranks
        states = s.states
        for i, rule in enumerate(s.rules):
            rank = rule.evaluate(states[i], step, wall_time, value)
            previous = ranks[i]
            # raw: the condition holds but ``for`` is not met yet (pending). The sink keeps
            # ranks[i] non-zero while its alert fires or is pending, so the point that clears
            # it (or breaks the streak) reaches the sink too.
            if rank or previous or states[i].raw:
                ranks[i] = rank
                self.sink(s, i, rank, previous, step, wall_time, value)

    def forget_run(self, run: str) -> None:
        self.runs.pop(run, None)
        self.references.forget_run(run)

    def all_series(self):
        # copies: the metrics thread iterates while the daemon thread adds series
        for tags in list(self.runs.values()):
            for s in list(tags.values()):
                if s is not None:
                    yield s
