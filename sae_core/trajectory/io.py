"""Trajectory files: Parquet and Arrow IPC, read in a stream, checked by the one validation.

Readers check every batch against the standard as it is read (`validation.FileCheck`: the same
verdicts from `validate_file`, `iter_batches` and `read_table`) and report problems with the file's
path, the column and the first bad row counted from the start of the file. Trajectory ids must be
unique within a file and, through a shared `SeenIds`, across the files of one job. Writing is in
`writers` (atomic, Parquet page checksums).

column_map (every reader here): how the file's columns are read as the standard's, a
`mapping.ColumnMap` or a {standard: the file's name} dict (`--column STANDARD=THEIRS`; see
`mapping` for the rules and veRL's and OpenRLHF's names). Tables and batches come with the names as
read; problems name the file's columns (and what they are read as); the file is never changed.
None (the default): every column under its own name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from .errors import Problem
from .ids import IdIndex
from .lists import lengths
from .mapping import ColumnMap, FileColumns
from .metadata import Info
from .reader import Reader

ColumnMapLike = ColumnMap | Mapping[str, str] | None


class SeenIds(IdIndex):
    """The trajectory ids of the files of one job, to refuse an id that two files share.

    Pass one `SeenIds` as `seen=` to `iter_batches`, `read_table` or `validate_file` for each file
    of the job, in order: a file's ids join it when the file was read through without problems
    (a refused file adds none), and an id seen in an earlier file is a problem of the later one,
    "duplicate of row R of <earlier file>". Memory: about 16 bytes per id plus the ids' own bytes.
    Not shared between processes (a Ray job's tasks each see their own files only).
    """

    def add_file(self, path: str | os.PathLike, *, batch_size: int = 1 << 16,
                 column_map: ColumnMapLike = None) -> None:
        """Add the ids of a file already known to be good (e.g. a shard whose output a resumed job
        skips), reading its `trajectory_id` column only. Raises TrajectoryError naming the file for
        a null id or an id seen before (then nothing of this file is added)."""
        reader = Reader(path, column_map)
        check = reader.check(seen=self)
        for batch in reader.batches(batch_size, ["trajectory_id"]):
            problems = check.check(batch)
            if problems:
                raise reader.error(problems)
        check.finish()


def _wanted(reader: Reader, columns: Iterable[str] | None) -> list[str] | None:
    """`columns` as a list (None: all), each one in the file, else TrajectoryError."""
    if columns is None:
        return None
    cols = list(columns)
    missing = [Problem(c, None, "missing: it was asked for") for c in dict.fromkeys(cols)
               if c not in reader.schema.names]
    if missing:
        raise reader.error(missing)
    return cols


def read_schema(path: str | os.PathLike, *, column_map: ColumnMapLike = None) -> pa.Schema:
    """The Arrow schema of a Parquet or IPC file (with its metadata; names as read), without
    reading its data. Raises TrajectoryError naming the file when it cannot be read (or repeats a
    column name, or `column_map` does not fit it)."""
    return Reader(path, column_map).schema


def file_columns(path: str | os.PathLike, column_map: ColumnMapLike = None) -> FileColumns:
    """How the file's columns are read under `column_map` (`mapping.resolve`): the schema as read,
    the columns read under other names, and `explain` for problems found later."""
    return Reader(path, column_map).columns


def count_rows(path: str | os.PathLike) -> int:
    """The number of rows (responses) of a file: from the Parquet footer or the IPC file's batches;
    an IPC stream is read through (one column) to count them."""
    reader = Reader(path)
    if reader.num_rows is not None:
        return reader.num_rows
    first = [reader.schema.names[0]] if reader.schema.names else None
    return sum(b.num_rows for b in reader.batches(1 << 30, first))


def iter_batches(path: str | os.PathLike, *, batch_size: int = 1024, columns: Iterable[str] | None = None,
                 estimator: str | None = None, boundary: str | None = None, validate: bool = True,
                 seen: SeenIds | None = None, column_map: ColumnMapLike = None) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet or Arrow IPC file as record batches of at most `batch_size` rows of
    `columns` (default: all; memory: one batch plus the file's trajectory ids).

    validate=True (the default): the file passes exactly when `validate_file` passes it. Each batch
    is checked before it is yielded (the columns validation needs are read too, and dropped again):
    a problem raises TrajectoryError naming the file, the column and the first bad row (counted from
    the start of the file), so a consumer writing as it reads stops before writing bad rows. Ids are
    checked across batches, and across files with `seen` (see `SeenIds`; this file's ids join it
    after the last batch). validate=False: the metadata and the schema only (e.g. a second pass over
    a file already checked). A Parquet page whose checksum fails raises TrajectoryError naming the
    column, whatever `validate` says. column_map: see the module docstring.
    """
    reader = Reader(path, column_map)
    check = reader.check(estimator=estimator, boundary=boundary, seen=seen)
    cols = _wanted(reader, columns)
    read = check.columns(cols) if validate else cols
    for batch in reader.batches(batch_size, read):
        if validate:
            problems = check.check(batch)
            if problems:
                raise reader.error(problems)
            if read != cols:
                batch = batch.select(cols) if cols is not None else batch
        yield batch
    if validate:
        check.finish()


def read_table(path: str | os.PathLike, *, columns: Iterable[str] | None = None, estimator: str | None = None,
               boundary: str | None = None, validate: bool = True, seen: SeenIds | None = None,
               column_map: ColumnMapLike = None) -> pa.Table:
    """A whole Parquet or Arrow IPC file as a Table, checked as `validate_file` checks it (every
    problem listed); validate=False, `seen` and `column_map` as in `iter_batches`."""
    reader = Reader(path, column_map)
    check = reader.check(estimator=estimator, boundary=boundary, seen=seen)
    cols = _wanted(reader, columns)
    read = check.columns(cols) if validate else cols
    batches = []
    for batch in reader.batches(1 << 30, read):
        if validate:
            check.check(batch)
            batch = batch.select(cols) if read != cols and cols is not None else batch
        batches.append(batch)
    if check.problems:
        raise reader.error(check.problems)
    if validate:
        check.finish()
    sch = reader.schema if cols is None else pa.schema([reader.schema.field(c) for c in cols],
                                                       metadata=reader.schema.metadata)
    return pa.Table.from_batches([b for b in batches if b.num_rows], schema=sch)


@dataclass
class Summary:
    """What `validate_file` found in a good file. columns: {standard name: the file's name} for
    each column read under another name (`mapping`)."""

    path: str
    rows: int
    tokens: int
    info: Info
    columns: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        outputs = ", ".join([f"{k}={v.get('estimator', '?')}" for k, v in sorted(self.info.estimators.items())]
                            + [f"{k}=? (invalid parameters recorded)" for k in sorted(self.info.invalid)]
                            + [f"{k}=? (parameters unknown: no metadata)" for k in self.info.unknown])
        meta = f"spec {self.info.spec_version}" + ("" if self.info.has_metadata else " (no metadata: assumed)")
        return (f"{self.path}: ok, {self.rows:,} trajectories, {self.tokens:,} tokens, {meta}"
                + (f", outputs {outputs}" if outputs else ", no outputs")
                + (f"; columns read as {', '.join(f'{k}={v}' for k, v in self.columns.items())}"
                   if self.columns else ""))


def validate_file(path: str | os.PathLike, *, estimator: str | None = None, boundary: str | None = None,
                  batch_size: int = 4096, seen: SeenIds | None = None, column_map: ColumnMapLike = None
                  ) -> Summary:
    """Check a whole file in streaming fashion (memory: one batch plus the trajectory ids).

    Every problem is reported with the first row where it occurs; raises TrajectoryError. `seen`:
    ids of earlier files of the same job (see `SeenIds`); this file's join it when it passes.
    column_map: see the module docstring; the Summary lists the columns read under other names.
    """
    reader = Reader(path, column_map)
    check = reader.check(estimator=estimator, boundary=boundary, seen=seen)
    tokens = 0
    for batch in reader.batches(batch_size, None):
        check.check(batch)
        tokens += int(lengths(batch.column("response_ids")).sum())
    if check.problems:
        raise reader.error(check.problems)
    check.finish()
    return Summary(reader.path, check.rows, tokens, check.info, dict(reader.columns.to_file))


__all__ = ["SeenIds", "Summary", "count_rows", "file_columns", "iter_batches", "read_schema", "read_table",
           "validate_file"]
