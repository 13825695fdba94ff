"""The numba kernels that turn the data into the scan's per-row and per-token inputs, where a rule
or estimator needs the data for them (`numba_scan.run`): vapo's valid counts, the quantile rule's
per-row cuts, the fixed and delimiter rules' boundaries, and the factors c_t of the caller's own
lambdas. Each is parallel over rows [B]; rows are tokens [starts[i], starts[i] + lengths[i]) of the
flat [N] columns, and a mask (or None: every token valid) is read as `numba_scan.mask_bits` gives
it: a token is valid when `mask[t] & keep != 0`.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .numba_compile import jit, real


@jit(parallel=True)
def valid_counts(mask, keep, starts, lengths, out):  # pragma: no cover - compiled
    """out[i] (int64, [B]): the number of valid tokens of row i."""
    for i in nb.prange(starts.shape[0]):
        n = 0
        for t in range(starts[i], starts[i] + lengths[i]):
            n += (mask[t] & keep) != 0
        out[i] = n


@jit(parallel=True)
def row_quantiles(score, mask, keep, starts, lengths, q, out):  # pragma: no cover - compiled
    """out[i] (float64, [B]): numpy's linear-method q-quantile of row i's valid scores (float32 or
    float64, or half precision as `half_bits`), -inf for a row without valid tokens."""
    for i in nb.prange(starts.shape[0]):
        buf = np.empty(lengths[i], dtype=np.float64)
        n = 0
        for t in range(starts[i], starts[i] + lengths[i]):
            if mask is None or (mask[t] & keep) != 0:
                buf[n] = real(score[t])
                n += 1
        if n == 0:
            out[i] = -np.inf
            continue
        kept = np.sort(buf[:n])
        pos = (n - 1) * q
        below = min(int(math.floor(pos)), n - 1)
        above = min(below + 1, n - 1)
        g = pos - below
        diff = kept[above] - kept[below]
        # numpy's _lerp, including its switch of formula at g >= 0.5, so ties match it exactly
        out[i] = kept[above] - diff * (1.0 - g) if g >= 0.5 else kept[below] + diff * g


@jit(parallel=True)
def fixed_boundaries(mask, keep, starts, lengths, period, out):  # pragma: no cover - compiled
    """out[t] (bool, [N]): the k-th valid token of each row (k from 0) is a boundary when
    k % period == 0; masked tokens are not."""
    for i in nb.prange(starts.shape[0]):
        k = 0
        for t in range(starts[i], starts[i] + lengths[i]):
            valid = mask is None or (mask[t] & keep) != 0
            out[t] = valid and k % period == 0
            k += valid


@jit(parallel=True)
def delimiter_boundaries(ids, mask, keep, starts, lengths, delimiters, out):  # pragma: no cover - compiled
    """out[t] (bool, [N]): a valid token is a boundary when the valid token before it in its row has
    an id (ids [N] int64) among `delimiters` [K] int64; masked tokens are not."""
    for i in nb.prange(starts.shape[0]):
        after = False
        for t in range(starts[i], starts[i] + lengths[i]):
            valid = mask is None or (mask[t] & keep) != 0
            out[t] = valid and after
            if valid:
                after = False
                for d in delimiters:
                    if ids[t] == d:
                        after = True


@jit(parallel=True)
def lambda_factors(lambdas, mask, keep, starts, lengths, zero, out):  # pragma: no cover - compiled
    """out[p] (float64, [N]) = c_p for the caller's lambdas [N] (`schedules.affine_factors`): the
    lambda_t of the position t that p is next of, 1 for a masked t in zero mode (masked lambdas are
    never read as numbers), 0 at each row's first position that takes part, 1 at skip-mode masked
    positions."""
    for i in nb.prange(starts.shape[0]):
        previous = 0.0  # the lambda of the last position that took part, 0 before the first
        for t in range(starts[i], starts[i] + lengths[i]):
            valid = mask is None or (mask[t] & keep) != 0
            if valid or zero:
                out[t] = previous
                previous = np.float64(lambdas[t]) if valid else 1.0
            else:
                out[t] = 1.0
