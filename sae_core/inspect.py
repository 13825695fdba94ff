"""What a trajectory file holds: `sae inspect FILE`.

`inspect_file` streams a Parquet / Arrow IPC file in the trajectory standard (schemas/SPEC.md) once,
batch by batch, and summarises it: rows and tokens, response lengths, per output set the advantage
distribution, the mean return and the segments its `boundaries` cut, for the `logprobs` column the
boundaries and segments the logprob rule would cut at several thresholds, the Pearson correlations
between every pair of advantages columns, and NaN / inf counts per float column.

Memory: one record batch, plus per row a few int32 counts, plus per distinct segment length one
int64 count, plus a fixed-size sample of each advantages column (for its quantiles).

Definitions, in the time index of `sae_core.estimators` (token t = 0..L-1 of a row):
- valid token: response_mask 1 (every token when the file has no mask).
- boundary: a valid token with boundaries[t] True (a set's column), or, for threshold p, a valid
  token with logprobs[t] < log(p), compared in float64 as every backend does.
- segment: runs from a boundary, or from the row's first valid token, up to the token before the
  next boundary or to the end of the row; its length counts valid tokens only (masked tokens
  inside it are transparent, as in the estimators' skip mode). A row with k valid tokens and b
  boundaries has b + 1 segments, or b when its first valid token is a boundary; a row without a
  valid token has none. An estimator without boundaries (gae, mc, vapo) has one segment per row.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import trajectory as tj

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2, 0.5)
# Quantiles of advantages are exact up to this many valid tokens per column, and come from a
# uniform sample of this size beyond (rank error about 1/sqrt(SAMPLE_SIZE), 0.3%).
SAMPLE_SIZE = 100_000
_SEED = 20240521  # the sample is a function of the file (and batch_size) alone
_PIECE_TOKENS = 1 << 20  # tokens per piece of a batch that the pass works on at once

# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class LengthStats:
    """A distribution of non-negative integers (response or segment lengths, in tokens)."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self.__dict__)


@dataclass(frozen=True)
class ValueStats:
    """A distribution of floats over valid tokens. `exact`: False when p01/p50/p99 come from a
    uniform sample of SAMPLE_SIZE tokens; count, mean, std, min and max are always exact."""

    count: int
    mean: float
    std: float
    min: float
    p01: float
    p50: float
    p99: float
    max: float
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self.__dict__)


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
        return _jsonable({"boundaries": self.boundaries, "valid_tokens": self.valid_tokens,
                          "fraction": self.fraction, "segments": self.segments,
                          "lengths": self.lengths.to_dict()})


@dataclass(frozen=True)
class OutputSet:
    """One estimator's outputs: advantages{suffix}, returns{suffix}, boundaries{suffix}.

    params: what the metadata records for the set ({} when it records nothing). returns_mean and
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

    @property
    def estimator(self) -> str:
        return str(self.params.get("estimator", "?"))

    @property
    def segmental(self) -> bool:
        """Whether the set has boundaries: an sae set, or any set with a boundary in its column."""
        return "boundary" in self.params or bool(self.segments and self.segments.boundaries)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"name": self.name, "suffix": self.suffix, "params": self.params,
                          "advantages": self.advantages.to_dict(), "returns_mean": self.returns_mean,
                          "segments": None if self.segments is None else self.segments.to_dict()})


@dataclass(frozen=True)
class Threshold:
    """The logprob rule at probability `threshold`: boundary where logprobs[t] < log(threshold).
    recorded_by: the output sets whose metadata records this threshold."""

    threshold: float
    segments: Segments
    recorded_by: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"threshold": self.threshold, "recorded_by": list(self.recorded_by),
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
        return _jsonable(self.__dict__)


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN and inf become None)."""
        return _jsonable({
            "path": self.path, "spec_version": self.spec_version, "producer": self.producer,
            "has_metadata": self.has_metadata, "columns": list(self.columns), "rows": self.rows,
            "tokens": self.tokens, "valid_tokens": self.valid_tokens, "empty_rows": self.empty_rows,
            "rows_without_valid": self.rows_without_valid, "lengths": self.lengths.to_dict(),
            "valid_lengths": self.valid_lengths.to_dict(), "sets": [s.to_dict() for s in self.sets],
            "has_logprobs": self.has_logprobs, "thresholds": [t.to_dict() for t in self.thresholds],
            "correlations": [c.to_dict() for c in self.correlations],
            "nonfinite": [n.to_dict() for n in self.nonfinite],
        })

    def format(self) -> str:
        """A fixed-width text report (what `sae inspect` prints)."""
        return "\n".join(_format(self))


