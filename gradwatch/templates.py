"""Annotation templates: which fields a template may use, bounded format specs, rendering.

Rule annotations (and the stop-file path) are Python ``str.format`` templates
written by users. Only named fields from a fixed list are allowed, with no
attribute access (``{labels.__class__}`` would reach Python internals) and
format widths bounded (``{value:>999999999}`` allocates 1 GB). Field values
are :class:`Num` (numbers read by humans, via :func:`gradwatch.fmt.human`),
:class:`Factor` (growth levels) or :data:`NOT_APPLICABLE`.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

from gradwatch.fmt import human

_isfinite = math.isfinite


class Num(float):
    """A float that formats for humans when no format spec is given.

    ``{value}`` renders 826256.0 as ``826,256`` and 1.5e-05 as ``1.5e-05``;
    ``{value:.2f}`` still works as for any float. NaN and ±Inf render as
    ``NaN``, ``+Inf`` and ``-Inf`` with or without a spec (Python's own
    ``nan``/``inf`` read like typos in an alert).
    """

    def __format__(self, spec: str) -> str:
        if not spec:
            return human(self)
        out = format(float(self), spec)  # errors name "float", not this class
        if _isfinite(self):
            return out
        return out.replace("nan", "NaN").replace("inf", "Inf")

    def __str__(self) -> str:
        return human(self)


class Factor(Num):
    """A growth rule's level: a factor, so ``{threshold}`` reads ``x10``, not a value of 10."""

    def __format__(self, spec: str) -> str:
        return "x" + human(self) if not spec else super().__format__(spec)

    def __str__(self) -> str:
        return "x" + human(self)


class _NotApplicable:
    """A template field that has no value for this rule kind (e.g. threshold of nonfinite)."""

    def __format__(self, spec: str) -> str:
        return "n/a"

    def __str__(self) -> str:
        return "n/a"


NOT_APPLICABLE = _NotApplicable()
TEMPLATE_FIELDS = (
    "rule",
    "run",
    "tag",
    "step",
    "value",
    "threshold",
    "severity",
    "labels",
    "ratio",
    "for",
    "direction",
    "within",
    "zscore",
    "baseline",
    "baseline_step",
)


# {labels[team]}: one index by a label name, nothing else ({labels.__class__} would reach Python internals)
_LABEL_INDEX = re.compile(r"\[[A-Za-z_][A-Za-z0-9_]*\]")
# a format width or precision above this is a mistake or an attack ({value:>999999999} allocates 1 GB)
MAX_FORMAT_WIDTH = 100


def _check_spec(name: str, spec: str | None) -> None:
    """Refuse nested fields in a format spec and any number (width, precision) over MAX_FORMAT_WIDTH."""
    if not spec:
        return
    if "{" in spec or "}" in spec:
        raise ValueError(f"field {{{name}:{spec}}}: a format spec cannot hold another field")
    if any(len(n) > 3 or int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", spec)):
        raise ValueError(
            f"field {{{name}:{spec}}}: format width and precision are limited to {MAX_FORMAT_WIDTH}"
        )


def template_fields(text: str, allowed: tuple[str, ...], indexable: str | None = None) -> set[str]:
    """The fields a ``str.format`` template uses; ValueError unless each is a name from ``allowed``
    (``indexable[name]`` too), without attribute access, and with a bounded format spec."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:  # "{value" or "}" alone
        raise ValueError(f"bad template: {e} (write {{{{ and }}}} for literal braces)") from None
    fields: set[str] = set()
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base == "" or base.isdigit():
            named = ", ".join(f"{{{f}}}" for f in allowed[:3])
            raise ValueError(f"positional fields like {{}} or {{0}} are not allowed; use {named}, ...")
        if base not in allowed:
            raise ValueError(f"unknown field {{{base}}} (fields: {', '.join(allowed)})")
        if name != base and not (base == indexable and _LABEL_INDEX.fullmatch(name[len(base) :])):
            only = f"; only {{{indexable}[name]}} may index" if indexable else ""
            raise ValueError(f"field {{{name}}}: no attribute or index access{only}")
        _check_spec(name, spec)
        fields.add(base)
    return fields


class Template:
    """An annotation template: Python ``str.format`` with named fields only."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields = template_fields(text, TEMPLATE_FIELDS, indexable="labels")

    def check(self, fields: dict[str, Any]) -> None:
        """Render once; raises ValueError naming what is wrong (bad format spec, missing label)."""
        try:
            self.text.format_map(fields)
        except KeyError as e:
            raise ValueError(f"no label {e} in this rule's labels") from None
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"cannot render: {e}") from None

    def render(self, fields: dict[str, Any]) -> str:
        try:
            return self.text.format_map(fields)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            return f"{self.text} (template error: {e})"


__all__ = [
    "MAX_FORMAT_WIDTH",
    "NOT_APPLICABLE",
    "TEMPLATE_FIELDS",
    "Factor",
    "Num",
    "Template",
    "template_fields",
]
