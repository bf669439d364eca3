"""deploy/kubernetes: schema validation (kubernetes-validate --strict, offline) and the sidecar wiring.

kubernetes-validate knows no CRDs (PodMonitor, PrometheusRule only WARN), so
their structure is checked here against the fields the Prometheus Operator
defines.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gradwatch.config import load_config
from gradwatch.config.rulefiles import load_rules
from gradwatch.daemon.writers import stop_path

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
MANIFESTS = sorted(K8S.glob("*.yaml"))
CRDS = {"PodMonitor", "PrometheusRule"}


def validate(*paths: Path) -> subprocess.CompletedProcess:
    if not VALIDATE.exists():
        pytest.fail(f"{VALIDATE} is missing: pip install kubernetes-validate")
    return subprocess.run(
        [str(VALIDATE), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120
    )


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def by_kind(kind: str) -> dict:
    (found,) = [d for p in MANIFESTS for d in docs(p.name) if d["kind"] == kind]
    return found


def test_every_manifest_validates_strictly():
    assert len(MANIFESTS) >= 4
    p = validate(*MANIFESTS)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "ERROR" not in out, out
    for path in MANIFESTS:
        for d in docs(path.name):
            if d["kind"] in CRDS:
                assert f"WARN {path}" in out  # checked by hand below
            else:
                assert f"passed for resource {d['kind'].lower()}/{d['metadata']['name']}" in out


def test_strict_validation_would_catch_a_typo(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text((K8S / "training-job.yaml").read_text().replace("readOnly: true", "readOnlly: true", 1))
    p = validate(bad)
    assert p.returncode == 1 and "'readOnlly' was unexpected" in p.stdout + p.stderr


@pytest.fixture(scope="module")
def pod():
    return by_kind("Job")["spec"]["template"]


def sidecar(pod) -> dict:
    (gw,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "gradwatch"]
    return gw


def trainer(pod) -> dict:
    (t,) = pod["spec"]["containers"]
    return t


def mounts(container) -> dict[str, dict]:
    return {m["name"]: m for m in container["volumeMounts"]}


def test_native_sidecar_shares_the_logdir_read_only(pod):
    gw, tr = sidecar(pod), trainer(pod)
    assert gw["restartPolicy"] == "Always"  # a native sidecar, not a run-to-completion init container
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes["logs"] and "emptyDir" in volumes["stop"]
    gm, tm = mounts(gw), mounts(tr)
    assert gm["logs"]["readOnly"] is True and not tm["logs"].get("readOnly")
    assert not gm["stop"].get("readOnly")
    assert gm["logs"]["mountPath"] == tm["logs"]["mountPath"] == gw["args"][1]
    assert gm["stop"]["mountPath"] == tm["stop"]["mountPath"]


def test_probes_and_metrics_port(pod):
    gw = sidecar(pod)
    (port,) = gw["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 9723)
    args = gw["args"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:9723"
    paths = {p: gw[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {
        "startupProbe": "/-/healthy",
        "livenessProbe": "/-/healthy",
        "readinessProbe": "/-/ready",
    }
    assert all(gw[p]["httpGet"]["port"] == "metrics" for p in paths)


def test_hardening(pod):
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in (sidecar(pod), trainer(pod)):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_config_map_holds_a_working_config_and_rules(pod, tmp_path, monkeypatch):
    gw = sidecar(pod)
    cm = by_kind("ConfigMap")
    (config_volume,) = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = mounts(gw)[config_volume["name"]]
    assert mount["readOnly"] is True
    # lay the ConfigMap out as the kubelet does, then load it with gradwatch's own loaders
    root = tmp_path / mount["mountPath"].strip("/")
    for item in config_volume["configMap"]["items"]:
        path = root / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cm["data"][item["key"]])
    args = gw["args"]
    config_path = args[args.index("--config") + 1]
    assert config_path.startswith(mount["mountPath"] + "/")
    # the Slack URL comes from the Secret through the environment
    (env,) = gw["env"]
    assert set(env["valueFrom"]) == {"secretKeyRef"}
    assert "${" + env["name"] + "}" in cm["data"]["gradwatch.yaml"]
    monkeypatch.setenv(env["name"], "https://hooks.slack.com/services/T000/B000/XXXX")
    cfg = load_config(str(tmp_path / config_path.strip("/")))
    rules = load_rules(cfg.rules)
    assert {r.name for r in rules} >= {"gradient_explosion", "q_value_divergence"}
    # gradwatch writes the stop-file the trainer is told to check
    run_dir = trainer(pod)["args"][trainer(pod)["args"].index("--logdir") + 1]
    logdir = gw["args"][1]
    run = run_dir.removeprefix(logdir + "/")
    targs = trainer(pod)["args"]
    assert stop_path(cfg.stop_file, logdir, run) == targs[targs.index("--stop-file") + 1]
    assert cfg.stop_file.startswith(mounts(gw)["stop"]["mountPath"] + "/")


def test_job_completes_when_training_ends(pod):
    # a sidecar with restartPolicy Always is stopped once the trainer exits
    assert pod["spec"]["restartPolicy"] == "Never"
    assert by_kind("Job")["spec"]["backoffLimit"] == 0


# -- CRDs: the fields the Prometheus Operator (monitoring.coreos.com/v1) defines

POD_MONITOR_SPEC = {
    "selector",
    "namespaceSelector",
    "podMetricsEndpoints",
    "jobLabel",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "attachMetadata",
}
ENDPOINT = {
    "port",
    "portNumber",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "params",
    "tlsConfig",
    "basicAuth",
    "authorization",
    "bearerTokenSecret",
    "enableHttp2",
    "filterRunning",
    "followRedirects",
    "proxyUrl",
}
RELABEL = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}


def test_pod_monitor_selects_the_sidecar(pod):
    pm = by_kind("PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = pm["spec"]
    assert set(spec) <= POD_MONITOR_SPEC
    assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in sidecar(pod)["ports"]}
    for ep in spec["podMetricsEndpoints"]:
        assert set(ep) <= ENDPOINT
        assert ep["port"] in ports and ep["path"] == "/metrics"
        for r in ep.get("relabelings", []):
            assert set(r) <= RELABEL and "targetLabel" in r
    # rules match up{job="gradwatch"}: the relabelling sets it
    assert {"targetLabel": "job", "replacement": "gradwatch"} in spec["podMetricsEndpoints"][0]["relabelings"]


def test_prometheus_rule_is_the_rule_file():
    pr = by_kind("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pr["spec"]) == {"groups"}
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "gradwatch_rules.yml").read_text())
    assert pr["spec"] == rules
