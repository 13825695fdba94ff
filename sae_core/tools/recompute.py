"""Offline recomputation: estimators over saved rollouts, one file or many shards, local or on Ray.

A job maps input files (the trajectory standard, Parquet or Arrow IPC) to output files of the same
format. Each input is streamed in record batches (memory: one batch, not a file) and validated as
`sae validate` does (duplicate and null ids across batches and, on one job, across its shards,
checksums); every input column is kept and each estimator run adds its output set (`advantages`,
`returns`, `boundaries`, suffixed `_<label>` when the job has several runs), with its parameters in
the metadata. No output replaces an input column: a run whose own outputs it would read (the `given`
rule reads `boundaries`) writes suffixed outputs, and a shard whose file holds a column of that
name that no recorded output set produced is refused.

Inputs and outputs may be URIs (`trajectory.paths`: `file://`, `s3://`, `gs://`, `hf://`, ...).
Outputs are atomic: written under a temporary name and renamed when whole, so an interrupted job
leaves no partial file. Inputs are only read. Each output records its input's fingerprint (size,
mtime, a hash of the footer: `jobs.fingerprint`). An existing output is refused without
`overwrite`, except that a directory or glob job skips shards whose output is complete for this
input and these runs (it resumes), and computes again, saying so, shards whose output these runs
wrote from an input that has changed since. One job at a time writes an output (`jobs.JobLock`);
temporary files that dead jobs left behind are removed. A shard that fails (bad data, a full disk, a
read-only directory) is reported with its path and a one-line reason, and the others go on.

The Ray engine (`recompute_ray`) runs the same per-file function, one Ray Data task per shard,
with the numba backend in the workers: its outputs are those of the local engine.

Columns of other names (`column_map`: `--column STANDARD=THEIRS`, veRL's and OpenRLHF's names; see
`trajectory.mapping`) are read under the standard's names, and written so: an output is a file of
the standard (`sae validate` passes it without flags), whatever names its input had; columns the map
does not rename keep theirs. The input is only read.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import registry
from .. import trajectory as tj
from .jobs import (
    FINGERPRINT_KEY,
    TEMPORARY,
    JobError,
    JobLock,
    fingerprint,
    fingerprint_changes,
    fingerprint_metadata,
    lock_path,
    read_fingerprint,
    remove_stale_temporaries,
)
from .recompute_plan import (SHARD_SUFFIXES, EstimatorRun, Shard, check_backend, plan_files, plan_runs,
                             shard_path)

# ----------------------------------------------------------------------------------------------
# one file


@dataclass
class FileResult:
    """What happened to one shard: "written", "skipped" (complete output found) or "failed".
    note: what else to know (a stale output was replaced, and why)."""

    src: str
    dst: str
    status: str
    rows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.src}: FAILED: {self.error}"
        if self.status == "skipped":
            return f"{self.src} -> {self.dst}: skipped, complete output found"
        rate = self.tokens / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.src} -> {self.dst}: {self.rows:,} rows, {self.tokens:,} tokens in {self.seconds:.2f} s "
                f"({_si(rate)} tokens/s)" + (f"; {self.note}" if self.note else ""))


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def recompute_file(src: str | os.PathLike, dst: str | os.PathLike, runs: Sequence[EstimatorRun], *,
                   batch_size: int = 1024, backend: str = "auto", overwrite: bool = False,
                   on_batch: Callable[[int, int], None] | None = None, seen: Any = None,
                   column_map: Any = None) -> FileResult:
    """Stream `src` through every run and write `dst` atomically.

    Every batch of `batch_size` rows is validated (trajectory.iter_batches: the verdicts of
    `validate_file`; `seen`, a `trajectory.SeenIds`, carries the ids of the job's other shards),
    gets each run's output set (trajectory.compute, which refuses non-finite outputs) and is
    written as one Parquet row group (or IPC batch). on_batch(rows, tokens) is called after each
    batch (progress bars). `dst` appears whole when the last batch is written, or not at all; it
    records `src`'s fingerprint (`jobs.fingerprint`), taken before reading and checked again after:
    an input that changed meanwhile fails. An existing `dst` raises FileExistsError unless
    overwrite=True. Raises TrajectoryError naming `src` for bad input, OSError for a file that
    cannot be read or written. column_map: a `trajectory.ColumnMap` (or {standard: theirs}): `src`'s
    columns are read, and written to `dst`, under the standard's names (see the module docstring).
    """
    start = time.perf_counter()
    src = str(src)
    fp = fingerprint(src)
    columns, info = _input_schema(src, column_map)
    try:
        out_schema = _output_schema(columns.schema, info, runs, src)
    except tj.TrajectoryError as exc:
        raise tj.TrajectoryError(columns.explain(exc.problems), src) from None
    out_schema = out_schema.with_metadata({**(out_schema.metadata or {}), **_job_metadata(fp, columns.to_file)})
    rows = tokens = 0
    with tj.TrajectoryWriter(dst, out_schema, overwrite=overwrite, row_group_rows=batch_size) as writer:
        for batch in tj.iter_batches(src, batch_size=batch_size, seen=seen, column_map=column_map):
            for run in runs:
                try:
                    batch = tj.compute(batch, estimator=run.estimator, suffix=run.suffix, backend=backend,
                                       first_row=rows, **run.params)
                except tj.TrajectoryError as exc:
                    raise tj.TrajectoryError(columns.explain(exc.problems), src) from None
                except ValueError as exc:  # the estimator's own checks, e.g. an overflow
                    raise tj.TrajectoryError(f"rows {rows} to {rows + batch.num_rows - 1}: {exc}", src) from None
            writer.write(pa.RecordBatch.from_arrays(batch.columns, schema=out_schema))
            offsets = batch.column("response_ids").offsets
            n_tokens = int(offsets[-1].as_py() - offsets[0].as_py())
            rows += batch.num_rows
            tokens += n_tokens
            if on_batch is not None:
                on_batch(batch.num_rows, n_tokens)
        changed = fingerprint_changes(fp, fingerprint(src))
        if changed:
            raise tj.TrajectoryError(f"the file changed while it was read ({changed}); no output written", src)
    return FileResult(src, str(dst), "written", rows, tokens, time.perf_counter() - start)


def _input_schema(src, column_map=None) -> tuple[tj.FileColumns, tj.Info]:
    """How the input's columns are read (its schema as read) and its metadata: an unreadable
    version, or a column map that does not fit, fails here, before an output is opened. Its
    warnings (no metadata, a newer minor version, names recognised) come once, from the reader."""
    columns = tj.file_columns(src, column_map)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        return columns, tj.read_info(columns.schema, str(src))


def _job_metadata(fp: dict[str, Any], to_file: dict[str, str]) -> dict[bytes, bytes]:
    """The metadata entry of the job (`jobs.FINGERPRINT_KEY`): the input's fingerprint and, when
    some were read under other names, the columns ({standard: the input's name}), which
    `output_state` compares on a resumed job."""
    meta = fingerprint_metadata(fp)
    if to_file:
        key = FINGERPRINT_KEY.encode()
        meta[key] = json.dumps({**json.loads(meta[key]), "columns": dict(to_file)}, sort_keys=True).encode()
    return meta


def _recorded_columns(metadata: dict[bytes, bytes] | None) -> dict[str, str]:
    """The columns an output records as read under other names ({} for none, or no record)."""
    try:
        doc = json.loads((metadata or {})[FINGERPRINT_KEY.encode()])
        return dict(doc.get("columns") or {})
    except (KeyError, ValueError, TypeError, AttributeError):
        return {}


def _output_schema(schema: pa.Schema, info: tj.Info, runs: Sequence[EstimatorRun], source: str) -> pa.Schema:
    """The schema every output batch gets: the input's columns, then each run's outputs. Raises
    TrajectoryError for missing columns, and for an input column a run would replace that is no
    output set's (the file's own data, e.g. the `given` rule's `boundaries`)."""
    empty = pa.RecordBatch.from_pylist([], schema=schema)
    problems = []
    for run in runs:
        problems += [p for p in tj.schema_problems(empty.schema, tj.needed_columns(
            run.estimator, registry.boundary_rule(run.estimator, run.params))) if p not in problems]
    outputs = {f"{kind}{key[len('advantages'):]}" for key in [*info.estimators, *info.invalid]
               for kind in tj.OUTPUT_NAMES}
    for run in runs:
        for name in run.writes():
            if name in schema.names and name not in outputs:
                problems.append(tj.Problem(name, None, (
                    "is input data here (no output set recorded in the metadata produced it) and this job "
                    f"would replace it with {run.estimator}'s output; rename the column, or run with "
                    "several --estimator (outputs suffixed _<label>)")))
    if problems:
        raise tj.TrajectoryError(problems, source)
    for run in runs:
        empty = tj.compute(empty, estimator=run.estimator, suffix=run.suffix, backend="reference", **run.params)
    return empty.schema


def output_state(src: str | os.PathLike, dst: str | os.PathLike, runs: Sequence[EstimatorRun],
                 column_map: Any = None) -> tuple[str, str | None]:
    """Whether `dst` is a whole output of `src` for these runs, as (state, why):

    "complete": readable, its metadata records every run's output set with the same parameters,
    the fingerprint of `src` it records is that of `src` now (`jobs.fingerprint`), and the columns
    it records as read under other names are those `column_map` reads now;
    "stale": these runs wrote it, but from another `src` (the fingerprint or the row count differs,
    or none is recorded) or reading other columns: computing it again loses nothing; "other":
    anything else (unreadable, other parameters, not ours), which only overwrite=True replaces.
    """
    try:
        sch = tj.read_schema(dst)
        with warnings.catch_warnings():  # the output's own: the input's come when it is read
            warnings.simplefilter("ignore", tj.TrajectoryWarning)
            info = tj.read_info(sch, str(dst))
    except (tj.TrajectoryError, OSError):
        return "other", "not a readable trajectory file"
    if not all(info.estimators.get(f"advantages{r.suffix}") == r.recorded() for r in runs):
        return "other", "an output of other estimator parameters"
    try:
        changed = fingerprint_changes(read_fingerprint(sch.metadata), fingerprint(src))
        if changed is None and tj.count_rows(dst) != tj.count_rows(src):
            changed = "row count"
        columns = tj.file_columns(src, column_map).to_file if changed is None else {}
    except (tj.TrajectoryError, OSError):  # the input's fault, most likely: reading it will say so
        return "other", None
    if changed:
        return "stale", f"the input changed since its output was written ({changed})"
    then = _recorded_columns(sch.metadata)
    if then != columns:
        def read(m, k):
            return f"{k}={m[k]}" if k in m else f"{k} under its own name"
        keys = sorted(k for k in {*then, *columns} if then.get(k) != columns.get(k))
        return "stale", ("it was written reading other columns: " + ", ".join(read(then, k) for k in keys)
                         + " then; " + ", ".join(read(columns, k) for k in keys) + " now")
    return "complete", None


def is_complete(src: str | os.PathLike, dst: str | os.PathLike, runs: Sequence[EstimatorRun],
                column_map: Any = None) -> bool:
    """Whether `dst` is a whole output of `src` for these runs (`output_state` says "complete")."""
    return output_state(src, dst, runs, column_map)[0] == "complete"


# ----------------------------------------------------------------------------------------------
# jobs


@dataclass
class JobResult:
    """Every shard's result, in input order; the stale temporary files the job removed; notes
    (e.g. a run whose outputs are suffixed because it reads the unsuffixed ones)."""

    files: list[FileResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status != "failed" for f in self.files)

    def totals(self) -> dict[str, int | float]:
        """Shards by status (written, skipped, failed), and the rows, tokens and seconds of those written."""
        done = [f for f in self.files if f.status == "written"]
        counts = {s: sum(f.status == s for f in self.files) for s in ("written", "skipped", "failed")}
        return {**counts, "rows": sum(f.rows for f in done), "tokens": sum(f.tokens for f in done),
                "seconds": sum(f.seconds for f in done)}

    def summary(self) -> str:
        t = self.totals()
        rate = f", {_si(t['tokens'] / t['seconds'])} tokens/s" if t["seconds"] > 0 else ""
        removed = (f"; removed {len(self.removed)} temporary file(s) of dead jobs" if self.removed else "")
        return "\n".join([(f"{t['written']} written, {t['skipped']} skipped, {t['failed']} failed: "
                          f"{t['rows']:,} rows, {t['tokens']:,} tokens{rate}{removed}"), *(f"note: {n}" for n in self.notes)])


@dataclass(frozen=True)
class _Task:
    """A shard to compute: replace=True where its existing output is stale (replaced without
    overwrite=True), with the note saying so; `existing`: why an existing output is not this job's."""

    shard: Shard
    replace: bool = False
    note: str | None = None
    existing: str | None = None


def recompute(input: str | os.PathLike, output: str | os.PathLike, runs: Sequence[EstimatorRun], *,
              engine: str = "local", batch_size: int = 1024, backend: str = "auto", overwrite: bool = False,
              progress: bool | None = None, ray_address: str | None = None, column_map: Any = None
              ) -> JobResult:
    """Run a job: every shard of `input` (see `plan_files`) through `runs`, into `output`.

    A single-file job refuses an existing output without overwrite=True. A many-shard job skips
    shards whose output is complete for this input and these runs, computes again (saying so)
    those whose output is stale (`output_state`), so an interrupted or outdated job resumes; any
    other existing output is refused without overwrite=True. A shard that fails (bad data, an
    existing output, a file system error) is reported in the result and the others go on. The
    local engine checks trajectory ids across the job's shards (a skipped shard's ids count too);
    the Ray engine reads every shard's ids on the driver first, for the same verdicts.
    engine: "local" (this process) or "ray" (one Ray Data task per shard, on the cluster at
    `ray_address`, or a local Ray instance). progress: a progress bar on stderr (None: when stderr
    is a terminal). column_map: how every shard's columns are read, and written (`recompute_file`).
    Raises ValueError for a job that cannot start (see `plan_files`; a backend that cannot run
    here, checked before any shard); JobError (an OSError) when another job is writing the output,
    the output cannot be created, or the Ray cluster cannot be reached.
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray'; got {engine!r}")
    shards, many = plan_files(input, output)
    if engine == "local" and backend not in ("auto", "reference", "numba"):
        check_backend(backend)
    if engine == "ray":
        from .recompute_ray import probe_address

        probe_address(ray_address)
    result = JobResult(notes=[r.note for r in runs if r.note])
    with JobLock(lock_path(output if many else shards[0].dst, many), output):
        result.removed = [str(p) for p in remove_stale_temporaries(s.dst for s in shards)]
        plan: list[_Task | FileResult] = []
        for shard in shards:
            state, why = ("new", None) if not many or overwrite or not _exists(shard.dst) else \
                output_state(shard.src, shard.dst, runs, column_map)
            if state == "complete":
                plan.append(FileResult(str(shard.src), str(shard.dst), "skipped"))
            elif state == "stale":
                plan.append(_Task(shard, replace=True, note=f"replaced a stale output: {why}"))
            else:
                plan.append(_Task(shard, existing=why))
        if engine == "local":
            result.files = _run_local(plan, runs, batch_size=batch_size, backend=backend, overwrite=overwrite,
                                      progress=progress, column_map=column_map)
        else:
            result.files = _run_ray(plan, runs, batch_size=batch_size, overwrite=overwrite,
                                    address=ray_address, column_map=column_map)
    return result


def _exists(path: Path | str) -> bool:
    return tj.paths.exists(path)


def _one(task: _Task, runs, batch_size, backend, overwrite, on_batch=None, seen=None, column_map=None
         ) -> FileResult:
    """One shard, every failure of data or file system a "failed" result with a one-line reason."""
    src, dst = str(task.shard.src), str(task.shard.dst)
    try:
        r = recompute_file(src, dst, runs, batch_size=batch_size, backend=backend,
                           overwrite=overwrite or task.replace, on_batch=on_batch, seen=seen,
                           column_map=column_map)
        r.note = task.note
        return r
    except FileExistsError:
        why = f" ({task.existing})" if task.existing else ""
        return FileResult(src, dst, "failed", error=f"{dst} exists{why}; --overwrite (overwrite=True) replaces it")
    except (ValueError, OSError, pa.ArrowException) as exc:  # TrajectoryError is a ValueError
        error = failure_reason(exc, dst)
    if task.replace:  # its output is stale: keeping it would leave a file that no longer matches its input
        try:
            tj.paths.remove(dst)
            error += " (its stale output was removed)"
        except OSError:
            error += " (its stale output could not be removed)"
    return FileResult(src, dst, "failed", error=error)


def failure_reason(exc: BaseException, dst: str) -> str:
    """One line for a shard's failure: a TrajectoryError's problems; an OSError's file and reason
    (the output where it names none, or only our temporary file: reading errors come as
    TrajectoryError naming the input); anything else's message, on one line."""
    if isinstance(exc, tj.TrajectoryError):
        return "; ".join(str(p) for p in exc.problems)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
        if "Detail:" in reason and exc.errno:  # Arrow's "Failed to open local file '.x.tmp-..'. Detail: ..."
            reason = os.strerror(exc.errno)
        where = exc.filename if exc.filename and not TEMPORARY.match(Path(str(exc.filename)).name) else dst
        return f"{where}: {' '.join(reason.split())}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ValueError) and not isinstance(exc, OSError) else f"{dst}: {text}"


def _run_local(plan: list[_Task | FileResult], runs, *, batch_size, backend, overwrite, progress,
               column_map=None) -> list[FileResult]:
    seen = tj.SeenIds()
    bar = _progress_bar([t.shard for t in plan if isinstance(t, _Task)], progress)
    out = []
    try:
        for task in plan:
            if isinstance(task, FileResult):  # skipped: its ids still count against later shards
                try:
                    seen.add_file(task.src, column_map=column_map)
                except (ValueError, OSError, pa.ArrowException) as exc:
                    task = replace(task, status="failed", error=failure_reason(exc, task.dst)
                                   + " (its output, written by an earlier run, is kept)")
                out.append(task)
                continue

            def on_batch(rows, tokens, _bar=bar):
                if _bar is not None:
                    _bar.tokens += tokens
                    _bar.update(rows)
                    elapsed = time.perf_counter() - _bar.started
                    _bar.set_postfix_str(f"{_si(_bar.tokens / max(elapsed, 1e-9))} tokens/s", refresh=False)
            out.append(_one(task, runs, batch_size, backend, overwrite, on_batch, seen, column_map))
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
        except (tj.TrajectoryError, OSError):
            pass
    bar = tqdm(total=total, unit=" rows", desc="recompute", file=sys.stderr, dynamic_ncols=True)
    bar.tokens = 0
    bar.started = time.perf_counter()
    return bar


def _run_ray(plan: list[_Task | FileResult], runs, *, batch_size, overwrite, address, column_map=None
             ) -> list[FileResult]:
    """One Ray Data task per shard to compute, each running `recompute_file` with the numba backend.
    The ids of every shard are read on the driver first (in input order, as the local engine
    does); a shard whose ids repeat an earlier shard's fails there and is not sent."""
    from .recompute_ray import run_ray

    seen = tj.SeenIds()
    out: list[FileResult | None] = []
    items = []
    for i, task in enumerate(plan):
        src, dst = (task.src, task.dst) if isinstance(task, FileResult) else (str(task.shard.src), str(task.shard.dst))
        try:
            seen.add_file(src, column_map=column_map)
        except (ValueError, OSError, pa.ArrowException) as exc:
            out.append(FileResult(src, dst, "failed", error=failure_reason(exc, dst)))
            continue
        if isinstance(task, FileResult):
            out.append(task)
        else:
            out.append(None)
            items.append({"index": i, "src": src, "dst": dst, "replace": task.replace, "note": task.note or ""})
    rows = run_ray(items, _RayTask(list(runs), batch_size, overwrite, column_map), address=address)
    done = {r.pop("index"): FileResult(**{k: (None if k in ("error", "note") and v == "" else v)
                                          for k, v in r.items()}) for r in rows}
    return [r if r is not None else done[i] for i, r in enumerate(out)]


class _RayTask:
    """The function Ray Data maps over the shards (a plain picklable object)."""

    def __init__(self, runs, batch_size, overwrite, column_map=None):
        self.runs, self.batch_size, self.overwrite = runs, batch_size, overwrite
        self.column_map = column_map

    def __call__(self, item: dict) -> dict:
        task = _Task(Shard(shard_path(item["src"]), shard_path(item["dst"])), item["replace"], item["note"] or None)
        r = _one(task, self.runs, self.batch_size, "numba", self.overwrite, column_map=self.column_map)
        return {"index": item["index"], "src": r.src, "dst": r.dst, "status": r.status, "rows": r.rows,
                "tokens": r.tokens, "seconds": r.seconds, "error": r.error or "", "note": r.note or ""}


__all__ = ["SHARD_SUFFIXES", "EstimatorRun", "FileResult", "JobError", "JobResult", "Shard", "check_backend",
           "failure_reason", "is_complete", "output_state", "plan_files", "plan_runs", "recompute", "recompute_file"]
