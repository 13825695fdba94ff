"""The trajectory standard (schemas/SPEC.md): Arrow tables of LLM rollouts, one row per response.

A table holds per-row columns (`trajectory_id`, `group_id`, `step`, `reward`, ...) and per-token
columns, Arrow lists whose i-th entry has row i's response length (`response_ids`, `logprobs`,
`values`, `rewards`, `response_mask`, `entropy`, and the outputs `advantages`, `returns`,
`boundaries`). The standard's version and the parameters of the estimators that produced the
outputs live in the schema metadata under the one key `sae_rl`.

This module builds and validates such tables, reads and writes Parquet and Arrow IPC (atomically),
streams record batches, converts a batch to the ragged layout (flat [N] columns plus [B + 1]
offsets, zero-copy for float and integer columns) or to padded [B, T] numpy arrays or torch
tensors and back, and runs an estimator on a batch (`compute`).

Time index: per-token entry t of row i is token t of response i (t = 0..L_i - 1), the same t as in
`sae_core.estimators`: values[t] is the critic's value of the prefix before token t.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import ipc

from . import estimators as _estimators
from .estimators import BOUNDARY_RULES, ESTIMATORS, compute_advantages_ragged, estimator_params

SPEC_VERSION = "1.0"
METADATA_KEY = "sae_rl"
READABLE_MAJOR = 1

# ----------------------------------------------------------------------------------------------
# the columns of the standard


@dataclass(frozen=True)
class Column:
    """One column of the standard.

    level: "row" (one value per response) or "token" (a list with the response's length).
    kind: which Arrow types are accepted (see `accepted_types`); the first is the canonical type.
    """

    name: str
    level: str
    kind: str
    required: bool
    role: str  # "input" or "output"
    description: str

    @property
    def canonical(self) -> pa.DataType:
        return _CANONICAL[self.kind]


_CANONICAL = {
    "id": pa.string(),
    "int": pa.int64(),
    "float": pa.float32(),
    "string": pa.string(),
    "int_list": pa.large_list(pa.int32()),
    "token_int": pa.large_list(pa.int32()),
    "token_float": pa.large_list(pa.float32()),
    "token_mask": pa.large_list(pa.bool_()),
}

_ACCEPTED = {
    "id": "string or large_string (integers are accepted too)",
    "int": "any integer type",
    "float": "float32 or float64 (integers are accepted too)",
    "string": "string, large_string or dictionary<string>",
    "int_list": "list or large_list of int32 or int64",
    "token_int": "list or large_list of int32 or int64",
    "token_float": "list or large_list of float32 or float64",
    "token_mask": "list or large_list of bool or of integers holding 0 and 1",
}

COLUMNS: tuple[Column, ...] = (
    Column("trajectory_id", "row", "id", True, "input",
           "Identifies the response; unique within a file."),
    Column("group_id", "row", "id", False, "input",
           "The prompt's uid: responses to the same prompt share it (group baselines such as GRPO)."),
    Column("step", "row", "int", False, "input",
           "The training step (policy version) that sampled the response."),
    Column("prompt_ids", "row", "int_list", False, "input", "The prompt's token ids."),
    Column("response_ids", "token", "token_int", True, "input",
           "The response's token ids; its length L is the row's response length, which every per-token "
           "column has."),
    Column("response_mask", "token", "token_mask", False, "input",
           "1 = a token the policy generated, 0 = a token it did not (tool output in multi-turn rollouts). "
           "Absent: every token is valid."),
    Column("logprobs", "token", "token_float", False, "input",
           "Natural-log probability of the sampled token under the behaviour policy (the policy that "
           "sampled it)."),
    Column("values", "token", "token_float", False, "input",
           "values[t]: the critic's value of the prefix before token t (prompt plus tokens 0..t-1)."),
    Column("rewards", "token", "token_float", False, "input",
           "Token-level reward r_t (outcome reward on the last valid token, plus any per-token terms "
           "such as a KL penalty). Takes precedence over `reward`."),
    Column("reward", "row", "float", False, "input",
           "Scalar outcome reward; when `rewards` is absent it is placed on the row's last valid token."),
    Column("entropy", "token", "token_float", False, "input",
           "The policy's entropy (nats) at token t, over the whole vocabulary."),
    Column("finish_reason", "row", "string", False, "input",
           "Why generation stopped: 'stop', 'length', 'abort', 'tool_calls', or another producer's word."),
    Column("advantages", "token", "token_float", False, "output", "A_t for the actor, from the estimator "
           "recorded in the metadata."),
    Column("returns", "token", "token_float", False, "output", "R_t, the critic's target."),
    Column("boundaries", "token", "token_mask", False, "output",
           "True where token t starts a new segment (segmental estimators); all False otherwise."),
)
COLUMN = {c.name: c for c in COLUMNS}
OUTPUT_NAMES = ("advantages", "returns", "boundaries")

# Per-token data each estimator reads besides rewards (or reward).
_ESTIMATOR_NEEDS = {"gae": ("values",), "mc": ("values",), "vapo": ("values",), "sae": ("values",)}
_RULE_NEEDS = {"logprob": "logprobs", "quantile": "logprobs", "entropy": "entropy",
               "delimiter": "response_ids", "given": "boundaries"}


def needed_columns(estimator: str, boundary: str | None = None) -> tuple[str, ...]:
    """The columns `estimator` (with sae's boundary rule, default "logprob") reads, besides
    `rewards`, which may be replaced by `reward`."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    needs = list(_ESTIMATOR_NEEDS[estimator])
    if estimator == "sae":
        rule = boundary or "logprob"
        if rule in _RULE_NEEDS:  # fixed reads no per-token data
            needs.append(_RULE_NEEDS[rule])
    return tuple(dict.fromkeys(needs))


def boundary_rule(estimator: str, params: Mapping[str, Any]) -> str | None:
    """The boundary rule that `compute(estimator=..., **params)` applies: None for estimators
    without segments, else `estimators.boundary_rule`'s choice, which raises on options that
    conflict. The rule's per-token data is not required in `params`: it comes from the table's
    columns."""
    return _estimators.boundary_rule(estimator, params, require_data=False)


def spec_document() -> dict[str, Any]:
    """The machine-readable form of the standard (schemas/trajectory-1.0.json is this, as JSON)."""
    return {
        "spec_version": SPEC_VERSION,
        "metadata_key": METADATA_KEY,
        "row": "one row per response",
        "columns": [
            {"name": c.name, "level": c.level, "type": _type_name(c.canonical), "accepts": _ACCEPTED[c.kind],
             "required": c.required, "role": c.role, "description": c.description}
            for c in COLUMNS
        ],
        "reward": "`rewards` (per token), or else `reward` (per row) placed on the row's last valid token",
        "estimator_needs": {
            **{name: ["rewards|reward", *needed_columns(name)] for name in ("gae", "mc", "vapo")},
            **{f"sae/{rule}": ["rewards|reward", *needed_columns("sae", rule)] for rule in BOUNDARY_RULES},
        },
        "outputs": "advantages, returns, boundaries; a suffix names an estimator's set "
                   "(advantages_gae, returns_gae, boundaries_gae)",
    }


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        outer = "large_list" if pa.types.is_large_list(t) else "list"
        return f"{outer}<{_type_name(t.value_type)}>"
    return {"float": "float32", "double": "float64", "bool": "bool"}.get(str(t), str(t))


def schema(names: Iterable[str] | None = None, *, estimators: Mapping[str, Mapping[str, Any]] | None = None
           ) -> pa.Schema:
    """The canonical Arrow schema of the given columns (default: all of them), with metadata.

    estimators: {advantages column name: estimator parameters} for the output sets the table holds.
    """
    names = [c.name for c in COLUMNS] if names is None else list(names)
    fields = []
    for name in names:
        col = column_for(name)
        if col is None:
            raise ValueError(f"{name!r} is not a column of the trajectory standard")
        fields.append(pa.field(name, col.canonical, nullable=not col.required))
    return pa.schema(fields, metadata=_metadata_bytes(estimators or {}))


def column_for(name: str) -> Column | None:
    """The standard's column for `name`, including suffixed outputs such as advantages_gae; None
    for a column the standard does not name."""
    if name in COLUMN:
        return COLUMN[name]
    for out in OUTPUT_NAMES:
        if name.startswith(out + "_"):
            return COLUMN[out]
    return None


def _metadata_bytes(estimators: Mapping[str, Mapping[str, Any]]) -> dict[bytes, bytes]:
    from . import __version__
    doc = {"spec_version": SPEC_VERSION, "producer": f"sae-rl {__version__}",
           "estimators": {k: dict(v) for k, v in estimators.items()}}
    return {METADATA_KEY.encode(): json.dumps(doc, sort_keys=True).encode()}


# ----------------------------------------------------------------------------------------------
# errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a table: the column and the first bad row (0-based, in the file)."""

    column: str | None
    row: int | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.row is not None:
            where.append(f"row {self.row}")
        return (", ".join(where) + ": " if where else "") + self.message


class TrajectoryError(ValueError):
    """A table or file that does not follow the standard; `problems` lists every finding."""

    def __init__(self, problems: list[Problem] | str, source: str | None = None):
        self.problems = [Problem(None, None, problems)] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        lines = [prefix + str(p) for p in self.problems]
        super().__init__(lines[0] if len(lines) == 1 else "\n".join([f"{len(lines)} problems:", *lines]))


# ----------------------------------------------------------------------------------------------
# metadata


@dataclass
class Info:
    """What the schema metadata says: the spec version and each output set's estimator."""

    spec_version: str
    estimators: dict[str, dict[str, Any]] = field(default_factory=dict)
    producer: str | None = None
    has_metadata: bool = True


def read_info(sch: pa.Schema, source: str | None = None) -> Info:
    """Parse and check the `sae_rl` metadata of a schema.

    No metadata (a file written by pandas, HF datasets or plain pyarrow): the current version, with
    a warning. A major version other than 1: TrajectoryError naming the readable versions. A newer
    minor version: read, with a warning.
    """
    raw = (sch.metadata or {}).get(METADATA_KEY.encode())
    where = f"{source}: " if source else ""
    if raw is None:
        warnings.warn(f"{where}no {METADATA_KEY!r} metadata (written by another tool?); read as trajectory "
                      f"spec {SPEC_VERSION}", TrajectoryWarning, stacklevel=3)
        return Info(SPEC_VERSION, has_metadata=False)
    try:
        doc = json.loads(raw)
        version = str(doc["spec_version"])
        major, minor = (int(x) for x in version.split("."))
    except (ValueError, KeyError, TypeError) as exc:
        raise TrajectoryError(f"the {METADATA_KEY!r} schema metadata is not valid: {exc}", source) from None
    if major != READABLE_MAJOR:  # before the rest: another major version may lay it out differently
        raise TrajectoryError(f"trajectory spec version {version} is not readable by this sae-rl, which reads "
                              f"versions {READABLE_MAJOR}.x (up to {SPEC_VERSION})", source)
    estimators = doc.get("estimators") or {}
    if not isinstance(estimators, dict) or not all(isinstance(v, dict) for v in estimators.values()):
        raise TrajectoryError(f"the {METADATA_KEY!r} schema metadata is not valid: estimators must map column "
                              "names to parameter objects", source)
    current_minor = int(SPEC_VERSION.split(".")[1])
    if minor > current_minor:
        warnings.warn(f"{where}written with trajectory spec {version}, newer than {SPEC_VERSION}; columns this "
                      "version does not know are kept as they are", TrajectoryWarning, stacklevel=3)
    return Info(version, estimators, doc.get("producer"))


class TrajectoryWarning(UserWarning):
    """A file that is read, but not quite as the standard says (no metadata, a newer minor version)."""


def with_estimators(sch: pa.Schema, estimators: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """`sch` with its metadata recording `estimators` (merged over what it records already)."""
    meta = dict(sch.metadata or {})
    old: dict[str, Any] = {}
    raw = meta.get(METADATA_KEY.encode())
    if raw is not None:
        try:
            old = json.loads(raw).get("estimators") or {}
        except (ValueError, AttributeError):
            old = {}
    meta.update(_metadata_bytes({**old, **estimators}))
    return sch.with_metadata(meta)


# ----------------------------------------------------------------------------------------------
# validation


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _type_ok(kind: str, t: pa.DataType) -> bool:
    if kind == "id":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
    if kind == "int":
        return pa.types.is_integer(t)
    if kind == "float":
        return t in (pa.float32(), pa.float64()) or pa.types.is_integer(t)
    if kind == "string":
        return (pa.types.is_string(t) or pa.types.is_large_string(t)
                or (pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type)
                                                   or pa.types.is_large_string(t.value_type))))
    if not _is_list(t):
        return False
    v = t.value_type
    if kind in ("int_list", "token_int"):
        return v in (pa.int32(), pa.int64())
    if kind == "token_float":
        return v in (pa.float32(), pa.float64())
    if kind == "token_mask":
        return pa.types.is_boolean(v) or pa.types.is_integer(v)
    raise AssertionError(kind)


def schema_problems(sch: pa.Schema, needs: Iterable[str] = ()) -> list[Problem]:
    """Column-level problems: required or needed columns missing, incompatible types.

    needs: columns an estimator will read; "rewards" is satisfied by `reward` too.
    """
    problems = []
    names = set(sch.names)
    for col in COLUMNS:
        if col.required and col.name not in names:
            problems.append(Problem(col.name, None, "missing: the standard requires it"))
    if "rewards" not in names and "reward" not in names:
        problems.append(Problem("rewards", None, "missing, and no `reward` column to place on the last token "
                                                 "either: the table needs one of them"))
    for name in needs:
        if name != "rewards" and name not in names:
            problems.append(Problem(name, None, "missing: the estimator needs it"))
    for f in sch:
        col = column_for(f.name)
        if col is not None and not _type_ok(col.kind, f.type):
            problems.append(Problem(f.name, None, f"has type {_type_name(f.type)}; the standard takes "
                                                  f"{_ACCEPTED[col.kind]}"))
    return problems


def batch_problems(batch: pa.RecordBatch | pa.Table, first_row: int = 0) -> list[Problem]:
    """Value-level problems of a batch whose schema passed `schema_problems`: nulls (in `reward`
    only where it is used, i.e. without `rewards`), per-token columns whose length differs from
    `response_ids`, masks other than 0/1, NaN or inf on valid tokens (tokens whose mask is 0 may
    hold anything), at most one per column and kind, naming the first bad row (numbered from
    `first_row`)."""
    if isinstance(batch, pa.Table):
        problems: list[Problem] = []
        row = first_row
        for b in batch.to_batches():
            problems = _merge(problems, batch_problems(b, row))
            row += b.num_rows
        return problems
    problems = []
    names = batch.schema.names
    if "response_ids" not in names:
        return problems
    ids = batch.column("response_ids")
    lengths = _lengths(ids)
    valid = None
    for name in names:
        col = column_for(name)
        if col is None:
            continue
        arr = batch.column(name)
        null_rows = _null_rows(arr)
        reward_used = name == "reward" and "rewards" not in names  # `rewards` takes precedence
        if null_rows.size and (col.required or col.level == "token" or reward_used):
            problems.append(Problem(name, first_row + int(null_rows[0]), "null"))
            continue
        if col.level != "token":
            if reward_used and arr.null_count == 0:
                x = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                bad = np.flatnonzero(~np.isfinite(x))
                if bad.size:
                    problems.append(Problem(name, first_row + int(bad[0]), f"{x[bad[0]]} is not finite"))
            continue
        if name != "response_ids":
            bad = np.flatnonzero(_lengths(arr) != lengths)
            if bad.size:
                i = int(bad[0])
                problems.append(Problem(name, first_row + i, f"{_lengths(arr)[i]} tokens, but response_ids has "
                                                             f"{lengths[i]}"))
                continue
        _, child = _flat_child(arr)
        if child.null_count:
            i = _row_of(_offsets(arr), int(np.flatnonzero(child.is_null().to_numpy(zero_copy_only=False))[0]))
            problems.append(Problem(name, first_row + i, "null token entry"))
            continue
        if col.kind == "token_mask" and not pa.types.is_boolean(child.type):
            x = child.to_numpy()
            bad = np.flatnonzero((x != 0) & (x != 1))
            if bad.size:
                i = _row_of(_offsets(arr), int(bad[0]))
                problems.append(Problem(name, first_row + i, f"holds {x[bad[0]]}; a mask holds only 0 and 1"))
    if "response_mask" in names and not any(p.column == "response_mask" for p in problems):
        _, child = _flat_child(batch.column("response_mask"))
        valid = _mask_numpy(child)
    for name in names:
        col = column_for(name)
        if col is None or col.kind != "token_float" or any(p.column == name for p in problems):
            continue
        _, child = _flat_child(batch.column(name))
        x = child.to_numpy()
        bad = ~np.isfinite(x)
        if valid is not None:  # masked tokens may hold anything, outputs' too (zero mode, NaN fill)
            bad &= valid
        where = np.flatnonzero(bad)
        if where.size:
            offs = _offsets(batch.column(name))
            i = _row_of(offs, int(where[0]))
            t = int(where[0] - (offs[i] - offs[0]))
            problems.append(Problem(name, first_row + i, f"token {t} is {x[where[0]]}" +
                                    (" (a valid token)" if valid is not None else "")))
    return problems


def _merge(first: list[Problem], more: list[Problem]) -> list[Problem]:
    """Problems of consecutive batches: keep the first per (column, kind of message)."""
    seen = {(p.column, _kind(p.message)) for p in first}
    return first + [p for p in more if (p.column, _kind(p.message)) not in seen]


def _kind(message: str) -> str:
    for word in ("null", "tokens, but", "mask holds", "is nan", "is inf", "is -inf", "duplicate", "not finite"):
        if word in message.lower():
            return word
    return message


def validate(data: pa.Table | pa.RecordBatch, *, estimator: str | None = None, boundary: str | None = None,
             source: str | None = None) -> Info:
    """Check a table against the standard, and against what `estimator` needs when given.

    Returns the parsed metadata (see `read_info`). Raises TrajectoryError listing every problem:
    missing columns, incompatible types, nulls, per-token lengths that differ from response_ids,
    NaN/inf on valid tokens, masks other than 0/1, duplicate trajectory_ids, an unreadable version.
    """
    info = read_info(data.schema, source)
    needs = needed_columns(estimator, boundary) if estimator else ()
    problems = schema_problems(data.schema, needs)
    if not problems:
        problems = batch_problems(data)
        problems += _duplicate_ids(data.column("trajectory_id"))
    if problems:
        raise TrajectoryError(problems, source)
    return info


def _duplicate_ids(ids: pa.Array | pa.ChunkedArray, first_row: int = 0) -> list[Problem]:
    """The first row whose (non-null) id appeared in an earlier row, if any. Null ids are reported
    by `batch_problems`, not here."""
    if pc.count_distinct(ids).as_py() == len(ids) - ids.null_count:
        return []
    values = ids.to_numpy(zero_copy_only=False) if isinstance(ids, pa.Array) else np.concatenate(
        [c.to_numpy(zero_copy_only=False) for c in ids.chunks]) if ids.num_chunks else np.array([])
    rows = (np.flatnonzero(~ids.is_null().to_numpy(zero_copy_only=False)) if ids.null_count
            else np.arange(len(values)))
    keys = values[rows].astype(str)
    order = np.argsort(keys, kind="stable")  # equal ids stay in row order
    repeats = order[1:][keys[order[1:]] == keys[order[:-1]]]
    later = int(rows[repeats.min()])
    dup_of = int(rows[np.flatnonzero(keys == keys[repeats.min()])[0]])
    value = values[dup_of]
    value = value.item() if isinstance(value, np.generic) else value  # 7, not np.int64(7)
    return [Problem("trajectory_id", first_row + later, f"duplicate of row {first_row + dup_of} ({value!r})")]


# ----------------------------------------------------------------------------------------------
# Arrow list helpers


def _offsets(arr: pa.Array) -> np.ndarray:
    """[B + 1] the list offsets of `arr` as stored (not rebased: a slice starts where it starts)."""
    return arr.offsets.to_numpy()


def _lengths(arr: pa.Array) -> np.ndarray:
    return np.diff(_offsets(arr)).astype(np.int64, copy=False)


def _flat_child(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(offsets [B + 1] int64 from 0, the child values of exactly these rows). A sliced list array's
    `.values` is the child of the whole array, so the child is cut to this slice's range."""
    offs = _offsets(arr)
    lo, hi = int(offs[0]), int(offs[-1])
    return (offs - lo).astype(np.int64, copy=False), arr.values.slice(lo, hi - lo)


def _row_of(offsets: np.ndarray, flat_index: int) -> int:
    """The row whose tokens contain `flat_index` (an index into the rebased child)."""
    rebased = offsets - offsets[0]
    return int(np.searchsorted(rebased, flat_index, side="right") - 1)


def _null_rows(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))


def _mask_numpy(child: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(child.type):
        return child.to_numpy(zero_copy_only=False)
    return child.to_numpy() != 0


# ----------------------------------------------------------------------------------------------
# layouts


@dataclass
class Ragged:
    """A batch in the ragged layout.

    offsets: [B + 1] int64 from 0; row i's tokens are [offsets[i], offsets[i + 1]).
    tokens:  per-token columns, each a flat [N] numpy array (float32/float64, int32/int64, or bool
             for masks and boundaries); views of the Arrow buffers where Arrow allows (numbers
             without nulls), copies otherwise (bit-packed bools).
    rows:    per-row columns, each a [B] numpy array.
    """

    offsets: np.ndarray
    tokens: dict[str, np.ndarray]
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        """[B] int64 response lengths."""
        return np.diff(self.offsets)


def to_ragged(batch: pa.RecordBatch | pa.Table, columns: Iterable[str] | None = None) -> Ragged:
    """The columns of a batch in the ragged layout (see `Ragged`).

    columns: names to convert (default: every column). Asking for "rewards" of a table that has
    only `reward` gives the token-level rewards the standard defines: zeros, with `reward` on each
    row's last valid token. A Table with several chunks is combined first (a copy).
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist(
            [], schema=batch.schema)
    names = list(batch.schema.names if columns is None else columns)
    if "response_ids" in batch.schema.names:
        offsets, _ = _flat_child(batch.column("response_ids"))
    else:
        offsets = None
    tokens, rows = {}, {}
    for name in names:
        if name == "rewards" and name not in batch.schema.names and "reward" in batch.schema.names:
            if offsets is None:
                raise TrajectoryError([Problem("response_ids", None, "missing: it gives the rows' lengths")])
            tokens["rewards"] = place_reward(batch, offsets)
            continue
        if name not in batch.schema.names:
            raise TrajectoryError([Problem(name, None, "missing")])
        arr = batch.column(name)
        col = column_for(name)
        if _is_list(arr.type) and (col is None or col.level == "token"):
            offs, child = _flat_child(arr)
            if offsets is None:
                offsets = offs
            elif not np.array_equal(offs, offsets):  # a column the validation does not know
                row = int(np.flatnonzero(np.diff(offs) != np.diff(offsets))[0])
                raise TrajectoryError([Problem(name, row, f"{int(offs[row + 1] - offs[row])} tokens, but the row "
                                                          f"has {int(offsets[row + 1] - offsets[row])}")])
            if pa.types.is_boolean(child.type):
                tokens[name] = child.to_numpy(zero_copy_only=False)
            else:
                tokens[name] = child.to_numpy(zero_copy_only=child.null_count == 0)
        else:
            rows[name] = arr.to_numpy(zero_copy_only=False)
    if offsets is None:
        offsets = np.zeros(batch.num_rows + 1, dtype=np.int64)
    return Ragged(offsets, tokens, rows)


def place_reward(batch: pa.RecordBatch, offsets: np.ndarray) -> np.ndarray:
    """[N] float32 token-level rewards from the per-row `reward`: zeros, with reward[i] on row i's last
    valid token (the last with response_mask 1; rows without a valid token get nothing)."""
    reward = batch.column("reward").to_numpy(zero_copy_only=False).astype(np.float32)
    n = int(offsets[-1])
    out = np.zeros(n, dtype=np.float32)
    if "response_mask" in batch.schema.names:
        valid = _mask_numpy(_flat_child(batch.column("response_mask"))[1])
        last_valid = np.maximum.accumulate(np.where(valid, np.arange(n), -1)) if n else np.empty(0, np.int64)
        ends = offsets[1:] - 1
        nonempty = offsets[1:] > offsets[:-1]
        last = np.full(len(reward), -1, dtype=np.int64)
        last[nonempty] = last_valid[ends[nonempty]]
        has = nonempty & (last >= offsets[:-1])
    else:
        has = offsets[1:] > offsets[:-1]
        last = offsets[1:] - 1
    out[last[has]] = reward[has]
    return out


def from_ragged(offsets: Any, tokens: Mapping[str, Any], rows: Mapping[str, Any] | None = None, *,
                estimators: Mapping[str, Mapping[str, Any]] | None = None) -> pa.Table:
    """A table in the standard from the ragged layout (the inverse of `to_ragged`).

    offsets: [B + 1] integer, from 0, non-decreasing. tokens: {name: [N] array} (numpy, or torch
    tensors, moved to the CPU). rows: {name: [B] array or list}. Columns of the standard get their
    canonical types; float64 values are rounded to float32 (the standard's per-token type).
    estimators: recorded in the metadata (see `schema`). Checks the result with `validate`.
    """
    offs = _as_numpy(offsets).astype(np.int64)
    if offs.ndim != 1 or offs.size == 0 or offs[0] != 0 or (np.diff(offs) < 0).any():
        raise ValueError("offsets must be 1-D [B + 1], start at 0 and never decrease")
    n = int(offs[-1])
    arrays = {}
    for name, values in (rows or {}).items():
        col = column_for(name)
        if isinstance(values, pa.Array):
            arrays[name] = values
            continue
        values = values if isinstance(values, list) else _as_numpy(values)
        if len(values) != len(offs) - 1:
            raise ValueError(f"row column {name!r} has {len(values)} entries for {len(offs) - 1} rows")
        typ = col.canonical if col else None
        if col is not None and col.kind == "id" and np.asarray(values).dtype.kind in "iu":
            typ = pa.int64()  # integer ids stay integers (the standard accepts them)
        arrays[name] = pa.array(values, type=typ)
    offsets_pa = pa.array(offs, type=pa.int64())
    for name, values in tokens.items():
        flat = _as_numpy(values)
        if flat.ndim != 1 or flat.shape[0] != n:
            raise ValueError(f"token column {name!r} has shape {flat.shape}; offsets say [{n}]")
        col = column_for(name)
        if col is not None:
            flat = flat.astype(col.canonical.value_type.to_pandas_dtype(), copy=False)
        arrays[name] = pa.LargeListArray.from_arrays(offsets_pa, pa.array(flat))
    table = pa.table(arrays)
    table = table.replace_schema_metadata(_metadata_bytes(estimators or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrajectoryWarning)
        validate(table)
    return table


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_padded(batch: pa.RecordBatch | pa.Table, columns: Iterable[str] | None = None, *, tensors: bool = False,
              device: Any = None, length: int | None = None) -> dict[str, Any]:
    """Per-token columns as right-padded [B, T] arrays, T = the longest response (or `length`).

    Returns {name: [B, T]} for the per-token `columns` (default: every per-token column), plus
    "response_mask": [B, T] bool, True at the row's valid tokens (the file's mask where it has one,
    all of the response otherwise) and False in the padding. Padding holds 0 (False for bools).
    Dtypes are the columns' (float32/float64, int32/int64, bool). tensors=True gives torch tensors
    on `device`. "rewards" is synthesised from `reward` as in `to_ragged`.
    """
    names = _token_names(batch, columns)
    if "response_mask" in batch.schema.names and "response_mask" not in names:
        names.append("response_mask")  # the returned mask is the file's, whichever columns are asked for
    ragged = to_ragged(batch, names)
    lengths = ragged.lengths
    T = int(lengths.max()) if lengths.size else 0
    if length is not None:
        if length < T:
            raise ValueError(f"length={length} is shorter than the longest response ({T} tokens)")
        T = length
    B = lengths.shape[0]
    inside = np.arange(T)[None, :] < lengths[:, None]  # [B, T]
    out = {}
    for name, flat in ragged.tokens.items():
        padded = np.zeros((B, T), dtype=flat.dtype)
        padded[inside] = flat
        out[name] = padded
    mask = inside.copy()
    if "response_mask" in out:
        mask &= out["response_mask"].astype(bool)
    out["response_mask"] = mask
    if tensors:
        import torch
        out = {k: torch.from_numpy(v).to(device) if device is not None else torch.from_numpy(v)
               for k, v in out.items()}
    return out


def _token_names(batch, columns) -> list[str]:
    if columns is not None:
        return list(columns)
    return [f.name for f in batch.schema if _is_list(f.type)
            and (column_for(f.name) is None or column_for(f.name).level == "token")]


def from_padded(tokens: Mapping[str, Any], response_mask: Any, rows: Mapping[str, Any] | None = None, *,
                lengths: Any = None, estimators: Mapping[str, Mapping[str, Any]] | None = None) -> pa.Table:
    """A table from right-padded [B, T] arrays (the inverse of `to_padded`).

    tokens: {name: [B, T] array or tensor}. response_mask: [B, T] 0/1. lengths: [B] each row's
    response length; default: up to its last valid token (interior masked tokens stay in the row
    with mask 0; trailing ones are padding). The table gets a `response_mask` column unless every
    kept token is valid. rows: per-row columns, as in `from_ragged`.
    """
    mask = _as_numpy(response_mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"response_mask must be [B, T]; got shape {mask.shape}")
    B, T = mask.shape
    if lengths is None:  # up to the last valid token (argmax of an empty [B, 0] row would raise)
        lengths = (np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0) if T
                   else np.zeros(B, np.int64))
    lengths = _as_numpy(lengths).astype(np.int64)
    if lengths.shape != (B,) or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"lengths must be [B] = [{B}] integers in [0, {T}]")
    inside = np.arange(T)[None, :] < lengths[:, None]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = {}
    for name, values in tokens.items():
        x = _as_numpy(values)
        if x.shape != (B, T):
            raise ValueError(f"{name} has shape {x.shape}; response_mask has {(B, T)}")
        flat[name] = x[inside]
    kept_mask = mask[inside]
    if not kept_mask.all() and "response_mask" not in flat:
        flat["response_mask"] = kept_mask
    return from_ragged(offsets, flat, rows, estimators=estimators)


# ----------------------------------------------------------------------------------------------
# files

_PARQUET_SUFFIXES = (".parquet", ".pq")
_IPC_SUFFIXES = (".arrow", ".ipc", ".feather", ".arrows")


def file_format(path: str | os.PathLike) -> str:
    """"parquet" or "ipc", from the suffix, else from the first bytes of an existing file."""
    p = Path(path)
    if p.suffix.lower() in _PARQUET_SUFFIXES:
        return "parquet"
    if p.suffix.lower() in _IPC_SUFFIXES:
        return "ipc"
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return "parquet"
    return "parquet" if head[:4] == b"PAR1" else "ipc"


class _Reader:
    """One open file: its schema and its record batches, with errors as TrajectoryError."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.format = file_format(path)
        if not os.path.exists(self.path):
            raise TrajectoryError("no such file", self.path)
        try:
            if self.format == "parquet":
                self._pq = pq.ParquetFile(self.path, memory_map=True)
                self.schema = self._pq.schema_arrow
                self.num_rows = self._pq.metadata.num_rows
            else:
                source = pa.memory_map(self.path)
                if source.read(6) == b"ARROW1":  # the file format (magic, ..., footer, magic)
                    source.seek(0)
                    self._ipc = ipc.open_file(source)
                    self.num_rows = sum(self._ipc.get_record_batch(i).num_rows
                                        for i in range(self._ipc.num_record_batches))
                else:  # the stream format, as HF datasets caches tables
                    source.seek(0)
                    self._ipc = ipc.open_stream(source)
                    self.num_rows = None
                self.schema = self._ipc.schema
            _ = self.schema.names  # decoded here: corruption can leave names that are not UTF-8
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise TrajectoryError(f"not a readable {self._kind()} file (truncated or corrupted?): {exc}",
                                  self.path) from None

    def _kind(self) -> str:
        return "Parquet" if self.format == "parquet" else "Arrow IPC"

    def batches(self, batch_size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        try:
            if self.format == "parquet":
                yield from self._pq.iter_batches(batch_size=batch_size, columns=columns)
            else:
                if isinstance(self._ipc, ipc.RecordBatchFileReader):
                    stream = (self._ipc.get_record_batch(i) for i in range(self._ipc.num_record_batches))
                else:
                    stream = self._ipc
                for b in stream:
                    # IPC readers trust the file's offsets: a corrupted one would crash Arrow's kernels
                    b.validate(full=True)
                    yield from _split(b.select(columns) if columns else b, batch_size)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise TrajectoryError(f"not a readable {self._kind()} file (truncated or corrupted?): {exc}",
                                  self.path) from None


def _split(batch: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, max(batch.num_rows, 1), size):
        yield batch.slice(start, size)


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """The Arrow schema of a Parquet or IPC file (with its metadata), without reading its data.
    Raises TrajectoryError naming the file when it cannot be read."""
    return _Reader(path).schema


def count_rows(path: str | os.PathLike) -> int:
    """The number of rows (responses) of a file: from the Parquet footer or the IPC file's batches;
    an IPC stream is read through (one column) to count them."""
    reader = _Reader(path)
    if reader.num_rows is not None:
        return reader.num_rows
    return sum(b.num_rows for b in reader.batches(1 << 30, [reader.schema.names[0]] if reader.schema.names else None))


def iter_batches(path: str | os.PathLike, *, batch_size: int = 1024, columns: Iterable[str] | None = None,
                 estimator: str | None = None, boundary: str | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet or Arrow IPC file as record batches of at most `batch_size` rows, each
    checked against the standard (memory: one batch, not the file). Raises TrajectoryError naming
    the file, the column and the first bad row (counted from the start of the file)."""
    reader = _Reader(path)
    read_info(reader.schema, reader.path)
    needs = needed_columns(estimator, boundary) if estimator else ()
    problems = schema_problems(reader.schema, needs)
    if problems:
        raise TrajectoryError(problems, reader.path)
    cols = None if columns is None else list(columns)
    row = 0
    for batch in reader.batches(batch_size, cols):
        problems = batch_problems(batch, row)
        if problems:
            raise TrajectoryError(problems, reader.path)
        row += batch.num_rows
        yield batch


def read_table(path: str | os.PathLike, *, columns: Iterable[str] | None = None, estimator: str | None = None,
               boundary: str | None = None) -> pa.Table:
    """A whole Parquet or Arrow IPC file as a Table, validated (see `validate`)."""
    reader = _Reader(path)
    cols = None if columns is None else list(columns)
    batches = list(reader.batches(1 << 30, cols))
    sch = reader.schema if cols is None else pa.schema([reader.schema.field(c) for c in cols],
                                                       metadata=reader.schema.metadata)
    table = pa.Table.from_batches([b for b in batches if b.num_rows], schema=sch)
    validate(table, estimator=estimator, boundary=boundary, source=reader.path)
    return table


@dataclass
class Summary:
    """What `validate_file` found in a good file."""

    path: str
    rows: int
    tokens: int
    info: Info

    def line(self) -> str:
        outputs = ", ".join(f"{k}={v.get('estimator', '?')}" for k, v in sorted(self.info.estimators.items()))
        meta = f"spec {self.info.spec_version}" + ("" if self.info.has_metadata else " (no metadata: assumed)")
        return (f"{self.path}: ok, {self.rows:,} trajectories, {self.tokens:,} tokens, {meta}"
                + (f", outputs {outputs}" if outputs else ", no outputs"))


def validate_file(path: str | os.PathLike, *, estimator: str | None = None, boundary: str | None = None,
                  batch_size: int = 4096) -> Summary:
    """Check a whole file in streaming fashion (memory: one batch plus the trajectory ids).

    Every problem is reported with the first row where it occurs; raises TrajectoryError.
    """
    reader = _Reader(path)
    info = read_info(reader.schema, reader.path)
    needs = needed_columns(estimator, boundary) if estimator else ()
    problems = schema_problems(reader.schema, needs)
    if problems:
        raise TrajectoryError(problems, reader.path)
    rows = tokens = 0
    ids = []
    for batch in reader.batches(batch_size, None):
        problems = _merge(problems, batch_problems(batch, rows))
        ids.append(batch.column("trajectory_id"))
        tokens += int(_lengths(batch.column("response_ids")).sum())
        rows += batch.num_rows
    if ids:
        problems += _duplicate_ids(pa.chunked_array(ids, type=reader.schema.field("trajectory_id").type))
    if problems:
        raise TrajectoryError(problems, reader.path)
    return Summary(reader.path, rows, tokens, info)


def write_table(table: pa.Table | pa.RecordBatch, path: str | os.PathLike, *, format: str | None = None,
                overwrite: bool = False, row_group_rows: int = 1024) -> Path:
    """Write a table in the standard to Parquet or Arrow IPC (file format), atomically.

    The table is validated first. It is written under a temporary name in the target directory and
    renamed when whole, so `path` holds the complete file or nothing new. An existing `path` is
    refused unless overwrite=True. format: "parquet" or "ipc" (default: from the suffix).
    Parquet row groups hold `row_group_rows` responses (readers stream one group at a time).
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrajectoryWarning)
        validate(table, source=str(path))
    if (table.schema.metadata or {}).get(METADATA_KEY.encode()) is None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **_metadata_bytes({})})
    with TrajectoryWriter(path, table.schema, format=format, overwrite=overwrite,
                          row_group_rows=row_group_rows) as writer:
        writer.write(table)
    return Path(path)


class TrajectoryWriter:
    """Write record batches to one file, atomically: the file appears at `path` when `close()` runs
    after every batch was written, and not at all if an exception leaves the `with` block.

    Batches are not validated here (see `validate`); their schema must equal `schema`. Missing
    parent directories are created. IPC files ending in `.arrows` get the stream format, other IPC
    files the file format (random access, a footer that makes truncation detectable).
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, format: str | None = None,
                 overwrite: bool = False, row_group_rows: int = 1024):
        self.path = Path(path)
        self.format = format or file_format(path)
        if self.format not in ("parquet", "ipc"):
            raise ValueError(f"format must be 'parquet' or 'ipc'; got {format!r}")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.schema = schema
        self.overwrite = overwrite
        self.row_group_rows = row_group_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{id(self):x}")
        if self.format == "parquet":
            # dictionary encoding pays off only for repeated per-row strings (group_id, finish_reason);
            # on per-token lists it is tried and abandoned page by page, at a cost
            dictionary = [f.name for f in schema if not _is_list(f.type)]
            self._writer = pq.ParquetWriter(self.tmp, schema, use_dictionary=dictionary)
        else:
            self._sink = pa.OSFile(str(self.tmp), "wb")
            stream = self.path.suffix.lower() == ".arrows"  # the usual suffix of the IPC stream format
            self._writer = (ipc.new_stream if stream else ipc.new_file)(self._sink, schema)
        self._open = True

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self.format == "parquet":
            table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
            self._writer.write_table(table, row_group_size=self.row_group_rows)
        else:
            self._writer.write(data)

    def close(self) -> None:
        """Finish the file and move it to `path`; without overwrite=True a `path` that appeared
        since opening is refused (FileExistsError) and kept. The temporary file never stays."""
        try:
            if not self._finish():
                return
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                try:
                    os.link(self.tmp, self.path)  # atomic: fails if `path` exists, never replaces it
                except FileExistsError:
                    raise FileExistsError(f"{self.path} exists (it appeared while this file was written); "
                                          "pass overwrite=True to replace it") from None
                except OSError:  # a file system without hard links
                    if self.path.exists():
                        raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it") from None
                    os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the temporary file; `path` is left as it was."""
        try:
            self._finish()
        finally:
            self.tmp.unlink(missing_ok=True)

    def _finish(self) -> bool:
        """Close the writer (once); False if it was closed already."""
        if not self._open:
            return False
        self._open = False
        try:
            self._writer.close()
        finally:
            if self.format == "ipc":
                self._sink.close()
        return True

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------------------------
# estimators on tables


def compute(batch: pa.RecordBatch | pa.Table, *, estimator: str = "sae", suffix: str = "", backend: str = "auto",
            **params: Any) -> pa.RecordBatch | pa.Table:
    """Run an estimator on a batch and append (or replace) its outputs.

    Adds `advantages{suffix}`, `returns{suffix}` (large_list<float32>) and `boundaries{suffix}`
    (large_list<bool>), each entry the row's response length, and records the estimator's
    parameters in the schema metadata under the advantages column's name. Every other column is
    kept as it is. params: the keyword arguments of `compute_advantages` (gamma, lam, threshold,
    mask_mode, critic_lam, alpha, boundary rule options); per-token rule data (`logprobs`,
    `entropy`, `response_ids`, `boundaries`) comes from the table's columns.
    """
    if isinstance(batch, pa.Table):
        out = [compute(b, estimator=estimator, suffix=suffix, backend=backend, **params)
               for b in batch.to_batches()]
        if not out:
            empty = compute(pa.RecordBatch.from_pylist([], schema=batch.schema), estimator=estimator,
                            suffix=suffix, backend=backend, **params)
            return pa.Table.from_batches([], schema=empty.schema)
        return pa.Table.from_batches(out)
    needs = needed_columns(estimator, boundary_rule(estimator, params))
    problems = schema_problems(batch.schema, needs)
    if problems:
        raise TrajectoryError(problems)
    mask_name = ["response_mask"] if "response_mask" in batch.schema.names else []
    ragged = to_ragged(batch, dict.fromkeys(["rewards", *needs, *mask_name]))
    t = ragged.tokens
    kwargs = dict(params, estimator=estimator)
    for name in ("logprobs", "response_ids", "entropy", "boundaries"):
        if name in needs:
            kwargs[name] = t[name]
    result = compute_advantages_ragged(t["rewards"], t["values"], ragged.offsets,
                                       response_mask=t.get("response_mask"), backend=backend, **kwargs)
    offsets = pa.array(ragged.offsets, type=pa.int64())
    new = {
        f"advantages{suffix}": pa.LargeListArray.from_arrays(offsets, pa.array(
            np.asarray(result.advantages, dtype=np.float32))),
        f"returns{suffix}": pa.LargeListArray.from_arrays(offsets, pa.array(np.asarray(result.returns, dtype=np.float32))),
        f"boundaries{suffix}": pa.LargeListArray.from_arrays(offsets, pa.array(np.asarray(result.boundaries, dtype=bool))),
    }
    # other columns keep their fields (nullability, field metadata); replaced outputs keep their place
    fields = [pa.field(f.name, new[f.name].type) if f.name in new else f for f in batch.schema]
    fields += [pa.field(n, a.type) for n, a in new.items() if n not in batch.schema.names]
    arrays = [new[f.name] if f.name in new else batch.column(f.name) for f in fields]
    sch = with_estimators(pa.schema(fields, metadata=batch.schema.metadata),
                          {f"advantages{suffix}": estimator_params(**kwargs)})
    return pa.RecordBatch.from_arrays(arrays, schema=sch)


def estimator_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `compute` / `compute_advantages` that reproduce recorded parameters
    (the metadata's entry for an output set: `EstimatorSpec.params()`)."""
    return {k: v for k, v in params.items() if v is not None}


__all__ = [
    "COLUMNS", "Column", "Info", "METADATA_KEY", "Problem", "Ragged", "SPEC_VERSION", "Summary",
    "TrajectoryError", "TrajectoryWarning", "TrajectoryWriter", "boundary_rule", "column_for", "compute",
    "count_rows", "estimator_kwargs", "file_format", "from_padded", "from_ragged", "iter_batches",
    "needed_columns", "read_info", "read_schema", "read_table", "schema", "spec_document", "to_padded",
    "to_ragged", "validate", "validate_file", "with_estimators", "write_table",
]
