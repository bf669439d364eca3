"""deploy/systemd: systemd's own tools check the units (no systemd as PID 1 needed).

``systemd-analyze verify`` only warns on unknown keys and bad values (rc 0),
so stderr must be empty; it refuses an ExecStart binary missing on this
machine, so each unit is checked as a copy that runs this Python instead.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_binary
from snippets import snippet

from gradwatch.daemon.writers import stop_path

SYSTEMD = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
INSTALLED = "/opt/gradwatch/bin/gradwatch"
# unit file in deploy/ -> the name it is checked under (a template needs an instance)
UNITS = {
    "gradwatch.service": "gradwatch.service",
    "gradwatch@.service": "gradwatch@srv-training-runs.service",
}
# systemd-analyze security: exposure x 10; 1.3 now, "OK" ends at 1.9
MAX_EXPOSURE = 15


def parse_unit(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> values in order (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def runnable_copy(name: str, tmp_path: Path) -> Path:
    text = (SYSTEMD / name).read_text()
    assert text.count(INSTALLED) == 1
    dest = tmp_path / UNITS[name]
    dest.write_text(text.replace(INSTALLED, f"{sys.executable} -m gradwatch"))
    return dest


def analyze(*args: str) -> subprocess.CompletedProcess:
    binary = require_binary("systemd-analyze")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", list(UNITS))
def test_verify_is_clean(name, tmp_path):
    p = analyze("verify", "--man=no", str(runnable_copy(name, tmp_path)))
    assert (p.returncode, p.stderr, p.stdout) == (0, "", "")


def test_verify_would_catch_a_typo(tmp_path):
    # the check above is only worth something if a bad key shows up on stderr
    unit = runnable_copy("gradwatch.service", tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes"))
    p = analyze("verify", "--man=no", str(unit))
    assert p.returncode == 0 and "Unknown key 'NoNewPrivilegez'" in p.stderr


@pytest.mark.parametrize("name", list(UNITS))
def test_security_exposure_is_low(name, tmp_path):
    unit = runnable_copy(name, tmp_path)
    p = analyze("security", "--offline=true", f"--threshold={MAX_EXPOSURE}", str(unit))
    assert p.returncode == 0, p.stdout + p.stderr
    # the same unit without hardening fails the gate
    bare = tmp_path / "bare" / unit.name
    bare.parent.mkdir()
    keep = ("[", "Description", "ExecStart", "Type")
    bare.write_text("\n".join(line for line in unit.read_text().splitlines() if line.startswith(keep)) + "\n")
    p = analyze("security", "--offline=true", f"--threshold={MAX_EXPOSURE}", str(bare))
    assert p.returncode != 0


@pytest.mark.parametrize("name", list(UNITS))
def test_service_contract(name):
    u = parse_unit((SYSTEMD / name).read_text())
    one = {k: v[-1] for k, v in u.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.WatchdogSec"].endswith("s")
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Service.ProtectSystem"] == "strict"
    assert one["Service.NoNewPrivileges"] == "yes"
    assert one["Service.CapabilityBoundingSet"] == ""
    assert one["Service.User"] == "gradwatch" or one.get("Service.DynamicUser") == "yes"
    # secrets from an optional file, never inline
    assert "-/etc/gradwatch/secrets.env" in u["Service.EnvironmentFile"]
    assert not [e for e in u.get("Service.Environment", []) if "hooks.slack.com" in e or "URL" in e]
    # the logdir on the command line is the one mounted read-only
    argv = one["Service.ExecStart"].split()
    assert argv[:2] == [INSTALLED, "watch"]
    logdir = argv[2]
    assert one["Service.ReadOnlyPaths"] == f"-{logdir}"
    assert "ReadWritePaths" not in one  # the state and stop directories are the only writable places
    state = argv[argv.index("--state-dir") + 1]
    stop = argv[argv.index("--stop-file") + 1]
    state_dirs = ["/var/lib/" + d for d in one["Service.StateDirectory"].split()]
    assert state in state_dirs
    assert stop.rsplit("/", 1)[0] in state_dirs


def test_template_is_per_logdir():
    u = {k: v[-1] for k, v in parse_unit((SYSTEMD / "gradwatch@.service").read_text()).items()}
    argv = u["Service.ExecStart"].split()
    assert argv[2] == "%f"  # the instance name is the escaped logdir path
    assert "%i" in argv[argv.index("--state-dir") + 1]
    assert "%i" in argv[argv.index("--stop-file") + 1]
    assert argv[argv.index("--listen") + 1] == "${GRADWATCH_LISTEN}"
    assert u["Service.EnvironmentFile"] == "-/etc/gradwatch/%i.env"


def test_stop_file_template_is_what_the_daemon_writes():
    u = {k: v[-1] for k, v in parse_unit((SYSTEMD / "gradwatch.service").read_text()).items()}
    argv = u["Service.ExecStart"].split()
    template = argv[argv.index("--stop-file") + 1]
    assert (
        stop_path(template, "/srv/training/runs", "td3/seed-1") == "/var/lib/gradwatch-stop/td3__seed-1.json"
    )


def test_sysusers_creates_the_user(tmp_path):
    binary = require_binary("systemd-sysusers")
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in ("passwd", "group", "shadow", "gshadow"):
        (etc / f).touch()
    p = subprocess.run(
        [binary, f"--root={tmp_path}", str(SYSTEMD / "gradwatch.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    (entry,) = (etc / "passwd").read_text().splitlines()
    name, _, uid, _, _, home, shell = entry.split(":")
    assert (name, home, shell) == ("gradwatch", "/var/lib/gradwatch", "/usr/sbin/nologin")
    assert int(uid) < 1000  # a system user


def test_command_line_flags_exist():
    """The flags the units pass are flags ``gradwatch watch`` accepts."""
    p = subprocess.run(
        [sys.executable, "-m", "gradwatch", "watch", "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    for name in UNITS:
        argv = parse_unit((SYSTEMD / name).read_text())["Service.ExecStart"][-1].split()
        for flag in (a for a in argv if a.startswith("--")):
            assert flag in p.stdout, f"{name}: gradwatch watch has no {flag}"


def instance_env_file_is_read(env_line: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the documented line that writes the instance's env file (under a scratch /etc), then ask
    systemd whether the template's EnvironmentFile= path, expanded for that instance, exists."""
    etc = tmp_path / "etc"
    (etc / "gradwatch").mkdir(parents=True)
    subprocess.run(["bash", "-e", "-c", env_line.replace("/etc/gradwatch/", f"{etc}/gradwatch/")], check=True)
    (env_file,) = [
        v
        for v in parse_unit((SYSTEMD / "gradwatch@.service").read_text())["Service.EnvironmentFile"]
        if "%i" in v
    ]
    # systemd-analyze condition evaluates a unit's conditions with its specifiers expanded, as
    # systemd does for EnvironmentFile=: a probe template that only checks that path exists
    probe = etc / "systemd" / "system" / "gradwatch@.service"
    probe.parent.mkdir(parents=True)
    path = env_file.lstrip("-").replace("/etc/gradwatch/", f"{etc}/gradwatch/")
    probe.write_text(f"[Unit]\nConditionPathExists={path}\n[Service]\nExecStart=/bin/true\n")
    escape = require_binary("systemd-escape")
    name = subprocess.run(
        [escape, "--path", "/srv/training/team-b"], capture_output=True, text=True, check=True
    )
    instance = f"gradwatch@{name.stdout.strip()}.service"
    return analyze("condition", f"--root={tmp_path}", f"--unit={instance}")


def test_documented_instance_env_file_is_the_one_systemd_reads(tmp_path):
    """docs/deployment.md once wrote /etc/gradwatch/srv-training-team-b.env: systemd reads
    srv-training-team\\x2db.env for /srv/training/team-b, so the port setting was ignored."""
    (env_line,) = [
        line for line in snippet("docs/deployment.md", "systemd-instances").splitlines() if ".env" in line
    ]
    p = instance_env_file_is_read(env_line, tmp_path)
    assert p.returncode == 0 and "succeeded" in p.stdout + p.stderr, p.stdout + p.stderr


def test_an_unescaped_env_file_name_would_be_caught(tmp_path):
    p = instance_env_file_is_read(
        "echo GRADWATCH_LISTEN=127.0.0.1:9724 > /etc/gradwatch/srv-training-team-b.env", tmp_path
    )
    assert p.returncode != 0 and "failed" in p.stdout + p.stderr
