"""What keeps a recompute job honest about its files: input fingerprints, the job lock, and the
removal of temporary files that dead jobs left behind.

- `fingerprint(path)`: the identity of an input file (size, mtime in ns, a SHA-256 of its footer),
  recorded in each output's schema metadata under `FINGERPRINT_KEY`. A resumed job compares it with
  the input as it is now: a difference means the output is stale and the shard is computed again.
- `JobLock(path)`: one job at a time per output. The lock is a file (`.sae-recompute.lock` in an
  output directory, `.NAME.sae-recompute.lock` beside a single output file) held with `flock`, so the
  kernel releases it when its process dies, however it dies: a stale lock is simply taken over. It
  records the holder's PID and host, which a second job names in its refusal.
- `remove_stale_temporaries(targets)`: the temporary files `sae_core.atomic` names
  `.NAME.tmp-PID-RANDOM`, for the outputs of this job only, whose PID is not a live process here.

Outputs and inputs may be URIs (`trajectory.paths`). A file elsewhere than on the local disk is
fingerprinted from its filesystem's size, modification time (where it keeps one) and footer; such
an output has no job lock (object stores have no advisory locks: running one job at a time there
is up to the caller) and no stale temporaries are looked for (their PIDs are other machines').

Job-level problems (another job holds the lock, the lock cannot be created, a Ray cluster that
cannot be reached) raise `JobError`, an OSError: the command line reports it as one line, exit 1.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ..atomic import TEMPORARY_NAME
from ..trajectory import paths

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: see JobLock
    fcntl = None

FINGERPRINT_KEY = "sae_rl.recompute"
LOCK_NAME = ".sae-recompute.lock"
_TAIL = 1 << 20  # an IPC stream has no footer: the last MiB stands in for it

# `sae_core.atomic.temporary_path`'s naming: ".NAME.tmp-PID-RANDOM" (groups name, pid, tag)
TEMPORARY = TEMPORARY_NAME


class JobError(OSError):
    """A problem of the whole job, not of one shard; its message is one line naming the path.
    Made as JobError(errno, message): `str()` is the message alone (no "[Errno N]"), `filename` None."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# ----------------------------------------------------------------------------------------------
# fingerprints


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """{"size", "mtime_ns", "footer_sha256"} of a regular file, without reading its data.

    The footer is what locates and describes the data: Parquet's FileMetaData (row groups, column
    chunk offsets and statistics) with its length and magic; an Arrow IPC file's footer (schema and
    record batch offsets); an IPC stream, which has none, gives its last MiB. Raises OSError for a
    file that cannot be read, and for anything but a regular file (opening a FIFO would block).
    A URI (`trajectory.paths`): its filesystem's size and mtime (None where it keeps none).
    """
    found = paths.local(path)
    if found is None:
        return _remote_fingerprint(str(path))
    path = Path(found)
    with open(path, "rb", opener=_nonblocking) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        size = st.st_size
        start = max(0, size - _footer_length(fh, size))
        fh.seek(start)
        digest = hashlib.sha256(fh.read(size - start)).hexdigest()
    return {"size": size, "mtime_ns": st.st_mtime_ns, "footer_sha256": digest}


def _remote_fingerprint(uri: str) -> dict[str, Any]:
    fs, inner = paths.resolve(uri)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(errno.ENOENT, "no such file", uri)
    if info.type != pafs.FileType.File:
        raise OSError(errno.EINVAL, "not a file", uri)
    size = info.size
    with fs.open_input_file(inner) as fh:
        start = max(0, size - _footer_length(fh, size))
        fh.seek(start)
        digest = hashlib.sha256(fh.read(size - start)).hexdigest()
    return {"size": size, "mtime_ns": info.mtime_ns, "footer_sha256": digest}


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _footer_length(fh, size: int) -> int:
    """Bytes from the end that hold the footer, its length and the magic (or the last MiB)."""
    for magic, length_bytes in ((b"PAR1", 4), (b"ARROW1", 4)):
        tail = len(magic) + length_bytes
        if size < tail + len(magic):
            continue
        fh.seek(size - tail)
        end = fh.read(tail)
        if end[length_bytes:] == magic:
            n = int.from_bytes(end[:length_bytes], "little")
            if 0 <= n <= size - tail:
                return n + tail
    return _TAIL


def fingerprint_changes(recorded: Any, now: dict[str, Any]) -> str | None:
    """What differs between a recorded fingerprint and the file now ("size", "mtime", "footer"),
    or None when they agree. A missing or malformed record counts as a difference."""
    if not isinstance(recorded, dict):
        return "no input fingerprint recorded (written by an earlier sae-rl?)"
    names = {"size": "size", "mtime_ns": "mtime", "footer_sha256": "footer"}
    changed = [label for key, label in names.items() if recorded.get(key) != now[key]]
    return ", ".join(changed) if changed else None


