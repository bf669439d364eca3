"""The default rules ship in three places that must say the same thing.

- gradwatch/default_rules/ (in the wheel, used when no --rules is given),
- rules/ in the repository (what `cp -r rules/ /etc/gradwatch/rules/` and the Dockerfile's
  `COPY rules/` ship: it must be a real file, a symlink would arrive dangling),
- deploy/kubernetes/gradwatch-config.yaml (a ConfigMap cannot point at a file, so it holds a copy).
"""

import shutil
from pathlib import Path

import yaml

from gradwatch.config.rulefiles import default_rules_path, load_rules

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "rules" / "gradient_explosion.yaml"
CONFIG_MAP = REPO / "deploy" / "kubernetes" / "gradwatch-config.yaml"


def packaged_rules() -> list[dict]:
    return yaml.safe_load(Path(default_rules_path()).read_text())["rules"]


def test_repository_rules_are_a_real_file_identical_to_the_packaged_default():
    assert not SHIPPED.is_symlink(), "a symlink arrives dangling after `cp -r rules/` or COPY rules/"
    assert SHIPPED.read_bytes() == Path(default_rules_path()).read_bytes()


def test_a_plain_copy_of_rules_loads(tmp_path):
    # what deploy/gradwatch.yaml tells users to do, and what COPY does: links are copied as links
    copy = tmp_path / "etc-gradwatch-rules"
    shutil.copytree(REPO / "rules", copy, symlinks=True)
    names = [r.name for r in load_rules([str(copy / "gradient_explosion.yaml")])]
    assert names == [r["name"] for r in packaged_rules()]


def test_kubernetes_config_map_carries_the_packaged_rules_unchanged():
    (config_map,) = [d for d in yaml.safe_load_all(CONFIG_MAP.read_text()) if d and d["kind"] == "ConfigMap"]
    rules = yaml.safe_load(config_map["data"]["training.yaml"])["rules"]
    default = packaged_rules()
    # the defaults first and unchanged (a drift once dropped gradient_growth's min_value), then the Job's own
    assert rules[: len(default)] == default
    assert {r["name"] for r in rules[len(default) :]}.isdisjoint(r["name"] for r in default)
