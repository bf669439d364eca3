"""Which runs of a shared logdir one of N daemons (or one-shot commands) owns.

A run belongs to shard ``hash(run name) mod N``, where the hash is SHA-1 of
the run's name as bytes (``os.fsencode``: the name on disk, whatever its
encoding). It depends on nothing but the name and N, so every replica agrees
without talking to the others, and a run never moves while N is unchanged;
changing N moves about ``1 - 1/N`` of the runs, as any modulo scheme does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def shard_of(run: str, count: int) -> int:
    """The shard (0 .. count-1) that owns ``run``."""
    import hashlib  # here: OpenSSL's 3 MiB are paid only when sharding is used

    digest = hashlib.sha1(os.fsencode(run), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``index`` from 0, like a StatefulSet's pod ordinal)."""

    index: int
    count: int

    def owns(self, run: str) -> bool:
        return shard_of(run, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N); ValueError saying what is wrong otherwise."""
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        sep = ""
    if not sep:
        raise ValueError(f"{text!r} is not I/N (e.g. 0/3: the first of three shards)")
    if shard.count < 1 or not 0 <= shard.index < shard.count:
        raise ValueError(f"{text!r}: the index must be 0 to N-1 and N at least 1")
    return shard
