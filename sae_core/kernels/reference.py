"""The reference backend: a plain per-row loop in float64 that reads like the math.

This is the executable spec the other backends are tested against. It is slow on purpose: one
Python step per token, no vectorisation, no fusion, so that each line can be checked against the
equations in `sae_core.estimators`.
"""

from __future__ import annotations

import math

import numpy as np

from ..estimators import PROBLEM_COLUMNS, EstimatorSpec, Rows


def run(spec: EstimatorSpec, rows: Rows, compute_dtype: np.dtype):
    """Scan every row of `rows`.

    Returns:
        advantages [N] compute_dtype, returns [N] compute_dtype, boundaries [N] bool, and
        problems [B, len(PROBLEM_COLUMNS)] int64: per row, the index (within the row) of the first
        bad token for each checked column, -1 where clean.
    """
    n = rows.rewards.shape[0]
    advantages = np.zeros(n, dtype=np.float64)
    returns = np.zeros(n, dtype=np.float64)
    boundaries = np.zeros(n, dtype=bool)
    problems = np.full((len(rows.starts), len(PROBLEM_COLUMNS)), -1, dtype=np.int64)
    for i, (start, length) in enumerate(zip(rows.starts.tolist(), rows.lengths.tolist())):
        sl = slice(start, start + length)

        def col(x):
            return None if x is None else x[sl]

        mask = col(rows.mask)
        valid = [True] * length if mask is None else [bool(m != 0) for m in mask]
        problems[i] = _row_problems(spec, mask, valid, col(rows.rewards), col(rows.values), col(rows.score))
        if (problems[i] >= 0).any():
            continue
        b = row_boundaries(spec, valid, col(rows.logprobs), col(rows.response_ids), col(rows.entropy), col(rows.given))
        a, r = row_advantages(spec, valid, col(rows.rewards), col(rows.values), b)
        if not all(math.isfinite(x) for x in a + r):
            problems[i, PROBLEM_COLUMNS.index("overflow")] = 0
        advantages[sl], returns[sl], boundaries[sl] = a, r, b
    return advantages.astype(compute_dtype), returns.astype(compute_dtype), boundaries, problems


def _row_problems(spec, mask, valid, rewards, values, score) -> list[int]:
    def first(bad):
        return next((t for t, b in enumerate(bad) if b), -1)

    checks = {
        "response_mask": [] if mask is None else [m not in (0, 1) for m in mask.tolist()],
        "rewards": [v and not math.isfinite(x) for v, x in zip(valid, rewards.tolist())],
        "values": [v and not math.isfinite(x) for v, x in zip(valid, values.tolist())],
        "score": [] if score is None else [v and not math.isfinite(x) for v, x in zip(valid, score.tolist())],
        "overflow": [],  # decided after the scan
    }
    return [first(checks[c]) for c in PROBLEM_COLUMNS]


def row_boundaries(spec: EstimatorSpec, valid, logprobs, response_ids, entropy, given) -> list[bool]:
    """[T] bool: which valid tokens of one row start a new segment under the spec's rule."""
    T = len(valid)
    rule = spec.boundary
    if rule is None:
        return [False] * T
    if rule == "logprob":
        cut = math.log(spec.threshold)
        return [valid[t] and float(logprobs[t]) < cut for t in range(T)]
    if rule == "quantile":
        kept = [float(logprobs[t]) for t in range(T) if valid[t]]
        if not kept:
            return [False] * T
        cut = float(np.quantile(np.array(kept, dtype=np.float64), spec.quantile))
        return [valid[t] and float(logprobs[t]) < cut for t in range(T)]
    if rule == "entropy":
        return [valid[t] and float(entropy[t]) > spec.entropy_threshold for t in range(T)]
    if rule == "given":
        return [valid[t] and bool(given[t]) for t in range(T)]
    if rule == "fixed":
        out, k = [], 0
        for t in range(T):
            out.append(valid[t] and k % spec.segment_length == 0)
            k += valid[t]
        return out
    if rule == "delimiter":
        out, after_delimiter = [], False
        for t in range(T):
            out.append(valid[t] and after_delimiter)
            if valid[t]:
                after_delimiter = int(response_ids[t]) in spec.delimiter_ids
        return out
    raise AssertionError(rule)


def row_advantages(spec: EstimatorSpec, valid, rewards, values, boundaries) -> tuple[list[float], list[float]]:
    """A_t and R_t of one row, in float64, by the recursion of the module docstring of estimators."""
    T = len(valid)
    gamma = spec.gamma
    L = sum(valid)
    # Positions that take part: skip mode jumps over masked tokens, zero mode keeps them as
    # zero-reward, zero-value steps.
    order = [t for t in range(T) if valid[t]] if spec.mask_mode == "skip" else list(range(T))

    def lambda_at(t, nxt):
        if spec.estimator == "gae":
            return spec.lam
        if spec.estimator == "mc":
            return 1.0
        if spec.estimator == "vapo":
            return min(1.0, max(0.0, 1.0 - 1.0 / (spec.alpha * L))) if L else 0.0
        if spec.estimator == "sae":
            return spec.lam if nxt is not None and boundaries[nxt] else 1.0
        raise AssertionError(spec.estimator)

    adv = [0.0] * T
    ret = [0.0] * T
    nxt = None  # next(t): the next position that takes part
    v_next = a_next = critic_next = 0.0
    for t in reversed(order):
        r_t = float(rewards[t]) if valid[t] else 0.0
        v_t = float(values[t]) if valid[t] else 0.0
        delta = r_t + gamma * v_next - v_t
        adv[t] = delta + gamma * lambda_at(t, nxt) * a_next
        if spec.critic_lam is None:
            ret[t] = adv[t] + v_t
        else:
            critic_adv = delta + gamma * spec.critic_lam * critic_next
            ret[t] = critic_adv + v_t
            critic_next = critic_adv
        nxt, v_next, a_next = t, v_t, adv[t]
    return adv, ret
