"""The packaged rules' parsed YAML is kept as a literal (gradwatch/config/packaged_rules.py), so
check with the default rules starts without PyYAML: the literal must be what PyYAML gives for
the file, lines included, and a file that is not the packaged text is parsed as YAML."""

from __future__ import annotations

from gradwatch.config import packaged_rules_data as data
from gradwatch.config.packaged_rules import build, literal, load_packaged
from gradwatch.config.rulefiles import default_rules_path, load_rule_file
from gradwatch.config.yaml import load_yaml_text

REGENERATE = "the packaged rules changed: run `python -m gradwatch.config.packaged_rules` and `ruff format`"


def test_the_literal_is_the_packaged_file_parsed():
    with open(default_rules_path(), encoding="utf-8") as f:
        text = f.read()
    assert text == data.TEXT, REGENERATE
    assert literal(load_yaml_text(text, "x")) == data.TREE, REGENERATE


def test_built_from_the_literal_is_what_pyyaml_builds_lines_included():
    known, built = load_packaged(data.TEXT)
    parsed = load_yaml_text(data.TEXT, "x")
    assert known and built == parsed
    assert literal(built) == literal(parsed)  # every line, key line and item line
    assert build(literal(parsed)) == parsed


def test_rules_from_the_literal_are_the_rules_from_yaml(tmp_path):
    # a trailing comment makes the copy another text: PyYAML parses it, the literal is not used
    copy = tmp_path / "gradient_explosion.yaml"
    copy.write_text(data.TEXT + "\n# parsed by PyYAML\n")
    edited = tmp_path / "edited.yaml"
    edited.write_text(data.TEXT.replace("warning: 10000", "warning: 20000"))

    def described(path):
        problems: list = []
        rules = load_rule_file(str(path), problems)
        assert not problems
        return [(r.name, r.kind, r.source.rpartition(":")[2], r.levels, r.labels, r.stop) for r in rules]

    assert load_packaged(edited.read_text()) == (False, None)
    assert load_packaged(copy.read_text()) == (False, None)
    packaged, from_copy, from_edited = described(default_rules_path()), described(copy), described(edited)
    assert packaged == from_copy
    assert from_edited != packaged
    assert from_edited[0][3] == [(3, "critical", 50000), (2, "warning", 20000)]
