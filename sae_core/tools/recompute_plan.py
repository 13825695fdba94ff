"""Planning a recompute job: the estimator runs (`--estimator` values and job-wide options) and the
files (a file, a directory of shards or a glob, and where each output goes). Nothing here reads a
shard's data; everything here raises before a job writes anything. Inputs and outputs may be
URIs (`trajectory.paths`): a `file://` one is planned as its local path, others on their filesystem.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from .. import registry
from .. import trajectory as tj
from ..trajectory import paths

SHARD_SUFFIXES = (".parquet", ".pq", ".arrow", ".ipc", ".feather", ".arrows")


@dataclass(frozen=True)
class EstimatorRun:
    """One output set of a job: an estimator, its keyword arguments for `trajectory.compute`
    (scalar options only; per-token data comes from the file's columns), and the column suffix its
    outputs get ("" when the job has one run). note: why the suffix is not the usual one, if so."""

    estimator: str
    params: Mapping[str, Any]
    suffix: str
    note: str | None = None

    def recorded(self) -> dict[str, Any]:
        """The parameters the output's metadata records (`registry.estimator_params`)."""
        return registry.estimator_params(self.estimator, **self.params)

    def reads(self) -> tuple[str, ...]:
        """The columns this run reads, besides rewards/reward and response_mask."""
        return tj.needed_columns(self.estimator, registry.boundary_rule(self.estimator, self.params))

    def writes(self) -> tuple[str, ...]:
        return tuple(f"{name}{self.suffix}" for name in tj.OUTPUT_NAMES)


def plan_runs(specs: Sequence[str], common: Mapping[str, Any] | None = None) -> list[EstimatorRun]:
    """Estimator runs from `--estimator` values and the job-wide options.

    specs: each "NAME" or "NAME:key=value,key=value" (`registry.parse_run`: values parsed by their
    option's type, e.g. "sae:threshold=0.1" or "sae:delimiter_ids=[13]"), NAME one of
    `registry.ESTIMATORS`. One spec writes unsuffixed columns; several write `_<label>` columns,
    the label being NAME, or NAME and its overrides ("sae_threshold0.1") where the same NAME
    appears twice. A run that would write a column some run of the job reads (one run of
    `sae:boundary=given`, which reads `boundaries`) writes `_<label>` columns instead (its `note`
    says so): a recompute never replaces what it reads.
    common: job-wide keyword arguments (gamma, lam, threshold, mask_mode, ...); each run takes the
    ones its estimator uses, and its own overrides win (`registry.run_options`: a run whose
    overrides choose a boundary rule drops the job-wide rule options).
    Raises ValueError, prefixed "--estimator 'SPEC': ", for an unknown estimator or option, a
    malformed spec, bad parameters (checked here, before any file is read); ValueError for two runs
    with the same label.
    """
    if not specs:
        raise ValueError("no estimator given: pass at least one --estimator")
    parsed = []
    for spec in specs:
        try:
            name, overrides = registry.parse_run(spec)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--estimator {spec!r}: {exc}") from None
        parsed.append((spec, name, _plain(overrides)))
    names = [name for _, name, _ in parsed]
    runs, labels = [], []
    for spec, name, overrides in parsed:
        label = name if names.count(name) == 1 or not overrides else name + "_" + "_".join(
            f"{k}{_compact(v)}" for k, v in sorted(overrides.items()))
        try:
            params = _plain(registry.run_options(name, common or {}, overrides))
            run = EstimatorRun(name, params, "" if len(parsed) == 1 else f"_{label}")
            run.recorded()
            run.reads()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--estimator {spec!r}: {exc}") from None
        runs.append(run)
        labels.append((spec, label))
    read = {c for r in runs for c in r.reads()}
    for i, ((spec, label), run) in enumerate(zip(labels, runs)):
        clash = sorted(set(run.writes()) & read)
        if clash:
            runs[i] = replace(run, suffix=f"_{label}", note=(
                f"--estimator {spec!r} reads {', '.join(clash)}: its outputs are written as "
                + ", ".join(f"{n}_{label}" for n in tj.OUTPUT_NAMES) + " so that the input is kept"))
    suffixes = [r.suffix for r in runs]
    for s in suffixes:
        if suffixes.count(s) > 1:
            raise ValueError(f"two estimator runs would both write advantages{s}; give them different parameters")
    return runs


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    """Token id lists as lists, as the file metadata records them (the registry parses them to tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _compact(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(str(x) for x in v)
    return str(v)


def check_backend(backend: str) -> None:
    """Raise ValueError ("--backend NAME: why") unless `backend` runs on this machine's numpy
    inputs: one token through it, before any shard is read (triton needs a GPU, torch and triton
    need their packages)."""
    from ..api import compute_advantages_ragged

    try:
        compute_advantages_ragged(np.zeros(1, np.float32), np.zeros(1, np.float32), np.array([0, 1]),
                                  estimator="gae", backend=backend)
    except ValueError as exc:
        raise ValueError(f"--backend {backend}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# planning the files


@dataclass(frozen=True)
class Shard:
    """One input file and where its output goes: each a Path when local, else its URI (a str)."""

    src: Path | str
    dst: Path | str


def shard_path(path: str | os.PathLike) -> Path | str:
    """A shard's path as `Shard` holds it: a Path when local (`file://` too), else the URI."""
    found = paths.local(path)
    return str(path) if found is None else Path(found)


def plan_files(input: str | os.PathLike, output: str | os.PathLike) -> tuple[list[Shard], bool]:
    """The (input, output) pairs of a job, and whether it is a many-shard job.

    input: a file; a directory (every Parquet/IPC file under it, recursively, in sorted order; an
    entry of such a name that is not a regular file is a shard that fails); or a glob pattern
    ("rollouts/*.parquet", "**" allowed; files under `output` are not inputs, so that a job whose
    output lies under the pattern's root resumes). output: for a single file, the output file (or an
    existing directory to put it in); otherwise a directory, mirroring each shard's path relative
    to the input directory (or to the pattern's fixed prefix).
    Raises ValueError when nothing matches, or an output would be an input or lie inside the input
    directory (a later run would read it as a shard); TrajectoryError for an input that exists but
    is neither a file nor a directory (a FIFO: opening it would block).
    input and output may be URIs (`trajectory.paths`); off the local disk the same rules hold, on
    the names as given (no links to resolve there).
    """
    src_local, out_local = paths.local(input), paths.local(output)
    if src_local is None or out_local is None:
        return _plan_uris(str(input) if src_local is None else src_local,
                          str(output) if out_local is None else out_local)
    src = Path(src_local)
    out = Path(out_local)
    if src.is_file():
        dst = out / src.name if out.is_dir() else out
        if dst.resolve() == src.resolve():
            raise ValueError(f"the output {dst} is the input; write it elsewhere")
        return [Shard(src, dst)], False
    if src.exists() and not src.is_dir():
        raise tj.TrajectoryError("not a regular file (a FIFO or a device?): give a file, a directory or a glob",
                                 str(src))
    out_resolved = out.resolve()
    if src.is_dir():
        root = src
        files = shards_under(src)
    else:
        pattern = str(src_local)
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()
                       and out_resolved not in Path(p).resolve().parents)
        fixed = pattern.split("*")[0].split("?")[0].split("[")[0]
        root = Path(fixed) if fixed.endswith(os.sep) else Path(fixed).parent
        if not files:
            raise ValueError(f"no file matches {pattern!r}" + (f" outside the output {out}" if out.exists() else ""))
    if not files:
        raise ValueError(f"no Parquet or Arrow IPC file under {src}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} is a file; a job of several shards writes to a directory")
    root_resolved = root.resolve()
    if src.is_dir() and (out_resolved == root_resolved or root_resolved in out_resolved.parents):
        raise ValueError(f"the output directory {out} is inside the input directory {src}; write it elsewhere")
    # a shard's place is its name in its (resolved) directory: a link to a file elsewhere stays here
    shards = [Shard(f, out / (f.parent.resolve() / f.name).relative_to(root_resolved)) for f in files]
    inputs = {f.resolve() for f in files} | {f.parent.resolve() / f.name for f in files}
    for s in shards:
        if {s.dst.resolve(), s.dst.parent.resolve() / s.dst.name} & inputs:
            raise ValueError(f"the output {s.dst} would overwrite the input of the same name; write elsewhere")
    return shards, True


