"""Rule coverage: say when the rules match no series of a run (their ``match:`` points elsewhere).

Said once after the catch-up for the whole logdir, then once per run that appears later, with
the tags that were seen (escaped), so a typo in a rule's match is found on the first day.
"""

from __future__ import annotations

import logging

from gradwatch.engine import Engine
from gradwatch.fmt import escape

log = logging.getLogger("gradwatch")


class RuleCoverage:
    """Which runs were already checked for "no series matches any rule"."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checked: set[str] = set()

    def after_catch_up(self, rules: int, series_watched: int) -> None:
        runs = list(self.engine.runs)
        self._checked.update(runs)
        if series_watched == 0 and (tags := self.unmatched_tags(runs)):
            log.warning(
                "no series matches any rule (%d rules loaded): nothing here can alert; tags seen: %s. "
                "Point the rules' match: at your tag names (docs/rules.md)",
                rules,
                tags,
            )

    def check_new_runs(self) -> None:
        """Warn once about a run that appeared after the catch-up and has no series any rule matches."""
        runs = self.engine.runs
        for run in runs.keys() - self._checked:
            self._checked.add(run)
            if any(s is not None and s.rules for s in runs[run].values()):
                continue
            tags = self.unmatched_tags([run])
            if tags:
                log.warning("run %s: no series matches any rule; tags seen: %s", escape(run), tags)

    def unmatched_tags(self, runs: list[str], most: int = 20) -> str:
        """The tags of ``runs`` that no rule matches, escaped, for a log line ("" if none)."""
        engine_runs = self.engine.runs
        tags = sorted(
            {tag for run in runs for tag, s in engine_runs.get(run, {}).items() if s is None or not s.rules}
        )
        more = f" and {len(tags) - most} more" if len(tags) > most else ""
        return ", ".join(escape(t) for t in tags[:most]) + more
