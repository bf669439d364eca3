"""What the per-point (``gradwatch.rules``) and batch (``gradwatch.rules.batch``) evaluations
share: the evaluation modes and the growth window's bound. A module of its own so the batch
path does not import the rule model it serves (that would be an import cycle)."""

# evaluation modes, decided once per rule so ``evaluate`` branches on an int
ABOVE, BELOW, ABSOLUTE, NONFINITE, GROWTH, ABSENT, ANOMALY, BASELINE = range(8)

# Most points a growth rule remembers per series. The window normally holds only the rising points
# within ``within_steps``; a series that keeps rising at one step, or over a huge window, would grow
# it without end (1M points at a constant step saved 14.9 MB of state). Past this the oldest go.
MAX_GROWTH_WINDOW = 1024
