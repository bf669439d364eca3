"""``gradwatch export``: every point, exactly as TensorBoard's own reader sees it."""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_module
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util
from tensorboardX import SummaryWriter as XWriter

from gradwatch.cli import main
from gradwatch.oneshot.export import FIELDS, export

nan, inf = math.nan, math.inf
VALUES = [0.5, 1e-7, 130486.0, 3.4e38, -2.5, nan, inf, -inf, 0.1, 7475702.0]


def gradwatch_command() -> list[str]:
    script = Path(sys.executable).parent / "gradwatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradwatch"]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Runs written by tensorboardX and by torch (simple_value, tensor float32, tensor float64)."""
    require_module("torch")  # an optional extra: skips without it, fails in CI
    from torch.utils.tensorboard import SummaryWriter as TorchWriter

    root = tmp_path_factory.mktemp("logs")
    w = XWriter(str(root / "tbx"))
    for step, v in enumerate(VALUES):
        w.add_scalar("gradients/actor_cnn_norm", v, step * 100)
        w.add_scalar("loss", v / 3, step * 100 + 1)
    w.add_histogram("weights", [1.0, 2.0, 3.0], 0)  # not a scalar: never exported
    w.close()
    t = TorchWriter(str(root / "torch" / "simple"))
    for step, v in enumerate(VALUES):
        t.add_scalar("train/grad_norm", v, step, walltime=1_700_000_000.125 + step)
    t.close()
    t = TorchWriter(str(root / "torch" / "tensor"))
    for step, v in enumerate(VALUES):
        t.add_scalar("train/grad_norm", v, step, new_style=True)
        t.add_scalar("train/lr", 1e-3 / (step + 1), step, new_style=True, double_precision=True)
    t.close()
    return str(root)


def accumulator_points(logdir: str) -> list[tuple]:
    """(run, tag, step, wall_time, value) from TensorBoard's EventAccumulator, all kept, no purging."""
    out = []
    for dirpath, _, files in os.walk(logdir):
        if not any("tfevents" in f for f in files):
            continue
        run = os.path.relpath(dirpath, logdir)
        acc = event_accumulator.EventAccumulator(
            dirpath,
            size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0},
            purge_orphaned_data=False,
        )
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out += [(run, tag, e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["tensors"]:
            out += [
                (run, tag, e.step, e.wall_time, tensor_util.make_ndarray(e.tensor_proto).item())
                for e in acc.Tensors(tag)
            ]
    return out


def key(p: tuple) -> tuple:
    # NaN != NaN: compare through repr, which is exact for floats
    return (p[0], p[1], p[2], repr(float(p[3])), repr(float(p[4])))


def exported(logdir: str, fmt: str = "jsonl", **kw) -> str:
    out = io.StringIO()
    export(logdir, out, fmt, **kw)
    return out.getvalue()


def parse_jsonl(text: str) -> list[tuple]:
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(list(r) == list(FIELDS) for r in rows)
    return [(r["run"], r["tag"], r["step"], float(r["wall_time"]), float(r["value"])) for r in rows]


def parse_csv(text: str) -> list[tuple]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [(r["run"], r["tag"], int(r["step"]), float(r["wall_time"]), float(r["value"])) for r in rows]


def test_jsonl_matches_event_accumulator_point_by_point(logdir):
    ours = parse_jsonl(exported(logdir))
    theirs = accumulator_points(logdir)
    assert len(ours) == len(theirs) == 50
    assert sorted(map(key, ours)) == sorted(map(key, theirs))


def test_csv_matches_event_accumulator_point_by_point(logdir):
    ours = parse_csv(exported(logdir, "csv"))
    assert sorted(map(key, ours)) == sorted(map(key, accumulator_points(logdir)))


def test_nonfinite_values_are_json_strings(logdir):
    lines = exported(logdir, tags=["gradients/*"]).splitlines()
    values = [json.loads(line)["value"] for line in lines]
    assert values[5:8] == ["NaN", "Infinity", "-Infinity"]
    assert '"value": "NaN"' in lines[5]

    # strictly valid JSON: no bare NaN/Infinity tokens anywhere
    def refuse(constant):
        pytest.fail(f"bare {constant} in the JSON")

    for line in lines:
        json.loads(line, parse_constant=refuse)
    assert [float(v) for v in values[5:8]][1:] == [inf, -inf]


def test_csv_spells_nonfinite_values_as_float_and_pandas_read_them(logdir):
    text = exported(logdir, "csv", runs=["tbx"], tags=["gradients/*"])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(FIELDS)
    assert [r[4] for r in rows[6:9]] == ["NaN", "inf", "-inf"]
    assert rows[1][:3] == ["tbx", "gradients/actor_cnn_norm", "0"]


def test_values_round_trip_exactly(logdir):
    ours = parse_jsonl(exported(logdir, runs=["torch/tensor"], tags=["train/lr"]))
    # float64 tensors keep every bit; float32 values keep theirs as doubles
    assert [v for *_, v in ours] == [1e-3 / (s + 1) for s in range(len(VALUES))]
    simple = parse_jsonl(exported(logdir, runs=["torch/simple"]))
    assert simple[0][3] == 1_700_000_000.125
    assert simple[2][4] == 130486.0


def test_run_and_tag_filters_are_globs(logdir):
    runs = {r[0] for r in parse_jsonl(exported(logdir, runs=["torch/*"]))}
    assert runs == {"torch/simple", "torch/tensor"}
    tags = {r[1] for r in parse_jsonl(exported(logdir, tags=["train/*", "loss"]))}
    assert tags == {"train/grad_norm", "train/lr", "loss"}
    assert exported(logdir, runs=["nothing*"]) == ""


def test_pandas_is_not_needed(logdir, tmp_path):
    # the export must work where importing pandas fails
    code = (
        "import sys; sys.modules['pandas'] = None\n"
        "from gradwatch.cli import main\n"
        f"sys.exit(main(['export', {logdir!r}, '-o', {str(tmp_path / 'p.jsonl')!r}]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 50


def test_the_documented_recipes_in_principle(logdir, tmp_path):
    """docs/commands.md: json.loads per line + float(value); csv with NaN/inf that float() reads."""
    assert main(["export", logdir, "-o", str(tmp_path / "points.jsonl")]) == 0
    with open(tmp_path / "points.jsonl") as f:
        records = [json.loads(line) for line in f]
    values = [float(r["value"]) for r in records]
    assert sum(math.isnan(v) for v in values) == 4
    assert main(["export", logdir, "--format", "csv", "-o", str(tmp_path / "points.csv")]) == 0
    with open(tmp_path / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["value"]) for r in rows][:10] == pytest.approx(values[:10], nan_ok=True)
    docs = (Path(__file__).resolve().parent.parent / "docs" / "commands.md").read_text()
    assert "json.loads(line) for line in f" in docs and "astype(float)" in docs


def test_cli_output_errors_and_empty_results(logdir, tmp_path, capsys):
    assert main(["export", logdir, "-o", str(tmp_path / "no" / "dir" / "x.jsonl")]) == 3
    assert "gradwatch: cannot write" in capsys.readouterr().err
    assert main(["export", logdir, "--tag", "nothing"]) == 3
    assert capsys.readouterr().err == f"gradwatch: no matching --run/--tag scalar points in {logdir}\n"
    assert main(["export", str(tmp_path / "missing")]) == 3
    assert "no such directory" in capsys.readouterr().err
    assert main(["export", logdir, "--format", "parquet"]) == 3


def test_console_script_pipes_into_head_without_a_traceback(tmp_path):
    w = XWriter(str(tmp_path / "r"))
    for step in range(20000):
        w.add_scalar("a", step * 0.5, step)
    w.close()
    p = subprocess.Popen(
        [*gradwatch_command(), "export", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0
    assert json.loads(first)["step"] == 0
    assert "Traceback" not in err and "Exception" not in err, err


@pytest.fixture
def bytes_logdir(tmp_path):
    """Runs named b"run-\\xff" (not UTF-8), with a backslash and non-ASCII, written by tensorboardX."""
    root = tmp_path / "logs"
    for name in (b"run-\xff", b"back\\slash", "caf\u00e9".encode()):
        w = XWriter(os.fsdecode(bytes(root) + b"/" + name))
        w.add_scalar("grad_norm", 1.5, 7)
        w.close()
    return str(root)


def test_jsonl_export_of_undecodable_run_names_is_lossless(bytes_logdir, tmp_path, capsys):
    out = tmp_path / "points.jsonl"
    assert main(["export", bytes_logdir, "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")  # a valid UTF-8 file
    assert '"run": "run-\\udcff"' in text and '"run": "café"' in text
    runs = {os.fsencode(json.loads(line)["run"]) for line in text.splitlines()}
    assert runs == {b"run-\xff", b"back\\slash", "café".encode()}
    # standard output too (strict UTF-8, as on most terminals)
    p = subprocess.run(
        [*gradwatch_command(), "export", bytes_logdir],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode("utf-8") == text


def test_csv_export_of_undecodable_run_names_is_lossless(bytes_logdir, tmp_path):
    import codecs

    out = tmp_path / "points.csv"
    assert main(["export", bytes_logdir, "--format", "csv", "-o", str(out)]) == 0
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["back\\\\slash", "café", "run-\\xff"]
    assert {codecs.escape_decode(r["run"].encode())[0] for r in rows} == {
        b"run-\xff",
        b"back\\slash",
        "café".encode(),
    }
