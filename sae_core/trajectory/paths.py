"""Paths and URIs: where a trajectory file can live, and the few file-system operations the
readers, writers and jobs need on any of them.

A path is either a plain local path (as today: these functions hand it back untouched, so local
files take exactly the code path they always took, at no cost) or a URI `SCHEME://...`:
- `file://` is a local path written as a URI: `local` turns it into the plain path, so it gets
  the local code (atomic rename, locks, memory maps) too;
- a scheme pyarrow knows (`s3://`, `gs://`, `hdfs://`, ...): `pyarrow.fs.FileSystem.from_uri`;
- any other (`hf://`, `memory://`, ...): fsspec's filesystem for it (`fsspec.core.url_to_fs`),
  wrapped as a pyarrow filesystem (`PyFileSystem(FSSpecHandler(fs))`), when fsspec is installed.
A scheme nobody knows, or whose package is missing, raises `UnsupportedPath`: one line naming the
path and what to install.

Names of files found under a URI (`list_files`, `glob_files`) are URIs again, the given URI's
text followed by the path below it, so they can be passed on, printed and resolved like the
original. Query strings (`s3://b/k?region=...`) are not carried over to listed names.

Writes on a filesystem other than the local one (`RemoteTarget`) go to a temporary name in the
same directory (named as `sae_core.atomic` names its temporaries), moved to the target when whole,
and deleted when anything fails: the target appears whole or not at all. On an object store a
move is a server-side copy of one object (S3 CopyObject, GCS rewrite) and a delete: the target
object is created in one step, whole, so a reader never sees part of it. Where the filesystem has
no move, the whole object is copied to the target (`copy_file`, also one object made in one
step) and the temporary deleted.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from functools import lru_cache
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from ..atomic import CommitOnExit, temporary_path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")  # two letters at least: "C://" is a drive
_MAGIC = re.compile(r"[*?\[]")
# the package that brings each common fsspec scheme, for the one-line error
_PACKAGES = {"hf": "huggingface_hub", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
             "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp",
             "sftp": "paramiko", "ssh": "paramiko", "webhdfs": "requests"}


class UnsupportedPath(OSError):
    """A URI whose scheme no installed filesystem serves. `str()` is one line naming the path and
    what to install; `filename` is the path. An OSError: the command line reports it as a file
    problem (one line, exit status 1)."""

    def __init__(self, path: str, reason: str):
        super().__init__(errno.EPROTONOSUPPORT, reason, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def scheme(path: str | os.PathLike) -> str | None:
    """The URI scheme of `path`, lower case ("s3", "memory", "file"), or None for a plain path."""
    if not isinstance(path, str):
        return None  # a Path (os.PathLike) is local: Path() collapses "//" anyway
    m = _SCHEME.match(path)
    return m[1].lower() if m else None


def local(path: str | os.PathLike) -> str | os.PathLike | None:
    """The local form of `path`: a plain path as it is (same object), a `file://` URI as a plain
    path (percent-escapes decoded; host empty or "localhost"), None for any other URI."""
    s = scheme(path)
    if s is None:
        return path
    if s != "file":
        return None
    parsed = urlparse(path)
    if parsed.netloc not in ("", "localhost"):
        raise UnsupportedPath(path, f"a file:// URI names a file on this machine; got host {parsed.netloc!r}")
    return unquote(parsed.path)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URI served by a filesystem other than the local one (`local` is None)."""
    return local(path) is None


