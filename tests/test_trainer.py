"""gradwatch.trainer: the per-step stop-file check and correct gradient norms."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

import pytest
from conftest import require_module

from gradwatch import trainer
from gradwatch.events.logdir import read_logdir
from gradwatch.trainer import StopFile, StopReason, grad_norms, log_grad_norms, should_stop, stop_file_path

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
    "Stop training, enable gradient clipping.",
    "more": [],
}


def write_atomically(path: str, data: bytes) -> None:
    """As the daemon does: temp file in the same directory, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_reason(path: str, doc: dict) -> None:
    write_atomically(path, json.dumps(doc).encode())


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "gradwatch-stop.json")


class CountingStopFile(StopFile):
    """Counts how often the file is actually opened and parsed."""

    reads = 0

    def _read(self, size):
        self.reads += 1
        return super()._read(size)


# --- stop-file ---------------------------------------------------------------


def test_absent_means_keep_training(path):
    sf = StopFile(path)
    assert sf.check() is None
    assert sf() is None
    assert should_stop(path) is None


def test_missing_directory_means_keep_training(tmp_path):
    assert StopFile(str(tmp_path / "no" / "such" / "dir" / "stop.json")).check() is None
    # a path component that is a file, not a directory
    (tmp_path / "file").write_text("x")
    assert StopFile(str(tmp_path / "file" / "stop.json")).check() is None


def test_appears_with_the_daemons_reason(path):
    sf = StopFile(path)
    assert sf.check() is None
    write_reason(path, REASON)
    r = sf.check()
    assert isinstance(r, StopReason)
    assert (r.alert, r.severity, r.run, r.tag) == ("gradient_explosion", "critical", "td3", REASON["tag"])
    assert (r.step, r.value, r.threshold) == (200, 130486.0, 50000.0)
    assert r.time == REASON["time"] and r.message == REASON["message"] and r.more == ()
    assert r.problem is None and r.path == path
    text = str(r)
    for part in ("critical alert gradient_explosion", "gradients/actor_cnn_norm = 130486", "at step 200",
                 "(threshold 50000)", "on run td3", REASON["message"], path):  # fmt: skip
        assert part in text
    assert should_stop(path) == r


def test_reads_what_the_daemons_writer_writes(tmp_path):
    """Contract with gradwatch.daemon.writers.StopFileWriter, the daemon's side."""
    from gradwatch.alerts import AlertEvent
    from gradwatch.daemon.writers import StopFileWriter

    def event(rule, tag, step, value, severity="critical"):
        return AlertEvent(
            rule=rule, run="td3", tag=tag, kind="firing", severity=severity, previous=None, step=step,
            value=value, wall_time=1.0, threshold=50000.0 if value == value else None, starts_at=1.0,
            ends_at=None, annotations={"summary": f"{tag} = {value}", "recommendation": "Stop."},
        )  # fmt: skip

    writer = StopFileWriter(str(tmp_path))
    written = writer.handle(event("gradient_explosion", "gradients/actor_cnn_norm", 200, 130486.0), None)
    assert written == stop_file_path(str(tmp_path), "td3")
    sf = StopFile(written)
    first = sf.check()
    assert first is not None and first.problem is None
    assert (first.alert, first.tag, first.step, first.value) == (
        "gradient_explosion", "gradients/actor_cnn_norm", 200, 130486.0,
    )  # fmt: skip
    assert "Stop." in first.message
    writer.handle(event("gradient_nonfinite", "gradients/critic_cnn_norm", 300, math.nan), None)
    second = sf.check()
    assert second.alert == "gradient_explosion", "the first reason is kept"
    assert [m.alert for m in second.more] == ["gradient_nonfinite"]
    assert math.isnan(second.more[0].value)
    assert "critical alert gradient_nonfinite: gradients/critic_cnn_norm = NaN at step 300" in str(second)


def test_parses_only_when_the_file_changed(path):
    sf = CountingStopFile(path)
    for _ in range(100):
        assert sf.check() is None
    assert sf.reads == 0
    write_reason(path, REASON)
    first = [sf.check() for _ in range(100)]
    assert sf.reads == 1 and all(r is first[0] for r in first)

    write_reason(path, dict(REASON, more=[dict(REASON, alert="gradient_nonfinite", value="NaN")]))
    r = sf.check()
    assert sf.reads == 2
    assert r.alert == "gradient_explosion" and [m.alert for m in r.more] == ["gradient_nonfinite"]
    assert math.isnan(r.more[0].value)
    assert "1 later alert(s)" in str(r) and "gradients/actor_cnn_norm = NaN" in str(r)