def read_fingerprint(metadata: dict[bytes, bytes] | None) -> Any:
    """The input fingerprint an output's schema metadata records, or None."""
    raw = (metadata or {}).get(FINGERPRINT_KEY.encode())
    if raw is None:
        return None
    try:
        return json.loads(raw).get("input")
    except (ValueError, AttributeError):
        return None


def fingerprint_metadata(fp: dict[str, Any]) -> dict[bytes, bytes]:
    """The schema metadata entry that records an input's fingerprint."""
    return {FINGERPRINT_KEY.encode(): json.dumps({"input": fp}, sort_keys=True).encode()}


# ----------------------------------------------------------------------------------------------
# processes


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie (a zombie has finished:
    only its parent has not collected it yet)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True  # cannot tell: assume alive, which only ever keeps files
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporary files of `targets` (output paths) left by dead processes; returns them.

    Only names `sae_core.atomic` gives (`.NAME.tmp-PID-RANDOM`, NAME one of the targets' names in
    that directory) whose PID is not a live process here. Call it holding the job's lock: a job on
    another machine writing the same directory would hold it too. A file that cannot be removed is
    left (it is reported again next time).
    """
    by_dir: dict[Path, set[str]] = {}
    for t in targets:
        t = paths.local(t)
        if t is None:  # on another filesystem: see the module docstring
            continue
        t = Path(t)
        by_dir.setdefault(t.parent, set()).add(t.name)
    removed = []
    for directory, names in by_dir.items():
        try:
            entries = list(os.scandir(directory))
        except OSError:  # not there yet, or unreadable: nothing of ours to remove
            continue
        for entry in entries:
            m = TEMPORARY.match(entry.name)
            if not m or m["name"] not in names or pid_alive(int(m["pid"])):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


# ----------------------------------------------------------------------------------------------
# the lock


def lock_path(output: str | os.PathLike, many: bool) -> Path:
    """The lock of a job writing `output`: a directory (many shards) or one file. A URI off the
    local disk gives a URI, which `JobLock` does not lock (see the module docstring)."""
    found = paths.local(output)
    if found is None:
        head, _, tail = str(output).rstrip("/").rpartition("/")
        return f"{str(output).rstrip('/')}/{LOCK_NAME}" if many else f"{head}/.{tail}.sae-recompute.lock"
    output = Path(found)
    return output / LOCK_NAME if many else output.with_name(f".{output.name}.sae-recompute.lock")


class JobLock:
    """The lock of one output (see the module docstring); a context manager.

    Entering creates missing parent directories and the lock file, and raises JobError when another
    live job holds it ("another job (PID N on HOST) is writing here"), or when it cannot be created
    (a read-only directory). Leaving removes the file. Where `fcntl` does not exist (Windows) the
    file is created exclusively instead, and one whose PID is dead on this host is taken over.
    """

    def __init__(self, path: str | os.PathLike, where: str | os.PathLike | None = None):
        self.remote = paths.is_remote(path)  # no lock there: see the module docstring
        self.path = Path(paths.local(path)) if not self.remote else path
        self.where = str(where if where is not None else (self.path if self.remote else self.path.parent))
        self._fd: int | None = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self.remote:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(exc.errno, f"{self.where}: cannot create the output directory: "
                                      f"{exc.strerror or exc}") from None
        for _ in range(20):  # the file may be removed between our open and our lock: try again
            fd = self._open()
            if fd is not None:
                self._fd = fd
                self._record(fd)
                return
        raise JobError(errno.EAGAIN, f"{self.where}: could not take the lock {self.path}")

    def _open(self) -> int | None:
        """Our locked descriptor of the current lock file, or None to try again."""
        flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:  # no fcntl: the file is the lock
            holder = self._holder()
            if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid") or 0)):
                self.path.unlink(missing_ok=True)  # a dead job's
                return None
            raise self._busy(holder) from None
        except OSError as exc:
            raise JobError(exc.errno, f"{self.where}: cannot create the lock file {self.path}: "
                                      f"{exc.strerror or exc}") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._busy(self._holder()) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed it as we opened it: ours is an orphan inode
            os.close(fd)
            return None
        return fd

    def _record(self, fd: int) -> None:
        doc = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, doc, 0)
        except OSError:  # the lock holds without it; a second job then names no PID
            pass

    def _holder(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_bytes() or b"{}")
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict[str, Any]) -> JobError:
        pid = holder.get("pid", "unknown")
        host = holder.get("host")
        on = f" on {host}" if host and host != socket.gethostname() else ""
        return JobError(errno.EBUSY, f"{self.where}: another job (PID {pid}{on}) is writing here "
                                     f"(lock {self.path}); wait for it to finish")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees the inode is gone
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


__all__ = [
    "FINGERPRINT_KEY",
    "TEMPORARY",
    "JobError",
    "JobLock",
    "fingerprint",
    "fingerprint_changes",
    "fingerprint_metadata",
    "lock_path",
    "pid_alive",
    "read_fingerprint",
    "remove_stale_temporaries",
]
