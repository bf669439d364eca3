"""For training code: a per-step stop-file check and correct gradient norms.

Importing this module costs only the standard library; torch is imported the
first time a gradient helper is called, so a TensorFlow or JAX trainer can use
the stop-file check without torch installed.

Stop-file
---------
``gradwatch watch`` writes a JSON stop-file (by default
``{run_dir}/gradwatch-stop.json``) when an alert at or above the configured
severity fires. Its presence means "stop"; the content says why::

    stop = StopFile(stop_file_path(logdir, run))
    for step in range(steps):
        ...
        reason = stop.check()
        if reason:
            print(reason)
            break

``check()`` costs one ``os.stat`` while nothing changes; the JSON is parsed
only when the file's (inode, mtime, size) changed. A file that is empty or not
valid JSON (a human ran ``touch``) still means "stop", with a reason saying so.

Gradient norms
--------------
:func:`grad_norms` returns, per named group of parameters, the global norm
``sqrt(sum_i ||g_i||^2)``: the norm of all gradients of the group viewed as one
vector, exactly what ``torch.nn.utils.clip_grad_norm_`` returns (and what
``optax.global_norm`` computes in JAX).

Summing per-parameter norms instead, ``sum_i ||g_i||``, overstates it. By the
triangle inequality ``||g|| <= sum_i ||g_i||``, and by Cauchy-Schwarz
``sum_i ||g_i|| <= sqrt(k) * ||g||`` for k parameter tensors, with equality
when all k norms are equal. Two tensors with gradient norms 3 and 4 have a
global norm of 5, not 7; four tensors with norm 3 each have a global norm of 6,
not 12 (2 = sqrt(4) times too high). A CNN of five layers has ten parameter
tensors (weights and biases), so the sum can read up to sqrt(10) = 3.2 times
the real norm, and the ratio changes as the gradient moves between layers,
which makes the sum a poor series to put a threshold on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# The daemon's default stop-file template (its StopFileWriter, gradwatch/daemon/writers.py).
DEFAULT_STOP_FILE = "{run_dir}/gradwatch-stop.json"

# A stop-file is a few kilobytes; anything bigger is not the daemon's and is
# not read in full on a training step.
MAX_STOP_FILE_BYTES = 1 << 20
# Later alerts listed by str(StopReason); all of them stay in StopReason.more.
MAX_MORE_SHOWN = 5

_FLOAT_WORDS = {"nan": math.nan, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def stop_file_path(logdir: str, run: str = ".", template: str = DEFAULT_STOP_FILE) -> str:
    """The stop-file ``gradwatch watch LOGDIR`` writes for ``run``, rendered as the daemon renders it.

    ``template`` is the daemon's ``--stop-file`` / ``stop_file:`` setting, with
    ``{run_dir}`` (logdir/run), ``{run}`` (``run_file_name``: the run with "/" as
    "__", "_root" for the logdir itself) and ``{logdir}``.
    """
    run_dir = os.path.normpath(os.path.join(logdir, run))
    return template.format(run_dir=run_dir, run=run_file_name(run), logdir=logdir)


# What marks an escaped run name: "___" never occurs in a plain one (see run_file_name).
ESCAPED_RUN_PREFIX = "___"
# An escaped name longer than this is hashed: escaping lengthens a name ("%" triples), and a legal
# run of up to 255 bytes would make a stop-file name over NAME_MAX (255) that cannot be written.
# 200 leaves room for what a template adds around {run} (".json" and more).
MAX_ESCAPED_NAME_BYTES = 200
# a plain name up to 250 bytes was always written (with ".json", NAME_MAX is 255): kept as it was
MAX_PLAIN_NAME_BYTES = 250
# What marks a hashed run name: "%H" never occurs in an escaped one, where every "%" is "%25" or "%2F".
HASHED_RUN_PREFIX = ESCAPED_RUN_PREFIX + "%H"


def run_file_name(run: str) -> str:
    """``run`` as one file name, a different one for every run (the ``{run}`` of a stop-file template).

    The plain rule, "/" as "__" and "_root" for the logdir itself, keeps the names
    trainers already use, but alone it maps ``a/b`` and ``a__b`` (and ``a_/b`` and
    ``a/_b``, and ``_root`` and ``.``) to one file, and one run's alert would stop
    another run's trainer. So it is kept only for runs it can be read back from: no
    "__", no "_" next to a "/", not "_root". In such a name every "__" is a "/" and no
    "___" occurs. Every other run is written as "___" followed by the run with "%" as
    "%25" and "/" as "%2F", which reads back unambiguously too. An escaped name longer
    than MAX_ESCAPED_NAME_BYTES, or a plain one longer than MAX_PLAIN_NAME_BYTES (a deep
    run whose parts each fit a file name but whose joined name, with ".json", would not), is
    written as "___%H" and the first 32 hex digits of the SHA-256 of the run's bytes
    instead, which fits any file system.
    """
    if run == ".":
        return "_root"
    if "__" in run or "_/" in run or "/_" in run or run == "_root":
        escaped = ESCAPED_RUN_PREFIX + run.replace("%", "%25").replace("/", "%2F")
        if len(_bytes(escaped)) <= MAX_ESCAPED_NAME_BYTES:
            return escaped
        return _hashed(run)
    plain = run.replace("/", "__")
    return plain if len(_bytes(plain)) <= MAX_PLAIN_NAME_BYTES else _hashed(run)


def _hashed(run: str) -> str:
    return HASHED_RUN_PREFIX + hashlib.sha256(_bytes(run)).hexdigest()[:32]


def _bytes(name: str) -> bytes:
    # as the file system holds it: os.listdir gives undecodable bytes as surrogates
    return name.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class StopReason:
    """Why gradwatch asked this training run to stop (the stop-file's content).

    ``problem`` is set when the file exists but could not be understood (empty,
    not JSON, unreadable); the run should stop all the same.
    """

    path: str
    alert: str = ""
    severity: str = ""
    run: str = ""
    tag: str = ""
    step: int | None = None
    value: float | None = None
    threshold: float | None = None
    time: str = ""
    message: str = ""
    more: tuple[StopReason, ...] = ()
    problem: str | None = None

    @classmethod
    def from_json(cls, path: str, data: Any, depth: int = 0) -> StopReason:
        """Lenient: a wrong or missing field becomes empty, never an exception."""
        if not isinstance(data, dict):
            return cls(path, problem=f"expected a JSON object, found {type(data).__name__}")
        more = data.get("more") if depth == 0 else None
        return cls(
            path=path,
            alert=_text(data.get("alert")),
            severity=_text(data.get("severity")),
            run=_text(data.get("run")),
            tag=_text(data.get("tag")),
            step=_int(data.get("step")),
            value=_number(data.get("value")),
            threshold=_number(data.get("threshold")),
            time=_text(data.get("time")),
            message=_text(data.get("message")),
            more=tuple(cls.from_json(path, m, depth + 1) for m in more if isinstance(m, dict))
            if isinstance(more, list)
            else (),
        )

    def headline(self) -> str:
        """One line: what fired where, without the message."""
        if self.problem is not None:
            return f"stop-file {self.path} exists but {self.problem}; stopping anyway"
        what = " ".join(s for s in (self.severity, "alert" if self.alert else "", self.alert) if s)
        where = []
        if self.tag:
            where.append(self.tag if self.value is None else f"{self.tag} = {_fmt(self.value)}")
        elif self.value is not None:
            where.append(f"value {_fmt(self.value)}")
        if self.step is not None:
            where.append(f"at step {self.step}")
        if self.threshold is not None:
            where.append(f"(threshold {_fmt(self.threshold)})")
        if self.run:
            where.append(f"on run {self.run}")
        line = what or "stop requested"
        if where:
            line += ": " + " ".join(where)
        return line + (f" [{self.time}]" if self.time else "")

    def __str__(self) -> str:
        lines = [f"gradwatch asked this run to stop: {self.headline()}"]
        if self.message:
            lines.extend("  " + m for m in self.message.splitlines())
        if self.more:
            lines.append(f"  {len(self.more)} later alert(s):")
            lines.extend(f"    {m.headline()}" for m in self.more[:MAX_MORE_SHOWN])
            if len(self.more) > MAX_MORE_SHOWN:
                lines.append(f"    ... and {len(self.more) - MAX_MORE_SHOWN} more")
        if self.problem is None:
            lines.append(f"  stop-file: {self.path} (delete it before restarting)")
        return "\n".join(lines)


class StopFile:
    """Cheap repeated check of one stop-file; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], interval: float = 0.0) -> None:
        """``interval`` > 0: stat at most that often (seconds), e.g. on a slow network filesystem."""
        self.path = os.fspath(path)
        self.interval = interval
        self._key: tuple[int, int, int] | None = None
        self._reason: StopReason | None = None
        self._next = 0.0

    def check(self) -> StopReason | None:
        """The reason to stop if the stop-file exists now, else None."""
        if self.interval > 0:
            now = time.monotonic()
            if now < self._next:
                return self._reason
            self._next = now + self.interval
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key = self._reason = None
            return None
        except OSError as e:
            # Exists or not, we cannot tell: keep training rather than stop on
            # a transient error such as a stale NFS handle.
            if isinstance(e, NotADirectoryError):
                self._key = self._reason = None
            return self._reason
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            reason = self._read(st.st_size)
            if reason is None:  # vanished between stat and open
                self._key = self._reason = None
                return None
            self._key, self._reason = key, reason
        return self._reason

    __call__ = check

    def clear(self) -> bool:
        """Delete the stop-file (a stale one from an earlier run); True if there was one."""
        self._key = self._reason = None
        self._next = 0.0
        try:
            os.remove(self.path)
        except FileNotFoundError:
            return False
        except PermissionError as e:
            # e.g. the systemd unit's stop directory is writable by gradwatch only
            raise PermissionError(
                e.errno,
                f"cannot delete the stale stop-file {self.path} ({e.strerror}): the directory is "
                "gradwatch's; delete it as its owner, or give the trainer write access "
                "(docs/deployment.md, 'Clearing a stale stop-file')",
            ) from None
        return True

    def _read(self, size: int) -> StopReason | None:
        if size > MAX_STOP_FILE_BYTES:
            return StopReason(self.path, problem=f"is too large to be gradwatch's ({size} bytes)")
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STOP_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            return StopReason(self.path, problem=f"cannot be read ({e.strerror or e})")
        if not raw.strip():
            return StopReason(self.path, problem="is empty (no reason given)")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return StopReason(self.path, problem="is not UTF-8 text")
        except json.JSONDecodeError as e:
            return StopReason(
                self.path, problem=f"is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
            )
        except RecursionError:
            return StopReason(self.path, problem="is not valid JSON (nested too deeply)")
        return StopReason.from_json(self.path, data)