# ----------------------------------------------------------------------------------------------
# segments


def segment_lengths(offsets: np.ndarray, boundaries: np.ndarray, valid: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Segments of a ragged batch (see the module docstring).

    offsets: [B + 1] int64 from 0. boundaries: [N] bool, True where token t starts a segment; only
    valid tokens count. valid: [N] bool (None: every token is valid).
    Returns (lengths [S] int32 in valid tokens, in row order; row_boundaries [B] int32, each row's
    number of boundaries on valid tokens).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = int(offsets[-1])
    v = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    b = np.asarray(boundaries, dtype=bool) & v
    cum_b = np.concatenate([[0], np.cumsum(b, dtype=np.int64)])
    row_boundaries = (cum_b[offsets[1:]] - cum_b[offsets[:-1]]).astype(np.int32)
    cum_v = np.concatenate([[0], np.cumsum(v, dtype=np.int64)])  # cum_v[t]: valid tokens before t
    before = cum_v[:-1]
    # a row's first valid token starts a segment: the valid count before it is the row's start's
    first = v & (before == np.repeat(cum_v[offsets[:-1]], np.diff(offsets)))
    starts = before[b | first]
    # Segments tile the valid tokens of all rows in order, and every row with a valid token opens
    # with a segment start, so each segment ends where the next one (in any row) starts.
    lengths = np.diff(np.append(starts, cum_v[-1])).astype(np.int32)
    return lengths, row_boundaries


class _Counts:
    """A streaming histogram of non-negative integers: counts[k] = how many equal k."""

    def __init__(self) -> None:
        self.counts = np.zeros(1, dtype=np.int64)

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        c = np.bincount(x)
        if c.size > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(c.size - self.counts.size, np.int64)])
        self.counts[:c.size] += c

    def stats(self) -> LengthStats:
        return counts_stats(self.counts)