def native(path: str | os.PathLike) -> str | os.PathLike:
    """`local(path)` where that is a local path, else the URI itself, as a str."""
    found = local(path)
    return str(path) if found is None else found


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a path or URI (see the module docstring). Plain paths and
    `file://` URIs give pyarrow's LocalFileSystem and the absolute local path. Raises
    UnsupportedPath for a scheme that no installed filesystem serves."""
    found = local(path)
    if found is not None:
        return pafs.LocalFileSystem(), os.path.abspath(os.fspath(found))
    return _resolve_uri(str(path))


def _resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    s = scheme(uri)
    if s == "hf" or s.startswith("fsspec+"):  # pyarrow hands these to fsspec: so do we, with _Handler
        uri = uri.removeprefix("fsspec+")
        return _fsspec(uri, scheme(uri), None)
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowNotImplementedError as exc:  # a scheme pyarrow knows, built without its support
        arrow_reason = " ".join(str(exc).split())
    except pa.ArrowInvalid:  # "Unrecognized filesystem type": fsspec may know it
        arrow_reason = None
    except (pa.ArrowException, OSError) as exc:  # credentials, a bucket's region, ...
        raise UnsupportedPath(uri, f"cannot open its filesystem: {' '.join(str(exc).split())}") from None
    return _fsspec(uri, s, arrow_reason)


def _fsspec(uri: str, s: str, arrow_reason: str | None) -> tuple[pafs.FileSystem, str]:
    package = _PACKAGES.get(s)
    try:
        core = _fsspec_core()
    except ImportError:
        need = f'pip install fsspec{" " + package if package else ""}'
        why = arrow_reason or f"pyarrow has no filesystem for {s}://"
        raise UnsupportedPath(uri, f"{why}; to read or write it: {need}") from None
    try:
        fs, inner = core.url_to_fs(uri)
    except ImportError as exc:  # fsspec knows the scheme; its package is missing
        hint = f"pip install {package}" if package else " ".join(str(exc).split())
        raise UnsupportedPath(uri, f"the {s}:// filesystem is not installed: {hint}") from None
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise UnsupportedPath(uri, f"unknown scheme {s}:// (neither pyarrow nor fsspec has a filesystem "
                                       "for it); give a local path or an s3://, gs://, hf://, file:// URI"
                                  ) from None
        raise UnsupportedPath(uri, " ".join(str(exc).split())) from None
    return pafs.PyFileSystem(_Handler(fs)), inner


class RemoteError(OSError):
    """A filesystem's own error (not an OSError) as an OSError; `str()` is its message alone."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}" if self.filename else self.strerror or super().__str__()


def _as_oserror(method):
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, NotImplementedError):
            raise
        except Exception as exc:  # noqa: BLE001 -- an HTTP client's, an SDK's own errors
            raise RemoteError(errno.EIO, " ".join(f"{type(exc).__name__}: {exc}".split())) from exc
    call.__name__ = method.__name__
    return call


class _Handler(pafs.FSSpecHandler):
    """fsspec's handler, whose filesystems' own errors (an HTTP client's connection error, an SDK's
    exception) come as OSError: a file problem, reported in one line, as the local disk's are."""


for _method in ("get_file_info", "get_file_info_selector", "create_dir", "delete_dir", "delete_dir_contents",
                "delete_root_dir_contents", "delete_file", "move", "copy_file", "open_input_stream",
                "open_input_file", "open_output_stream", "open_append_stream"):
    setattr(_Handler, _method, _as_oserror(getattr(pafs.FSSpecHandler, _method)))


@lru_cache(maxsize=1)
def _fsspec_core():
    import fsspec.core

    return fsspec.core


# ----------------------------------------------------------------------------------------------
# queries


def file_type(path: str | os.PathLike) -> pafs.FileType:
    """pyarrow's FileType of `path` (NotFound, File, Directory, Unknown), symbolic links followed.
    Object stores report a prefix with objects under it as a Directory."""
    fs, inner = resolve(path)
    try:
        return fs.get_file_info(inner).type
    except RemoteError as exc:
        raise RemoteError(exc.errno, exc.strerror, str(path)) from exc.__cause__


def exists(path: str | os.PathLike) -> bool:
    """Whether anything is at `path` (a local dangling symbolic link counts, as `os.path.lexists`)."""
    found = local(path)
    if found is not None:
        return os.path.lexists(found)
    return file_type(path) != pafs.FileType.NotFound


def join(base: str | os.PathLike, relative: str) -> str | os.PathLike:
    """`relative` (with "/" separators) below `base`, a path or URI; a local `base` gives a Path."""
    found = local(base)
    if found is not None:
        from pathlib import Path

        return Path(found) / relative
    return f"{str(base).rstrip('/')}/{relative}"


def name(path: str | os.PathLike) -> str:
    """The last component of a path or URI."""
    return posixpath.basename(str(path).rstrip("/")) if scheme(path) else os.path.basename(os.fspath(path))


def list_files(directory: str | os.PathLike) -> list[str]:
    """The files under `directory` (a path or URI), recursively, as paths or URIs (see the module
    docstring), sorted. Raises FileNotFoundError naming it when it is not there."""
    fs, inner = resolve(directory)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(directory))
    root = inner.rstrip("/")
    base = str(directory).rstrip("/")
    try:
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except RemoteError as exc:
        raise RemoteError(exc.errno, exc.strerror, str(directory)) from exc.__cause__
    return sorted(base + i.path[len(root):] for i in found
                  if i.type == pafs.FileType.File and i.path.startswith(root + "/"))


