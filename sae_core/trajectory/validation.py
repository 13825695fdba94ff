"""Checking a table against the standard: columns and types, then values, then unique ids.

`schema_problems` looks at the schema only (cheap, before reading any data); `batch_problems` at
the values of one batch, so that a file can be checked in a stream; `duplicate_ids` across a whole
file. `validate` does all three on a table in memory and raises TrajectoryError listing every
problem, each with its column and first bad row.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import COLUMNS, column_for, needed_columns, type_name
from .errors import Problem, TrajectoryError
from .lists import flat_child, lengths, mask_numpy, null_rows, offsets, row_of
from .metadata import Info, read_info


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
        if col is not None and not col.accepts_type(f.type):
            problems.append(Problem(f.name, None, f"has type {type_name(f.type)}; the standard takes "
                                                  f"{col.accepts}"))
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
            problems = merge_problems(problems, batch_problems(b, row))
            row += b.num_rows
        return problems
    problems = []
    names = batch.schema.names
    if "response_ids" not in names:
        return problems
    row_lengths = lengths(batch.column("response_ids"))
    valid = None
    for name in names:
        col = column_for(name)
        if col is None:
            continue
        arr = batch.column(name)
        nulls = null_rows(arr)
        reward_used = name == "reward" and "rewards" not in names  # `rewards` takes precedence
        if nulls.size and (col.required or col.level == "token" or reward_used):
            problems.append(Problem(name, first_row + int(nulls[0]), "null"))
            continue
        if col.level != "token":
            if reward_used and arr.null_count == 0:
                x = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                bad = np.flatnonzero(~np.isfinite(x))
                if bad.size:
                    problems.append(Problem(name, first_row + int(bad[0]), f"{x[bad[0]]} is not finite"))
            continue
        if name != "response_ids":
            bad = np.flatnonzero(lengths(arr) != row_lengths)
            if bad.size:
                i = int(bad[0])
                problems.append(Problem(name, first_row + i, f"{lengths(arr)[i]} tokens, but response_ids has "
                                                             f"{row_lengths[i]}"))
                continue
        _, child = flat_child(arr)
        if child.null_count:
            i = row_of(offsets(arr), int(np.flatnonzero(child.is_null().to_numpy(zero_copy_only=False))[0]))
            problems.append(Problem(name, first_row + i, "null token entry"))
            continue
        if col.kind == "token_mask" and not pa.types.is_boolean(child.type):
            x = child.to_numpy()
            bad = np.flatnonzero((x != 0) & (x != 1))
            if bad.size:
                i = row_of(offsets(arr), int(bad[0]))
                problems.append(Problem(name, first_row + i, f"holds {x[bad[0]]}; a mask holds only 0 and 1"))
    if "response_mask" in names and not any(p.column == "response_mask" for p in problems):
        _, child = flat_child(batch.column("response_mask"))
        valid = mask_numpy(child)
    for name in names:
        col = column_for(name)
        if col is None or col.kind != "token_float" or any(p.column == name for p in problems):
            continue
        _, child = flat_child(batch.column(name))
        x = child.to_numpy()
        bad = ~np.isfinite(x)
        if valid is not None:  # masked tokens may hold anything, outputs' too (zero mode, NaN fill)
            bad &= valid
        where = np.flatnonzero(bad)
        if where.size:
            offs = offsets(batch.column(name))
            i = row_of(offs, int(where[0]))
            t = int(where[0] - (offs[i] - offs[0]))
            problems.append(Problem(name, first_row + i, f"token {t} is {x[where[0]]}" +
                                    (" (a valid token)" if valid is not None else "")))
    return problems


def merge_problems(first: list[Problem], more: list[Problem]) -> list[Problem]:
    """Problems of consecutive batches: keep the first per (column, kind of message)."""
    seen = {(p.column, _kind(p.message)) for p in first}
    return first + [p for p in more if (p.column, _kind(p.message)) not in seen]


def _kind(message: str) -> str:
    for word in ("null", "tokens, but", "mask holds", "is nan", "is inf", "is -inf", "duplicate", "not finite"):
        if word in message.lower():
            return word
    return message


def duplicate_ids(ids: pa.Array | pa.ChunkedArray, first_row: int = 0) -> list[Problem]:
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
        problems += duplicate_ids(data.column("trajectory_id"))
    if problems:
        raise TrajectoryError(problems, source)
    return info


__all__ = ["batch_problems", "duplicate_ids", "merge_problems", "schema_problems", "validate"]
