"""The spellings the one-shot outputs share: run and tag names and numbers in CSV and JSON lines.

Run names are bytes on Linux and may not be UTF-8 (a directory named b"run-\\xff"); Python holds
the undecodable bytes as lone surrogates (surrogateescape). No output may crash on them or lose them.
"""

from __future__ import annotations

import json
import math


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


def csv_value(v: float) -> str:
    """A float for CSV: repr (exact round trip), or NaN, inf, -inf."""
    # pandas.read_csv parses these three spellings as NaN / ±inf
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "inf" if v > 0 else "-inf"
    return repr(v)


_JSON_NONFINITE = {math.inf: '"Infinity"', -math.inf: '"-Infinity"'}


def json_value(v: float) -> str:
    """A float as JSON text, spelled as ``fmt.json_number`` spells it ("NaN", "Infinity"); written
    out directly because export runs it twice per point, where ``json.dumps`` would cost more."""
    if v != v:
        return '"NaN"'
    return _JSON_NONFINITE.get(v) or repr(v)
