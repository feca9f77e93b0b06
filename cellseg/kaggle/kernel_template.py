"""Render the self-contained kernel code file from ``templates/kernel_main.py``.

The template is a runnable stdlib-only script whose ``EMBEDDED`` dict (between the
``EMBEDDED BEGIN/END`` marker lines) holds its inputs. Rendering replaces that block with a Python
literal of the real values (weights and sha256s, inference config text, dataset ids), so the
generated file needs nothing but itself, Kaggle's image, and the attached datasets.
"""

from __future__ import annotations

import ast
import pprint
from importlib import resources
from typing import Any, Mapping

TEMPLATE = "kernel_main.py"
BEGIN = "# ---- EMBEDDED BEGIN"
END = "# ---- EMBEDDED END ----"
KEYS = ("competition", "wheels_dataset", "weights_dataset", "weights", "config_name", "config_yaml",
        "cellseg_version", "cellseg_commit", "predict_args", "wheels", "image", "probe",
        "max_failed_share")


def template_text() -> str:
    """The template's source (package data, so it ships inside the wheel)."""
    return (resources.files("cellseg.kaggle") / "templates" / TEMPLATE).read_text(encoding="utf-8")


def _split(text: str) -> tuple[str, str, str]:
    start = text.index(BEGIN)
    start = text.index("\n", start) + 1
    end = text.index(END, start)
    return text[:start], text[start:end], text[end:]


def embedded_of(text: str) -> dict[str, Any]:
    """Parse the ``EMBEDDED`` literal back out of a rendered (or template) code file."""
    _, block, _ = _split(text)
    node = ast.parse(block).body[0]
    if not (isinstance(node, ast.Assign) and node.targets[0].id == "EMBEDDED"):  # type: ignore[attr-defined]
        raise ValueError("the EMBEDDED block must hold one assignment `EMBEDDED = {...}`")
    return ast.literal_eval(node.value)


def render(embedded: Mapping[str, Any]) -> str:
    """The kernel code file with ``embedded`` in place of the template's defaults.

    Raises KeyError for keys the template does not know (a typo would otherwise be ignored on
    Kaggle, after a 9-hour run).
    """
    unknown = sorted(set(embedded) - set(KEYS))
    if unknown:
        raise KeyError(f"unknown kernel inputs {unknown}; valid: {list(KEYS)}")
    head, block, tail = _split(template_text())
    values = embedded_of(head + block + tail)
    values.update(embedded)
    literal = pprint.pformat(values, width=100, sort_dicts=False)
    text = head + f"EMBEDDED = {literal}\n" + tail
    if embedded_of(text) != values:  # pprint output must survive literal_eval unchanged
        raise ValueError("embedded kernel inputs did not round-trip through a Python literal")
    return text
