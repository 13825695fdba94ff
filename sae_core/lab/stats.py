"""Statistics over seeds: t-intervals, the pre-registered paired contrasts, and table formatting.

Every comparison is paired by seed (one seed = one draw of tasks, rollouts and critic, shared by all
estimators), so the interval of a contrast is the t-interval of the per-seed differences, with the
t quantile for n - 1 degrees of freedom (t(0.975, 4) = 2.776, not 1.96). The t distribution is
computed exactly (`t_quantile`; no scipy).

The contrasts are fixed here, before any study runs (`CONTRASTS`, on `PRIMARY_METRICS`): sae at
p = 0.2 with lam 0.95 at boundaries ("sae p0.2") minus each of: the best GAE, GAE at the matched
horizon, random boundaries at the same rate, fixed segments of the same mean length, and MC.

"best gae" is, per metric (and per setting and critic: whatever `by_seed` holds), the GAE among
`BEST_GAE_POOL` with the highest mean over the same seeds. Choosing the winner on the data that
then measures it (winner's curse) biases that GAE's mean upward, so the contrast sae - best gae is
biased downward: conservative for sae. A positive "sae - best gae" interval is therefore credible;
a negative one may overstate sae's loss by the size of that selection effect (about the spread of
the candidates' noise, which is small when one lam clearly dominates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SAE = "sae p0.2"
BEST_GAE_POOL = ("gae 0.9", "gae 0.95", "gae 0.99", "gae 0.995", "gae 0.999")
BEST_GAE = "best gae"  # resolved per metric, see the module docstring
PRIMARY_METRICS = ("cos_batch", "cos_pooled")  # higher is better
CONTRASTS = (  # (name, a, b): a minus b, paired by seed; written before any study ran
    ("sae - best gae", SAE, BEST_GAE),
    ("sae - gae matched", SAE, "gae matched"),
    ("sae - random", SAE, "random"),
    ("sae - fixed", SAE, "fixed"),
    ("sae - mc", SAE, "mc"),
)
LEVEL = 0.95


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer `df` >= 1 (Abramowitz & Stegun 26.7.3-4, finite sums)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(2, df, 2):  # (1*3*...*(k-1)) / (2*4*...*k) cos^k
            term *= (k - 1) / k * c2
            total += term
        return s * total
    if df == 1:
        return 2.0 * theta / math.pi
    term, total = math.cos(theta), math.cos(theta)
    for k in range(3, df - 1, 2):  # (2*4*...*(k-1)) / (1*3*...*k) cos^k
        term *= (k - 1) / k * c2
        total += term
    return 2.0 / math.pi * (theta + s * total)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with integer `df` >= 1, by bisection on the exact CDF
    (to 1e-12); e.g. t_quantile(0.975, 2) = 4.30265, (0.975, 4) = 2.77645, (0.975, 9) = 2.26216."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p: must be in (0.5, 1), got {p}")
    if int(df) != df or df < 1:
        raise ValueError(f"df: must be an integer >= 1, got {df}")
    target = 2.0 * p - 1.0
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, int(df)) < target:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, int(df)) < target else (lo, mid)
    return 0.5 * (lo + hi)


def interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, half_width, n) of the t-interval of [n] per-seed values; NaNs are dropped first.
    half_width = t((1 + level) / 2, n - 1) * sd / sqrt(n) (sd with n - 1); NaN when n < 2."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, n
    return mean, t_quantile((1.0 + level) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n


def contrast(a_by_seed: Sequence[float] | Mapping, b_by_seed: Sequence[float] | Mapping,
             level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, half_width, n) of the paired t-interval of a - b over seeds.

    Sequences are paired by index (same length); mappings {seed: value} by their common seeds. A
    pair with a NaN on either side is dropped (n counts the pairs used).
    """
    if isinstance(a_by_seed, Mapping) != isinstance(b_by_seed, Mapping):
        raise ValueError("a_by_seed, b_by_seed: pass two sequences or two {seed: value} mappings")
    if isinstance(a_by_seed, Mapping):
        seeds = sorted(set(a_by_seed) & set(b_by_seed))
        a = np.array([a_by_seed[s] for s in seeds], dtype=np.float64)
        b = np.array([b_by_seed[s] for s in seeds], dtype=np.float64)
    else:
        a = np.asarray(a_by_seed, dtype=np.float64).reshape(-1)
        b = np.asarray(b_by_seed, dtype=np.float64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"a_by_seed, b_by_seed: {a.size} and {b.size} seeds; paired values need equal counts")
    return interval(a - b, level)


@dataclass(frozen=True)
class ContrastResult:
    """One pre-registered contrast on one metric: a - b over seeds (b resolved for "best gae")."""

    name: str
    metric: str
    a: str
    b: str
    mean: float
    half_width: float
    n: int

    def text(self, digits: int = 3) -> str:
        return f"{self.name} ({self.metric}, b = {self.b}): {format_interval(self.mean, self.half_width, digits)}" \
               f" (n = {self.n})"


def best_gae(by_seed: Mapping[str, Sequence[float]]) -> str:
    """The label in BEST_GAE_POOL with the highest mean over seeds in `by_seed` ({label: per-seed values}
    of one metric, higher is better); NaN means are skipped. Raises ValueError when none is present."""
    means = {k: float(np.nanmean(by_seed[k])) for k in BEST_GAE_POOL if k in by_seed}
    means = {k: v for k, v in means.items() if not math.isnan(v)}
    if not means:
        raise ValueError(f"by_seed: none of {BEST_GAE_POOL} has a value")
    return max(means, key=means.get)


def preregistered(by_seed: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str] = PRIMARY_METRICS,
                  level: float = LEVEL) -> list[ContrastResult]:
    """Every contrast of CONTRASTS on every metric: by_seed[label][metric] = per-seed values (paired
    by index, or {seed: value} mappings). A contrast whose estimators are missing is left out."""
    out = []
    for metric in metrics:
        column = {label: row[metric] for label, row in by_seed.items() if metric in row}
        for name, a, b in CONTRASTS:
            if b == BEST_GAE:
                try:
                    b = best_gae({k: list(v.values()) if isinstance(v, Mapping) else v for k, v in column.items()})
                except ValueError:
                    continue
            if a not in column or b not in column:
                continue
            mean, hw, n = contrast(column[a], column[b], level)
            out.append(ContrastResult(name, metric, a, b, mean, hw, n))
    return out


def format_interval(mean: float, half_width: float, digits: int = 3) -> str:
    """'mean ± half_width' with `digits` decimals ('mean' alone when the half-width is NaN)."""
    if math.isnan(half_width):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def format_table(by_seed: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str],
                 digits: int = 3, level: float = LEVEL) -> str:
    """A fixed-width text table: one row per label, per metric the mean ± t half-width over seeds."""
    if not by_seed:
        return ""
    width = max(len(k) for k in by_seed) + 2
    cell = max(12, 2 * digits + 9, *(len(m) + 2 for m in metrics))
    head = f"{'estimator':<{width}}" + "".join(f"{m:>{cell}}" for m in metrics)
    lines = [head, "-" * len(head)]
    for label, row in by_seed.items():
        cells = []
        for m in metrics:
            vals = list(row[m].values()) if isinstance(row.get(m), Mapping) else row.get(m, [])
            mean, hw, _ = interval(vals, level)
            cells.append(format_interval(mean, hw, digits))
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    return "\n".join(lines)