_stop_files: dict[str, StopFile] = {}


def should_stop(path: str | os.PathLike[str]) -> StopReason | None:
    """``StopFile(path).check()`` with the StopFile kept per path, so calling it every step stays cheap."""
    key = os.fspath(path)
    sf = _stop_files.get(key)
    if sf is None:
        sf = _stop_files[key] = StopFile(key)
    return sf.check()


def _text(v: Any) -> str:
    return v if isinstance(v, str) else "" if v is None else str(v)


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        word = _FLOAT_WORDS.get(v.strip().lower())
        if word is not None:
            return word
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


# --- gradient norms (torch, imported lazily) ---------------------------------


class ScalarWriter(Protocol):
    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


def _parameters(group: Any) -> list[Any]:
    import torch

    if isinstance(group, torch.Tensor):
        return [group]
    if hasattr(group, "parameters") and callable(group.parameters):
        return list(group.parameters())
    if isinstance(group, Iterable):
        return list(group)
    raise TypeError(f"expected a module, a tensor or an iterable of parameters, got {type(group).__name__}")


def _total_norm(grads: list[Any], norm_type: float) -> Any:
    import torch

    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:  # torch >= 2.6: the very function clip_grad_norm_ calls
        return get_total_norm(grads, norm_type, error_if_nonfinite=False)
    return _total_norm_fallback(grads, norm_type)


