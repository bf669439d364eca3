"""The JSON documents of the state DB: series (rule states) and alert states.

Every document is validated when it is read (``check_series_doc``,
``check_alert_doc``): a row that cannot be understood raises ``BadRow`` and
the store logs it once and deletes it. NaN/Inf are stored as
``fmt.stored_number`` spells them.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from gradwatch.alerts import alert_key
from gradwatch.anomaly import AnomalyState
from gradwatch.fmt import STORED_NONFINITE, stored_number
from gradwatch.rules import Rule, RuleState, Series


def _unnum(v: Any) -> float:
    return float(v)


class BadRow(ValueError):
    """A stored row this code cannot use; the message says what is wrong with it."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise BadRow(what)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A number as ``stored_number`` writes it: int, float, or the repr of NaN/±Inf."""
    return is_int(v) or isinstance(v, float) or v in STORED_NONFINITE


def _check_fields(d: Any, spec: dict[str, Callable[[Any], bool]], what: str) -> None:
    expect(isinstance(d, dict), f"{what} is not a JSON object")
    for key, ok in spec.items():
        if key in d and not ok(d[key]):
            raise BadRow(f"{what}: {key} = {d[key]!r:.60} is not valid")


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(is_int(x) for x in v)


def _window(v: Any) -> bool:
    """A list of [step, value] pairs; checked with map and set, a window holds up to 1,024 points."""
    if not isinstance(v, list):
        return False
    if not v:
        return True
    if set(map(type, v)) != {list} or set(map(len, v)) != {2}:
        return False
    steps, values = zip(*v)
    if set(map(type, steps)) != {int}:
        return False
    kinds = set(map(type, values))
    return kinds <= {int, float, str} and (
        str not in kinds or set(x for x in values if type(x) is str) <= STORED_NONFINITE
    )


RULE_STATE_FIELDS = {
    "streaks": _int_list,
    "window": _optional(_window),
    "last_wall": _optional(_is_number),
    "last_step": _optional(is_int),
    "raw": is_int,
    "ratio": _is_number,
}
SERIES_FIELDS = {
    "step": is_int,
    "wall_time": _is_number,
    "value": _is_number,
    "rules": lambda v: isinstance(v, dict),
}
SAVED_RULE_FIELDS = {"rank": is_int, "sig": lambda v: isinstance(v, str)}
ALERT_FIELDS = {
    "rule": lambda v: isinstance(v, str),
    "run": lambda v: isinstance(v, str),
    "tag": lambda v: isinstance(v, str),
    "state": lambda v: v in ("pending", "firing"),
    "rank": is_int,
    "starts_at": _is_number,
    "last_notified": _is_number,
    "seq": is_int,
    "clear_points": is_int,
    "clear_since": _optional(_is_number),
    "step": is_int,
    "value": _is_number,
    "wall_time": _is_number,
    "ratio": _is_number,
}


def check_series_doc(d: Any) -> None:
    """Raise BadRow unless ``d`` is a series document ``dump_series`` could have written."""
    _check_fields(d, SERIES_FIELDS, "series state")
    for name, got in d.get("rules", {}).items():
        _check_fields(got, SAVED_RULE_FIELDS, f"rule {name!r}")
        expect("rank" in got and "state" in got, f"rule {name!r} lacks rank or state")
        _check_fields(got["state"], RULE_STATE_FIELDS, f"rule {name!r} state")


def check_alert_doc(key: str, d: Any) -> None:
    """Raise BadRow unless ``d`` is an alert state stored under ``key``."""
    _check_fields(d, ALERT_FIELDS, "alert state")
    expect(all(k in d for k in ("rule", "run", "tag")), "alert state lacks rule, run or tag")
    expect(alert_key(d["rule"], d["run"], d["tag"]) == key, "alert state does not match its key")


