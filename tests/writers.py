"""Real TensorBoard writers for tests, and TensorBoard's own reader as the reference.

Test files import this module directly (``from writers import write_scalars``):
tests/ is not a package, pytest puts it on ``sys.path``.

* ``write_scalars(kind, logdir, points)`` writes with a real writer and returns the file;
  ``open_writer(kind, logdir)`` keeps one open for tests that append while a reader runs.
* ``event(...)`` / ``write_events(path, payloads)`` build Events with tensorboard's compiled
  protos, for what no writer produces (other dtypes, several values, odd fields).
* ``reference_series(logdir)`` is what TensorBoard's ``EventMultiplexer`` (every point
  kept) reads; ``gradwatch_series(logdir)`` is what gradwatch reads, in the same shape;
  ``assert_same_series`` compares them point by point, NaN equal to NaN.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable

from conftest import require_module
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

from gradwatch.events.framing import frame
from gradwatch.events.logdir import ProblemLog, read_logdir

# tensorboardX and torch write simple_value; "torch_tensor" is torch's
# add_scalar(new_style=True) (DT_FLOAT tensor), "torch_double" adds
# double_precision=True (DT_DOUBLE); "tensorboard" is tensorboard.summary.Writer.
WRITERS = ("tensorboardX", "torch", "torch_tensor", "torch_double", "tensorboard")

Series = dict[tuple[str, str], list[tuple[int, float, float]]]


class RealWriter:
    """One open writer of ``kind`` in ``logdir``; ``path`` is its event file."""

    def __init__(self, kind: str, logdir: str, filename_suffix: str = "") -> None:
        if kind not in WRITERS:
            raise ValueError(f"unknown writer {kind!r}; one of {WRITERS}")
        self.kind = kind
        os.makedirs(logdir, exist_ok=True)
        before = set(os.listdir(logdir))
        if kind == "tensorboardX":
            from tensorboardX import SummaryWriter

            self._w = SummaryWriter(logdir, filename_suffix=filename_suffix, flush_secs=3600)
        elif kind.startswith("torch"):
            require_module("torch")  # an optional extra: skips without it, fails in CI
            from torch.utils.tensorboard import SummaryWriter

            self._w = SummaryWriter(logdir, filename_suffix=filename_suffix, flush_secs=3600)
        else:
            from tensorboard.summary import Writer
            from tensorboard.summary._output import DirectoryOutput
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            class Output(DirectoryOutput):
                def __init__(self, path: str) -> None:  # DirectoryOutput's, with a suffix
                    self._ev_writer = EventFileWriter(path, filename_suffix=filename_suffix)

            self._w = Writer(Output(logdir))
        self.flush()
        new = sorted(set(os.listdir(logdir)) - before)
        if len(new) != 1:
            raise RuntimeError(f"expected one new event file in {logdir}, found {new}")
        self.path = os.path.join(logdir, new[0])

    def add(self, tag: str, step: int, value: float, wall_time: float | None = None) -> None:
        if self.kind == "tensorboard":
            self._w.add_scalar(tag, value, step, wall_time=wall_time)
        elif self.kind == "tensorboardX":
            self._w.add_scalar(tag, value, step, walltime=wall_time)
        else:
            self._w.add_scalar(
                tag,
                value,
                step,
                walltime=wall_time,
                new_style=self.kind != "torch",
                double_precision=self.kind == "torch_double",
            )

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def open_writer(kind: str, logdir: str, filename_suffix: str = "") -> RealWriter:
    return RealWriter(kind, logdir, filename_suffix)


def write_scalars(kind: str, logdir: str, points: Iterable[tuple], filename_suffix: str = "") -> str:
    """Write ``(tag, step, value[, wall_time])`` points with a real writer; the event file's path."""
    w = open_writer(kind, logdir, filename_suffix)
    for p in points:
        w.add(*p)
    w.close()
    return w.path


def stored_tag(kind: str, tag: str) -> str:
    """``tag`` as the writer of ``kind`` stores it (tensorboardX replaces some characters)."""
    if kind == "tensorboardX":
        from tensorboardX.summary import _clean_tag

        return _clean_tag(tag)
    return tag


def stored_value(kind: str, value: float) -> float:
    """``value`` as the writer of ``kind`` stores it (float32 except torch's double form)."""
    if kind == "torch_double":
        return float(value)
    return struct.unpack("<f", struct.pack("<f", value))[0]


# ---------------------------------------------------------------- hand-built events


