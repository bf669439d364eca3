"""SIGHUP: load the new configuration and rules, or keep the running ones.

Any error while loading is reported and changes nothing; settings that only a
restart can change are kept, with a warning. A rule that did not change keeps
its series' state (streaks, windows) across the reload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

from gradwatch.config import Config, load_config
from gradwatch.config.rulefiles import load_rules
from gradwatch.config.yaml import ConfigError
from gradwatch.daemon.unit_of_work import UnitOfWork
from gradwatch.engine import Engine
from gradwatch.events.logdir import LogdirError
from gradwatch.rules import Rule, Series
from gradwatch.store import rule_signature

log = logging.getLogger("gradwatch")


def load(current: Config, loader: Callable[[], Config] | None) -> tuple[Config, list[Rule]] | None:
    """The new configuration and its rules, or None (logged) when they cannot be loaded."""
    log.info("reloading the configuration")
    loading = current.source or "the command line"
    try:
        config = _load_config(current, loader)
        loading = ", ".join(config.rules or ["the packaged default rules"])
        return config, load_rules(config.rules)
    except (ConfigError, LogdirError) as e:
        log.error("reload failed, keeping the running configuration:\n%s", e)
    except Exception as e:
        # an OSError, a RecursionError from a deeply nested YAML, a bug: SIGHUP must never kill us
        log.error("reload failed, keeping the running configuration: %s: %s", loading, reason(e))
        log.debug("reload failure", exc_info=True)
    return None


def _load_config(current: Config, loader: Callable[[], Config] | None) -> Config:
    if loader is not None:
        return loader()
    if current.source:
        config = load_config(current.source)
        config.logdir = config.logdir or current.logdir
        return config
    return dataclasses.replace(current)  # a copy: build_notifiers makes fresh channels from it


def keep_fixed_settings(old: Config, new: Config) -> None:
    """Settings only a restart changes keep their running value in ``new`` (a warning says so)."""
    fixed = {
        "logdir": (os.path.abspath(old.logdir or ""), os.path.abspath(new.logdir or old.logdir or "")),
        "state_dir": (old.resolved_state_dir(), new.resolved_state_dir()),
        "listen": (old.listen, new.listen),
        "log_format": (old.log_format, new.log_format),
        # runs never move between replicas at runtime: a new shard is a new state directory
        "shard": (old.shard, new.shard),
        "endpoint_url": (old.endpoint_url, new.endpoint_url),  # the remote logdir's client is built once
    }
    for name, (before, after) in fixed.items():
        if before != after:
            log.warning("%s changed to %r: takes effect after a restart", name, after)
        setattr(new, name, getattr(old, name))


def rematch(engine: Engine, rules: list[Rule], uow: UnitOfWork) -> None:
    """Series match the new rules; a rule that did not change keeps its state (streaks, windows).

    Every series is created again (the engine's ``on_new_series`` sees each one); every run is
    marked dirty, so the new states are saved."""
    old_runs = engine.runs
    engine.rules = rules
    engine.runs = {}
    for run, tags in old_runs.items():
        for tag, old in tags.items():
            s = engine.series(run, tag)
            if s is not None and old is not None:
                _carry_over(old, s)
        uow.touch_run(run)


def _carry_over(old: Series, s: Series) -> None:
    s.step, s.wall_time, s.value = old.step, old.wall_time, old.value
    before = {r.name: j for j, r in enumerate(old.rules)}
    for i, rule in enumerate(s.rules):
        j = before.get(rule.name)
        if j is not None and rule_signature(old.rules[j]) == rule_signature(rule):
            s.states[i] = old.states[j]
            s.ranks[i] = old.ranks[j]


def reason(e: BaseException) -> str:
    """One line for a log: what failed and why, without a traceback."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}"
