"""The standard as JSON Schema (draft 2020-12), generated from `columns.COLUMNS` and the registry.

Two documents, shipped as `sae_core/schemas/trajectory-<version>.schema.json` and
`metadata-<version>.schema.json` (written by `schemas/generate.py`; a test keeps them equal to
what these functions give):
- `row_schema()`: one row (one response) as a JSON object, as pyarrow's `Table.to_pylist()` gives
  it: per-row columns are scalars, per-token columns arrays. JSON Schema cannot say that every
  per-token array of a row has the length of `response_ids`; `validate` checks that. Each column
  also carries annotations: `x-sae-level` ("row" or "token"), `x-sae-arrow-type` (the canonical
  Arrow type), `x-sae-accepts` (the Arrow types read) and `x-sae-role` ("input" or "output").
- `metadata_schema()`: the JSON document under the schema metadata key `sae_rl` (section 4 of
  SPEC.md): what every 1.x reader judges (numeric options in range), and for version 1.0 also the
  names this version knows (estimators, mask modes, boundary rules).
"""

from __future__ import annotations

from typing import Any

from .. import registry
from .columns import COLUMNS, OUTPUT_NAMES, Column, needed_columns, type_name
from .metadata import METADATA_KEY, READABLE_MAJOR, SPEC_VERSION

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ROW_FILE = f"trajectory-{SPEC_VERSION}.schema.json"
METADATA_FILE = f"metadata-{SPEC_VERSION}.schema.json"

_MASK_ITEM = {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]}
_JSON_TYPES: dict[str, dict[str, Any]] = {
    "id": {"type": ["string", "integer"]},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "string": {"type": "string"},
    "int_list": {"type": "array", "items": {"type": "integer"}},
    "token_int": {"type": "array", "items": {"type": "integer"}},
    "token_float": {"type": "array", "items": {"type": "number"}},
    "token_mask": {"type": "array", "items": _MASK_ITEM},
}


def _column(c: Column) -> dict[str, Any]:
    """One column's schema: its JSON type (null allowed for an optional per-row column; per-token
    lists are never null, SPEC.md section 2), description and annotations."""
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in _JSON_TYPES[c.kind].items()}
    if not c.required and c.level == "row":
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    out.update({"description": c.description, "x-sae-level": c.level,
                "x-sae-arrow-type": type_name(c.canonical), "x-sae-accepts": c.accepts, "x-sae-role": c.role})
    return out


def estimator_needs() -> dict[str, list[str]]:
    """{estimator, or "estimator/rule" for a segmental one: the columns it reads}; "rewards|reward"
    is `rewards`, or else `reward` placed on the row's last valid token."""
    needs = {name: ["rewards|reward", *needed_columns(name)]
             for name, e in registry.ESTIMATORS.items() if not e.segmental}
    needs.update({f"{name}/{rule}": ["rewards|reward", *needed_columns(name, rule)]
                  for name, e in registry.ESTIMATORS.items() if e.segmental for rule in registry.RULES})
    return needs


