"""How well each estimator does, on R repeated batches from the same tasks and policy.

Primary (`PRIMARY`): the cosine between an estimator's batch policy gradient (`gradient.batch`) and
the exact one (`gradient.exact`): "cos_batch", the mean over the R batches (what one PPO step sees),
and "cos_pooled", the cosine of the mean of the R estimates (variance averaged away, so mostly bias).
With them `gradient.bias_variance`'s bias2, variance and mse (relative to |g|^2), and bias2_debiased =
bias2 - variance / (R - 1), an unbiased estimate of |E g_hat - g|^2 / |g|^2 (bias2 alone carries
tr(Cov) / R, so it shrinks with R even for an unbiased estimator).

Secondary:
- "pearson_segment" (the paper's per-segment correlation), on the first batch: segments by sae
  p=0.2's boundaries; per segment, the estimator's advantage at the segment's first token against a
  ground truth MC V(end) - MC V(start) from `segment_rollouts` continuations of each state
  (`process.continue_from`). The first token's advantage is the quantity sae assigns to the segment:
  inside a segment lambda = 1, so A_start = r + V_hat(end) - V_hat(start) + lam * A_next_start, the
  critic's value change over the segment plus the discounted rest; every token of the segment gets
  that value plus the telescoped values in between, so the first token is the segment's own number.
  "pearson_segment_exact" is the same against the exact value difference (no Monte Carlo noise), and
  "segment_truth_check" (identical in every row) the correlation of the Monte Carlo truth with the
  exact difference: how much the ground truth itself can be trusted.
- "pearson_nonzero": per-token Pearson with the exact advantage, over tokens with |A| > 1e-9 (the
  others would dominate a plain per-token correlation), mean over batches.
- "pearson_pg": per-token Pearson over all tokens, weighted as the policy gradient weighs them:
  w_i = |e_{a_i} - p_i|^2 / n_j^2, the squared norm of token i's score (p_i: the policy at its
  position, n_j: samples of its task). Tokens at different (task, position) have orthogonal scores,
  so sum_i w_i (A_hat_i - A_i)^2 is |g_hat - g_hat(A)|^2 but for the cross terms between samples of
  one task at one position: the weighted correlation is the scale-free agreement in the gradient's
  own metric (routine tokens with p ~ 1 have w ~ 0; slips and decisions count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..segments import segment_ids
from . import gradient
from .gradient import bias_variance, cosine, dot
from .estimators import Estimator, advantages, expected_gradient, logprob_boundaries, matched, token_probs
from .process import Rollouts, continue_from, solve

PRIMARY = ("cos_batch", "cos_pooled")
METRICS = ("cos_batch", "cos_pooled", "bias2", "variance", "mse", "bias2_debiased", "pearson_segment",
           "pearson_segment_exact", "segment_truth_check", "pearson_nonzero", "pearson_pg")
NONZERO_TOL = 1e-9


def pearson(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The (weighted) Pearson correlation of [M] a and [M] b; NaN when either is constant or M < 2."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    if a.shape != b.shape or a.shape != w.shape:
        raise ValueError(f"a, b, weights: shapes differ ({a.shape}, {b.shape}, {w.shape})")
    total = float(w.sum())
    if a.size < 2 or total <= 0:
        return math.nan
    da = a - dot(w, a) / total
    db = b - dot(w, b) / total
    wa = w * da
    denom = math.sqrt(dot(wa, da) * dot(w * db, db))
    return dot(wa, db) / denom if denom > 0 else math.nan


def score_weights(rollouts: Rollouts) -> np.ndarray:
    """[N] float64: w_i = |e_{a_i} - p_i|^2 / n_j^2 = (1 - 2 p_i[a_i] + sum_k p_i[k]^2) / n_j^2, the weight
    of token i's advantage error in the squared norm of the batch gradient (see the module docstring)."""
    p = token_probs(rollouts)
    pa = np.take_along_axis(p, rollouts.options.astype(np.int64)[:, None], 1)[:, 0]
    per_task = np.bincount(rollouts.task, minlength=len(rollouts.tasks)).astype(np.float64)
    n = per_task[rollouts.task[rollouts.row_of_token]]
    return np.maximum(1.0 - 2.0 * pa + (p * p).sum(1), 0.0) / (n * n)


