"""Trajectory files: Parquet and Arrow IPC, read in a stream and written atomically.

Readers check every batch against the standard as it is read and report problems with the file's
path, the column and the first bad row counted from the start of the file. Writers put the file at
its path whole or not at all (`sae_core.atomic`), and never replace an existing file unless told.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import ipc

from ..atomic import AtomicPath
from .columns import needed_columns
from .errors import TrajectoryError, TrajectoryWarning
from .lists import is_list, lengths
from .metadata import METADATA_KEY, Info, metadata_bytes, read_info
from .validation import batch_problems, duplicate_ids, merge_problems, schema_problems, validate

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
    first = [reader.schema.names[0]] if reader.schema.names else None
    return sum(b.num_rows for b in reader.batches(1 << 30, first))


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
        problems = merge_problems(problems, batch_problems(batch, rows))
        ids.append(batch.column("trajectory_id"))
        tokens += int(lengths(batch.column("response_ids")).sum())
        rows += batch.num_rows
    if ids:
        problems += duplicate_ids(pa.chunked_array(ids, type=reader.schema.field("trajectory_id").type))
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
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata_bytes({})})
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
        self._target = AtomicPath(self.path, overwrite=overwrite)
        self.schema = schema
        self.overwrite = overwrite
        self.row_group_rows = row_group_rows
        self.tmp = self._target.tmp
        self._sink = None
        try:
            if self.format == "parquet":
                # dictionary encoding pays off only for repeated per-row strings (group_id, finish_reason);
                # on per-token lists it is tried and abandoned page by page, at a cost
                dictionary = [f.name for f in schema if not is_list(f.type)]
                self._writer = pq.ParquetWriter(self.tmp, schema, use_dictionary=dictionary)
            else:
                self._sink = pa.OSFile(str(self.tmp), "wb")
                stream = self.path.suffix.lower() == ".arrows"  # the usual suffix of the IPC stream format
                self._writer = (ipc.new_stream if stream else ipc.new_file)(self._sink, schema)
        except BaseException:
            if self._sink is not None:
                self._sink.close()
            self._target.discard()
            raise
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
            if self._finish():
                self._target.commit()
        finally:
            self._target.discard()

    def abort(self) -> None:
        """Drop the temporary file; `path` is left as it was."""
        try:
            self._finish()
        finally:
            self._target.discard()

    def _finish(self) -> bool:
        """Close the writer (once); False if it was closed already."""
        if not self._open:
            return False
        self._open = False
        try:
            self._writer.close()
        finally:
            if self._sink is not None:
                self._sink.close()
        return True

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["Summary", "TrajectoryWriter", "count_rows", "file_format", "iter_batches", "read_schema",
           "read_table", "validate_file", "write_table"]
