"""Fenced blocks of README.md and docs/, found by the marker line just above them.

A block a user copies is marked in the Markdown with an HTML comment (invisible when rendered):

    <!-- snippet: NAME (which test runs it) -->
    ```bash
    ...
    ```

and a test takes it with ``snippet("docs/commands.md", "NAME")`` and runs it as pasted.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snippet(doc: str, name: str) -> str:
    """The text of the fenced block marked ``name`` in ``doc`` (relative to the repository)."""
    text = (ROOT / doc).read_text()
    marker = re.compile(
        rf"^([ \t]*)<!-- snippet: {re.escape(name)}\b[^\n]*-->\n\1```[\w-]*\n(.*?)^\1```", re.S | re.M
    )
    found = marker.findall(text)
    assert len(found) == 1, f"{doc}: expected one block marked <!-- snippet: {name} -->, found {len(found)}"
    # a block inside a list item is indented with it; the user copies it without the indent
    return textwrap.dedent(found[0][1])


def fenced_blocks(doc: str, language: str) -> list[str]:
    """Every fenced block of ``language`` in ``doc``, in order (marked or not)."""
    text = (ROOT / doc).read_text()
    return [
        textwrap.dedent(b) for b in re.findall(rf"^[ \t]*```{language}\n(.*?)^[ \t]*```", text, re.S | re.M)
    ]