class SegmentTruth:
    """Sampled segments of one batch and their ground truth.

    starts [S] int64: the token index of each segment's first token (in the batch's flat layout).
    truth [S] float64: MC V(end) - MC V(start). exact [S] float64: V(end) - V(start) exactly.
    The end of a segment is the next segment's start in its row, or the state after the row's last
    token: z_T is not recorded, so it is drawn from its posterior given z_{T-1}, a_{T-1} and the reward
    (exact when the last step is deterministic and the verifier noiseless).
    """

    def __init__(self, rollouts: Rollouts, rng: np.random.Generator, samples: int = 32,
                 max_segments: int = 256, boundaries: np.ndarray | None = None):
        if samples < 1:
            raise ValueError(f"segment_rollouts: must be >= 1, got {samples}")
        b = logprob_boundaries(rollouts) if boundaries is None else np.asarray(boundaries, dtype=bool)
        seg = segment_ids(rollouts.offsets, b)
        N = seg.shape[0]
        first = np.flatnonzero(np.diff(np.concatenate([[-1], seg])) != 0)  # [S_all] segment starts
        end = np.append(first[1:], N)  # flat index after each segment
        row = rollouts.row_of_token[first]
        at_row_end = end >= rollouts.offsets[row + 1]
        pick = np.sort(rng.choice(first.size, size=min(max_segments, first.size), replace=False))
        self.starts, end, row, at_row_end = first[pick], end[pick], row[pick], at_row_end[pick]
        task_of = rollouts.task[row]
        z_start = rollouts.state[self.starts].astype(np.int64)
        pos_start = rollouts.positions[self.starts].astype(np.int64)
        z_end, pos_end = np.empty_like(z_start), np.empty_like(pos_start)
        v_end = np.empty(self.starts.size)
        inner = ~at_row_end
        z_end[inner] = rollouts.state[end[inner]]
        pos_end[inner] = rollouts.positions[end[inner]]
        v_end[inner] = rollouts.true_values[end[inner]]
        for i in np.flatnonzero(at_row_end):
            task = rollouts.tasks[task_of[i]]
            last = rollouts.offsets[row[i] + 1] - 1
            n1 = task.next_one[task.length - 1, rollouts.options[last], rollouts.state[last]]
            r = float(rollouts.reward[row[i]])
            like = task.terminal if r > 0.5 else 1.0 - task.terminal
            one = n1 * like[1] / max(n1 * like[1] + (1.0 - n1) * like[0], 1e-300)
            z_end[i] = int(rng.random() < one)
            pos_end[i] = task.length
            v_end[i] = task.terminal[z_end[i]]
        self.exact = v_end - rollouts.true_values[self.starts]
        mc_start, mc_end = np.empty(self.starts.size), np.empty(self.starts.size)
        for j in np.unique(task_of):
            mine = np.flatnonzero(task_of == j)
            pos = np.concatenate([pos_start[mine], pos_end[mine]])
            z = np.concatenate([z_start[mine], z_end[mine]])
            v = continue_from(rollouts.tasks[j], pos, z, samples, rng, rollouts.probs[j])
            mc_start[mine], mc_end[mine] = v[:mine.size], v[mine.size:]
        self.truth = mc_end - mc_start
        self.check = pearson(self.truth, self.exact)


def _check_batches(batches: Sequence[Rollouts], values: Sequence[np.ndarray]) -> None:
    if not batches:
        raise ValueError("batches: need at least one batch")
    if len(values) != len(batches):
        raise ValueError(f"values: {len(values)} arrays for {len(batches)} batches")
    ref = batches[0]
    for r, (b, v) in enumerate(zip(batches, values)):
        if len(b.tasks) != len(ref.tasks) or any(x is not y and x.length != y.length
                                                 for x, y in zip(b.tasks, ref.tasks)):
            raise ValueError(f"batches: batch {r} is not from the same tasks as batch 0")
        if np.shape(v) != b.positions.shape:
            raise ValueError(f"values: batch {r} has shape {np.shape(v)}, expected [{b.positions.shape[0]}]")


