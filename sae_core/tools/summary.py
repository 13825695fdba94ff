"""What a trajectory file holds: `sae inspect FILE`.

`inspect_file` streams a Parquet / Arrow IPC file in the trajectory standard (sae_core/schemas/SPEC.md) once,
batch by batch, and summarises it: rows and tokens, response lengths, per output set the advantage
distribution, the mean return and the segments its `boundaries` cut, for the `logprobs` column the
boundaries and segments the logprob rule would cut at several thresholds, the Pearson correlations
between every pair of advantages columns, and NaN / inf counts per float column.

Memory: one record batch, plus per row a few int32 counts, plus per distinct segment length one
int64 count, plus a fixed-size sample of each advantages column (for its quantiles).

Definitions, in the time index of `sae_core.api` (token t = 0..L-1 of a row):
- valid token: response_mask 1 (every token when the file has no mask).
- boundary: a valid token with boundaries[t] True (a set's column), or, for threshold p, a valid
  token with logprobs[t] < log(p) (the logprob rule), compared in float64 as every backend does.
- segment: `sae_core.segments` (the one definition): runs from a boundary, or from the row's first
  valid token, to the next one; its length counts valid tokens only. A row with b boundaries has
  b + 1 segments, or b when its first valid token is a boundary; a row without a valid token has
  none; an estimator without boundaries has one segment per row with a valid token.

Streaming statistics are in `summary_stats`, the text table in `summary_format`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .. import registry
from .. import trajectory as tj
from ..segments import segment_lengths
from .summary_format import describe_params, format_lines
from .summary_stats import (Counts, LengthStats, Moments, Pair, Sample, ValueStats, array_stats, counts_stats,
                            jsonable, value_stats)

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2, 0.5)
# Quantiles of advantages are exact up to this many valid tokens per column, and come from a
# uniform sample of this size beyond (rank error about 1/sqrt(SAMPLE_SIZE), 0.3%).
SAMPLE_SIZE = 100_000
_SEED = 20240521  # the sample is a function of the file (and batch_size) alone
_PIECE_TOKENS = 1 << 20  # tokens per piece of a batch that the pass works on at once
# The boundary rule this pass applies at several thresholds (its comparison is written out below).
_LOGPROB = registry.RULES["logprob"]
_LOGPROBS = registry.DATA[_LOGPROB.data].column

# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Segments:
    """Boundaries and the segments they cut (see the module docstring).

    boundaries: number of boundaries (valid tokens only); fraction: boundaries / valid tokens.
    lengths: segment lengths in valid tokens. counts: [max length + 1] int64, counts[k] = number of
    segments of length k (the whole distribution, for plots). row_boundaries: [rows] int32, each
    row's number of boundaries.
    """

    boundaries: int
    valid_tokens: int
    lengths: LengthStats
    counts: np.ndarray = field(repr=False, compare=False)
    row_boundaries: np.ndarray = field(repr=False, compare=False)

    @property
    def fraction(self) -> float:
        return self.boundaries / self.valid_tokens if self.valid_tokens else math.nan

    @property
    def segments(self) -> int:
        return self.lengths.count

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"boundaries": self.boundaries, "valid_tokens": self.valid_tokens,
                          "fraction": self.fraction, "segments": self.segments,
                          "lengths": self.lengths.to_dict()})


@dataclass(frozen=True)
class OutputSet:
    """One estimator's outputs: advantages{suffix}, returns{suffix}, boundaries{suffix}.

    params: what the metadata records for the set ({} when it records nothing, or records parameters
    out of range: then `invalid` says why, and nothing is derived from them). returns_mean and
    segments are None when the file lacks that column of the set. sample: [<= SAMPLE_SIZE] float64
    advantages of valid tokens, a uniform sample (all of them when exact), for histograms.
    """

    name: str
    suffix: str
    params: dict[str, Any]
    advantages: ValueStats
    returns_mean: float | None
    segments: Segments | None
    sample: np.ndarray = field(repr=False, compare=False)
    invalid: str | None = None  # why the parameters the metadata records were set aside (`Info.invalid`)

    @property
    def estimator(self) -> str:
        return str(self.params.get("estimator", "?"))

    @property
    def segmental(self) -> bool:
        """Whether the set has boundaries: an sae set, or any set with a boundary in its column."""
        return "boundary" in self.params or bool(self.segments and self.segments.boundaries)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"name": self.name, "suffix": self.suffix, "params": self.params,
                          "invalid": self.invalid, "advantages": self.advantages.to_dict(), "returns_mean": self.returns_mean,
                          "segments": None if self.segments is None else self.segments.to_dict()})


@dataclass(frozen=True)
class Threshold:
    """The logprob rule at probability `threshold`: boundary where logprobs[t] < log(threshold).
    recorded_by: the output sets whose metadata records this threshold."""

    threshold: float
    segments: Segments
    recorded_by: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"threshold": self.threshold, "recorded_by": list(self.recorded_by),
                          **self.segments.to_dict()})


@dataclass(frozen=True)
class NonFinite:
    """NaN and +-inf counts of one float column. Per-token columns: over all tokens and over valid
    tokens; valid counts are None for per-row columns and for per-token lists of another length."""

    column: str
    level: str  # "token" or "row"
    nan: int
    inf: int
    nan_valid: int | None
    inf_valid: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation of two advantages columns over the valid tokens where both are finite;
    NaN when either is constant there or there are fewer than 2 such tokens."""

    a: str
    b: str
    r: float
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


