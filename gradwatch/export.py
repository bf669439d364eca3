"""``gradwatch export``: every scalar point of a logdir as JSON lines or CSV.

Fields: run, tag, step, wall_time, value, one point per line, runs in name
order and each run's points in file order. JSON has no NaN/Inf, so JSON lines
carry them as the strings "NaN", "Infinity" and "-Infinity" (``float()``
reads all three); CSV writes NaN, inf and -inf, which both ``float()`` and
pandas.read_csv read as numbers. docs/commands.md has the pandas recipes.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
from typing import TextIO

from gradwatch.events.logdir import ProblemLog, read_logdir
from gradwatch.events.shard import Shard

# Run names are bytes on Linux and may not be UTF-8 (a directory named b"run-\xff"); Python holds the
# undecodable bytes as lone surrogates (surrogateescape). Neither output may crash on them or lose them.


def _has_surrogate(name: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in name)


def _raw_bytes(name: str) -> bytes:
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make
        return name.encode("utf-8", "surrogatepass")


def csv_name(name: str) -> str:
    """A name for CSV: ``\\`` doubled and each byte that is not UTF-8 as ``\\xNN``.

    Lossless: ``codecs.escape_decode(field.encode())[0]`` gives back the name's bytes.
    """
    if "\\" not in name and not _has_surrogate(name):
        return name
    return _raw_bytes(name).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def json_name(name: str) -> str:
    """A name as a JSON string; bytes that are not UTF-8 as ``\\udcNN`` escapes (Python's surrogateescape).

    Lossless: ``os.fsencode(json.loads(line)["run"])`` gives back the name's bytes.
    """
    return json.dumps(name, ensure_ascii=_has_surrogate(name))


FIELDS = ("run", "tag", "step", "wall_time", "value")
_JSON_NONFINITE = {math.inf: '"Infinity"', -math.inf: '"-Infinity"'}


def _json_value(v: float) -> str:
    if v != v:
        return '"NaN"'
    return _JSON_NONFINITE.get(v) or repr(v)


def _selected(name: str, globs: list[str] | None) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def export(
    logdir: str,
    out: TextIO,
    fmt: str = "jsonl",
    runs: list[str] | None = None,
    tags: list[str] | None = None,
    problems: ProblemLog | None = None,
    shard: Shard | None = None,
) -> int:
    """Write the points; returns how many were written."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
    # JSON-encoded run and tag names, once per series rather than per point
    encoded: dict[str, str] = {}
    wanted: dict[tuple[str, str], bool] = {}
    for run, tag, step, wall_time, value in read_logdir(logdir, problems, shard):
        key = (run, tag)
        ok = wanted.get(key)
        if ok is None:
            ok = wanted[key] = _selected(run, runs) and _selected(tag, tags)
        if not ok:
            continue
        n += 1
        if fmt == "csv":
            r = encoded.get(run) or encoded.setdefault(run, csv_name(run))
            t = encoded.get(tag) or encoded.setdefault(tag, csv_name(tag))
            writer.writerow((r, t, step, csv_value(wall_time), csv_value(value)))
            continue
        r = encoded.get(run) or encoded.setdefault(run, json_name(run))
        t = encoded.get(tag) or encoded.setdefault(tag, json_name(tag))
        out.write(
            f'{{"run": {r}, "tag": {t}, "step": {step}, "wall_time": {_json_value(wall_time)}, '
            f'"value": {_json_value(value)}}}\n'
        )
    return n


def csv_value(v: float) -> str:
    """A float for CSV: repr (exact round trip), or NaN, inf, -inf."""
    # pandas.read_csv parses these three spellings as NaN / ±inf
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "inf" if v > 0 else "-inf"
    return repr(v)
