"""What a results record must hold to be read: each cell field of its type (CellResult's), integers
that fit 64 bits, finite numbers, planted sentences with their text, a printable task name. A
hand-edited or foreign file is refused with one line naming the field, before anything is drawn."""

from __future__ import annotations

import json
import math
from typing import Any

REQUIRED = ("length", "depth", "trial", "outcome")
"""Cell fields every record has, in every schema version."""
PLANTED = {"text": "str", "value": "str", "role": "str", "depth": "float", "token_offset": "int", "tokens": "int",
           "depth_actual": "float"}
"""A planted sentence's fields (niah.prompts.haystack.PlantedPiece): `text` always, the others when present."""
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a finite number"),
    "str": ((str,), "a string"),
    "tuple[dict[str, Any], ...]": ((list,), "an array"),
}
_INT64 = 2**63


def short(value: Any) -> str:
    """`value` as JSON, cut to 160 characters (for one-line messages)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def record_problem(record: dict[str, Any], cell_types: dict[str, str], outcomes: tuple[str, ...]) -> str | None:
    """What makes a record unreadable, None when nothing does; `cell_types` maps each cell field to its
    annotation (`int`, `float | None`, ...)."""
    version = record.get("schema_version", 0)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        return f"schema_version is {short(version)}, expected an integer"
    if record.get("record") == "header" and not isinstance(record.get("fingerprint", {}), dict):
        return f"the header's fingerprint is {short(record['fingerprint'])}, expected an object"
    if record.get("record") != "cell":
        return None
    for name, annotation in cell_types.items():
        value = record.get(name)
        if value is None:
            if name in REQUIRED:
                return f"the cell has no {name}"
            continue
        problem = _value_problem(value, annotation.split(" |")[0])
        if problem:
            return f"cell field {name} is {short(value)}, expected {problem}"
    if record["outcome"] not in outcomes:
        return f"outcome {short(record['outcome'])} is not one of {', '.join(outcomes)}"
    if not (record.get("task") or "").isprintable():
        return f"task {short(record['task'])} is not a printable name"
    for index, item in enumerate(record.get("planted") or []):
        problem = _planted_problem(item)
        if problem:
            return f"planted sentence {index} {problem}"
    return None


def _value_problem(value: Any, kind: str) -> str | None:
    """The expected kind, when `value` is not one."""
    kinds, expected = _KINDS[kind]
    if isinstance(value, bool) or not isinstance(value, kinds):
        return expected
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return "an integer that fits 64 bits"
    if isinstance(value, float) and not math.isfinite(value):
        return expected
    return None


def _planted_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"is {short(item)}, expected an object"
    if "text" not in item:
        return "has no text"
    for name, kind in PLANTED.items():
        if name not in item:
            continue
        problem = _value_problem(item[name], kind)
        if problem:
            return f"field {name} is {short(item[name])}, expected {problem}"
    return None