def dump_rule_state(state: RuleState) -> dict[str, Any]:
    return {
        "streaks": state.streaks,
        "window": [[s, stored_number(v)] for s, v in state.window] if state.window is not None else None,
        "last_wall": state.last_wall,
        "last_step": state.last_step,
        "raw": state.raw,
        "ratio": stored_number(state.ratio),
        # anomaly rules: the window of recent points (gradwatch/anomaly.py)
        "anomaly": state.extra.dump() if isinstance(state.extra, AnomalyState) else None,
    }


# The most growth-window points a saved state brings back: rules.py's bound on a live window
# (MAX_GROWTH_WINDOW). Before that bound a series rising at one step saved 1M points (14.9 MB);
# such a state, from an older gradwatch, must not come back whole.
MAX_LOADED_WINDOW = 1024


def load_rule_state(state: RuleState, d: dict[str, Any]) -> None:
    if len(d.get("streaks", [])) == len(state.streaks):
        state.streaks = list(d["streaks"])
    if d.get("window") is not None and state.window is not None:
        # the newest points: the window rises in step and value, and the oldest go first
        state.window = deque((int(s), _unnum(v)) for s, v in d["window"][-MAX_LOADED_WINDOW:])
    state.last_wall = d.get("last_wall")
    state.last_step = d.get("last_step")
    state.raw = int(d.get("raw", 0))
    state.ratio = _unnum(d.get("ratio", 0.0))


_signatures: dict[int, tuple[Rule, str]] = {}


def rule_signature(rule: Rule) -> str:
    """What a rule's evaluation state depends on; a state saved under another signature is stale."""
    cached = _signatures.get(id(rule))
    if cached is not None and cached[0] is rule:
        return cached[1]
    sig = repr(
        (
            rule.kind,
            rule.levels,
            rule.below,
            rule.absolute,
            rule.for_points,
            rule.within_steps,
            rule.absent_for,
            rule.min_value,
            # anomaly and baseline settings; other kinds keep the signature they had
            *(x.signature() for x in (rule.detector, rule.baseline) if x is not None),
        )
    )
    _signatures[id(rule)] = (rule, sig)
    return sig


def dump_series(s: Series) -> str:
    return json.dumps(
        {
            "step": s.step,
            "wall_time": s.wall_time,
            "value": stored_number(s.value),
            # a baseline's reference series: its points, which a restart does not read again
            "history": s.history.dump() if s.history is not None else None,
            "rules": {
                r.name: {"rank": s.ranks[i], "sig": rule_signature(r), "state": dump_rule_state(s.states[i])}
                for i, r in enumerate(s.rules)
            },
        }
    )


def restore_series(s: Series, text: str) -> None:
    """Put a persisted series state back; rules that changed since start fresh.

    Raises BadRow (a ValueError) for a document ``dump_series`` cannot have written.
    """
    d = json.loads(text)
    check_series_doc(d)
    s.step = d.get("step", 0)
    s.wall_time = d.get("wall_time", 0.0)
    s.value = _unnum(d.get("value", "nan"))
    saved = d.get("rules", {})
    for i, r in enumerate(s.rules):
        got = saved.get(r.name)
        if got is None or got.get("sig", rule_signature(r)) != rule_signature(r):
            continue
        s.ranks[i] = int(got["rank"])
        load_rule_state(s.states[i], got["state"])
        if r.detector is not None and isinstance(got["state"].get("anomaly"), dict):
            s.states[i].extra = r.detector.load(got["state"]["anomaly"])
    if s.history is not None and isinstance(d.get("history"), dict):
        s.history.restore(d["history"])


def parse_alert_row(key: tuple[str, ...], text: str) -> dict[str, Any]:
    d = json.loads(text)
    check_alert_doc(key[0], d)
    return d


def parse_series_row(key: tuple[str, ...], text: str) -> str:
    """The text, once it parses as a series document (kept as text, not as a dict of lists per point)."""
    check_series_doc(json.loads(text))
    return text


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()