def test_a_replacement_with_same_size_and_mtime_is_seen(path):
    """Coarse-timestamp filesystems: os.replace gives a new inode even when size and mtime match."""
    sf = StopFile(path)
    write_reason(path, dict(REASON, step=100))
    st = os.stat(path)
    assert sf.check().step == 100
    write_reason(path, dict(REASON, step=900))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert sf.check().step == 900


def test_deleted_again_means_keep_training(path):
    sf = StopFile(path)
    write_reason(path, REASON)
    assert sf.check() is not None
    os.remove(path)
    assert sf.check() is None
    assert should_stop(path) is None
    write_reason(path, dict(REASON, step=5))
    assert sf.check().step == 5, "a new stop-file after the deletion is read afresh"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (
            b'{"alert": "gradient_expl',
            "is not valid JSON (line 1 column 11: Unterminated string starting at)",
        ),
        (b"stop please", "is not valid JSON (line 1 column 1: Expecting value)"),
        (b"[1, 2]", "expected a JSON object, found list"),
        (b'"stop"', "expected a JSON object, found str"),
        (b"\xff\xfe\x00garbage", "is not UTF-8 text"),
        (b"[" * 100_000, "is not valid JSON"),
    ],
)
def test_empty_or_garbage_still_means_stop(path, content, problem):
    with open(path, "wb") as f:
        f.write(content)
    r = StopFile(path).check()
    assert r is not None, "a file that exists means stop, whatever is in it"
    assert r.problem is not None and problem in r.problem
    assert str(r).startswith(f"gradwatch asked this run to stop: stop-file {path} exists but ")
    assert str(r).endswith("stopping anyway")


def test_a_touched_file_then_a_real_reason(path):
    sf = StopFile(path)
    open(path, "w").close()  # `touch`
    assert "is empty" in sf.check().problem
    write_reason(path, REASON)
    r = sf.check()
    assert r.problem is None and r.alert == "gradient_explosion"


def test_a_directory_or_a_huge_file_means_stop(tmp_path):
    d = tmp_path / "stop.json"
    d.mkdir()
    r = StopFile(str(d)).check()
    assert r is not None and "cannot be read" in r.problem
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (trainer.MAX_STOP_FILE_BYTES + 1))
    r = StopFile(str(big)).check()
    assert r is not None and "too large" in r.problem


def test_wrong_field_types_are_tolerated(path):
    write_reason(
        path,
        {"alert": 7, "severity": None, "step": "two hundred", "value": "Infinity", "threshold": True,
         "more": [{"alert": "x", "value": "-Infinity", "step": 3.0}, "not an object", None]},
    )  # fmt: skip
    r = StopFile(path).check()
    assert r.problem is None
    assert (r.alert, r.severity, r.step, r.value, r.threshold) == ("7", "", None, math.inf, None)
    assert [(m.alert, m.value, m.step) for m in r.more] == [("x", -math.inf, 3)]
    assert r.headline() == "alert 7: value Infinity"
    write_reason(path, {"more": "nope", "value": [1], "step": 1.5})
    r = StopFile(path).check()
    assert (r.more, r.value, r.step) == ((), None, None)
    assert str(r).startswith("gradwatch asked this run to stop: stop requested")


def test_bare_nonfinite_json_numbers(path):
    with open(path, "w") as f:
        f.write('{"alert": "a", "value": NaN, "threshold": -Infinity}')
    r = StopFile(path).check()
    assert math.isnan(r.value) and r.threshold == -math.inf


def test_long_more_list_is_shortened_when_printed(path):
    more = [dict(REASON, step=300 + i, more=None) for i in range(20)]
    write_reason(path, dict(REASON, more=more))
    r = StopFile(path).check()
    assert len(r.more) == 20
    text = str(r)
    assert "20 later alert(s)" in text and "... and 15 more" in text
    assert "at step 304" in text and "at step 305" not in text