def _plan_uris(input: str | os.PathLike, output: str | os.PathLike) -> tuple[list[Shard], bool]:
    """`plan_files` where the input or the output is off the local disk (the other may be local)."""
    kind, out_kind = paths.file_type(input), paths.file_type(output)
    if kind == pafs.FileType.File:
        dst = paths.join(output, paths.name(input)) if out_kind == pafs.FileType.Directory else output
        if _key(dst) == _key(input):
            raise ValueError(f"the output {dst} is the input; write it elsewhere")
        return [Shard(shard_path(input), shard_path(dst))], False
    out_key = _key(output)
    if kind == pafs.FileType.Directory:
        root = str(input).rstrip("/")
        files = [f for f in paths.list_files(input) if _is_shard_name(f)]
        if not files:
            raise ValueError(f"no Parquet or Arrow IPC file under {input}")
        root_key = _key(root)
        if out_key[0] == root_key[0] and (out_key[1] + "/").startswith(root_key[1] + "/"):
            raise ValueError(f"the output directory {output} is inside the input directory {input}; "
                             "write it elsewhere")
    elif kind == pafs.FileType.NotFound:
        pattern = str(input)
        files = [f for f in paths.glob_files(pattern) if not _key(f)[1].startswith(out_key[1] + "/")
                 or _key(f)[0] != out_key[0]]
        if not files:
            raise ValueError(f"no file matches {pattern!r}")
        magic = min((pattern.find(c) for c in "*?[" if c in pattern), default=len(pattern))
        root = pattern[:pattern.rfind("/", 0, magic)]
    else:
        raise tj.TrajectoryError("not a file or a directory: give a file, a directory or a glob", str(input))
    if out_kind == pafs.FileType.File:
        raise ValueError(f"the output {output} is a file; a job of several shards writes to a directory")
    shards = [Shard(shard_path(f), shard_path(paths.join(output, f[len(root) + 1:]))) for f in files]
    inputs = {_key(f) for f in files}
    for s in shards:
        if _key(s.dst) in inputs:
            raise ValueError(f"the output {s.dst} would overwrite the input of the same name; write elsewhere")
    return shards, True


