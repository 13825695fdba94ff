"""Atomic file writes: a file appears at its path whole, or the path keeps what it held.

The content goes to a temporary file in the target's own directory (the same file system, so
that moving it is atomic), named `.NAME.tmp-PID-RANDOM` and created exclusively, so with the
process's usual permissions (not mkstemp's 0600, which the move would keep). When it is
complete it becomes the target: `os.replace` when overwriting, else `os.link`, which fails
rather than replace a file that appeared meanwhile. The temporary file is removed whatever
fails, or, when the process is killed, by the next job writing there (`temporary_owner` reads the
target and the PID back from the name). Nothing is fsync'ed: a crash of the machine (not of the
process) can still lose the file.

Used by the trajectory writers (`sae_core.trajectory`) and the HTML report. Imports nothing from
sae_core.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from pathlib import Path

TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)-(?P<tag>[0-9a-f]{8})$")


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh name beside `path` for its temporary file: `.NAME.tmp-PID-RANDOM`."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temporary_owner(path: str | os.PathLike) -> tuple[str, int] | None:
    """(the target's name, the PID of the process that made it) for a name `temporary_path` makes,
    else None (not one of ours)."""
    m = TEMPORARY_NAME.match(Path(path).name)
    return None if m is None else (m["name"], int(m["pid"]))


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Move the complete file `tmp` to `path`, atomically.

    overwrite=True replaces whatever `path` holds. overwrite=False never replaces it: a `path` that
    exists raises FileExistsError and is left as it is (on a file system without hard links, the
    check and the move are two steps). `tmp` may remain (a hard link was made); the caller removes it.
    """
    tmp, path = Path(tmp), Path(path)
    if overwrite:
        os.replace(tmp, path)
        return path
    try:
        os.link(tmp, path)  # atomic: fails if `path` exists, never replaces it
    except FileExistsError:
        raise FileExistsError(f"{path} exists (it appeared while this file was written); "
                              "pass overwrite=True to replace it") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
        os.replace(tmp, path)
    return path


class CommitOnExit:
    """As a context manager: `commit()` when the block ends normally, `discard()` when it raises
    (shared by `AtomicPath` and the remote target of `trajectory.paths`)."""

    def commit(self):
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class AtomicPath(CommitOnExit):
    """A temporary path (`tmp`) beside `path`, to write to; `commit()` makes it `path`.

    Opening refuses an existing `path` unless overwrite=True (FileExistsError), a directory at `path`
    in any case (IsADirectoryError), and creates missing parent directories; nothing is created at
    `tmp` (the caller's writer does that). `commit()`
    moves `tmp` to `path` (see `publish`), `discard()` drops it; both leave no temporary file. As
    a context manager: commit when the block ends normally, discard when it raises.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        self.path = Path(path)
        if self.path.is_dir():  # os.replace would fail only after the whole file was written
            raise IsADirectoryError(errno.EISDIR, "is a directory; give the path of a file to write",
                                    str(self.path))
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.path)

    def commit(self) -> Path:
        try:
            return publish(self.tmp, self.path, overwrite=self.overwrite)
        finally:
            self.discard()

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write `data` to `path` atomically (see the module docstring); returns `path` as a Path.

    overwrite=False raises FileExistsError when `path` exists (before writing, or if it appears
    while writing) and leaves it as it is. Missing parent directories are created.
    """
    with AtomicPath(path, overwrite=overwrite) as target, open(target.tmp, "xb") as fh:
        fh.write(data)
    return target.path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False,
                      encoding: str = "utf-8") -> Path:
    """`write_bytes_atomic` for text, written in text mode with `encoding` (platform newlines)."""
    with AtomicPath(path, overwrite=overwrite) as target, open(target.tmp, "x", encoding=encoding) as fh:
        fh.write(text)
    return target.path


__all__ = ["AtomicPath", "CommitOnExit", "TEMPORARY_NAME", "publish", "temporary_owner", "temporary_path", "write_bytes_atomic",
           "write_text_atomic"]
