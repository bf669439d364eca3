"""Relative links in the Markdown docs lead somewhere: the file exists, and so does the #anchor."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCED = re.compile(r"```.*?```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.*)$", re.M)


def prose(path: Path) -> str:
    """The Markdown without its fenced blocks (a `# comment` in a shell block is not a heading)."""
    return FENCED.sub("", path.read_text())


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    out = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            out.append(f"{doc.relative_to(root)}: {target}: no such file")
        elif (
            anchor and dest.suffix == ".md" and anchor not in map(github_anchor, HEADING.findall(prose(dest)))
        ):
            out.append(f"{doc.relative_to(root)}: {target}: no heading #{anchor}")
    return out


def test_relative_links_and_anchors_resolve():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]
    assert len(docs) >= 10
    assert [problem for doc in docs for problem in broken_links(doc)] == []


def test_a_broken_file_or_anchor_would_be_found(tmp_path):
    (tmp_path / "commands.md").write_text("# Exit codes\n\n```sh\n# not a heading\n```\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[a](commands.md#exit-codes) [b](commands.md#not-a-heading) [c](gone.md) [d](https://x.org/y)\n"
    )
    assert broken_links(doc, tmp_path) == [
        "README.md: commands.md#not-a-heading: no heading #not-a-heading",
        "README.md: gone.md: no such file",
    ]