def counts_stats(counts: np.ndarray) -> LengthStats:
    """LengthStats of the integers a histogram `counts` ([K] int, counts[k] = how many equal k)
    describes; the quantiles are numpy's (linear interpolation between order statistics)."""
    n = int(counts.sum())
    if n == 0:
        return LengthStats(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    cum = np.cumsum(counts)
    k = np.arange(counts.size)

    def order_stat(i: int) -> int:  # the i-th smallest (from 0)
        return int(np.searchsorted(cum, i, side="right"))

    def quantile(q: float) -> float:
        h = q * (n - 1)
        lo = math.floor(h)
        a, b = order_stat(lo), order_stat(min(lo + 1, n - 1))
        return a + (h - lo) * (b - a)

    nonzero = np.flatnonzero(counts)
    return LengthStats(n, float(nonzero[0]), float((k * counts).sum() / n), quantile(0.5), quantile(0.9),
                       float(nonzero[-1]))


def _array_stats(x: np.ndarray) -> LengthStats:
    if x.size == 0:
        return LengthStats(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    p50, p90 = np.percentile(x, [50, 90])
    return LengthStats(int(x.size), float(x.min()), float(x.mean()), float(p50), float(p90), float(x.max()))


class _SegmentAcc:
    def __init__(self) -> None:
        self.boundaries = 0
        self.valid = 0
        self.counts = _Counts()
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
# streaming moments, samples, correlations


class _Moments:
    """Count, mean, M2 (sum of squared deviations), min, max of a stream, merged batch by batch
    (Chan et al.), so no cancellation from raw sums of squares."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        nb, mb = x.size, float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's default, ddof=0)."""
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


class _Sample:
    """A uniform sample without replacement of at most `size` values of a stream: each value gets
    a random key and the `size` smallest keys are kept (bottom-k). All values while they fit."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.values = np.zeros(0, np.float64)
        self.keys = np.zeros(0, np.float64)
        self.seen = 0

    def add(self, x: np.ndarray) -> None:
        self.seen += x.size
        keys = self.rng.random(x.size)
        if self.values.size >= self.size:  # full: only smaller keys can get in
            keep = keys < self.keys.max()
            x, keys = x[keep], keys[keep]
        values = np.concatenate([self.values, x])
        keys = np.concatenate([self.keys, keys])
        if values.size > self.size:
            top = np.argpartition(keys, self.size - 1)[:self.size]
            values, keys = values[top], keys[top]
        self.values, self.keys = values, keys

    @property
    def exact(self) -> bool:
        return self.seen <= self.size


class _Pair:
    """Streaming co-moments of two columns (Chan et al.), for a Pearson correlation."""

    def __init__(self) -> None:
        self.n, self.mx, self.my, self.cxx, self.cyy, self.cxy = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.size == 0:
            return
        nb, mx, my = x.size, float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        n = self.n + nb
        ex, ey = mx - self.mx, my - self.my
        w = self.n * nb / n
        self.cxx += float(dx @ dx) + ex * ex * w
        self.cyy += float(dy @ dy) + ey * ey * w
        self.cxy += float(dx @ dy) + ex * ey * w
        self.mx += ex * nb / n
        self.my += ey * nb / n
        self.n = n

    @property
    def r(self) -> float:
        if self.n < 2 or self.cxx <= 0 or self.cyy <= 0:
            return math.nan
        return max(-1.0, min(1.0, self.cxy / math.sqrt(self.cxx * self.cyy)))


# ----------------------------------------------------------------------------------------------
# the pass over the file


def inspect_file(path: str | os.PathLike, *, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
                 batch_size: int = 4096) -> Inspection:
    """Summarise a trajectory file in one streaming pass (see the module docstring).

    thresholds: probabilities p in (0, 1] at which to count logprob-rule boundaries
        (logprobs < log p); the thresholds the file's sae sets record are added.
    batch_size: rows per record batch (memory: one batch).
    Raises TrajectoryError (naming file, column and first bad row) for a file that does not follow
    the standard; ValueError for a threshold outside (0, 1].
    """
    for p in thresholds:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"thresholds are probabilities in (0, 1]; got {p!r}")
    path = str(path)
    sch = tj.read_schema(path)
    with warnings.catch_warnings():  # iter_batches gives the same warnings below: once is enough
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        info = tj.read_info(sch, path)
    names = tuple(sch.names)
    token_lists = [f.name for f in sch if _is_list(f.type) and f.name != "prompt_ids"]
    standard = [n for n in token_lists if tj.column_for(n) is not None]
    float_tokens = [n for n in token_lists if _is_float(sch.field(n).type.value_type)]
    float_rows = [f.name for f in sch if pa.types.is_floating(f.type)]
    set_names = [n for n in standard if n == "advantages" or n.startswith("advantages_")]
    has_logprobs = "logprobs" in names

    # the thresholds to try: the asked ones plus those the file's logprob-rule sae sets record
    recorded: dict[float, list[str]] = {}
    for name in set_names:
        params = info.estimators.get(name) or {}
        if params.get("estimator") == "sae" and params.get("boundary", "logprob") == "logprob" \
                and isinstance(params.get("threshold"), (int, float)):
            recorded.setdefault(float(params["threshold"]), []).append(name)
    probs = sorted({float(p) for p in thresholds} | set(recorded)) if has_logprobs else []

    row_lengths: list[np.ndarray] = []
    row_valid: list[np.ndarray] = []
    adv = {n: (_Moments(), _Sample(SAMPLE_SIZE, _SEED + i)) for i, n in enumerate(set_names)}
    ret = {n: _Moments() for n in set_names}
    seg = {n: _SegmentAcc() for n in set_names}
    thr = {p: _SegmentAcc() for p in probs}
    pairs = {(a, b): _Pair() for i, a in enumerate(set_names) for b in set_names[i + 1:]}
    nonfinite = {n: [0, 0, 0, 0] for n in float_tokens + float_rows}
    other_lengths: set[str] = set()  # non-standard lists whose lengths are not the responses'

    read = [n for n in names if n in token_lists or n in float_rows]
    pieces = (piece for batch in tj.iter_batches(path, batch_size=batch_size, columns=read)
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
            lp = np.asarray(t["logprobs"], dtype=np.float64)  # float64, as every backend compares
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
            advantages=_value_stats(moments, sample),
            returns_mean=((ret[name].mean if ret[name].n else math.nan) if "returns" + suffix in names
                          else None),
            segments=seg[name].result() if "boundaries" + suffix in names else None,
            sample=sample.values))
    return Inspection(
        path=path, spec_version=info.spec_version, producer=info.producer, has_metadata=info.has_metadata,
        columns=names, rows=int(lengths_all.size), tokens=int(lengths_all.sum(dtype=np.int64)),
        valid_tokens=int(valid_all.sum(dtype=np.int64)), empty_rows=int((lengths_all == 0).sum()),
        rows_without_valid=int((valid_all == 0).sum()), lengths=_array_stats(lengths_all),
        valid_lengths=_array_stats(valid_all), sets=tuple(sets), has_logprobs=has_logprobs,
        thresholds=tuple(Threshold(p, thr[p].result(), tuple(recorded.get(p, ()))) for p in probs),
        correlations=tuple(Correlation(a, b, acc.r, acc.n) for (a, b), acc in pairs.items()),
        nonfinite=tuple(NonFinite(name, "row" if name in float_rows else "token", c[0], c[1],
                                  None if name in float_rows or name in other_lengths else c[2],
                                  None if name in float_rows or name in other_lengths else c[3])
                        for name, c in nonfinite.items()),
        row_lengths=lengths_all, row_valid=valid_all)


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


def _value_stats(m: _Moments, s: _Sample) -> ValueStats:
    if m.n == 0:
        return ValueStats(0, *([math.nan] * 7), exact=True)
    p01, p50, p99 = np.percentile(s.values, [1, 50, 99])
    return ValueStats(m.n, m.mean, m.std, m.min, float(p01), float(p50), float(p99), m.max, s.exact)


def _jsonable(x: Any) -> Any:
    """Plain JSON types: NaN / inf floats become None, numpy scalars Python ones, tuples lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ----------------------------------------------------------------------------------------------
# text


def _num(x: float | None, width: int = 9, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-".rjust(width)
    return f"{x:>{width}.{digits}g}"


def _int(x: float | None, width: int = 9) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-".rjust(width)
    return f"{x:>{width},.0f}" if float(x).is_integer() else f"{x:>{width},.1f}"


def _pct(x: float, width: int = 9) -> str:
    return "-".rjust(width) if math.isnan(x) else f"{100 * x:>{width - 1}.2f}%"


def describe_params(params: dict[str, Any]) -> str:
    """The recorded parameters of a set, but its estimator's name, as `k=v` words."""
    first = ("boundary", "threshold", "quantile", "segment_length", "delimiter_ids", "entropy_threshold",
             "lam", "gamma", "alpha", "critic_lam", "mask_mode")
    keys = [k for k in first if k in params] + sorted(k for k in params if k not in first)
    words = []
    for k, v in ((k, params[k]) for k in keys):
        if k == "estimator" or v is None:
            continue
        words.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(words)


def _format(ins: Inspection) -> list[str]:
    out = [f"{ins.path}"]
    meta = f"spec {ins.spec_version}" + ("" if ins.has_metadata else " (no sae_rl metadata: assumed)")
    if ins.producer:
        meta += f", written by {ins.producer}"
    out.append("  " + meta)
    share = f" ({100 * ins.valid_tokens / ins.tokens:.1f}%)" if ins.tokens else ""
    out.append(f"  rows {ins.rows:,}  ({ins.empty_rows:,} empty, "
               f"{ins.rows_without_valid:,} without a valid token)")
    out.append(f"  tokens {ins.tokens:,}, valid (response_mask 1) {ins.valid_tokens:,}{share}")
    out.append("")
    out.append(f"{'response length':<24}{'min':>9}{'mean':>9}{'p50':>9}{'p90':>9}{'max':>9}")
    for label, s in (("  tokens", ins.lengths), ("  valid tokens", ins.valid_lengths)):
        out.append(f"{label:<24}{_int(s.min)}{_num(s.mean, digits=5)}{_int(s.p50)}{_int(s.p90)}{_int(s.max)}")

    out.append("")
    if not ins.sets:
        out.append("output sets: none (no advantages column)")
    else:
        out.append("output sets (advantages over valid tokens)")
        width = max(24, max(len(s.name) for s in ins.sets) + 4)
        for s in ins.sets:
            out.append(f"  {s.name:<{width - 2}}{s.estimator} {describe_params(s.params)}".rstrip())
        out.append("")
        out.append(f"{'advantages':<{width}}{'mean':>9}{'std':>9}{'min':>9}{'p01':>9}{'p50':>9}{'p99':>9}"
                   f"{'max':>9}{'ret mean':>10}")
        for s in ins.sets:
            a = s.advantages
            out.append(f"  {s.name:<{width - 2}}{_num(a.mean)}{_num(a.std)}{_num(a.min)}{_num(a.p01)}"
                       f"{_num(a.p50)}{_num(a.p99)}{_num(a.max)} {_num(s.returns_mean)}")
        if any(not s.advantages.exact for s in ins.sets):
            out.append(f"  (p01/p50/p99 from a uniform sample of {SAMPLE_SIZE:,} valid tokens per column)")

    rows = [(s.segments, f"{'boundaries' + s.suffix}") for s in ins.sets if s.segments is not None]
    rows += [(t.segments, f"logprobs < log {t.threshold:g}" + (" *" if t.recorded_by else ""))
             for t in ins.thresholds]
    out.append("")
    if rows:
        width = max(24, max(len(label) for _, label in rows) + 4)
        out.append(f"{'segments (valid tokens)':<{width}}{'boundary':>9}{'segments':>11}{'mean':>9}{'p50':>9}"
                   f"{'p90':>9}{'max':>9}")
        for sg, label in rows:
            ls = sg.lengths
            out.append(f"  {label:<{width - 2}}{_pct(sg.fraction)}{ls.count:>11,}{_num(ls.mean)}"
                       f"{_int(ls.p50)}{_int(ls.p90)}{_int(ls.max)}")
        marked = [t for t in ins.thresholds if t.recorded_by]
        for t in marked:
            out.append(f"  * p={t.threshold:g}: the threshold of {', '.join(t.recorded_by)}")
    if not ins.has_logprobs:
        out.append("no logprobs column: no logprob-rule boundaries")

    if ins.correlations:
        out.append("")
        out.append("correlations of advantages (Pearson, valid tokens)")
        names = [s.name for s in ins.sets]
        width = max(24, max(len(n) for n in names) + 4)
        r = {(c.a, c.b): c.r for c in ins.correlations}
        r.update({(c.b, c.a): c.r for c in ins.correlations})
        col = max(9, max(len(n) for n in names) + 2)
        out.append(" " * width + "".join(f"{n:>{col}}" for n in names))
        for a in names:
            cells = "".join((f"{1.0:>{col}.3f}" if a == b else
                             ("-".rjust(col) if math.isnan(r[(a, b)]) else f"{r[(a, b)]:>{col}.3f}"))
                            for b in names)
            out.append(f"  {a:<{width - 2}}{cells}")

    if ins.nonfinite:
        out.append("")
        width = max(24, max(len(n.column) for n in ins.nonfinite) + 4)
        out.append(f"{'non-finite values':<{width}}{'NaN':>9}{'inf':>9}{'NaN valid':>11}{'inf valid':>11}")
        for n in ins.nonfinite:
            label = n.column + (" (row)" if n.level == "row" else "")
            out.append(f"  {label:<{width - 2}}{n.nan:>9,}{n.inf:>9,}{_int(n.nan_valid, 11)}"
                       f"{_int(n.inf_valid, 11)}")
    return out


__all__ = [
    "Correlation", "DEFAULT_THRESHOLDS", "Inspection", "LengthStats", "NonFinite", "OutputSet",
    "SAMPLE_SIZE", "Segments", "Threshold", "ValueStats", "counts_stats", "describe_params", "inspect_file",
    "segment_lengths",
]