def row_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one row of a trajectory file as a JSON object: every
    column of `COLUMNS`, by name; suffixed output sets (`advantages_gae`, ...) by pattern; other
    columns allowed (readers keep them)."""
    outputs = {c.name: c for c in COLUMNS if c.name in OUTPUT_NAMES}
    return {
        "$schema": DRAFT,
        "$id": f"urn:sae-rl:trajectory:{SPEC_VERSION}:row",
        "title": f"sae-rl trajectory standard {SPEC_VERSION}: one row (one response)",
        "description": "One row of a trajectory file as a JSON object (pyarrow's Table.to_pylist()). "
                       "Per-token columns are arrays whose length is the row's response length L, the "
                       "length of response_ids (checked by validation, not by this schema). Columns the "
                       "standard does not name are allowed. The file's schema metadata under "
                       f"{METADATA_KEY!r} follows {METADATA_FILE}.",
        "type": "object",
        "required": [c.name for c in COLUMNS if c.required],
        "properties": {c.name: _column(c) for c in COLUMNS},
        "patternProperties": {f"^{name}_.+$": _column(c) for name, c in outputs.items()},
        "additionalProperties": True,
        "x-sae-spec-version": SPEC_VERSION,
        "x-sae-reward": "`rewards` (per token), or else `reward` (per row) placed on the row's last valid "
                        "token",
        "x-sae-estimator-needs": estimator_needs(),
    }


def _option(option: registry.Option, known: bool) -> dict[str, Any]:
    """An option's recorded value: its type and range (null: not set); with `known`, also the
    choices of version 1.0 (later minor versions may add choices, which 1.x readers do not judge)."""
    if option.kind in ("choice", "rule"):
        out: dict[str, Any] = {"type": ["string", "null"]}
        if known:
            out["enum"] = [*(option.choices if option.kind == "choice" else registry.RULES), None]
    elif option.kind == "int_list":
        int64 = {"type": "integer", "minimum": -registry.INT64_MAX - 1, "maximum": registry.INT64_MAX}
        out = {"type": ["array", "null"], "minItems": 1, "items": int64}
    else:
        out = {"type": ["integer" if option.kind == "int" else "number", "null"]}
        if option.low is not None:
            out["exclusiveMinimum" if option.low_open else "minimum"] = option.low
        if option.high is not None:
            out["exclusiveMaximum" if option.high_open else "maximum"] = option.high
    out["description"] = option.help
    return out


def _parameters(known: bool) -> dict[str, Any]:
    options = {**registry.COMMON, **registry.OPTIONS}
    estimator: dict[str, Any] = {"type": "string", "description": "the estimator's name"}
    if known:
        estimator["enum"] = list(registry.ESTIMATORS)
    return {
        "type": "object",
        "required": ["estimator"],
        "properties": {"estimator": estimator, **{name: _option(o, known) for name, o in options.items()}},
        "additionalProperties": True,
    }


def metadata_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the `sae_rl` metadata document: spec_version (major
    READABLE_MAJOR), producer, and estimators {advantages column: recorded parameters}, each option
    in its registry range; for spec_version SPEC_VERSION, only the names this version knows."""
    major = READABLE_MAJOR
    return {
        "$schema": DRAFT,
        "$id": f"urn:sae-rl:trajectory:{SPEC_VERSION}:metadata",
        "title": f"sae-rl trajectory standard {SPEC_VERSION}: the {METADATA_KEY!r} schema metadata",
        "description": f"The JSON object stored under the key {METADATA_KEY!r} of a trajectory file's Arrow "
                       "schema metadata (SPEC.md section 4). Keys this version does not define are allowed: "
                       f"a later {major}.x may add them.",
        "type": "object",
        "required": ["spec_version"],
        "properties": {
            "spec_version": {"type": "string", "pattern": f"^{major}\\.(0|[1-9][0-9]*)$",
                             "description": f"MAJOR.MINOR; {major}.x readers refuse another major version"},
            "producer": {"type": "string",
                         "description": "the writer, e.g. 'sae-rl 0.1.0' (sae-rl writes its own version)"},
            "estimators": {"type": "object", "description": "each output set's advantages column -> the "
                           "parameters that produced it (sae_core.registry.recorded_params)",
                           "additionalProperties": {"$ref": "#/$defs/parameters"}},
        },
        "additionalProperties": True,
        "if": {"properties": {"spec_version": {"const": SPEC_VERSION}}},
        "then": {"properties": {"estimators": {
            "additionalProperties": {"$ref": "#/$defs/known_parameters"}}}},
        "$defs": {"parameters": _parameters(known=False), "known_parameters": _parameters(known=True)},
    }


__all__ = ["DRAFT", "METADATA_FILE", "ROW_FILE", "estimator_needs", "metadata_schema", "row_schema"]
