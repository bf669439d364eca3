"""``anomaly`` and ``baseline`` rules end to end: rule files, real tensorboardX event files, ``check``."""

from __future__ import annotations

import io
import json
import os

import pytest
from seed_series import SEED, clipped, exploding, healthy
from writers import write_scalars

from gradwatch.cli import main
from gradwatch.config.rulefiles import load_rules
from gradwatch.config.yaml import ConfigError
from gradwatch.oneshot.check import OK, WARNING, run_check, write_json, write_text

TAG = "gradients/actor_cnn_norm"


def write_rules(tmp_path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


def write_run(logdir, run: str, points) -> None:
    write_scalars("tensorboardX", os.path.join(str(logdir), run), [(TAG, s, v, 1.7e9 + s) for s, v in points])


def check(logdir, rules_path):
    result = run_check(str(logdir), load_rules([rules_path]))
    text, js = io.StringIO(), io.StringIO()
    write_text(result, text)
    write_json(result, js)
    return result, text.getvalue(), json.loads(js.getvalue())


ANOMALY_RULES = f"""
rules:
  - name: norm_spike
    match: {{tags: "{TAG}"}}
    anomaly: {{}}
"""


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_anomaly_with_defaults_fires_on_the_seed_explosion_before_50000_and_not_on_healthy_noise(
    tmp_path, seed
):
    rules = write_rules(tmp_path, ANOMALY_RULES)
    logdir = tmp_path / "logs"
    write_run(logdir, "exploding", exploding(seed))
    write_run(logdir, "healthy", healthy(seed))
    result, text, doc = check(logdir, rules)
    assert [(f["run"], f["rule"]) for f in doc["findings"]] == [("exploding", "norm_spike")]
    first = doc["findings"][0]["first"]["warning"]
    assert first["value"] < 50_000 and first["step"] <= 170, first
    assert result.exit_code in (WARNING, 2)
    assert "standard deviations from its recent points" in doc["findings"][0]["annotations"]["summary"]
    assert "sd (warning)" in text and "from the last 100 points" in text
    assert first["zscore"] > 6 and f"first at step {first['step']}: " in text and " sd)\n" in text


BASELINE_RULES = f"""
rules:
  - name: vs_clipped
    match: {{tags: "{TAG}", runs: run2}}
    baseline:
      run: run3
      factor: 10
"""


def test_baseline_factor_10_run2_against_clipped_run3_fires_at_200_not_at_100(tmp_path):
    rules = write_rules(tmp_path, BASELINE_RULES)
    logdir = tmp_path / "logs"
    # run2 sorts before run3: check must still read the reference first
    write_run(logdir, "run2", sorted(SEED.items()))
    write_run(logdir, "run3", clipped(every=100))
    _, text, doc = check(logdir, rules)
    (finding,) = doc["findings"]
    assert finding["first"] == {
        "warning": {"step": 200, "value": 130_486.0, "ratio": pytest.approx(130_486 / 3_500)}
    }
    assert finding["points_at"] == {"warning": 4}  # 200..500, not 100 (x2.6)
    assert finding["annotations"]["summary"] == (
        f"{TAG} = 130,486 at step 200 on run run2: x37.3 the baseline's 3,500 at step 200"
    )
    assert "x10 (warning) above run3 at the same step" in text
    assert doc["not_compared"] == []


def test_check_says_when_the_baseline_has_not_reached_a_step(tmp_path):
    rules = write_rules(tmp_path, BASELINE_RULES)
    logdir = tmp_path / "logs"
    write_run(
        logdir, "run2", [(100, 5_191.0), (200, 6_000.0), (300, 7_000.0), (400, 8_000.0), (500, 9_000.0)]
    )
    write_run(logdir, "run3", clipped(every=100)[:3])  # still training: logged up to step 300
    result, text, doc = check(logdir, rules)
    assert result.exit_code == OK and doc["findings"] == []
    assert doc["not_compared"] == [
        {
            "rule": "vs_clipped",
            "run": "run2",
            "tag": TAG,
            "points": 2,
            "last": "baseline has not reached step 500 (its last step is 300)",
        }
    ]
    assert (
        "vs_clipped on run run2, gradients/actor_cnn_norm: 2 points not compared; at the last point: " in text
    )
    assert "baseline has not reached step 500 (its last step is 300)" in text


def test_baseline_median_of_runs_matching_a_glob(tmp_path):
    rules = write_rules(
        tmp_path,
        f"""
rules:
  - name: vs_seeds
    match: {{tags: "{TAG}", runs: "new-*"}}
    baseline: {{runs: "seed-*", warning: 3, critical: 30}}
""",
    )
    logdir = tmp_path / "logs"
    for name, level in (("seed-1", 1_000.0), ("seed-2", 2_000.0), ("seed-3", 40_000.0)):
        write_run(logdir, name, [(s, level) for s in range(0, 501, 100)])
    write_run(logdir, "new-a", [(0, 5_000.0), (100, 7_000.0), (200, 70_000.0)])
    _, _, doc = check(logdir, rules)
    (finding,) = doc["findings"]
    # the median is 2,000: 5,000 is x2.5 (nothing), 7,000 x3.5 (warning), 70,000 x35 (critical)
    assert finding["first"]["warning"]["step"] == 100 and finding["first"]["critical"]["step"] == 200


def test_rule_file_errors_have_file_line_and_suggestions(tmp_path):
    path = write_rules(
        tmp_path,
        """rules:
  - name: a
    anomaly:
      windw: 50
      warning: 8
      critical: 4
  - name: b
    baseline:
      factor: 10
  - name: c
    baseline: {run: x, factor: 0.5}
""",
    )
    with pytest.raises(ConfigError) as e:
        load_rules([path])
    text = str(e.value)
    assert f"{path}:4: rules[0].anomaly.windw: unknown key (did you mean 'window'?" in text
    assert f"{path}:6: rules[0].anomaly.critical: critical (4) must be above warning (8)" in text
    assert f"{path}:9: rules[1].baseline: name the reference: either run (one run) or runs" in text
    assert f"{path}:11: rules[2].baseline.factor: expected a factor above 1, got 0.5" in text


def test_gradwatch_check_cli_exit_code(tmp_path, capsys):
    rules = write_rules(tmp_path, BASELINE_RULES)
    logdir = tmp_path / "logs"
    write_run(logdir, "run2", sorted(SEED.items()))
    write_run(logdir, "run3", clipped(every=100))
    assert main(["check", str(logdir), "--rules", rules]) == WARNING
    assert "WARNING   vs_clipped: x10 (warning) above run3 at the same step" in capsys.readouterr().out


def test_report_marks_where_a_baseline_rule_first_fired(tmp_path, capsys):
    rules = write_rules(tmp_path, BASELINE_RULES)
    logdir = tmp_path / "logs"
    write_run(logdir, "run2", sorted(SEED.items()))
    write_run(logdir, "run3", clipped(every=100))
    # run2 first (the report's baseline column), run3 second: the rule still needs run3's points first
    assert (
        main(["report", str(logdir), "--tag", TAG, "--run", "run2", "--run", "run3", "--rules", rules]) == 0
    )
    rows = {row.split()[0]: row for row in capsys.readouterr().out.splitlines()[2:]}
    assert rows["200"].endswith("<- first run2: vs_clipped warning")
    assert "<-" not in rows["100"]


def test_a_baseline_rule_keeps_check_in_one_process_where_runs_meet(tmp_path, monkeypatch):
    # check reads groups of runs on other cores when a logdir is big; a baseline rule compares runs of
    # different groups, so with one the whole logdir is read together
    from gradwatch.events import parallel

    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    rules = write_rules(tmp_path, BASELINE_RULES)
    logdir = tmp_path / "logs"
    write_run(logdir, "run2", sorted(SEED.items()))
    write_run(logdir, "run3", clipped(every=100))
    write_run(logdir, "zz-other", [(100, 1.0)])
    _, _, doc = check(logdir, rules)
    assert [f["first"]["warning"]["step"] for f in doc["findings"]] == [200]
    assert doc["not_compared"] == []
