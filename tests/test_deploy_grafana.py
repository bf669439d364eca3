"""deploy/grafana/gradwatch.json: layout, the panels the issue asks for, and PromQL that parses.

No Grafana server here; the metric names are checked against a real scrape in
test_prometheus.py, the PromQL with promtool.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import require_binary

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "gradwatch.json"
GRID_COLUMNS = 24
# Grafana's variables, replaced by what they expand to before promtool sees the query
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$run": ".*",
    "$tag": ".*",
}


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash):
    return dash["panels"]


def expand(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace("${" + name[1:] + "}", VARIABLES[name]).replace(name, VARIABLES[name])
    assert "$" not in expr, f"unknown variable in {expr!r}"
    return expr


def queries(dash) -> dict[str, str]:
    """Every PromQL expression: panel targets and query variables (label_values(<selector>, label))."""
    out = {}
    for p in panels(dash):
        for t in p.get("targets", []):
            out[f"panel {p['id']} ({p['title']}) {t['refId']}"] = t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: {q!r}"
            out[f"variable {v['name']}"] = m.group(1)
    return out


def promtool_parses(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    promtool = require_binary("promtool")
    names = list(exprs)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"q{i}", "expr": expand(exprs[n])} for i, n in enumerate(names)],
            }
        ]
    }
    f = tmp_path / "exprs.yml"
    f.write_text(yaml.safe_dump(rules))
    return subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)


def test_top_level(dash):
    assert dash["schemaVersion"] == 39
    assert dash["uid"] == "gradwatch" and dash["title"]
    assert dash["id"] is None  # provisioning assigns it
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names[0] == "datasource" and {"run", "tag"} <= set(names)


def test_panel_ids_are_unique(dash):
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)


def test_layout_fits_24_columns_without_overlap(dash):
    cells = {}
    for p in panels(dash):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= GRID_COLUMNS, f"{p['title']}: x {g['x']} + w {g['w']} > 24"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_datasource_is_the_variable(dash):
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]


def test_gradient_norms_on_a_log_scale_with_both_thresholds(dash):
    (p,) = [p for p in panels(dash) if p["title"] == "Gradient norms"]
    d = p["fieldConfig"]["defaults"]
    assert d["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    assert d["custom"]["thresholdsStyle"]["mode"] != "off"
    assert [s["value"] for s in d["thresholds"]["steps"]][1:] == [10000, 50000]
    assert 'run=~"$run"' in p["targets"][0]["expr"] and "{{run}}" in p["targets"][0]["legendFormat"]


def test_the_panels_the_issue_asks_for(dash):
    exprs = " ".join(queries(dash).values())
    types = {p["title"]: p["type"] for p in panels(dash)}
    assert types["Alert states"] == "state-timeline"
    assert 'tag=~"$tag"' in exprs  # other watched scalars, by tag
    for health in (
        "gradwatch_records_read_total",
        "gradwatch_read_problems_total",
        "gradwatch_notifications_failed_total",
        "gradwatch_run_last_event_timestamp_seconds",
    ):
        assert health in exprs


def test_every_query_parses(dash, tmp_path):
    exprs = queries(dash)
    assert len(exprs) >= 20
    p = promtool_parses(exprs, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_bad_query_would_be_caught(tmp_path):
    p = promtool_parses({"bad": "sum by (run (gradwatch_scalar_value)"}, tmp_path)
    assert p.returncode == 1 and "could not parse expression" in p.stdout + p.stderr


def test_provisioning_points_at_a_directory_of_dashboards():
    prov = yaml.safe_load((DASHBOARD.parent / "provisioning.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
