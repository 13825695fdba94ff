"""Checking a table against the standard: columns and types, then values, then unique ids.

`schema_problems` looks at the schema only (cheap, before reading any data); `batch_problems` at
the values of one batch; `FileCheck` is the one validation of a table or file read batch by batch:
both, plus trajectory ids unique across batches (and across the files of a job, through a shared
`IdIndex`). `validate` (a table in memory), `validate_file`, `iter_batches` and `read_table` all go
through `FileCheck`, so they give the same verdicts; each problem names its column and first bad row.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from .columns import COLUMNS, column_for, needed_columns, type_name
from .errors import Problem, TrajectoryError
from .ids import IdIndex
from .lists import flat_child, lengths, mask_numpy, null_rows, offsets, row_of
from .metadata import Info, read_info

# A log-probability is at most 0; log_softmax in float32 gives exactly that (log-sum-exp >= the max
# logit after rounding too), so any positive value on a valid token is corruption or a wrong column.
LOGPROBS = "logprobs"


def duplicate_names(sch: pa.Schema) -> list[Problem]:
    """A problem for each column name that appears more than once."""
    names = sch.names
    return [Problem(name, None, f"appears {names.count(name)} times; column names must be unique")
            for name in dict.fromkeys(names) if names.count(name) > 1]


def schema_problems(sch: pa.Schema, needs: Iterable[str] = ()) -> list[Problem]:
    """Column-level problems: required or needed columns missing, incompatible types.

    needs: columns an estimator will read; "rewards" is satisfied by `reward` too.
    """
    problems = duplicate_names(sch)
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
    hold anything), log-probabilities above 0 on valid tokens, at most one per column and kind,
    naming the first bad row (numbered from `first_row`). Row-level columns are checked without
    `response_ids` too (a batch of some columns only); per-token ones need it."""
    if isinstance(batch, pa.Table):
        problems: list[Problem] = []
        row = first_row
        for b in batch.to_batches():
            problems = merge_problems(problems, batch_problems(b, row))
            row += b.num_rows
        return problems
    problems = []
    names = batch.schema.names
    has_tokens = "response_ids" in names
    row_lengths = lengths(batch.column("response_ids")) if has_tokens else None
    for name in names:
        col = column_for(name)
        if col is None or (col.level == "token" and not has_tokens):
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
    if not has_tokens:
        return problems
    valid = None
    if "response_mask" in names and not any(p.column == "response_mask" for p in problems):
        _, child = flat_child(batch.column("response_mask"))
        valid = mask_numpy(child)
    for name in names:
        col = column_for(name)
        if col is None or col.kind != "token_float" or any(p.column == name for p in problems):
            continue
        problem = token_float_problem(name, batch.column(name), valid, first_row)
        if problem is not None:
            problems.append(problem)
    return problems


def token_float_problem(name: str, arr: pa.Array, valid: np.ndarray | None, first_row: int = 0
                        ) -> Problem | None:
    """The first NaN or inf of a per-token float column on a valid token (valid: [N] bool over the
    column's flat child, None: every token), or, for `logprobs`, the first value above 0."""
    offs, child = flat_child(arr)
    x = child.to_numpy()
    bad = ~np.isfinite(x)
    if valid is not None:  # masked tokens may hold anything, outputs' too (zero mode, NaN fill)
        bad &= valid
    what = ""
    if not bad.any() and name == LOGPROBS:
        bad = x > 0
        if valid is not None:
            bad &= valid
        what = "; a log-probability is at most 0"
    where = np.flatnonzero(bad)
    if not where.size:
        return None
    i = row_of(offs, int(where[0]))
    t = int(where[0] - offs[i])
    return Problem(name, first_row + i, f"token {t} is {x[where[0]]!s}" +
                   (" (a valid token)" if valid is not None else "") + what)


def merge_problems(first: list[Problem], more: list[Problem]) -> list[Problem]:
    """Problems of consecutive batches: keep the first per (column, kind of message)."""
    seen = {(p.column, _kind(p.message)) for p in first}
    return first + [p for p in more if (p.column, _kind(p.message)) not in seen]


def _kind(message: str) -> str:
    for word in ("null", "tokens, but", "mask holds", "is nan", "is inf", "is -inf", "duplicate", "not finite",
                 "log-probability"):
        if word in message.lower():
            return word
    return message


def check_columns(sch: pa.Schema) -> list[str]:
    """The columns whose values the validation reads (in schema order): the ids, the per-token
    columns of the standard, and `reward` where it is used. Others are checked by type only."""
    names = sch.names
    return [n for n in names if (col := column_for(n)) is not None and (
        col.level == "token" or col.required or (n == "reward" and "rewards" not in names))]