def test_interval_limits_how_often_the_file_is_looked_at(path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(trainer.time, "monotonic", lambda: clock[0])
    sf = StopFile(path, interval=10.0)
    assert sf.check() is None
    write_reason(path, REASON)
    assert sf.check() is None, "within the interval the last answer stands"
    clock[0] += 10.0
    assert sf.check().alert == "gradient_explosion"
    os.remove(path)
    assert sf.check() is not None
    clock[0] += 10.0
    assert sf.check() is None


def test_clear_removes_a_stale_stop_file(path):
    sf = StopFile(path)
    assert sf.clear() is False
    write_reason(path, REASON)
    assert sf.check() is not None
    assert sf.clear() is True
    assert not os.path.exists(path) and sf.check() is None


def test_should_stop_keeps_one_checker_per_path(path, monkeypatch):
    monkeypatch.setattr(trainer, "_stop_files", {})
    should_stop(path)
    should_stop(path)
    assert list(trainer._stop_files) == [path]


@pytest.mark.parametrize(
    "template", ["{run_dir}/gradwatch-stop.json", "/stop/{run}.json", "{logdir}/stop-{run}"]
)
@pytest.mark.parametrize("run", ["td3", "sweep/lr-0.01", "."])
def test_stop_file_path_renders_as_the_daemon_does(tmp_path, template, run):
    from gradwatch.daemon.writers import stop_path

    logdir = str(tmp_path / "logs")
    assert stop_file_path(logdir, run, template) == stop_path(template, logdir, run)


def test_default_stop_file_path(tmp_path):
    assert stop_file_path("/logs", "td3") == "/logs/td3/gradwatch-stop.json"
    assert stop_file_path("/logs") == "/logs/gradwatch-stop.json"
    from gradwatch.daemon.writers import DEFAULT_STOP_FILE

    assert trainer.DEFAULT_STOP_FILE == DEFAULT_STOP_FILE


def test_import_needs_only_the_standard_library():
    code = (
        "import sys, json; before = set(sys.modules); import gradwatch.trainer; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    new = json.loads(out)
    foreign = [
        m for m in new if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "gradwatch"
    ]
    assert "gradwatch.trainer" in new
    assert foreign == [], f"gradwatch.trainer imported non-stdlib modules: {foreign}"


def test_stop_check_works_without_torch(tmp_path):
    path = str(tmp_path / "stop.json")
    write_reason(path, REASON)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from gradwatch.trainer import should_stop\n"
        f"print(should_stop({path!r}).alert)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "gradient_explosion"


# --- gradient norms ----------------------------------------------------------

try:
    import torch

    nn = torch.nn
except ImportError:  # a test dependency; without it the stop-file tests above still run
    torch = nn = None


@pytest.fixture
def needs_torch() -> None:
    require_module("torch")  # an optional extra: skips without it, fails in CI


def two_part_model(seed: int = 0):
    torch.manual_seed(seed)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    mlp = nn.Sequential(nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 2))
    model = nn.Sequential(cnn, mlp)
    model(torch.randn(5, 3, 8, 8)).pow(2).sum().backward()
    return cnn, mlp


@pytest.mark.usefixtures("needs_torch")
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_grad_norms_equal_what_clip_grad_norm_returns(norm_type):
    cnn, mlp = two_part_model()
    norms = grad_norms({"cnn": cnn, "mlp": mlp, "all": [*cnn.parameters(), *mlp.parameters()]}, norm_type)
    for name, params in (("cnn", cnn.parameters()), ("mlp", mlp.parameters())):
        clipped = nn.utils.clip_grad_norm_(params, max_norm=1e30, norm_type=norm_type)
        assert norms[name] == float(clipped)
    everything = nn.utils.clip_grad_norm_([*cnn.parameters(), *mlp.parameters()], 1e30, norm_type)
    assert norms["all"] == float(everything)
    assert norms["cnn"] > 0 and norms["mlp"] > 0


@pytest.mark.usefixtures("needs_torch")
def test_global_norm_is_not_the_sum_of_parameter_norms():
    """The docstring's example: gradients with norms 3 and 4 have a global norm of 5, not 7."""
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.0, 4.0])
    assert grad_norms({"g": [a, b]}) == {"g": 5.0}
    four = [torch.zeros(4, requires_grad=True) for _ in range(4)]
    for p in four:
        p.grad = torch.full((4,), 1.5)  # each of norm 3
    assert grad_norms({"g": four}) == {"g": 6.0}  # the sum would say 12 = sqrt(4) * 6


