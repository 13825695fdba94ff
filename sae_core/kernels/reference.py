"""The reference backend: a plain per-row loop in float64 over `sae_core.schedules`.

This is the executable spec the other backends are tested against. It is slow on purpose: one
Python step per token, no vectorisation across rows, no fusion. Per row it checks the inputs
(the problem table), then takes the boundaries, lambda_t and the recursion from
`sae_core.schedules`, whose module docstring states the math and its time index.
"""

from __future__ import annotations

import math

import numpy as np

from .. import schedules
from ..types import PROBLEM_COLUMNS, EstimatorSpec, Rows


def run(spec: EstimatorSpec, rows: Rows, compute_dtype: np.dtype):
    """Scan every row of `rows` (numpy columns, flat [N]).

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
        valid = np.ones(length, dtype=bool) if mask is None else mask != 0
        problems[i] = _row_problems(mask, valid, col(rows.rewards), col(rows.values), col(rows.score))
        if (problems[i] >= 0).any():
            continue
        data = {"logprobs": col(rows.logprobs), "response_ids": col(rows.response_ids),
                "entropy": col(rows.entropy), "given_boundaries": col(rows.given)}
        b = schedules.row_boundaries(spec, valid, data)
        lambdas = schedules.row_lambdas(spec, valid, b, col(rows.lambdas))
        a, r = schedules.row_advantages(spec, valid, col(rows.rewards), col(rows.values), lambdas)
        if not (np.isfinite(a).all() and np.isfinite(r).all()):
            problems[i, PROBLEM_COLUMNS.index("overflow")] = 0
        advantages[sl], returns[sl], boundaries[sl] = a, r, b
    return advantages.astype(compute_dtype), returns.astype(compute_dtype), boundaries, problems


def _row_problems(mask, valid, rewards, values, score) -> list[int]:
    """Per column of PROBLEM_COLUMNS, the first bad token of one row, -1 where clean."""
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
