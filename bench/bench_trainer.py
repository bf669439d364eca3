"""Per-call cost of gradwatch.trainer's checks, to show they fit in every training step.

    python bench/bench_trainer.py [--number N] [--repeat R]

Prints the median over R repeats of N calls, per call, for: the stop-file
check with no stop-file, with an unchanged stop-file (the cached answer), and
with a stop-file that changed since the last call (stat + open + JSON parse);
``should_stop(path)`` (the same with a dict lookup); the bare ``os.stat`` for
reference; and, with torch, ``grad_norms`` on a small and a larger model next
to ``clip_grad_norm_``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gradwatch.trainer import StopFile, grad_norms, should_stop

MORE = {
    "alert": "gradient_explosion",
    "severity": "critical",
    "run": "td3",
    "tag": "gradients/critic_cnn_norm",
    "value": 61234.0,
    "threshold": 50000.0,
}
REASON = {
    "alert": "gradient_explosion",
    "severity": "critical",
    "run": "td3",
    "tag": "gradients/actor_cnn_norm",
    "step": 200,
    "value": 130486.0,
    "threshold": 50000.0,
    "time": "2025-11-26T10:00:00.000Z",
    "message": "gradients/actor_cnn_norm = 130486 at step 200 on run td3 (critical: above 50000) "
    "Stop training, enable gradient clipping (torch.nn.utils.clip_grad_norm_ or "
    "optax.clip_by_global_norm), lower the learning rate, and check the scale of rewards.",
    "more": [dict(MORE, step=300 + i) for i in range(3)],
}


def per_call(fn, number: int, repeat: int) -> float:
    """Median seconds per call."""
    return statistics.median(t / number for t in timeit.repeat(fn, number=number, repeat=repeat))


def row(name: str, seconds: float) -> None:
    print(f"| {name} | {seconds * 1e6:,.2f} µs |")


def bench_stop_file(number: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gradwatch-stop.json")
        sf = StopFile(path)
        row("StopFile.check(), no stop-file", per_call(sf.check, number, repeat))
        row("should_stop(path), no stop-file", per_call(lambda: should_stop(path), number, repeat))
        with open(path, "w") as f:
            json.dump(REASON, f)
        size = os.path.getsize(path)
        assert sf.check() is not None
        row("StopFile.check(), stop-file present, unchanged", per_call(sf.check, number, repeat))
        row(
            "should_stop(path), stop-file present, unchanged",
            per_call(lambda: should_stop(path), number, repeat),
        )

        def changed():
            sf._key = None  # as if the file had just been replaced
            return sf.check()

        # guard against timing the cached path if StopFile's internals are renamed
        parses = []
        real_read = sf._read
        sf._read = lambda size: parses.append(size) or real_read(size)
        changed()
        assert parses == [size], "forgetting _key no longer makes check() parse the file again"
        sf._read = real_read

        row(
            f"StopFile.check(), stop-file changed ({size} bytes parsed)",
            per_call(changed, number // 10, repeat),
        )
        row("os.stat(path) alone, for reference", per_call(lambda: os.stat(path), number, repeat))


def bench_grad_norms(number: int, repeat: int) -> None:
    try:
        import torch
    except ImportError:
        print("(torch not installed: grad_norms not measured)")
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nn = torch.nn

    def model(layers: int, width: int):
        m = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        m(torch.randn(8, width)).sum().backward()
        return m

    for layers, width in ((4, 32), (8, 512)):
        m = model(layers, width)
        n = sum(p.numel() for p in m.parameters())
        label = f"{layers} linear layers, {2 * layers} tensors, {n:,} parameters"
        row(
            f"grad_norms, one group, {label}",
            per_call(lambda m=m: grad_norms({"m": m}), number // 100, repeat),
        )
        row(
            f"clip_grad_norm_(max_norm=inf), {label}",
            per_call(
                lambda m=m: nn.utils.clip_grad_norm_(m.parameters(), float("inf")), number // 100, repeat
            ),
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=100_000, help="calls per repeat (default 100000)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"Python {sys.version.split()[0]}, median of {args.repeat} repeats, per call\n")
    print("| what | per call |\n| --- | --- |")
    bench_stop_file(args.number, args.repeat)
    bench_grad_norms(args.number, args.repeat)


if __name__ == "__main__":
    main()