@dataclass(frozen=True)
class Inspection:
    """A summary of one trajectory file (see `inspect_file`).

    row_lengths, row_valid: [rows] int32 response lengths in all and in valid tokens.
    """

    path: str
    spec_version: str
    producer: str | None
    has_metadata: bool
    columns: tuple[str, ...]
    rows: int
    tokens: int
    valid_tokens: int
    empty_rows: int  # rows with no token
    rows_without_valid: int  # rows with no valid token (empty ones included)
    lengths: LengthStats
    valid_lengths: LengthStats
    sets: tuple[OutputSet, ...]
    has_logprobs: bool
    thresholds: tuple[Threshold, ...]
    correlations: tuple[Correlation, ...]
    nonfinite: tuple[NonFinite, ...]
    row_lengths: np.ndarray = field(repr=False, compare=False)
    row_valid: np.ndarray = field(repr=False, compare=False)
    # {standard name: the file's name} of the columns read under other names (`trajectory.mapping`)
    mapped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN and inf become None)."""
        return jsonable({
            "path": self.path, "spec_version": self.spec_version, "producer": self.producer,
            "has_metadata": self.has_metadata, "columns": list(self.columns), "columns_read_as": dict(self.mapped),
            "rows": self.rows,
            "tokens": self.tokens, "valid_tokens": self.valid_tokens, "empty_rows": self.empty_rows,
            "rows_without_valid": self.rows_without_valid, "lengths": self.lengths.to_dict(),
            "valid_lengths": self.valid_lengths.to_dict(), "sets": [s.to_dict() for s in self.sets],
            "has_logprobs": self.has_logprobs, "thresholds": [t.to_dict() for t in self.thresholds],
            "correlations": [c.to_dict() for c in self.correlations],
            "nonfinite": [n.to_dict() for n in self.nonfinite],
        })

    def format(self) -> str:
        """A fixed-width text report (what `sae inspect` prints)."""
        return "\n".join(format_lines(self))


# ----------------------------------------------------------------------------------------------
# segments


class _SegmentAcc:
    """Boundaries and segment lengths (`sae_core.segments.segment_lengths`) of a stream of batches."""

    def __init__(self) -> None:
        self.boundaries = 0
        self.valid = 0
        self.counts = Counts()
        self.rows: list[np.ndarray] = []

    def add(self, offsets: np.ndarray, boundaries: np.ndarray, valid: np.ndarray) -> None:
        lengths, per_row = segment_lengths(offsets, boundaries, valid)
        self.boundaries += int(per_row.sum(dtype=np.int64))
        self.valid += int(valid.sum())
        self.counts.add(lengths)
        self.rows.append(per_row)

    def result(self) -> Segments:
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int32)
        return Segments(self.boundaries, self.valid, self.counts.stats(), self.counts.counts, rows)


# ----------------------------------------------------------------------------------------------
# the pass over the file


def inspect_file(path: str | os.PathLike, *, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
                 batch_size: int = 4096, column_map: Any = None) -> Inspection:
    """Summarise a trajectory file in one streaming pass (see the module docstring).

    thresholds: probabilities p in (0, 1] at which to count logprob-rule boundaries
        (logprobs < log p); the thresholds the file's sae sets record are added.
    batch_size: rows per record batch (memory: one batch).
    column_map: a `trajectory.ColumnMap` (or {standard: theirs}): columns of other names are read,
        and summarised, under the standard's (`Inspection.columns`); `Inspection.mapped` lists them.
    Raises TrajectoryError (naming file, column and first bad row) for a file that does not follow
    the standard; ValueError for a threshold outside (0, 1].
    """
    thresholds = check_thresholds(thresholds)
    path = str(path)
    file_columns = tj.file_columns(path, column_map)
    sch = file_columns.schema
    with warnings.catch_warnings():  # iter_batches gives the same warnings below: once is enough
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        info = tj.read_info(sch, path)
    names = tuple(sch.names)
    token_lists = [f.name for f in sch if _is_list(f.type) and f.name != "prompt_ids"]
    standard = [n for n in token_lists if tj.column_for(n) is not None]
    float_tokens = [n for n in token_lists if _is_float(sch.field(n).type.value_type)]
    float_rows = [f.name for f in sch if pa.types.is_floating(f.type)]
    set_names = [n for n in standard if n == "advantages" or n.startswith("advantages_")]
    has_logprobs = _LOGPROBS in names

    # the thresholds to try: the asked ones plus those the file's logprob-rule sae sets record
    recorded: dict[float, list[str]] = {}
    for name in set_names:
        params = info.estimators.get(name) or {}
        estimator = registry.ESTIMATORS.get(str(params.get("estimator")))
        threshold = params.get(_LOGPROB.option)
        # a recorded threshold outside (0, 1] (a file written by another tool, edited metadata) has no
        # log to compare with: it is listed with the set's parameters, but not counted at
        if estimator is not None and estimator.segmental \
                and params.get("boundary", registry.DEFAULT_RULE) == _LOGPROB.name \
                and _is_probability(threshold):
            recorded.setdefault(float(threshold), []).append(name)
    probs = sorted({float(p) for p in thresholds} | set(recorded)) if has_logprobs else []

    row_lengths: list[np.ndarray] = []
    row_valid: list[np.ndarray] = []
    adv = {n: (Moments(), Sample(SAMPLE_SIZE, _SEED + i)) for i, n in enumerate(set_names)}
    ret = {n: Moments() for n in set_names}
    seg = {n: _SegmentAcc() for n in set_names}
    thr = {p: _SegmentAcc() for p in probs}
    pairs = {(a, b): Pair() for i, a in enumerate(set_names) for b in set_names[i + 1:]}
    nonfinite = {n: [0, 0, 0, 0] for n in float_tokens + float_rows}
    other_lengths: set[str] = set()  # non-standard lists whose lengths are not the responses'

    read = [n for n in names if n in token_lists or n in float_rows]
    batches = tj.iter_batches(path, batch_size=batch_size, columns=read, column_map=column_map)
    pieces = (piece for batch in batches
              for piece in _row_slices(batch, _PIECE_TOKENS))
    for batch in pieces:
        r = tj.to_ragged(batch, standard)
        offsets, t = r.offsets, r.tokens
        n = int(offsets[-1])
        valid = (np.asarray(t["response_mask"]) != 0) if "response_mask" in t else np.ones(n, dtype=bool)
        lengths = np.diff(offsets)
        cum_v = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
        row_lengths.append(lengths.astype(np.int32))
        row_valid.append((cum_v[offsets[1:]] - cum_v[offsets[:-1]]).astype(np.int32))

        adv_valid = {}
        for name in set_names:
            x = np.asarray(t[name], dtype=np.float64)[valid]
            adv_valid[name] = x
            finite = x[np.isfinite(x)]
            adv[name][0].add(finite)
            adv[name][1].add(finite)
            suffix = name[len("advantages"):]
            if "returns" + suffix in t:
                y = np.asarray(t["returns" + suffix], dtype=np.float64)[valid]
                ret[name].add(y[np.isfinite(y)])
            if "boundaries" + suffix in t:
                seg[name].add(offsets, np.asarray(t["boundaries" + suffix]) != 0, valid)
        for (a, b), acc in pairs.items():
            x, y = adv_valid[a], adv_valid[b]
            both = np.isfinite(x) & np.isfinite(y)
            acc.add(x[both], y[both])
        if probs:
            lp = np.asarray(t[_LOGPROBS], dtype=np.float64)  # float64, as every backend compares
            for p in probs:
                thr[p].add(offsets, valid & (lp < math.log(p)), valid)

        for name in float_tokens:
            if name in t:
                x = t[name]
                same_lengths = True
            else:  # a list column the standard does not name: per token only if its lengths fit
                arr = batch.column(name)
                x = arr.flatten().to_numpy(zero_copy_only=False)  # nulls read as NaN
                same_lengths = np.array_equal(np.diff(arr.offsets.to_numpy()), lengths)
                if not same_lengths:
                    other_lengths.add(name)
            _count_nonfinite(nonfinite[name], x, valid if same_lengths else None)
        for name in float_rows:
            x = batch.column(name).to_numpy(zero_copy_only=False)
            _count_nonfinite(nonfinite[name], x, None)

    lengths_all = np.concatenate(row_lengths) if row_lengths else np.zeros(0, np.int32)
    valid_all = np.concatenate(row_valid) if row_valid else np.zeros(0, np.int32)
    sets = []
    for name in set_names:
        suffix = name[len("advantages"):]
        moments, sample = adv[name]
        sets.append(OutputSet(
            name=name, suffix=suffix, params=dict(info.estimators.get(name) or {}),
            advantages=value_stats(moments, sample),
            returns_mean=((ret[name].mean if ret[name].n else math.nan) if "returns" + suffix in names
                          else None),
            segments=seg[name].result() if "boundaries" + suffix in names else None,
            sample=sample.values, invalid=info.invalid.get(name)))
    return Inspection(
        path=path, spec_version=info.spec_version, producer=info.producer, has_metadata=info.has_metadata,
        columns=names, rows=int(lengths_all.size), tokens=int(lengths_all.sum(dtype=np.int64)),
        valid_tokens=int(valid_all.sum(dtype=np.int64)), empty_rows=int((lengths_all == 0).sum()),
        rows_without_valid=int((valid_all == 0).sum()), lengths=array_stats(lengths_all),
        valid_lengths=array_stats(valid_all), sets=tuple(sets), has_logprobs=has_logprobs,
        thresholds=tuple(Threshold(p, thr[p].result(), tuple(recorded.get(p, ()))) for p in probs),
        correlations=tuple(Correlation(a, b, acc.r, acc.n) for (a, b), acc in pairs.items()),
        nonfinite=tuple(NonFinite(name, "row" if name in float_rows else "token", c[0], c[1],
                                  None if name in float_rows or name in other_lengths else c[2],
                                  None if name in float_rows or name in other_lengths else c[3])
                        for name, c in nonfinite.items()),
        row_lengths=lengths_all, row_valid=valid_all, mapped=dict(file_columns.to_file))


def check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    """`thresholds` as a tuple of floats, each checked to be a probability p in (0, 1] (the
    logprob rule compares logprobs with log p). Raises ValueError naming the first that is not."""
    out = []
    for p in thresholds:
        if not _is_probability(p):
            raise ValueError(f"thresholds are probabilities in (0, 1]; got {p!r}")
        out.append(float(p))
    return tuple(out)


def _is_probability(p: Any) -> bool:
    return not isinstance(p, bool) and isinstance(p, (int, float)) and 0.0 < p <= 1.0


def _row_slices(batch: pa.RecordBatch, max_tokens: int):
    """Consecutive row slices of a batch with at most `max_tokens` tokens each (a longer row alone):
    the per-token temporaries of the pass (float64 copies, int64 cumulative sums) stay this size
    whatever the batch's."""
    offs = batch.column("response_ids").offsets.to_numpy()
    offs = offs - offs[0]  # a sliced batch's offsets start where the slice does
    start, rows = 0, batch.num_rows
    while start < rows:
        end = int(np.searchsorted(offs, offs[start] + max_tokens, side="right")) - 1
        end = min(max(end, start + 1), rows)
        yield batch.slice(start, end - start)
        start = end


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def _count_nonfinite(acc: list[int], x: np.ndarray, valid: np.ndarray | None) -> None:
    if x.dtype.kind != "f":
        return
    nan, inf = np.isnan(x), np.isinf(x)
    acc[0] += int(nan.sum())
    acc[1] += int(inf.sum())
    if valid is not None:
        acc[2] += int((nan & valid).sum())
        acc[3] += int((inf & valid).sum())


__all__ = [
    "Correlation", "DEFAULT_THRESHOLDS", "Inspection", "LengthStats", "NonFinite", "OutputSet",
    "SAMPLE_SIZE", "Segments", "Threshold", "ValueStats", "check_thresholds", "counts_stats",
    "describe_params", "inspect_file",
]