class FileCheck:
    """The one validation of a table or file read in consecutive batches.

    Construction checks the metadata (`read_info`) and the schema (`schema_problems`), raising
    TrajectoryError at once; `check(batch)` returns the problems of the next batch (rows counted
    from the start of the file): `batch_problems`, then a trajectory id seen before, in this file or,
    when `seen` is given, in the files added to it before (the ids of one job). `finish()` adds
    this file's ids to `seen`, unless a problem was found. Memory: the ids (see `IdIndex`).
    """

    def __init__(self, sch: pa.Schema, *, source: str | None = None, estimator: str | None = None,
                 boundary: str | None = None, seen: IdIndex | None = None):
        self.source = source
        self.info: Info = read_info(sch, source)
        needs = needed_columns(estimator, boundary) if estimator else ()
        problems = schema_problems(sch, needs)
        if problems:
            raise TrajectoryError(problems, source)
        self.schema = sch
        self.rows = 0
        self.problems: list[Problem] = []
        self._seen = seen
        self._ids = IdIndex()
        self._repeated = False

    def columns(self, wanted: list[str] | None) -> list[str] | None:
        """The columns to read for `wanted` (None: all) and the checks: `wanted` plus
        `check_columns`, in the schema's order; None when that is every column."""
        if wanted is None:
            return None
        need = set(wanted) | set(check_columns(self.schema))
        cols = [n for n in self.schema.names if n in need]
        return None if len(cols) == len(self.schema.names) else cols

    def check(self, batch: pa.RecordBatch) -> list[Problem]:
        """The new problems of the next batch (none of a column and kind already reported)."""
        found = batch_problems(batch, self.rows)
        if "trajectory_id" in batch.schema.names and not self._repeated:  # one repeat is enough to say
            ids = batch.column("trajectory_id")
            earlier = (self._seen,) if self._seen is not None else ()
            repeat = self._ids.first_repeat(ids, earlier=earlier)
            if repeat is not None:
                found.append(_duplicate(repeat, self.rows))
                self._repeated = True
            else:
                self._ids.add(ids, source=_THIS_FILE, first_row=self.rows)  # named at finish()
        self.rows += batch.num_rows
        new = merge_problems(self.problems, found)[len(self.problems):]
        self.problems += new
        return new

    def finish(self) -> None:
        """The file was read through: its ids join `seen` (when given and no problem was found)."""
        if self._seen is not None and not self.problems:
            self._seen.merge(self._ids, source=self.source if self.source is not None else "an earlier table")


_THIS_FILE = object()  # the source of the ids of the file being read, until finish()


def _duplicate(repeat, first_row: int) -> Problem:
    """The problem of `IdIndex.first_repeat`'s answer for a batch starting at row `first_row`."""
    row, hit = repeat
    where = f"row {first_row + hit.row}" if hit.source is None else (
        f"row {hit.row}" if hit.source is _THIS_FILE else f"row {hit.row} of {hit.source}")
    return Problem("trajectory_id", first_row + row, f"duplicate of {where} ({hit.value!r})")


def duplicate_ids(ids: pa.Array | pa.ChunkedArray, first_row: int = 0) -> list[Problem]:
    """The first row whose (non-null) id appeared in an earlier row, if any. Null ids are reported
    by `batch_problems`, not here."""
    repeat = IdIndex().first_repeat(ids)
    return [] if repeat is None else [_duplicate(repeat, first_row)]


def validate(data: pa.Table | pa.RecordBatch, *, estimator: str | None = None, boundary: str | None = None,
             source: str | None = None, seen: IdIndex | None = None) -> Info:
    """Check a table against the standard, and against what `estimator` needs when given.

    Returns the parsed metadata (see `read_info`). Raises TrajectoryError listing every problem:
    duplicate column names, missing columns, incompatible types, nulls, per-token lengths that
    differ from response_ids, NaN/inf on valid tokens, log-probabilities above 0, masks other than
    0/1, duplicate trajectory_ids (also of ids in `seen`; the table's ids join it when it passes),
    an unreadable version. The same checks as `FileCheck` (validate_file, iter_batches).
    """
    check = FileCheck(data.schema, source=source, estimator=estimator, boundary=boundary, seen=seen)
    batches = data.to_batches() if isinstance(data, pa.Table) else [data]
    for batch in batches:
        check.check(batch)
    if check.problems:
        raise TrajectoryError(check.problems, source)
    check.finish()
    return check.info


__all__ = ["FileCheck", "batch_problems", "check_columns", "duplicate_ids", "duplicate_names", "merge_problems",
           "schema_problems", "token_float_problem", "validate"]
