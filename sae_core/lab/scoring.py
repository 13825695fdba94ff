"""Scoring estimators against the exact advantages of the lab's process.

`compare` runs each estimator on the same rollouts and critic values through
`compute_advantages_ragged` and scores its [N] advantages against the exact ones (`score`):
Pearson and Spearman correlation over tokens, over segments (advantages summed per segment of one
common segmentation: sae's logprob rule at `segment_threshold`, the same for every estimator) and
over the tokens at decision positions, where nearly all of the credit is; and the bias, variance
and mean square of the error. The control "random at sae p rate" is sae with boundaries drawn
independently per token at the rate of sae's logprob rule: it separates where boundaries fall from
how many there are. `summarize` turns scores over seeds into means and 95% confidence intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import registry
from ..api import compute_advantages_ragged
from ..segments import segment_ids
from .process import Rollouts


@dataclass(frozen=True)
class Estimator:
    """A label and the scalar keyword arguments of `compute_advantages_ragged` (estimator=... and
    its options; `compare` adds the per-token data the estimator's rule reads from the rollouts).

    random_boundaries marks the control: sae with boundaries drawn at random, independently per
    token, at the rate of sae's logprob rule with the `threshold` in kwargs.
    """

    label: str
    kwargs: Mapping[str, Any]
    random_boundaries: bool = False


def default_estimators(lam: float = registry.PAPER_LAM) -> list[Estimator]:
    """The estimators `sae lab` compares: mc, gae at three lambdas (one `lam`), vapo with its
    default alpha, sae at three thresholds (one the paper's), fixed segments of 32 tokens, and the
    random-boundary control at the paper's threshold; sae's lambda at boundaries is `lam`."""
    p = registry.PAPER_THRESHOLD
    return [
        Estimator("mc", dict(estimator="mc")),
        Estimator("gae lam 0.9", dict(estimator="gae", lam=0.9)),
        Estimator(f"gae lam {lam:g}", dict(estimator="gae", lam=lam)),
        Estimator("gae lam 0.99", dict(estimator="gae", lam=0.99)),
        Estimator("vapo", dict(estimator="vapo")),
        Estimator("sae p 0.05", dict(estimator="sae", threshold=0.05, lam=lam)),
        Estimator(f"sae p {p:g}", dict(estimator="sae", threshold=p, lam=lam)),
        Estimator("sae p 0.5", dict(estimator="sae", threshold=0.5, lam=lam)),
        Estimator("fixed 32", dict(estimator="sae", segment_length=32, lam=lam)),
        Estimator(f"random at sae p {p:g} rate", dict(estimator="sae", threshold=p, lam=lam), True),
    ]


METRICS = ("pearson", "spearman", "pearson_segment", "spearman_segment", "pearson_decisions", "bias",
           "variance", "mse", "sign_agreement")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.shape[0])
    ranks[order] = np.arange(x.shape[0])
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else math.nan


def score(estimated: np.ndarray, exact: np.ndarray, segment_of: np.ndarray, decision: np.ndarray
          ) -> dict[str, float]:
    """Agreement of [N] estimated advantages with the [N] exact ones.

    pearson / spearman: over tokens. pearson_segment / spearman_segment: over segments
    (`segment_of` [N] int64 from 0, a common segmentation), each segment's summed advantages.
    pearson_decisions: over the tokens at decision positions ([N] bool `decision`), where nearly
    all of the credit is. bias, variance, mse: of the error estimated - exact. sign_agreement: the
    share of tokens with |exact| > 1e-3 whose signs agree.
    """
    est = estimated.astype(np.float64)
    err = est - exact
    seg_est = np.bincount(segment_of, weights=est)
    seg_exact = np.bincount(segment_of, weights=exact)
    big = np.abs(exact) > 1e-3
    return {
        "pearson": _pearson(est, exact),
        "spearman": _pearson(_ranks(est), _ranks(exact)),
        "pearson_segment": _pearson(seg_est, seg_exact),
        "spearman_segment": _pearson(_ranks(seg_est), _ranks(seg_exact)),
        "pearson_decisions": _pearson(est[decision], exact[decision]) if decision.sum() > 2 else math.nan,
        "bias": float(err.mean()),
        "variance": float(err.var()),
        "mse": float((err ** 2).mean()),
        "sign_agreement": float((np.sign(est[big]) == np.sign(exact[big])).mean()) if big.any() else math.nan,
    }


def logprob_boundaries(rollouts: Rollouts, threshold: float = registry.PAPER_THRESHOLD) -> np.ndarray:
    """[N] bool: sae's logprob rule at `threshold`, logprobs[t] < log(threshold)."""
    return rollouts.logprobs < np.float32(math.log(threshold))


def segments(rollouts: Rollouts, threshold: float = registry.PAPER_THRESHOLD) -> np.ndarray:
    """[N] int64: the segment of each token under sae's logprob rule at `threshold`, numbered from 0
    across the batch (`sae_core.segments.segment_ids`: a segment starts at a boundary or at a
    response's first token)."""
    return segment_ids(rollouts.offsets, logprob_boundaries(rollouts, threshold))


def compare(rollouts: Rollouts, values: np.ndarray, estimators: Sequence[Estimator] | None = None, *,
            seed: int = 0, segment_threshold: float = registry.PAPER_THRESHOLD
            ) -> dict[str, dict[str, float]]:
    """{estimator label: score(...)} for every estimator on the same rollouts and [N] critic values.

    `seed` draws the control's random boundaries; `segment_threshold` fixes the common segments.
    """
    estimators = list(estimators or default_estimators())
    seg = segments(rollouts, segment_threshold)
    rewards = rollouts.rewards
    out = {}
    for est in estimators:
        options = dict(est.kwargs)
        name = options.pop("estimator")
        data = {"logprobs": rollouts.logprobs, "response_ids": rollouts.response_ids}
        if est.random_boundaries:
            rate = float(logprob_boundaries(rollouts, options.pop("threshold")).mean())
            options["boundary"] = "given"
            data["given_boundaries"] = np.random.default_rng(seed).random(rollouts.logprobs.shape[0]) < rate
        needs = registry.needed_data(name, registry.boundary_rule(name, options))
        result = compute_advantages_ragged(rewards, values, rollouts.offsets, estimator=name, **options,
                                           **{k: data[k] for k in needs})
        out[est.label] = score(result.advantages, rollouts.true_advantages, seg, rollouts.decision)
    return out


@dataclass
class Summary:
    """Scores over seeds: mean and the half-width of a 95% confidence interval (normal approximation)."""

    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    ci95: dict[str, dict[str, float]] = field(default_factory=dict)
    seeds: int = 0


def summarize(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> Summary:
    """A Summary of `compare`'s results, one per seed (NaN scores are left out of a metric's mean)."""
    summary = Summary(seeds=len(runs))
    for label in runs[0]:
        summary.mean[label], summary.ci95[label] = {}, {}
        for metric in METRICS:
            xs = np.array([r[label][metric] for r in runs], dtype=float)
            summary.mean[label][metric] = float(np.nanmean(xs))
            summary.ci95[label][metric] = (float(1.96 * np.nanstd(xs, ddof=1) / math.sqrt(len(xs)))
                                           if len(xs) > 1 else math.nan)
    return summary


TABLE_METRICS = ("pearson", "pearson_segment", "pearson_decisions", "mse", "bias", "sign_agreement")


def format_table(summary: Summary, metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A fixed-width table: one row per estimator, mean (± 95% CI over seeds) per metric."""
    width = max(len(k) for k in summary.mean) + 2
    head = f"{'estimator':<{width}}" + "".join(f"{m:>20}" for m in metrics)
    lines = [head, "-" * len(head)]
    for label, row in summary.mean.items():
        cells = []
        for m in metrics:
            ci = summary.ci95[label][m]
            cells.append(f"{row[m]:>11.4f} ± {ci:<6.4f}" if not math.isnan(ci) else f"{row[m]:>20.4f}")
        lines.append(f"{label:<{width}}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)
