"""columns._as_integers and _equal: a template's head or tail compared as a few integers
(or, in small groups, as void items) finds exactly the positions where its bytes are,
whatever its width and wherever a byte differs (the bulk decoder's template match; the
readers' property tests cover the widths real writers make, this covers every width up to
a few words)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gradwatch.events import columns
from gradwatch.events.columns import _as_integers, _equal


@pytest.mark.parametrize("integers_from", [0, 1 << 30], ids=["integers", "void items"])
def test_bytes_compared_as_integers_match_exactly_where_they_are_equal(integers_from, monkeypatch):
    monkeypatch.setattr(columns, "_INTEGERS_FROM", integers_from)
    rng = random.Random(5)
    for width in range(1, 41):
        expected = bytes(rng.randrange(256) for _ in range(width))
        pieces, at, equal = [], [], []
        pos = 0
        # the bytes unchanged, and with each one of them changed in turn
        for changed in [None, *range(width)]:
            data = bytearray(expected)
            if changed is not None:
                data[changed] ^= 1 << rng.randrange(8)
            gap = bytes(rng.randrange(256) for _ in range(rng.randrange(4)))
            pieces += [gap, bytes(data)]
            at.append(pos + len(gap))
            equal.append(changed is None)
            pos += len(gap) + width
        buf = b"".join(pieces)
        got = _equal(_as_integers(buf, np.array(at, np.int64), width), expected)
        assert got.tolist() == equal, width
