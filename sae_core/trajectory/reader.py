"""Opening a trajectory file: its format, its schema, its record batches, every failure a TrajectoryError.

Only regular files are opened (a FIFO or a device named x.parquet would block or never end). Parquet
pages are read with their CRC checked where the writer stored one (sae-rl's writers always do); a
mismatch, or any page that fails to decode, is reported with the column and row group it is in.
Arrow IPC files have no checksums: their batches are validated structurally (`validate(full=True)`).
A `mapping.ColumnMap` renames columns as they are read (`--column STANDARD=THEIRS`, veRL's and
OpenRLHF's names): `Reader.schema` and every batch have the names as read, `file_schema` the file's.
A path may be a URI (`paths`: `file://`, `s3://`, `gs://`, `hf://`, ...): a local one is memory
mapped as before, others are read through their filesystem's random-access files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyarrow import ipc

from .errors import Problem, TrajectoryError
from . import paths
from .mapping import ColumnMap, FileColumns, resolve
from .validation import FileCheck, duplicate_names

PARQUET_SUFFIXES = (".parquet", ".pq")
IPC_SUFFIXES = (".arrow", ".ipc", ".feather", ".arrows")
_READ_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_format(path: str | os.PathLike) -> str:
    """"parquet" or "ipc", from the suffix, else from the first bytes of an existing regular file."""
    p = Path(path)
    if p.suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    if p.suffix.lower() in IPC_SUFFIXES:
        return "ipc"
    try:
        found = paths.local(path)
        if found is None:
            with paths.open_input_file(path) as fh:
                head = fh.read(6)
        else:
            if not stat.S_ISREG(os.stat(found).st_mode):  # opening a FIFO would wait for a writer
                return "parquet"
            with open(found, "rb") as fh:
                head = fh.read(6)
    except (OSError, pa.ArrowException):
        return "parquet"
    return "parquet" if head[:4] == b"PAR1" else "ipc"


def check_regular(path: str) -> None:
    """Raise TrajectoryError unless `path` is an existing regular file (symbolic links followed);
    a URI: an existing file of its filesystem (UnsupportedPath when no filesystem serves it)."""
    found = paths.local(path)
    if found is None:
        return _check_remote(path)
    try:
        mode = os.stat(found).st_mode
    except FileNotFoundError:
        raise TrajectoryError("no such file", path) from None
    except OSError as exc:
        raise TrajectoryError(f"cannot read: {exc.strerror or exc}", path) from None
    if not stat.S_ISREG(mode):
        kind = next((word for test, word in _KINDS if test(mode)), "not a regular file")
        raise TrajectoryError(f"is {kind}, not a regular file: a trajectory file is a Parquet or Arrow IPC file",
                              path)


def _check_remote(path: str) -> None:
    try:
        kind = paths.file_type(path)
    except paths.UnsupportedPath:  # its own line says what to install: kept as it is
        raise
    except (OSError, pa.ArrowException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TrajectoryError(f"cannot read: {' '.join(reason.split())}", path) from None
    if kind == pafs.FileType.NotFound:
        raise TrajectoryError("no such file", path)
    if kind != pafs.FileType.File:
        raise TrajectoryError("is a directory, not a file: a trajectory file is a Parquet or Arrow IPC file", path)


class Reader:
    """One open file: its schema, row count and record batches, with errors as TrajectoryError.

    column_map: how to read the file's columns as the standard's (`mapping.resolve`; None: under
    their own names). `schema` and the batches carry the names as read, `file_schema` the file's;
    `columns` is the resolved map (its `explain` words problems in the file's names).
    """

    def __init__(self, path: str | os.PathLike, column_map: ColumnMap | Mapping[str, str] | None = None):
        self.path = str(path)
        self._local = paths.local(self.path)
        check_regular(self.path)
        self.format = file_format(path)
        try:
            if self.format == "parquet":
                self._pq = self._parquet()
                self.schema = self._pq.schema_arrow
                self.num_rows = self._pq.metadata.num_rows
            else:
                source = (paths.open_input_file(self.path) if self._local is None
                          else pa.memory_map(str(self._local)))
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
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from None
        problems = duplicate_names(self.schema)
        if problems:  # selecting or finding such a column by name would fail (KeyError) further on
            raise TrajectoryError(problems, self.path)
        self.file_schema = self.schema
        self.columns: FileColumns = resolve(self.file_schema, column_map, self.path)
        self.schema = self.columns.schema

    def _parquet(self) -> pq.ParquetFile:
        if self._local is None:
            return pq.ParquetFile(paths.open_input_file(self.path), page_checksum_verification=True)
        return pq.ParquetFile(str(self._local), memory_map=True, page_checksum_verification=True)

    def error(self, problems: list[Problem]) -> TrajectoryError:
        """The TrajectoryError of `problems` (in the names as read), worded in the file's names."""
        return TrajectoryError(self.columns.explain(problems), self.path)

    def check(self, **kwargs) -> FileCheck:
        """`validation.FileCheck` of this file's schema as read (kwargs: estimator, boundary, seen);
        its schema problems raised as `error` words them."""
        try:
            return FileCheck(self.schema, source=self.path, **kwargs)
        except TrajectoryError as exc:
            raise self.error(exc.problems) from None

    def _kind(self) -> str:
        return "Parquet" if self.format == "parquet" else "Arrow IPC"

    def _unreadable(self, exc: BaseException) -> TrajectoryError:
        return TrajectoryError(f"not a readable {self._kind()} file (truncated or corrupted?): {exc}", self.path)

    def batches(self, batch_size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        """Record batches of at most `batch_size` rows of `columns` (names as read; None: all)."""
        for batch in self._file_batches(batch_size, self.columns.file_names(columns)):
            yield self.columns.rename(batch)

    def _file_batches(self, batch_size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        done = 0
        try:
            if self.format == "parquet":
                for b in self._pq.iter_batches(batch_size=batch_size, columns=columns):
                    done += b.num_rows
                    yield b
            else:
                if isinstance(self._ipc, ipc.RecordBatchFileReader):
                    stream = (self._ipc.get_record_batch(i) for i in range(self._ipc.num_record_batches))
                else:
                    stream = self._ipc
                for b in stream:
                    # IPC readers trust the file's offsets: a corrupted one would crash Arrow's kernels
                    b.validate(full=True)
                    yield from _split(b.select(columns) if columns else b, batch_size)
        except _READ_ERRORS as exc:
            bad = self._bad_page(done, columns) if self.format == "parquet" else None
            raise (bad or self._unreadable(exc)) from None

    def _bad_page(self, first_row: int, columns: list[str] | None) -> TrajectoryError | None:
        """The column and row group of a Parquet page that fails to read (a checksum mismatch,
        a page that does not decode), searched from the row group holding `first_row` on."""
        try:
            pf = self._parquet()
            meta = pf.metadata
            names = columns if columns is not None else self.file_schema.names
            start = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if start + rows > first_row or g == meta.num_row_groups - 1:
                    for name in names:
                        try:
                            pf.read_row_group(g, columns=[name])
                        except _READ_ERRORS as exc:
                            what = ("page checksum mismatch" if "checksum" in str(exc).lower()
                                    else f"a page that does not decode ({exc})")
                            where = f"row group {g} (rows {start} to {start + rows - 1})"
                            problem = Problem(name, None, f"{what} in {where}: the file is corrupted")
                            return TrajectoryError([problem], self.path)
                start += rows
        except _READ_ERRORS:
            return None
        return None


def _split(batch: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, max(batch.num_rows, 1), size):
        yield batch.slice(start, size)


__all__ = ["IPC_SUFFIXES", "PARQUET_SUFFIXES", "Reader", "check_regular", "file_format"]
