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


@jit(fastmath={"contract"})
def prepare_pair(rewards_a, values_a, mask_a, score_a, given_a, factors_a, cut_a, lam_a, bnd_a, e_a, f_a, e2_a, f2_a,
                 rewards_b, values_b, mask_b, score_b, given_b, factors_b, cut_b, lam_b, bnd_b, e_b, f_b, e2_b, f2_b,
                 keep, one, score_sign, gamma, critic_f, zero):  # pragma: no cover - compiled
    """`prepare` for two lanes' chunks of the same width w in one loop: (what `prepare` returns for
    lane a, for lane b). Each lane's arguments as `prepare` takes them, suffixed _a and _b.

    Pass 1 waits on its input stream; two rows read in lockstep keep twice the streams in flight:
    3-6% off the whole kernel at [32, 32768], beyond what slicing by type (`window`) gave
    (docs/performance.md).
    The loop body is `prepare`'s, written out once per lane: numba did not vectorise it as a shared
    inlined function. `tests/test_backends.py` checks that a batch gives each row what the row alone
    gives (one lane, so `prepare`)."""
    n = rewards_a.shape[0]
    count_a = 0
    last_a = 0
    bad_a = 0
    count_b = 0
    last_b = 0
    bad_b = 0
    for q in range(n):
        valid_a = True
        if mask_a is not None:
            m_a = mask_a[q]
            valid_a = (m_a & keep) != 0
            count_a += valid_a
            last_a = max(last_a, (q + 1) * valid_a)
            bad_a |= valid_a & (m_a != one)
        # load unconditionally, then select: a load inside a branch stops vectorisation
        r_a = np.float64(rewards_a[q])
        v_a = np.float64(values_a[q])
        r0_a = r_a if valid_a else 0.0
        v0_a = v_a if valid_a else 0.0
        b_a = False
        check_a = 0.0
        c_a = lam_a
        if score_a is not None:
            x_a = real(score_a[q])
            b_a = valid_a & (score_sign * x_a < cut_a)
            check_a = 0.0 * (x_a if valid_a else 0.0)  # NaN when x_a is not finite
            c_a = lam_a if b_a else 1.0
            bnd_a[q] = b_a
        if given_a is not None:
            b_a = valid_a & given_a[q]
            c_a = lam_a if b_a else 1.0
            bnd_a[q] = b_a
        if factors_a is not None:
            c_a = np.float64(factors_a[q])
        takes_part_a = valid_a
        if zero is not None:
            takes_part_a = True
        fq_a = gamma * c_a if takes_part_a else 1.0
        u_a = r0_a - v0_a + check_a
        f_a[q] = fq_a
        e_a[q] = gamma * v0_a + fq_a * u_a
        if critic_f is not None:
            fc_a = critic_f if takes_part_a else 1.0
            f2_a[q] = fc_a
            e2_a[q] = gamma * v0_a + fc_a * u_a
        valid_b = True
        if mask_b is not None:
            m_b = mask_b[q]
            valid_b = (m_b & keep) != 0
            count_b += valid_b
            last_b = max(last_b, (q + 1) * valid_b)
            bad_b |= valid_b & (m_b != one)
        r_b = np.float64(rewards_b[q])
        v_b = np.float64(values_b[q])
        r0_b = r_b if valid_b else 0.0
        v0_b = v_b if valid_b else 0.0
        b_b = False
        check_b = 0.0
        c_b = lam_b
        if score_b is not None:
            x_b = real(score_b[q])
            b_b = valid_b & (score_sign * x_b < cut_b)
            check_b = 0.0 * (x_b if valid_b else 0.0)  # NaN when x_b is not finite
            c_b = lam_b if b_b else 1.0
            bnd_b[q] = b_b
        if given_b is not None:
            b_b = valid_b & given_b[q]
            c_b = lam_b if b_b else 1.0
            bnd_b[q] = b_b
        if factors_b is not None:
            c_b = np.float64(factors_b[q])
        takes_part_b = valid_b
        if zero is not None:
            takes_part_b = True
        fq_b = gamma * c_b if takes_part_b else 1.0
        u_b = r0_b - v0_b + check_b
        f_b[q] = fq_b
        e_b[q] = gamma * v0_b + fq_b * u_b
        if critic_f is not None:
            fc_b = critic_f if takes_part_b else 1.0
            f2_b[q] = fc_b
            e2_b[q] = gamma * v0_b + fc_b * u_b
    return _kind(mask_a, n, count_a, last_a, bad_a), _kind(mask_b, n, count_b, last_b, bad_b)