def evaluate(batches: Sequence[Rollouts], values: Sequence[np.ndarray], estimators: Sequence[Estimator],
             rng: np.random.Generator, segment_rollouts: int = 32, max_segments: int = 256, *,
             truth: np.ndarray | None = None, segments: SegmentTruth | None = None) -> dict[str, dict[str, float]]:
    """{label: {metric: float}} for every estimator (keys METRICS, see the module docstring).

    batches: R >= 1 Rollouts of the same tasks and sampling policies (independent draws); values:
    R [N_r] arrays, the critic's V before each token of batch r. rng draws the random control's
    boundaries, the segment subsample (`max_segments` of the first batch) and the continuations.
    With R = 1 the variance split is NaN. The exact gradient is the tasks' (computed once).
    truth (`gradient.exact(batches[0])`) and segments (`SegmentTruth(batches[0], ...)`): pass them when
    several critics are scored on the same batches; they depend on the batches only.
    """
    _check_batches(batches, values)
    R = len(batches)
    truth = gradient.exact(batches[0]) if truth is None else truth
    seg = SegmentTruth(batches[0], rng, segment_rollouts, max_segments) if segments is None else segments
    per_batch = []
    for b in batches:
        nonzero = np.abs(b.true_advantages) > NONZERO_TOL
        per_batch.append((matched(b), nonzero, score_weights(b)))
    out: dict[str, dict[str, float]] = {}
    for est in estimators:
        grads = np.empty((R, truth.size))
        cos, p_nonzero, p_pg = [], [], []
        for r, (b, v, (match, nonzero, w)) in enumerate(zip(batches, values, per_batch)):
            adv = advantages(est, b, v, rng, match)
            grads[r] = gradient.batch(b, adv)
            cos.append(cosine(grads[r], truth))
            p_nonzero.append(pearson(adv[nonzero], b.true_advantages[nonzero]))
            p_pg.append(pearson(adv, b.true_advantages, w))
            if r == 0:
                first = adv[seg.starts]
        row = bias_variance(grads, truth)
        out[est.label] = {
            "cos_batch": float(np.mean(cos)), "cos_pooled": row["pooled_cosine"], "bias2": row["bias2"],
            "variance": row["variance"], "mse": row["mse"],
            "bias2_debiased": row["bias2"] - row["variance"] / (R - 1) if R > 1 else math.nan,
            "pearson_segment": pearson(first, seg.truth), "pearson_segment_exact": pearson(first, seg.exact),
            "segment_truth_check": seg.check,
            "pearson_nonzero": float(np.nanmean(p_nonzero)), "pearson_pg": float(np.nanmean(p_pg)),
        }
    return out


def expected_bias(rollouts: Rollouts, estimators: Sequence[Estimator]) -> dict[str, dict[str, float]]:
    """{label: {"bias2_exact", "cos_expected"}}: with the exact critic, |E g_hat - g|^2 / |g|^2 and
    cosine(E g_hat, g), E g_hat from `estimators.expected_gradient` (exact, no sampling). Estimators
    it cannot handle (the quantile rule) get NaN."""
    truth = gradient.exact(rollouts)
    solutions = [solve(t, p) for t, p in zip(rollouts.tasks, rollouts.probs)]
    match = matched(rollouts)
    out = {}
    for est in estimators:
        try:
            g = expected_gradient(est, rollouts, match, solutions)
        except ValueError:
            out[est.label] = {"bias2_exact": math.nan, "cos_expected": math.nan}
            continue
        err = g - truth
        out[est.label] = {"bias2_exact": dot(err, err) / dot(truth, truth), "cos_expected": cosine(g, truth)}
    return out
