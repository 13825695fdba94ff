"""Offline recomputation: estimators over saved rollouts, one file or many shards, local or on Ray.

A job maps input files (the trajectory standard, Parquet or Arrow IPC) to output files of the same
format. Each input is streamed in record batches (memory: one batch, not a file); every input
column is kept and each estimator run adds its output set (`advantages`, `returns`, `boundaries`,
suffixed `_<label>` when the job has several runs), with its parameters in the metadata.

Outputs are atomic: written under a temporary name and renamed when whole, so an interrupted job
leaves no partial file. Inputs are only read. An existing output is refused without `overwrite`,
except that a directory or glob job skips shards whose output is already complete (it resumes).

The Ray engine runs the same per-file function, one Ray Data task per shard, with the numba
backend in the workers: its outputs are those of the local engine.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import registry
from .. import trajectory as tj

SHARD_SUFFIXES = (".parquet", ".pq", ".arrow", ".ipc", ".feather", ".arrows")


@dataclass(frozen=True)
class EstimatorRun:
    """One output set of a job: an estimator, its keyword arguments for `trajectory.compute`
    (scalar options only; per-token data comes from the file's columns), and the column suffix its
    outputs get ("" when the job has one run)."""

    estimator: str
    params: Mapping[str, Any]
    suffix: str

    def recorded(self) -> dict[str, Any]:
        """The parameters the output's metadata records (`registry.estimator_params`)."""
        return registry.estimator_params(self.estimator, **self.params)


def plan_runs(specs: Sequence[str], common: Mapping[str, Any] | None = None) -> list[EstimatorRun]:
    """Estimator runs from `--estimator` values and the job-wide options.

    specs: each "NAME" or "NAME:key=value,key=value" (`registry.parse_run`: values parsed by their
    option's type, e.g. "sae:threshold=0.1" or "sae:delimiter_ids=[13]"), NAME one of
    `registry.ESTIMATORS`. One spec writes unsuffixed columns; several write `_<label>` columns,
    the label being NAME, or NAME and its overrides ("sae_threshold0.1") where the same NAME
    appears twice.
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
    runs = []
    for spec, name, overrides in parsed:
        label = name if names.count(name) == 1 or not overrides else name + "_" + "_".join(
            f"{k}{_compact(v)}" for k, v in sorted(overrides.items()))
        try:
            params = _plain(registry.run_options(name, common or {}, overrides))
            run = EstimatorRun(name, params, "" if len(parsed) == 1 else f"_{label}")
            run.recorded()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--estimator {spec!r}: {exc}") from None
        runs.append(run)
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


# ----------------------------------------------------------------------------------------------
# planning the files


@dataclass(frozen=True)
class Shard:
    """One input file and where its output goes."""

    src: Path
    dst: Path


def plan_files(input: str | os.PathLike, output: str | os.PathLike) -> tuple[list[Shard], bool]:
    """The (input, output) pairs of a job, and whether it is a many-shard job.

    input: a file; a directory (every Parquet/IPC file under it, recursively, in sorted order); or
    a glob pattern ("rollouts/*.parquet", "**" allowed). output: for a single file, the output
    file (or an existing directory to put it in); otherwise a directory, mirroring each shard's
    path relative to the input directory (or to the pattern's fixed prefix).
    Raises ValueError when nothing matches, or an output would be an input or lie inside the input
    directory (a later run would read it as a shard).
    """
    src = Path(input)
    out = Path(output)
    if src.is_file():
        dst = out / src.name if out.is_dir() else out
        if dst.resolve() == src.resolve():
            raise ValueError(f"the output {dst} is the input; write it elsewhere")
        return [Shard(src, dst)], False
    if src.is_dir():
        root = src
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in SHARD_SUFFIXES
                       and not p.name.startswith("."))
    else:
        pattern = str(input)
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        fixed = pattern.split("*")[0].split("?")[0].split("[")[0]
        root = Path(fixed) if fixed.endswith(os.sep) else Path(fixed).parent
        if not files:
            raise ValueError(f"no file matches {pattern!r}")
    if not files:
        raise ValueError(f"no Parquet or Arrow IPC file under {src}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} is a file; a job of several shards writes to a directory")
    out_resolved, root_resolved = out.resolve(), root.resolve()
    if src.is_dir() and (out_resolved == root_resolved or root_resolved in out_resolved.parents):
        raise ValueError(f"the output directory {out} is inside the input directory {src}; write it elsewhere")
    shards = [Shard(f, out / f.resolve().relative_to(root_resolved)) for f in files]
    inputs = {f.resolve() for f in files}
    for s in shards:
        if s.dst.resolve() in inputs:
            raise ValueError(f"the output {s.dst} would overwrite the input of the same name; write elsewhere")
    return shards, True


# ----------------------------------------------------------------------------------------------
# one file


@dataclass
class FileResult:
    """What happened to one shard: "written", "skipped" (complete output found) or "failed"."""

    src: str
    dst: str
    status: str
    rows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.src}: FAILED: {self.error}"
        if self.status == "skipped":
            return f"{self.src} -> {self.dst}: skipped, complete output found"
        rate = self.tokens / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.src} -> {self.dst}: {self.rows:,} rows, {self.tokens:,} tokens in {self.seconds:.2f} s "
                f"({_si(rate)} tokens/s)")


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def recompute_file(src: str | os.PathLike, dst: str | os.PathLike, runs: Sequence[EstimatorRun], *,
                   batch_size: int = 1024, backend: str = "auto", overwrite: bool = False,
                   on_batch: Callable[[int, int], None] | None = None) -> FileResult:
    """Stream `src` through every run and write `dst` atomically.

    Every batch of `batch_size` rows is validated (trajectory.iter_batches), gets each run's output
    set (trajectory.compute) and is written as one Parquet row group (or IPC batch). on_batch(rows,
    tokens) is called after each batch (progress bars). `dst` appears whole when the last batch is
    written, or not at all; an existing `dst` raises FileExistsError unless overwrite=True.
    Raises TrajectoryError naming `src` for bad input.
    """
    start = time.perf_counter()
    reader_schema = _input_schema(src)
    out_schema = _output_schema(reader_schema, runs, str(src))
    rows = tokens = 0
    with tj.TrajectoryWriter(dst, out_schema, overwrite=overwrite, row_group_rows=batch_size) as writer:
        for batch in tj.iter_batches(src, batch_size=batch_size):
            for run in runs:
                try:
                    batch = tj.compute(batch, estimator=run.estimator, suffix=run.suffix, backend=backend,
                                       **run.params)
                except tj.TrajectoryError as exc:
                    raise tj.TrajectoryError(exc.problems, str(src)) from None
                except ValueError as exc:  # the estimator's own checks, e.g. an overflow
                    raise tj.TrajectoryError(f"rows {rows} to {rows + batch.num_rows - 1}: {exc}", str(src)) from None
            writer.write(pa.RecordBatch.from_arrays(batch.columns, schema=out_schema))
            offsets = batch.column("response_ids").offsets
            n_tokens = int(offsets[-1].as_py() - offsets[0].as_py())
            rows += batch.num_rows
            tokens += n_tokens
            if on_batch is not None:
                on_batch(batch.num_rows, n_tokens)
    return FileResult(str(src), str(dst), "written", rows, tokens, time.perf_counter() - start)


def _input_schema(src) -> pa.Schema:
    schema = tj.read_schema(src)
    tj.read_info(schema, str(src))  # an unreadable version fails here, before an output is opened
    return schema


def _output_schema(schema: pa.Schema, runs: Sequence[EstimatorRun], source: str) -> pa.Schema:
    """The schema every output batch gets: the input's columns, then each run's outputs."""
    empty = pa.RecordBatch.from_pylist([], schema=schema)
    problems = []
    for run in runs:
        problems += [p for p in tj.schema_problems(empty.schema, tj.needed_columns(
            run.estimator, registry.boundary_rule(run.estimator, run.params))) if p not in problems]
    if problems:
        raise tj.TrajectoryError(problems, source)
    for run in runs:
        empty = tj.compute(empty, estimator=run.estimator, suffix=run.suffix, backend="reference", **run.params)
    return empty.schema


def is_complete(src: str | os.PathLike, dst: str | os.PathLike, runs: Sequence[EstimatorRun]) -> bool:
    """Whether `dst` is a whole output of `src` for these runs: readable, as many rows as `src`,
    and its metadata records every run's output set with the same parameters."""
    try:
        info = tj.read_info(tj.read_schema(dst), str(dst))
        if tj.count_rows(dst) != tj.count_rows(src):
            return False
    except (tj.TrajectoryError, OSError):
        return False
    return all(info.estimators.get(f"advantages{r.suffix}") == r.recorded() for r in runs)


# ----------------------------------------------------------------------------------------------
# jobs


@dataclass
class JobResult:
    """Every shard's result, in input order."""

    files: list[FileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status != "failed" for f in self.files)

    def summary(self) -> str:
        done = [f for f in self.files if f.status == "written"]
        rows = sum(f.rows for f in done)
        tokens = sum(f.tokens for f in done)
        seconds = sum(f.seconds for f in done)
        counts = {s: sum(f.status == s for f in self.files) for s in ("written", "skipped", "failed")}
        rate = f", {_si(tokens / seconds)} tokens/s" if seconds > 0 else ""
        return (f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed: "
                f"{rows:,} rows, {tokens:,} tokens{rate}")


def recompute(input: str | os.PathLike, output: str | os.PathLike, runs: Sequence[EstimatorRun], *,
              engine: str = "local", batch_size: int = 1024, backend: str = "auto", overwrite: bool = False,
              progress: bool | None = None, ray_address: str | None = None) -> JobResult:
    """Run a job: every shard of `input` (see `plan_files`) through `runs`, into `output`.

    A single-file job refuses an existing output without overwrite=True. A many-shard job skips
    shards whose output is complete for these runs (see `is_complete`), so an interrupted job
    resumes; an existing output that is not complete is refused without overwrite=True. A shard
    that fails (bad data, an existing output) is reported in the result and the others go on.
    engine: "local" (this process) or "ray" (one Ray Data task per shard, on the cluster at
    `ray_address`, or a local Ray instance). progress: a progress bar on stderr (None: when stderr
    is a terminal).
    """
    shards, many = plan_files(input, output)
    result = JobResult()
    todo = []
    for shard in shards:
        if many and shard.dst.exists() and not overwrite and is_complete(shard.src, shard.dst, runs):
            result.files.append(FileResult(str(shard.src), str(shard.dst), "skipped"))
        else:
            todo.append(shard)
    if engine == "local":
        done = _run_local(todo, runs, batch_size=batch_size, backend=backend, overwrite=overwrite, progress=progress)
    elif engine == "ray":
        done = _run_ray(todo, runs, batch_size=batch_size, overwrite=overwrite, address=ray_address)
    else:
        raise ValueError(f"engine must be 'local' or 'ray'; got {engine!r}")
    by_src = {f.src: f for f in [*result.files, *done]}
    result.files = [by_src[str(s.src)] for s in shards]
    return result


def _one(shard: Shard, runs, batch_size, backend, overwrite, on_batch=None) -> FileResult:
    try:
        return recompute_file(shard.src, shard.dst, runs, batch_size=batch_size, backend=backend,
                              overwrite=overwrite, on_batch=on_batch)
    except tj.TrajectoryError as exc:
        message = "; ".join(str(p) for p in exc.problems)
        return FileResult(str(shard.src), str(shard.dst), "failed", error=message)
    except FileExistsError:
        return FileResult(str(shard.src), str(shard.dst), "failed",
                          error=f"{shard.dst} exists; --overwrite (overwrite=True) replaces it")


def _run_local(shards: Iterable[Shard], runs, *, batch_size, backend, overwrite, progress) -> list[FileResult]:
    shards = list(shards)
    bar = _progress_bar(shards, progress)
    out = []
    try:
        for shard in shards:
            def on_batch(rows, tokens, _bar=bar):
                if _bar is not None:
                    _bar.tokens += tokens
                    _bar.update(rows)
                    elapsed = time.perf_counter() - _bar.started
                    _bar.set_postfix_str(f"{_si(_bar.tokens / max(elapsed, 1e-9))} tokens/s", refresh=False)
            out.append(_one(shard, runs, batch_size, backend, overwrite, on_batch))
    finally:
        if bar is not None:
            bar.close()
    return out


def _progress_bar(shards: list[Shard], progress: bool | None):
    import sys

    if progress is False or (progress is None and not sys.stderr.isatty()) or not shards:
        return None
    from tqdm import tqdm

    total = 0
    for shard in shards:
        try:
            total += tj.count_rows(shard.src)
        except tj.TrajectoryError:
            pass
    bar = tqdm(total=total, unit=" rows", desc="recompute", file=sys.stderr, dynamic_ncols=True)
    bar.tokens = 0
    bar.started = time.perf_counter()
    return bar


def _run_ray(shards: Sequence[Shard], runs, *, batch_size, overwrite, address) -> list[FileResult]:
    """One Ray Data task per shard, each running `recompute_file` with the numba backend."""
    if not shards:
        return []
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, **({} if address else {"include_dashboard": False}))
    try:
        items = [{"src": str(s.src), "dst": str(s.dst)} for s in shards]
        task = _RayTask(list(runs), batch_size, overwrite)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        rows = ds.map(task, num_cpus=1).take_all()
    finally:
        if started:
            ray.shutdown()
    return [FileResult(**{k: (None if k == "error" and v == "" else v) for k, v in r.items()}) for r in rows]


class _RayTask:
    """The function Ray Data maps over the shard list (a plain picklable object)."""

    def __init__(self, runs, batch_size, overwrite):
        self.runs, self.batch_size, self.overwrite = runs, batch_size, overwrite

    def __call__(self, item: dict) -> dict:
        r = _one(Shard(Path(item["src"]), Path(item["dst"])), self.runs, self.batch_size, "numba", self.overwrite)
        return {"src": r.src, "dst": r.dst, "status": r.status, "rows": r.rows, "tokens": r.tokens,
                "seconds": r.seconds, "error": r.error or ""}