def _total_norm_fallback(grads: list[Any], norm_type: float) -> Any:
    import torch

    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach(), norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def grad_norms(groups: Mapping[str, Any], norm_type: float = 2.0) -> dict[str, float]:
    """Global gradient norm per named group: ``{name: sqrt(sum_i ||g_i||^2)}`` for ``norm_type`` 2.

    ``groups`` maps a name to a module, a tensor, or an iterable of
    parameters. Parameters without ``.grad`` are skipped (a group with none
    gives 0.0); a NaN or infinite gradient gives NaN or inf, never an error.
    Call it after ``backward()`` and BEFORE clipping: the unclipped norm is the
    one that shows an explosion. See the module docstring for why summing
    per-parameter norms is wrong.
    """
    import torch

    out: dict[str, float] = {}
    with torch.no_grad():
        for name, group in groups.items():
            grads = [p.grad for p in _parameters(group) if p.grad is not None]
            out[name] = float(_total_norm(grads, norm_type)) if grads else 0.0
    return out


def log_grad_norms(
    writer: ScalarWriter,
    groups: Mapping[str, Any],
    step: int,
    prefix: str = "gradients/",
    suffix: str = "_norm",
    norm_type: float = 2.0,
) -> dict[str, float]:
    """:func:`grad_norms`, each written as scalar ``{prefix}{name}{suffix}``; returns the norms.

    ``writer`` is anything with ``add_scalar(tag, value, step)``: torch's or
    tensorboardX's ``SummaryWriter``.
    """
    norms = grad_norms(groups, norm_type)
    for name, value in norms.items():
        writer.add_scalar(f"{prefix}{name}{suffix}", value, step)
    return norms