def glob_files(pattern: str) -> list[str]:
    """The files a glob pattern matches (`*`, `?`, `[...]` within a component; `**` any number of
    components), on any filesystem, sorted; hidden names (starting with ".") only where the pattern
    spells the dot, as `glob.glob` does."""
    m = _MAGIC.search(pattern)
    if m is None:
        return [pattern] if file_type(pattern) == pafs.FileType.File else []
    cut = pattern.rfind("/", 0, m.start())
    if cut < 0 or pattern[:cut + 1].endswith("://"):
        raise ValueError(f"{pattern!r}: a URI glob needs a fixed directory before its first wildcard")
    base, rest = pattern[:cut], pattern[cut + 1:]
    regex = re.compile(translate_glob(rest))
    try:
        files = list_files(base)
    except FileNotFoundError:
        return []
    return [f for f in files if regex.fullmatch(f[len(base) + 1:])]


def translate_glob(pattern: str) -> str:
    """A regular expression for a relative glob pattern with "/" separators (see `glob_files`)."""
    parts = []
    components = pattern.split("/")
    for i, comp in enumerate(components):
        last = i == len(components) - 1
        if comp == "**":
            parts.append(r"(?:[^/.][^/]*/)*" if not last else r"(?:[^/.][^/]*/)*[^/.][^/]*")
            continue
        out = "" if comp.startswith(".") else r"(?!\.)"
        j = 0
        while j < len(comp):
            c = comp[j]
            if c == "*":
                out += r"[^/]*"
            elif c == "?":
                out += r"[^/]"
            elif c == "[" and comp.find("]", j + 1) > j + 1:
                end = comp.find("]", j + 1)
                body = comp[j + 1:end].replace("\\", "\\\\")
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                j = end
            else:
                out += re.escape(c)
            j += 1
        parts.append(out + ("" if last else "/"))
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# reading and writing


def open_input_file(path: str | os.PathLike) -> pa.NativeFile:
    """A random-access file of `path` on its filesystem (a remote one reads ranges on demand)."""
    fs, inner = resolve(path)
    return fs.open_input_file(inner)


def remove(path: str | os.PathLike) -> None:
    """Delete the file at `path` (FileNotFoundError when there is none)."""
    found = local(path)
    if found is not None:
        os.unlink(found)
        return
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    fs.delete_file(inner)


class RemoteTarget(CommitOnExit):
    """`sae_core.atomic.AtomicPath` for a path on a filesystem other than the local one.

    Opening refuses an existing `path` unless overwrite=True (FileExistsError) and a directory at
    `path` (IsADirectoryError), creates the parent directory where the filesystem has directories,
    and picks a temporary name beside it (`tmp`, its path inside the filesystem). `open()` gives
    the output stream of `tmp`; `commit()` moves it to `path` (see the module docstring: atomic on
    object stores), refusing, without overwrite=True, a `path` that appeared meanwhile (a check
    and a move: two steps); `discard()` deletes it. Neither leaves the temporary object.
    """

    def __init__(self, path: str, *, overwrite: bool = False):
        self.path = str(path)
        self.fs, self.inner = resolve(self.path)
        kind = self.fs.get_file_info(self.inner).type
        if kind == pafs.FileType.Directory:
            raise IsADirectoryError(errno.EISDIR, "is a directory; give the path of a file to write", self.path)
        if kind != pafs.FileType.NotFound and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.overwrite = overwrite
        parent = posixpath.dirname(self.inner)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        self.tmp = posixpath.join(parent, temporary_path(posixpath.basename(self.inner)).name)

    def open(self) -> pa.NativeFile:
        return self.fs.open_output_stream(self.tmp)

    def commit(self) -> str:
        try:
            if not self.overwrite and self.fs.get_file_info(self.inner).type != pafs.FileType.NotFound:
                raise FileExistsError(f"{self.path} exists (it appeared while this file was written); "
                                      "pass overwrite=True to replace it")
            try:
                self.fs.move(self.tmp, self.inner)
            except (NotImplementedError, pa.ArrowNotImplementedError):
                self.fs.copy_file(self.tmp, self.inner)
            return self.path
        finally:
            self.discard()

    def discard(self) -> None:
        try:
            if self.fs.get_file_info(self.tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(self.tmp)
        except OSError:  # gone already, or the store refuses: nothing more to do here
            pass



def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> str | os.PathLike:
    """Write `data` to `path` (path or URI) atomically: `sae_core.atomic.write_bytes_atomic` for a
    local one, `RemoteTarget` for others. Returns the path written."""
    found = local(path)
    if found is not None:
        from ..atomic import write_bytes_atomic

        return write_bytes_atomic(found, data, overwrite=overwrite)
    with RemoteTarget(str(path), overwrite=overwrite) as target, target.open() as out:
        out.write(data)
    return target.path


__all__ = ["RemoteTarget", "UnsupportedPath", "exists", "file_type", "glob_files", "is_remote", "join", "list_files",
           "local", "name", "native", "open_input_file", "remove", "resolve", "scheme", "translate_glob",
           "write_bytes"]
