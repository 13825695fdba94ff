"""Writing trajectory files, atomically (`sae_core.atomic`), Parquet with page checksums.

A file appears at its path whole or not at all, and an existing file is never replaced unless told.
Every Parquet data page carries a CRC32 (`write_page_checksum`), which the readers verify
(`reader.Reader`), so a flipped bit on disk is an error naming the column instead of wrong numbers.
A path may be a URI (`paths`): a local one (plain or `file://`) is written as always
(`atomic.AtomicPath`), another one through its filesystem (`paths.RemoteTarget`: a temporary
object moved to its name when whole).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import ipc

from ..atomic import AtomicPath
from . import paths
from .errors import TrajectoryWarning
from .lists import is_list
from .metadata import METADATA_KEY, metadata_bytes
from .reader import file_format
from .validation import validate


def write_table(table: pa.Table | pa.RecordBatch, path: str | os.PathLike, *, format: str | None = None,
                overwrite: bool = False, row_group_rows: int = 1024) -> Path | str:
    """Write a table in the standard to Parquet or Arrow IPC (file format), atomically.

    The table is validated first. It is written under a temporary name in the target directory and
    renamed when whole, so `path` holds the complete file or nothing new. An existing `path` is
    refused unless overwrite=True. format: "parquet" or "ipc" (default: from the suffix).
    Parquet row groups hold `row_group_rows` responses (readers stream one group at a time).
    Returns `path` as a Path, or as a str for a URI other than `file://`.
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
    return writer.path


class TrajectoryWriter:
    """Write record batches to one file, atomically: the file appears at `path` when `close()` runs
    after every batch was written, and not at all if an exception leaves the `with` block (or the
    writer fails to open: no temporary file is left either way).

    Batches are not validated here (see `validate`); their schema must equal `schema`. Missing
    parent directories are created. Parquet pages carry checksums. IPC files ending in `.arrows`
    get the stream format, other IPC files the file format (random access, a footer that makes
    truncation detectable). `path` may be a URI (see the module docstring); `path` the attribute
    is a Path for a local file, the URI (str) otherwise.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, format: str | None = None,
                 overwrite: bool = False, row_group_rows: int = 1024):
        found = paths.local(path)
        self.path = Path(found) if found is not None else str(path)
        self.format = format or file_format(path)
        if self.format not in ("parquet", "ipc"):
            raise ValueError(f"format must be 'parquet' or 'ipc'; got {format!r}")
        self._target = (AtomicPath(self.path, overwrite=overwrite) if found is not None
                        else paths.RemoteTarget(self.path, overwrite=overwrite))
        self.schema = schema
        self.overwrite = overwrite
        self.row_group_rows = row_group_rows
        self.tmp = self._target.tmp
        self._sink = None
        self._open = False
        try:
            if found is None:  # ParquetWriter and the IPC writers take a stream as well as a path
                self._sink = self._target.open()
            if self.format == "parquet":
                # dictionary encoding pays off only for repeated per-row strings (group_id, finish_reason);
                # on per-token lists it is tried and abandoned page by page, at a cost
                dictionary = [f.name for f in schema if not is_list(f.type)]
                where = self.tmp if self._sink is None else self._sink
                self._writer = pq.ParquetWriter(where, schema, use_dictionary=dictionary,
                                                write_page_checksum=True)
            else:
                if self._sink is None:
                    self._sink = pa.OSFile(str(self.tmp), "wb")
                stream = str(self.path).lower().endswith(".arrows")  # the usual suffix of the IPC stream format
                self._writer = (ipc.new_stream if stream else ipc.new_file)(self._sink, schema)
        except BaseException:
            try:
                if self._sink is not None:
                    self._sink.close()  # may fail too (a full disk): the temporary file goes regardless
            finally:
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
            try:
                self.abort()
            except Exception:  # closing after a failed write can fail again: the first error is the one
                pass


__all__ = ["TrajectoryWriter", "write_table"]
