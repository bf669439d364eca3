"""A real Prometheus scrapes gradwatch and evaluates deploy/prometheus/gradwatch_rules.yml.

gradwatch here is the real exporter over a real Engine with the packaged rules,
reading event files written by tensorboardX: the founding case, the actor
CNN's gradient norm 5,191 -> 130,486 -> 826,256 at steps 100..300.
"""

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import require_binary
from test_metrics import NORM, Fed, write_seed

from gradwatch.exporter.collector import FAMILIES, MetricsServer

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "gradwatch_rules.yml"
DASHBOARD = DEPLOY / "grafana" / "gradwatch.json"
# first scraped sample is queryable 5-6 s after start (ECOSYSTEM.md §1a)
DEADLINE = 30.0


# Prometheus binds port 0 itself and logs the port it got: no port is probed and handed on
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def poll(what: str, fn, deadline: float = DEADLINE):
    """fn() until it returns something truthy; fails with what was last seen."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"{what} not seen within {deadline:.0f} s; last: {last!r}")


@pytest.fixture(scope="module")
def gradwatch(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    write_seed(logdir)
    fed = Fed(process_metrics=True)  # as the daemon runs it
    fed.read(logdir)
    fed.publish(outbox=(("slack", 2, 1, 0, 0),), ready=True)
    server = MetricsServer(fed.metrics, "127.0.0.1", 0)
    server.start()
    yield fed, server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(gradwatch, tmp_path_factory):
    binary = require_binary("prometheus")
    _, server = gradwatch
    d = tmp_path_factory.mktemp("prometheus")
    config = d / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "gradwatch", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}
                ],
            }
        )
    )
    log_path = d / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={d / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                "--log.level=info",  # the "Listening on" line is at info
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=d,
        )

    def port() -> str | None:
        if proc.poll() is not None:
            pytest.fail("prometheus did not start:\n" + log_path.read_text())
        found = LISTENING.search(log_path.read_text())
        return found.group(1) if found else None

    base = f"http://127.0.0.1:{poll('the port prometheus listens on, in its log', port)}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:  # 503 until ready
            return False

    poll("prometheus ready", ready)
    yield base
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def query(base: str, promql: str) -> list:
    return api(base, "/api/v1/query", query=promql)["data"]["result"]


def test_prometheus_reads_the_gradient_norm(prometheus):
    result = poll(
        "gradient norm in Prometheus",
        lambda: query(prometheus, f'gradwatch_scalar_value{{run="exploding",tag="{NORM}"}}'),
    )
    assert [r["value"][1] for r in result] == ["826256"]
    assert result[0]["metric"]["job"] == "gradwatch"
    step = query(prometheus, f'gradwatch_scalar_step{{run="exploding",tag="{NORM}"}}')
    assert [r["value"][1] for r in step] == ["300"]


def test_scrape_is_healthy(prometheus):
    def target():
        targets = api(prometheus, "/api/v1/targets")["data"]["activeTargets"]
        return [t for t in targets if t["health"] != "unknown"]

    (t,) = poll("first scrape", target)
    assert (t["health"], t["lastError"]) == ("up", "")


def test_alert_rules_fire_on_gradwatch_metrics(prometheus):
    def firing():
        alerts = [a for a in api(prometheus, "/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
        names = {a["labels"]["alertname"] for a in alerts}
        return alerts if {"GradientNormCritical", "GradwatchRuleFiring"} <= names else None

    alerts = poll("GradientNormCritical and GradwatchRuleFiring firing", firing)
    (critical,) = [a for a in alerts if a["labels"]["alertname"] == "GradientNormCritical"]
    assert critical["labels"]["run"] == "exploding"
    assert critical["labels"]["severity"] == "critical"
    assert critical["annotations"]["summary"] == "Gradient norm 826.3k on run exploding (critical: above 50K)"
    # gradwatch's own rule decisions, forwarded: the threshold and the x25 growth
    forwarded = {
        (a["labels"]["rule"], a["labels"]["severity"], a["labels"]["tag"])
        for a in alerts
        if a["labels"]["alertname"] == "GradwatchRuleFiring"
    }
    assert forwarded == {("gradient_explosion", "critical", NORM), ("gradient_growth", "warning", NORM)}
    # above 50K only the critical threshold alert fires, and gradwatch itself is healthy
    names = {a["labels"]["alertname"] for a in alerts}
    assert names == {"GradientNormCritical", "GradwatchRuleFiring"}


def test_recording_rule(prometheus):
    result = poll(
        "run:gradwatch_gradient_norm:max", lambda: query(prometheus, "run:gradwatch_gradient_norm:max")
    )
    assert [(r["metric"]["run"], r["value"][1]) for r in result] == [("exploding", "826256")]


# -- names used in deploy/ exist in what Prometheus really ingested -------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![\w:$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(promql: str) -> set[str]:
    """gradwatch's metric names in an expression (string literals and label matchers left out)."""
    code = _STRING.sub('""', promql)
    code = re.sub(r"\{[^}]*\}", "{}", code)  # label names inside selectors
    return {n for n in _NAME.findall(code) if n.startswith(("gradwatch_", "process_")) or ":gradwatch_" in n}


def deploy_expressions() -> dict[str, str]:
    import yaml

    exprs = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            exprs[f"{RULES.name}: {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"{DASHBOARD.name}: panel {panel['id']} {target['refId']}"] = target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            exprs[f"{DASHBOARD.name}: variable {var['name']}"] = q["query"] if isinstance(q, dict) else q
    return exprs


def test_metric_name_parser():
    assert metric_names(
        'max by (run) (rate(gradwatch_records_read_total{job=~"a|gradwatch_x"}[5m])) / on() '
        "run:gradwatch_gradient_norm:max > 1e4 and label_values(gradwatch_scalar_value, run)"
        " + rate(process_cpu_seconds_total[$__rate_interval])"
    ) == {
        "gradwatch_records_read_total",
        "run:gradwatch_gradient_norm:max",
        "gradwatch_scalar_value",
        "process_cpu_seconds_total",
    }


def test_every_metric_name_in_deploy_exists_in_a_real_scrape(prometheus):
    exprs = deploy_expressions()
    used: dict[str, list[str]] = {}
    for where, expr in exprs.items():
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    assert len(used) >= 10, used  # the parser found the names the files use
    recording = {n for n in used if ":" in n}

    def ingested():
        names = set(api(prometheus, "/api/v1/label/__name__/values")["data"])
        return names if recording <= names and set(FAMILIES) <= names else None

    names = poll("every gradwatch family and recording rule in Prometheus", ingested)
    missing = {n: w for n, w in used.items() if n not in names}
    assert missing == {}, f"names used in deploy/ that gradwatch does not export: {missing}"
