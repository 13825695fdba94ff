"""`sae annotate`: put the `sae_rl` metadata back on a file another tool rewrote.

pandas, polars, duckdb and Hugging Face `datasets` drop Arrow schema metadata when they rewrite a
file (docs/metadata.md), and with it the parameters of every output set. `annotate(FILE, ORIGINAL)`
copies the `sae_rl` document of ORIGINAL (the file as sae-rl wrote it, or a JSON document holding
the metadata) onto FILE's data, and writes the result atomically (`trajectory.TrajectoryWriter`:
Parquet page checksums, the file whole or not at all). Only the standard's key is copied: the input
fingerprint a recompute job records (`jobs.FINGERPRINT_KEY`) is not, so a resumed job computes such
an output again rather than trust it. FILE's own other metadata keys (e.g. `pandas`) are kept.

Wrong metadata is never attached. FILE is validated as it is read (the standard's columns and
types). When ORIGINAL is a trajectory file, FILE must hold ORIGINAL's rows in the same order (equal
`trajectory_id`s) with the same values in every column the estimators read or wrote that both files
hold (per-token columns on valid tokens, `reward`): else TrajectoryError naming the column, the row
and the token, and nothing is written. A JSON document has no data to compare: only columns and
types are checked, which `Annotation.compared` says. Sets the metadata records whose advantages
column FILE lacks are left out of the document (`Annotation.dropped`); `advantages_*` columns it
does not describe stay of unknown parameters (`Annotation.unknown`).

Neither input is modified: the output is a new file (`out`), or FILE itself replaced in place only
with overwrite=True; an existing output is refused unless overwrite=True.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import trajectory as tj
from ..trajectory.lists import flat_child, lengths, mask_numpy, row_of
from ..trajectory.metadata import METADATA_KEY, parameter_problem, unrecorded_sets
from .jobs import fingerprint, fingerprint_changes

_ROW_COMPARED = ("trajectory_id", "reward")


@dataclass(frozen=True)
class Annotation:
    """What `annotate` wrote.

    path: the file written; source: where the metadata came from; rows: FILE's rows;
    estimators: the output sets the written metadata records ({advantages column: parameters});
    dropped: sets ORIGINAL records whose advantages column FILE lacks (left out); unknown: FILE's
    `advantages_*` columns the metadata does not describe; compared: whether FILE's data was compared
    with ORIGINAL's (False for a JSON source: columns and types only).
    """

    path: str
    source: str
    rows: int
    estimators: dict[str, dict[str, Any]]
    dropped: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    compared: bool = True
    columns: tuple[str, ...] = field(default=(), repr=False)  # the columns compared

    def lines(self) -> list[str]:
        """What `sae annotate` prints: one line, then one per note."""
        sets = ", ".join(f"{k}={v.get('estimator', '?')}" for k, v in sorted(self.estimators.items()))
        check = ("data equal to the original's" if self.compared
                 else "columns and types checked, data not compared (metadata from a JSON document)")
        out = [f"{self.path}: {self.rows:,} trajectories, {METADATA_KEY!r} metadata from {self.source} "
               f"({'outputs ' + sets if sets else 'no outputs'}); {check}"]
        if self.dropped:
            out.append(f"note: left out of the metadata, no such column here: {', '.join(self.dropped)}")
        if self.unknown:
            out.append(f"note: parameters still unknown (the metadata does not describe them): "
                       f"{', '.join(self.unknown)}")
        return out


def annotate(path: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike | None = None, *,
             overwrite: bool = False, batch_size: int = 4096) -> Annotation:
    """Write FILE (`path`) with the `sae_rl` metadata of `source` to `out` (see the module docstring).

    source: a trajectory file (Parquet or Arrow IPC) with the metadata, or a JSON document: the
        metadata itself, `{"sae_rl": {...}}`, the output of `sae validate --json` (one good file) or
        of `sae inspect --json`.
    out: the file to write (format from its suffix); None: `path` itself, replaced in place, which
        needs overwrite=True. An existing `out` is refused (FileExistsError) unless overwrite=True.
    Raises TrajectoryError (naming the file, column, row) when FILE does not follow the standard,
    the metadata cannot be read or records invalid parameters, or FILE's data is not ORIGINAL's;
    nothing is written then.
    """
    path, source = str(path), str(source)
    found = tj.paths.local(path if out is None else out)  # a URI: see `trajectory.paths`
    target = Path(found) if found is not None else str(path if out is None else out)
    if out is None and not overwrite:
        raise FileExistsError(f"{path}: annotate writes a new file; give the output path (--out), or "
                              "--overwrite to replace this file in place")
    if tj.paths.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    doc, from_file = read_source(source)
    schema = tj.read_schema(path)
    doc, dropped = _fit(doc, schema, path, source)
    estimators = doc["estimators"]
    unknown = tuple(n for n in unrecorded_sets(schema.names) if n not in estimators)
    compared = _compared_columns(schema, tj.read_schema(source), estimators, source) if from_file else []
    meta = {**(schema.metadata or {}), METADATA_KEY.encode(): json.dumps(doc, sort_keys=True).encode()}
    before = fingerprint(path)
    rows = 0
    with warnings.catch_warnings():  # FILE has no metadata: that is why it is annotated
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        original = (_Rows(tj.iter_batches(source, batch_size=batch_size, columns=compared))
                    if compared else None)
        with tj.TrajectoryWriter(target, schema.with_metadata(meta), overwrite=overwrite) as writer:
            for batch in tj.iter_batches(path, batch_size=batch_size):
                if original is not None:
                    theirs = original.take(batch.num_rows)
                    if theirs.num_rows < batch.num_rows:
                        raise tj.TrajectoryError(
                            f"has more rows than {source} ({rows + theirs.num_rows:,} there): annotate "
                            "needs the original's rows, in the same order", path)
                    _compare(batch, theirs, compared, rows, path, source)
                writer.write(batch)
                rows += batch.num_rows
            if original is not None and original.take(1).num_rows:
                raise tj.TrajectoryError(f"has {rows:,} rows, {source} more: annotate needs the original's "
                                         "rows, in the same order (filtered rows are not its)", path)
            changed = fingerprint_changes(before, fingerprint(path))
            if changed:
                raise tj.TrajectoryError(f"the file changed while it was read ({changed}); nothing written",
                                         path)
    return Annotation(str(target), source, rows, estimators, dropped, unknown, bool(compared),
                      tuple(compared))


def read_source(source: str) -> tuple[dict[str, Any], bool]:
    """The `sae_rl` document of `source` and whether `source` is a trajectory file (else JSON).
    Raises TrajectoryError naming `source` when it holds none, or one this version cannot read."""
    found = tj.paths.local(source)
    try:
        if found is None:
            with tj.paths.open_input_file(source) as fh:
                head = fh.read(64).lstrip()
        else:
            with open(found, "rb") as fh:
                head = fh.read(64).lstrip()
    except (OSError, pa.ArrowException) as exc:
        raise tj.TrajectoryError(f"cannot be read: {getattr(exc, 'strerror', None) or exc}", source) from None
    if head[:1] in (b"{", b"["):
        try:
            if found is None:
                with tj.paths.open_input_file(source) as fh:
                    text = fh.read().decode("utf-8")
            else:
                with open(found, encoding="utf-8") as fh:
                    text = fh.read()
            doc = _document(json.loads(text), source)
        except (ValueError, UnicodeDecodeError) as exc:
            raise tj.TrajectoryError(f"is not a JSON document: {exc}", source) from None
        return doc, False
    raw = (tj.read_schema(source).metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise tj.TrajectoryError(f"has no {METADATA_KEY!r} metadata either: nothing to put back (give the "
                                 "file as sae-rl wrote it, or a JSON document of its metadata)", source)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise tj.TrajectoryError(f"the {METADATA_KEY!r} schema metadata is not valid: {exc}",
                                 source) from None
    return _checked(doc, source), True


def _document(data: Any, source: str) -> dict[str, Any]:
    """The metadata document in a JSON value: the document, {"sae_rl": document}, `sae validate
    --json` (a list of verdicts: the one good file's) or `sae inspect --json`."""
    if isinstance(data, dict) and isinstance(data.get(METADATA_KEY), dict):
        data = data[METADATA_KEY]
    elif isinstance(data, list):
        good = [v for v in data if isinstance(v, dict) and v.get("ok")]
        if len(good) != 1:
            raise tj.TrajectoryError(f"holds {len(good)} good files' verdicts; annotate takes the metadata "
                                     "of one", source)
        data = good[0]
        if "outputs" in data:
            data = {"spec_version": data.get("spec_version"), "estimators": data["outputs"], "_has": data}
    elif isinstance(data, dict) and isinstance(data.get("sets"), list):
        data = {"spec_version": data.get("spec_version"), "producer": data.get("producer"), "_has": data,
                "estimators": {s["name"]: s["params"] for s in data["sets"]
                               if isinstance(s, dict) and s.get("params")}}
    if not isinstance(data, dict) or "spec_version" not in data:
        raise tj.TrajectoryError(f"holds no {METADATA_KEY!r} metadata (a JSON object with spec_version and "
                                 "estimators, or what `sae validate --json` or `sae inspect --json` printed)",
                                 source)
    report = data.pop("_has", None)
    if report is not None and not report.get("has_metadata", True):
        raise tj.TrajectoryError("describes a file without metadata: nothing to put back", source)
    if data.get("producer") is None:
        data.pop("producer", None)
    return _checked(data, source)


def _checked(doc: Any, source: str) -> dict[str, Any]:
    """`doc` when this version reads it (`read_info`'s checks) and records no invalid parameters."""
    sch = pa.schema([], metadata={METADATA_KEY.encode(): json.dumps(doc).encode()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        tj.read_info(sch, source)  # a major version other than 1, a malformed document: TrajectoryError
    doc = dict(doc)
    doc["estimators"] = dict(doc.get("estimators") or {})
    bad = [tj.Problem(name, None, f"recorded parameters are not valid ({why}); not attached")
           for name, params in doc["estimators"].items() if (why := parameter_problem(params))]
    if bad:
        raise tj.TrajectoryError(bad, source)
    return doc


def _fit(doc: dict[str, Any], schema: pa.Schema, path: str, source: str
         ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The document to write on FILE: the sets whose advantages column FILE holds, merged with what
    FILE's own metadata records (a conflict is refused); and the sets left out."""
    names = set(schema.names)
    dropped = tuple(sorted(k for k in doc["estimators"] if k not in names))
    kept = {k: v for k, v in doc["estimators"].items() if k in names}
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tj.TrajectoryWarning)
            own = tj.read_info(schema, path).estimators
        conflicts = [tj.Problem(k, None, f"this file records {own[k]}, {source} {kept[k]}; annotate does "
                                         "not replace recorded parameters")
                     for k in kept if k in own and own[k] != kept[k]]
        if conflicts:
            raise tj.TrajectoryError(conflicts, path)
        kept = {**own, **kept}
    for name in kept:
        problems = tj.schema_problems(pa.schema([schema.field(name)]), ())
        wrong = [p for p in problems if p.column == name]
        if wrong:
            raise tj.TrajectoryError(wrong, path)
    return {**doc, "estimators": kept}, dropped


def _compared_columns(schema: pa.Schema, theirs: pa.Schema, estimators: dict[str, Any], source: str
                      ) -> list[str]:
    """The columns both files hold that estimators read or write: the ids, `reward`, per-token columns."""
    missing = [tj.Problem(k, None, "recorded in the metadata but not in this file: nothing to compare with")
               for k in estimators if k not in theirs.names]
    if missing:
        raise tj.TrajectoryError(missing, source)
    return [n for n in schema.names if n in theirs.names and (col := tj.column_for(n)) is not None
            and (col.level == "token" or n in _ROW_COMPARED)]


class _Rows:
    """ORIGINAL's batches as a stream of rows: `take(n)` is the next n (fewer at the end)."""

    def __init__(self, batches):
        self._batches = iter(batches)
        self._held: list[pa.RecordBatch] = []
        self._rows = 0

    def take(self, n: int) -> pa.Table:
        while self._rows < n:
            b = next(self._batches, None)
            if b is None:
                break
            self._held.append(b)
            self._rows += b.num_rows
        table = pa.Table.from_batches(self._held) if self._held else pa.table({})
        got = min(n, self._rows)
        rest = table.slice(got)
        self._held = rest.to_batches() if rest.num_rows else []
        self._rows -= got
        return table.slice(0, got)


def _compare(mine: pa.RecordBatch, theirs: pa.Table, columns: list[str], first_row: int, path: str,
             source: str) -> None:
    """TrajectoryError at the first difference between FILE's rows and ORIGINAL's, in `columns`."""
    def col(table, name):
        arr = table.column(name)
        return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr

    hint = f"this file's data is not {source}'s, so its metadata would describe other data"
    a = col(mine, "trajectory_id").cast(pa.large_string())
    b = col(theirs, "trajectory_id").cast(pa.large_string())
    same = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        raise tj.TrajectoryError([tj.Problem("trajectory_id", first_row + i, (
            f"{a[i].as_py()!r} here, {b[i].as_py()!r} in {source}: annotate needs the original's rows in the "
            "same order (rows filtered or sorted by another tool are not its)"))], path)
    valid = None
    if "response_mask" in columns:
        _, child = flat_child(col(theirs, "response_mask"))
        valid = mask_numpy(child)
    for name in columns:
        if name == "trajectory_id":
            continue
        x, y = col(mine, name), col(theirs, name)
        if name == "reward":
            xs, ys = (np.asarray(v.cast(pa.float64()).to_numpy(zero_copy_only=False)) for v in (x, y))
            bad = np.flatnonzero(~((xs == ys) | (np.isnan(xs) & np.isnan(ys))))
            if bad.size:
                raise tj.TrajectoryError([tj.Problem(name, first_row + int(bad[0]), (
                    f"{xs[bad[0]]} here, {ys[bad[0]]} in {source}; {hint}"))], path)
            continue
        lx, ly = lengths(x), lengths(y)
        bad = np.flatnonzero(lx != ly)
        if bad.size:
            i = int(bad[0])
            raise tj.TrajectoryError([tj.Problem(name, first_row + i,
                                                 f"{lx[i]} tokens here, {ly[i]} in {source}; {hint}")], path)
        offs, cx = flat_child(x)
        _, cy = flat_child(y)
        xs = np.asarray(cx.cast(pa.float64()).to_numpy(zero_copy_only=False))
        ys = np.asarray(cy.cast(pa.float64()).to_numpy(zero_copy_only=False))
        diff = ~((xs == ys) | (np.isnan(xs) & np.isnan(ys)))
        if valid is not None and tj.column_for(name).kind == "token_float":
            diff &= valid  # masked tokens carry no meaning (SPEC): anything may be there
        where = np.flatnonzero(diff)
        if where.size:
            k = int(where[0])
            i = row_of(offs, k)
            raise tj.TrajectoryError([tj.Problem(name, first_row + i, (
                f"token {k - int(offs[i])} is {xs[k]:g} here, {ys[k]:g} in {source}; {hint}"))], path)


__all__ = ["Annotation", "annotate", "read_source"]