def tensor(dtype: int = types_pb2.DT_FLOAT, shape: tuple[int, ...] = (), **fields) -> tensor_pb2.TensorProto:
    """A TensorProto; ``fields`` are TensorProto fields (float_val=[1.0], tensor_content=b"...")."""
    t = tensor_pb2.TensorProto(dtype=dtype, **fields)
    t.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in shape]))
    return t


def metadata(plugin: str = "scalars", content: bytes = b"") -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content)
    )


def event(
    values: Iterable[summary_pb2.Summary.Value] = (),
    step: int | None = None,
    wall_time: float | None = None,
    **fields,
) -> bytes:
    """A serialized Event; step / wall_time left out when None (as proto3 leaves out zeros)."""
    ev = event_pb2.Event(**fields)
    if step is not None:
        ev.step = step
    if wall_time is not None:
        ev.wall_time = wall_time
    values = list(values)
    if values:
        ev.summary.value.extend(values)
    return ev.SerializeToString()


def simple(tag: str, value: float) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def tensor_value(tag: str, t: tensor_pb2.TensorProto, meta: summary_pb2.SummaryMetadata | None = None):
    v = summary_pb2.Summary.Value(tag=tag, tensor=t)
    if meta is not None:
        v.metadata.CopyFrom(meta)
    return v


def file_version(wall_time: float = 1.0) -> bytes:
    return event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString()


def write_events(path: str, payloads: Iterable[bytes], mode: str = "wb") -> str:
    """Frame each payload as a TFRecord into ``path`` (its directory is created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, mode) as f:
        for p in payloads:
            f.write(frame(p))
    return path


# ---------------------------------------------------------------- reading both ways


def reference_series(logdir: str) -> Series:
    """Every scalar point TensorBoard's EventMultiplexer finds (keep-all size guidance).

    ``simple_value`` points come from ``Scalars``; tensor points from ``Tensors`` of
    tags whose first metadata names the scalars plugin (or none), 0-d only, as
    TensorBoard's scalars plugin reads them; those it cannot convert without
    TensorFlow (bfloat16, uint32, uint64) are left out. EventAccumulator keeps the
    two forms apart, so a tag written in both has its simple_value points first.
    """
    import logging

    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.backend.event_processing import event_multiplexer
    from tensorboard.util import tensor_util

    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    mux = event_multiplexer.EventMultiplexer(
        size_guidance={ea.SCALARS: 0, ea.TENSORS: 0}, purge_orphaned_data=False
    )
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    out: Series = {}
    for run, tags in mux.Runs().items():
        for tag in tags[ea.SCALARS]:
            out[run, tag] = [(e.step, e.wall_time, e.value) for e in mux.Scalars(run, tag)]
        for tag in tags[ea.TENSORS]:
            try:
                plugin = mux.SummaryMetadata(run, tag).plugin_data.plugin_name
            except KeyError:
                plugin = ""  # a tag that never had metadata
            if plugin not in ("", "scalars"):
                continue
            points = []
            for e in mux.Tensors(run, tag):
                try:
                    array = tensor_util.make_ndarray(e.tensor_proto)
                except (TypeError, ValueError):
                    continue  # bfloat16, uint32, uint64 need TensorFlow; no value at all
                if array.ndim == 0 and array.dtype.kind in "fiub":
                    points.append((e.step, e.wall_time, float(array.item())))
            if points:
                out.setdefault((run, tag), []).extend(points)
    return out


def gradwatch_series(logdir: str, problems: ProblemLog | None = None) -> Series:
    out: Series = {}
    for run, tag, step, wall_time, value in read_logdir(logdir, problems):
        out.setdefault((run, tag), []).append((step, wall_time, value))
    return out


def same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_same_series(got: Series, want: Series) -> None:
    """Same series, and in each the same points in the same order (NaN equals NaN)."""
    assert sorted(got) == sorted(want), f"series differ: got {sorted(got)}, want {sorted(want)}"
    for key, points in want.items():
        mine = got[key]
        assert len(mine) == len(points), f"{key}: {len(mine)} points, want {len(points)}"
        for i, ((s1, w1, v1), (s2, w2, v2)) in enumerate(zip(mine, points)):
            assert s1 == s2 and same_float(w1, w2) and same_float(v1, v2), (
                f"{key} point {i}: got (step {s1}, wall_time {w1!r}, value {v1!r}), "
                f"want (step {s2}, wall_time {w2!r}, value {v2!r})"
            )
