"""Streaming statistics for `sae inspect` (sae_core.tools.summary): length histograms, moments,
uniform samples and co-moments merged batch by batch, so a file is summarised in one pass with
memory independent of its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


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
        return jsonable(self.__dict__)


@dataclass(frozen=True)
class ValueStats:
    """A distribution of floats over valid tokens. `exact`: False when p01/p50/p99 come from a
    uniform sample (`summary.SAMPLE_SIZE` tokens); count, mean, std, min and max are always exact."""

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
        return jsonable(self.__dict__)


class Counts:
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


def array_stats(x: np.ndarray) -> LengthStats:
    """LengthStats of [N] numbers, with numpy's quantiles."""
    if x.size == 0:
        return LengthStats(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    p50, p90 = np.percentile(x, [50, 90])
    return LengthStats(int(x.size), float(x.min()), float(x.mean()), float(p50), float(p90), float(x.max()))


class Moments:
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


class Sample:
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


class Pair:
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


def value_stats(m: Moments, s: Sample) -> ValueStats:
    """ValueStats from a stream's moments and its sample (quantiles from the sample)."""
    if m.n == 0:
        return ValueStats(0, *([math.nan] * 7), exact=True)
    p01, p50, p99 = np.percentile(s.values, [1, 50, 99])
    return ValueStats(m.n, m.mean, m.std, m.min, float(p01), float(p50), float(p99), m.max, s.exact)


def jsonable(x: Any) -> Any:
    """Plain JSON types: NaN / inf floats become None, numpy scalars Python ones, tuples lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


__all__ = ["Counts", "LengthStats", "Moments", "Pair", "Sample", "ValueStats", "array_stats", "counts_stats",
           "jsonable", "value_stats"]
