"""Pass 1 of the numba scan (`numba_scan`): read one lane's chunk of the inputs and the mask once,
write the boundaries and the affine factors e_t, f_t into the scan's buffer, and say whether the
chunk is right-padded. Every array is a view of the same w tokens of one row; the math and its
index convention are in `numba_scan`'s docstring.
"""

from __future__ import annotations

import numpy as np

from .numba_compile import jit, real


@jit()
def _kind(mask, n, count, last, bad):  # pragma: no cover - compiled
    """What pass 1 found in a chunk of n tokens, from its valid tokens (count), one past the last
    valid one (last) and whether a valid entry was other than 1 (bad): see `prepare`."""
    if mask is None:
        return n
    if bad:
        return -2
    return count if last == count else -1


@jit()
def dense_prefix(mask, keep, one):  # pragma: no cover - compiled
    """k when a chunk's mask (bits, as `prepare` reads it; at least one entry) is exactly `one` at
    its first k entries and 0 at the rest (keep-wise: -0.0 is 0), i.e. k valid tokens then padding,
    each valid entry 1; -1 otherwise (a gap, or an entry that is neither 0 nor 1: `prepare` reads
    such a chunk with its mask and says which). Two passes over the mask, integer ops only.

    A chunk it accepts is read by `prepare` without a mask (its first k tokens) and `pad` (the
    rest): the masked loop does twice the work per token of the unmasked one (docs/performance.md)."""
    n = mask.shape[0]
    count = 0
    for q in range(n):
        count += (mask[q] & keep) != 0
    off = keep ^ keep  # 0 in the mask's own unsigned type
    for q in range(count):
        off |= mask[q] ^ one
    for q in range(count, n):
        off |= mask[q] & keep
    return count if off == 0 else -1


@jit()
def pad(bnd, e, f, e2, f2, critic_f):  # pragma: no cover - compiled
    """Pass 1's outputs at a chunk's padding in skip mode, where `prepare` with the mask would write
    the same: identity steps (e 0, f 1; the critic's scan too when critic_f is not None) and no
    boundaries. Every array a view of the same padding tokens."""
    bnd[:] = False
    e[:] = 0.0
    f[:] = 1.0
    if critic_f is not None:
        e2[:] = 0.0
        f2[:] = 1.0


@jit(fastmath={"contract"})  # e_t = gamma * V_t + f_t * u_t as one fused multiply-add (one rounding fewer)
def prepare(rewards, values, mask, keep, one, score, score_sign, cut, given, factors, lam, gamma, critic_f, zero,
             bnd, e, f, e2, f2):  # pragma: no cover - compiled
    """Pass 1 over one lane's chunk (every array a view of the same w tokens): boundaries, e_t, f_t,
    and what the mask is like.

    mask None: every token valid; else a mask in bits (`mask_bits`), read here and nowhere else on
    right-padded data. score / given: where boundaries come from (both None: no segments, and bnd,
    all False already, is not written). factors: c_t per token (the caller's lambdas, from
    `_lambda_factors`), or None: c_t from lam and the boundaries. critic_f None: no decoupled critic
    (e2, f2 unused). zero None: skip mode.

    Returns k when the chunk is k valid tokens followed by masked ones only (right padding; w
    without a mask), -1 when it has gaps, -2 when a mask entry is neither 0 nor 1.
    """
    n = rewards.shape[0]
    count = 0  # valid tokens
    last = 0  # one past the last valid token: equal to count exactly when the mask is non-increasing
    bad = 0
    for q in range(n):
        valid = True
        if mask is not None:
            m = mask[q]
            valid = (m & keep) != 0
            count += valid
            last = max(last, (q + 1) * valid)
            bad |= valid & (m != one)
        # load unconditionally, then select: a load inside a branch stops vectorisation
        r = np.float64(rewards[q])
        v = np.float64(values[q])
        r0 = r if valid else 0.0
        v0 = v if valid else 0.0
        b = False
        check = 0.0
        c = lam
        if score is not None:
            x = real(score[q])
            b = valid & (score_sign * x < cut)
            check = 0.0 * (x if valid else 0.0)  # NaN when x is not finite
            c = lam if b else 1.0
            bnd[q] = b
        if given is not None:
            b = valid & given[q]
            c = lam if b else 1.0
            bnd[q] = b
        if factors is not None:
            c = np.float64(factors[q])
        takes_part = valid
        if zero is not None:
            takes_part = True
        fq = gamma * c if takes_part else 1.0
        u = r0 - v0 + check
        f[q] = fq
        e[q] = gamma * v0 + fq * u
        if critic_f is not None:
            fc = critic_f if takes_part else 1.0
            f2[q] = fc
            e2[q] = gamma * v0 + fc * u
    return _kind(mask, n, count, last, bad)