def _key(path: str | os.PathLike) -> tuple[str, str]:
    """(scheme, path) to compare two paths or URIs: a local one resolved, a URI's text as it is."""
    found = paths.local(path)
    if found is not None:
        return "file", os.path.realpath(found)
    return paths.scheme(path) or "", str(path).split("://", 1)[1].rstrip("/")


def _is_shard_name(path: str) -> bool:
    name = paths.name(path)
    return name.lower().endswith(SHARD_SUFFIXES) and not name.startswith(".")


__all__ = ["SHARD_SUFFIXES", "EstimatorRun", "Shard", "check_backend", "plan_files", "plan_runs", "shard_path"]


def shards_under(directory: Path) -> list[Path]:
    """The Parquet/IPC files under `directory`, recursively, sorted; hidden names left out (an entry
    of such a name that is not a regular file is listed, and fails as a shard)."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in SHARD_SUFFIXES
                  and not p.name.startswith(".") and not p.is_dir())


def expand_inputs(paths: list[str]) -> list[str]:
    """The files a command that reads trajectory files is given: each of `paths` as it is when it
    is not a directory (a FIFO too: the reader refuses it with its own message); every
    Parquet/IPC file under a directory, recursively, sorted; the files a glob pattern matches
    ("**" allowed), sorted; a path that does not exist, as it is (reading it fails for that file
    alone). Order: as given. Raises ValueError naming a pattern or directory that gives no file.
    A URI (`trajectory.paths`) is expanded on its filesystem; a `file://` one as its local path."""
    out: list[str] = []
    for given in paths:
        if tj.paths.is_remote(given):
            out.extend(_expand_uri(given))
            continue
        given = str(tj.paths.local(given))
        src = Path(given)
        if src.is_dir():
            files = [str(p) for p in shards_under(src)]
            if not files:
                raise ValueError(f"no Parquet or Arrow IPC file under {given}")
        elif glob.has_magic(given) and not (src.exists() or src.is_symlink()):
            files = sorted(p for p in glob.glob(given, recursive=True) if Path(p).is_file())
            if not files:
                raise ValueError(f"no file matches {given!r}")
        else:  # a file, or a path that is not there: the reader says so, for this file alone
            files = [given]
        out.extend(files)
    return out


def _expand_uri(given: str) -> list[str]:
    """`expand_inputs` of one URI off the local disk; one no filesystem serves, as it is (reading
    it then fails for that file alone, saying what to install)."""
    try:
        kind = paths.file_type(given)
    except OSError:  # no filesystem serves it, or it cannot be reached: said when the file is read
        return [given]
    if kind == pafs.FileType.Directory:
        files = [f for f in paths.list_files(given) if _is_shard_name(f)]
        if not files:
            raise ValueError(f"no Parquet or Arrow IPC file under {given}")
        return files
    if kind == pafs.FileType.NotFound and glob.has_magic(given):
        files = paths.glob_files(given)
        if not files:
            raise ValueError(f"no file matches {given!r}")
        return files
    return [given]