@pytest.mark.usefixtures("needs_torch")
def test_parameters_without_grad_are_skipped():
    _cnn, mlp = two_part_model()
    frozen = nn.Linear(3, 3)  # never used in a backward pass: .grad is None
    norms = grad_norms({"mixed": [*mlp.parameters(), *frozen.parameters()], "frozen": frozen})
    assert norms["mixed"] == float(nn.utils.clip_grad_norm_(mlp.parameters(), 1e30))
    assert norms["frozen"] == 0.0
    assert grad_norms({}) == {}


@pytest.mark.usefixtures("needs_torch")
def test_groups_can_be_modules_tensors_or_generators():
    _cnn, mlp = two_part_model()
    weight = mlp[0].weight
    norms = grad_norms({"gen": (p for p in mlp.parameters()), "tensor": weight, "module": mlp})
    assert norms["gen"] == norms["module"]
    assert norms["tensor"] == pytest.approx(float(weight.grad.norm()), rel=1e-6)


@pytest.mark.usefixtures("needs_torch")
def test_nonfinite_gradients_give_nan_or_inf():
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    p.grad, q.grad = torch.tensor([1.0, math.nan, 2.0]), torch.tensor([1.0, math.inf, 2.0])
    norms = grad_norms({"nan": [p], "inf": [q], "both": [p, q]})
    assert math.isnan(norms["nan"]) and norms["inf"] == math.inf and math.isnan(norms["both"])


@pytest.mark.usefixtures("needs_torch")
def test_a_bad_group_is_a_clear_error():
    with pytest.raises(TypeError, match="expected a module, a tensor or an iterable of parameters, got int"):
        grad_norms({"bad": 42})


@pytest.mark.usefixtures("needs_torch")
def test_fallback_for_older_torch_matches():
    cnn, mlp = two_part_model(seed=3)
    grads = [p.grad for p in [*cnn.parameters(), *mlp.parameters()]]
    for norm_type in (2.0, 1.0, math.inf):
        expected = float(nn.utils.get_total_norm(grads, norm_type))
        assert float(trainer._total_norm_fallback(grads, norm_type)) == pytest.approx(expected, rel=1e-6)
    assert float(trainer._total_norm_fallback([], 2.0)) == 0.0


@pytest.mark.usefixtures("needs_torch")
def test_log_grad_norms_writes_scalars_a_reader_finds(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    cnn, mlp = two_part_model()
    writer = SummaryWriter(str(tmp_path / "td3"))
    norms = log_grad_norms(writer, {"actor_cnn": cnn, "actor_mlp": mlp}, step=100)
    log_grad_norms(writer, {"critic": mlp}, step=100, prefix="train/", suffix="_grad_norm")
    writer.close()
    points = {(run, tag, step): value for run, tag, step, _, value in read_logdir(str(tmp_path))}
    assert points == {
        ("td3", "gradients/actor_cnn_norm", 100): pytest.approx(norms["actor_cnn"], rel=1e-6),
        ("td3", "gradients/actor_mlp_norm", 100): pytest.approx(norms["actor_mlp"], rel=1e-6),
        ("td3", "train/critic_grad_norm", 100): pytest.approx(norms["actor_mlp"], rel=1e-6),
    }


def test_clear_in_a_directory_the_trainer_cannot_write_says_why(tmp_path):
    import subprocess
    import sys

    from conftest import require_binary, require_root

    # root bypasses directory permissions: the child drops the capabilities that let it
    require_root()
    setpriv = require_binary("setpriv")
    stop_dir = tmp_path / "stop"
    stop_dir.mkdir()
    path = stop_dir / "gradwatch-stop.json"
    path.write_text("{}")
    stop_dir.chmod(0o555)
    code = (
        "import sys\n"
        "from gradwatch.trainer import StopFile\n"
        "try:\n"
        f"    StopFile({str(path)!r}).clear()\n"
        "except PermissionError as e:\n"
        "    print(e); sys.exit(7)\n"
    )
    try:
        p = subprocess.run(
            [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop_dir.chmod(0o755)
    assert p.returncode == 7, p.stderr
    assert "stale stop-file" in p.stdout and "docs/deployment.md" in p.stdout
    assert path.exists()
