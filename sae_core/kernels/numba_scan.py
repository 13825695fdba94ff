"""The numba backend: the masked reverse scan on the CPU, parallel over rows.

The math and its time index are in `sae_core.schedules`. This backend scans its affine form over
*every* position, so that skip mode needs no lookup of next(t). One index convention throughout:
per token t of the flat column, c_t is the lambda that token t imposes on its predecessor
(c_next(t) = lambda_t, `schedules.affine_factors`: lam at a boundary and 1 inside a segment for
sae; lam for gae; 1 for mc; the row's lambda for vapo; the caller's lambdas shifted onto next(t)
for GIVEN_LAMBDAS), and with X_t = gamma * (V_t + c_t * A_t):

    A_t = u_t + S_{t+1},   u_t = r_t - V_t            (S_{t+1}: the state arriving from the right)
    S_t = e_t + f_t * S_{t+1},  f_t = gamma * c_t,  e_t = gamma * V_t + f_t * u_t
    R_t = A_t + V_t = r_t + S_{t+1}   (or r_t + S'_{t+1} with f' = gamma * critic_lam)

A skip-mode masked position is the identity (e = 0, f = 1) and outputs 0; a zero-mode one has
r = V = 0. Work goes in three passes per chunk of `CHUNK` tokens:

1. prepare (vectorised): read the inputs and the mask once, write the boundaries and e_t, f_t into
   small buffers, and say whether the chunk is right-padded. A chunk whose mask is valid tokens then
   padding (`dense_prefix`, which reads only the mask) is read as unmasked up to the padding, half
   the work per token of the masked loop, and its padding is written without reading the inputs;
2. scan (serial): the only loop-carried chain, run for `LANES` rows in lockstep so their
   independent multiply-adds fill the pipeline (one row alone waits on each step);
3. emit (vectorised): A_t and R_t from the inputs (still in cache) and the scanned state.

Checks cost nothing on the hot path: a non-finite input on a valid token turns the scan state NaN,
and NaN survives every later step (NaN * 0 is NaN), so one test of the final state per row finds
every bad row; only those rows are searched for the first bad token. Masks are read in place, in
any dtype, as unsigned integers of their width (`mask_bits`), by pass 1 only, which also checks
them for 0/1: a chunk with a bad entry goes through the masked loop, which marks its row's final
state, as a non-finite input does.

Rows are grouped into lanes by length, so ragged batches waste little of the lockstep scan. A
lane's chunk whose mask is valid tokens followed by padding (every chunk of right-padded data) is
emitted without reading the mask again: the valid part densely, then zeros.
Why the kernel is shaped this way (and what it costs) is in docs/performance.md.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..types import GIVEN_LAMBDAS, PROBLEM_COLUMNS, EstimatorSpec, Rows
from .numba_compile import half_bits, jit, only_with, prefetch, real, window
from .numba_prepare import dense_prefix, pad, prepare
from .numba_rules import delimiter_boundaries, fixed_boundaries, lambda_factors, row_quantiles, valid_counts

LANES = 4  # rows per lockstep scan; _scan_lanes is written out for exactly four
CHUNK = 4096  # tokens per lane per pass: large enough to amortise the per-chunk calls, small enough for L2
ROW = CHUNK + 8  # scan buffer row stride in float64: CHUNK plus one cache line (see _block)
STAGGER = 64  # tokens between the lanes' chunk starts (256 bytes of float32): see _block

_P_MASK = PROBLEM_COLUMNS.index("response_mask")
_P_REWARDS = PROBLEM_COLUMNS.index("rewards")
_P_VALUES = PROBLEM_COLUMNS.index("values")
_P_SCORE = PROBLEM_COLUMNS.index("score")
_P_OVERFLOW = PROBLEM_COLUMNS.index("overflow")
_NO_CUTS = np.empty(0, dtype=np.float64)


# Optional inputs are passed as None or an array, and flags as None or True: numba compiles one
# variant per combination of types and prunes the `is None` branches at compile time. As runtime
# booleans they would stay in the loops and stop LLVM from vectorising passes 1 and 3.


@jit()
def _emit(rewards, values, mask, keep, s, s2, zero, adv, ret):  # pragma: no cover - compiled
    """Pass 3 over one lane's chunk: A_t = r_t - V_t + S, R_t = r_t + S (S' = s2 when not None)."""
    for q in range(rewards.shape[0]):
        valid = True
        if mask is not None:
            valid = (mask[q] & keep) != 0
        r = np.float64(rewards[q])
        arriving = s[q]
        critic_arriving = arriving
        if s2 is not None:
            critic_arriving = s2[q]
        # masked: skip mode outputs 0; zero mode has r = V = 0, so A = R = the arriving state
        masked_a = 0.0
        masked_r = 0.0
        if zero is not None:
            masked_a = arriving
            masked_r = critic_arriving
        adv[q] = r - np.float64(values[q]) + arriving if valid else masked_a
        ret[q] = r + critic_arriving if valid else masked_r


# offsets of the scan buffer's rows in its flat form: e_0..e_3, f_0..f_3, s_0..s_3, ROW float64 apart
_OFF = tuple(np.uint64(k * ROW) for k in range(3 * LANES))


@jit(fastmath={"contract"})
def _scan_lanes(buf, first, s0, s1, s2, s3):  # pragma: no cover - compiled
    """Pass 2: S_t = e_t + f_t * S_{t+1} for four lanes in lockstep, right to left over positions
    [first, CHUNK) of the flat [3 * LANES * ROW] float64 buffer `buf` (rows e_j, f_j, s_j at
    `_OFF[j]`, `_OFF[LANES + j]`, `_OFF[2 * LANES + j]`); s_j[p] gets the state arriving at p.

    One flat buffer with constant row offsets and an unsigned position: every access is one base
    register plus a constant, and numba emits no negative-index wraparound. Twelve separate row
    views plus a signed index ran out of registers (spills inside the loop) and took about 10%
    longer over the whole kernel (docs/performance.md).
    """
    for k in range(CHUNK - first):
        p = np.uint64(CHUNK - 1 - k)
        buf[p + _OFF[8]] = s0
        s0 = buf[p + _OFF[0]] + buf[p + _OFF[4]] * s0
        buf[p + _OFF[9]] = s1
        s1 = buf[p + _OFF[1]] + buf[p + _OFF[5]] * s1
        buf[p + _OFF[10]] = s2
        s2 = buf[p + _OFF[2]] + buf[p + _OFF[6]] * s2
        buf[p + _OFF[11]] = s3
        s3 = buf[p + _OFF[3]] + buf[p + _OFF[7]] * s3
    return s0, s1, s2, s3


@jit()
def _chunk_rows(chunk_end, length):  # pragma: no cover - compiled
    """(row_lo, row_hi): the row positions of the chunk that ends at `chunk_end` (counted with the
    lane's stagger: it covers [chunk_end - CHUNK, chunk_end)), clipped to a row of `length` tokens;
    row_hi <= row_lo when none of it is in the row."""
    return max(chunk_end - CHUNK, 0), min(chunk_end, length)


@jit()
def _prefetch_lines(x, lo, hi):  # pragma: no cover - compiled
    """Prefetch x[lo:hi] (1-D), one request per 64-byte cache line."""
    for k in range(lo, hi, max(64 // x.itemsize, 1)):
        prefetch(x, k)


@jit()
def _block(lanes, rewards, values, mask, keep, one, score, score_sign, cuts, given, factors, lam_rows, gamma, critic_f,
           zero, starts, lengths, adv, ret, bnd, final):  # pragma: no cover - compiled
    """Scan the rows `lanes` (at most LANES of them) in lockstep, chunk by chunk from their ends.

    Lane j's row is seen as if it had j * STAGGER identity steps after its end, so the lanes' chunks
    start at staggered offsets: rows of a padded batch lie a power of two apart (T * 4 bytes), and
    unstaggered chunks would all map to the same cache sets and evict each other. A few cache lines
    apart is enough; a wider stagger costs scan steps (a quarter chunk of stagger cost 10-20%).
    """
    n = lanes.shape[0]
    # one buffer, rows ROW apart: rows CHUNK apart (a power of two) would all map to the same L1 cache
    # set and evict each other on every step of the scan (3x slower)
    flat = np.empty((6 * LANES if critic_f is not None else 3 * LANES) * ROW)  # _scan_lanes reads it flat
    buf = flat.reshape(-1, ROW)
    e = buf[:LANES]
    f = buf[LANES:2 * LANES]
    s = buf[2 * LANES:3 * LANES]
    e2 = e
    f2 = f
    sc = s
    if critic_f is not None:
        e2 = buf[3 * LANES:4 * LANES]
        f2 = buf[4 * LANES:5 * LANES]
        sc = buf[5 * LANES:]
    # per lane and chunk: buffer position of the first real token, the flat index of that token, the
    # number of real tokens, and how many of them lead densely (valid; the rest is skip-mode
    # padding), or -1 for a chunk that needs the mask logic
    broken = np.zeros(LANES, dtype=np.bool_)  # a mask entry other than 0 and 1 in the lane's row
    at = np.zeros(LANES, dtype=np.int64)
    lo = np.zeros(LANES, dtype=np.int64)
    width = np.zeros(LANES, dtype=np.int64)
    dense = np.zeros(LANES, dtype=np.int64)
    virtual_end = np.zeros(LANES, dtype=np.int64)
    longest = 0
    for j in range(n):
        virtual_end[j] = lengths[lanes[j]] + j * STAGGER
        longest = max(longest, virtual_end[j])
    a0 = a1 = a2 = a3 = 0.0
    c0 = c1 = c2 = c3 = 0.0
    for done in range(0, longest, CHUNK):
        first = CHUNK
        for j in range(LANES):
            width[j] = 0
            if j < n:
                i = lanes[j]
                chunk_end = virtual_end[j] - done
                row_lo, row_hi = _chunk_rows(chunk_end, lengths[i])
                width[j] = max(row_hi - row_lo, 0)
                at[j] = row_lo - (chunk_end - CHUNK)
                lo[j] = starts[i] + row_lo
            w = width[j]
            b0 = at[j] if w > 0 else CHUNK
            b1 = b0 + w
            first = min(first, b0)
            # identity steps (the state passes through unchanged) around the chunk's real tokens
            e[j, :b0] = 0.0
            f[j, :b0] = 1.0
            e[j, b1:] = 0.0
            f[j, b1:] = 1.0
            if critic_f is not None:
                e2[j, :b0] = 0.0
                f2[j, :b0] = 1.0
                e2[j, b1:] = 0.0
                f2[j, b1:] = 1.0
        # pass 1. A lane's chunk whose mask is valid tokens then padding (`dense_prefix`: nearly every
        # chunk of right-padded data) is read as if unmasked, which is half the work, then padded
        for j in range(n):
            w = width[j]
            if w == 0:
                continue
            t, b = lo[j], at[j]
            cut = cuts[lanes[j]] if score is not None else 0.0
            k = w if mask is None else dense_prefix(mask[t:t + w], keep, one)  # tokens read unmasked
            dense[j] = k
            if k > 0:
                prepare(rewards[t:t + k], values[t:t + k], None, keep, one, window(score, t, k), score_sign, cut,
                        window(given, t, k), window(factors, t, k), lam_rows[lanes[j]], gamma, critic_f, zero,
                        bnd[t:t + k], e[j, b:b + k], f[j, b:b + k], e2[j, b:b + k], f2[j, b:b + k])
            read = max(k, 0)  # the rest: skip mode's padding, or read with the mask
            t, b, w = t + read, b + read, w - read
            if w > 0 and k >= 0 and zero is None:
                pad(bnd[t:t + w], e[j, b:b + w], f[j, b:b + w], e2[j, b:b + w], f2[j, b:b + w], critic_f)
            elif w > 0:  # k < 0: gaps, or an entry neither 0 nor 1 (-2: the row is reported); or zero mode's
                # padding, which takes part with the rule's factors
                got = prepare(rewards[t:t + w], values[t:t + w], window(mask, t, w), keep, one, window(score, t, w),
                              score_sign, cut, window(given, t, w), window(factors, t, w), lam_rows[lanes[j]], gamma,
                              critic_f, zero, bnd[t:t + w], e[j, b:b + w], f[j, b:b + w], e2[j, b:b + w],
                              f2[j, b:b + w])
                if k < 0:
                    dense[j] = got
        for j in range(n):
            if width[j] == 0:
                continue
            if dense[j] == -2:  # the row is reported (`_diagnose`); emit the chunk on the masked path meanwhile
                broken[j] = True
                dense[j] = -1
            if dense[j] < width[j] and zero is not None:
                dense[j] = -1  # zero mode: padding outputs the arriving state, on the masked path
        a0, a1, a2, a3 = _scan_lanes(flat[:3 * LANES * ROW], first, a0, a1, a2, a3)
        if critic_f is not None:
            c0, c1, c2, c3 = _scan_lanes(flat[3 * LANES * ROW:], first, c0, c1, c2, c3)
        if mask is not None and done + CHUNK < longest:
            # the next chunk's mask, fetched while this one is emitted: pass 1 waits on its input
            # stream, and an int64 mask is 8 of its 20 bytes a token (the other inputs as well: slower)
            for j in range(n):
                row_lo, row_hi = _chunk_rows(virtual_end[j] - done - CHUNK, lengths[lanes[j]])
                _prefetch_lines(mask, starts[lanes[j]] + row_lo, starts[lanes[j]] + row_hi)
        for j in range(n):
            w = width[j]
            if w == 0:
                continue
            k = dense[j]
            b0 = at[j]
            t0 = lo[j]
            t1 = t0 + (k if k >= 0 else w)
            b1 = b0 + (t1 - t0)
            lane_s2 = only_with(critic_f, sc[j, b0:b1])  # not Optional: see `window`
            if k >= 0:  # right padding in skip mode: outputs 0 there (_prepare wrote its boundaries False)
                adv[t1:t0 + w] = 0.0
                ret[t1:t0 + w] = 0.0
                _emit(rewards[t0:t1], values[t0:t1], None, keep, s[j, b0:b1], lane_s2, zero, adv[t0:t1], ret[t0:t1])
            elif mask is not None:
                _emit(rewards[t0:t1], values[t0:t1], mask[t0:t1], keep, s[j, b0:b1], lane_s2, zero,
                      adv[t0:t1], ret[t0:t1])
    # identity steps keep each lane's state once its row is done: these are the final states
    finals = (a0 + 0.0 * c0, a1 + 0.0 * c1, a2 + 0.0 * c2, a3 + 0.0 * c3)  # NaN if either is not finite
    for j in range(n):
        final[lanes[j]] = np.nan if broken[j] else finals[j]


@jit(parallel=True)
def _scan(order, rewards, values, mask, keep, one, score, score_sign, cuts, given, factors, lam_rows, gamma, critic_f,
          zero, starts, lengths, adv, ret, bnd, final):  # pragma: no cover - compiled
    """All rows, LANES at a time in the order `order`, blocks spread over the cores."""
    n_blocks = (order.shape[0] + LANES - 1) // LANES
    for k in nb.prange(n_blocks):
        lanes = order[k * LANES:min((k + 1) * LANES, order.shape[0])]
        _block(lanes, rewards, values, mask, keep, one, score, score_sign, cuts, given, factors, lam_rows, gamma, critic_f,
               zero, starts, lengths, adv, ret, bnd, final)


@jit()
def _diagnose(rewards, values, mask, keep, one, score, start, length, out):  # pragma: no cover - compiled
    """The slow path for a row whose final state is not finite: the first bad token per column."""
    for k in range(length - 1, -1, -1):  # right to left, so the last write is the first bad token
        t = start + k
        if mask is not None:
            if (mask[t] & keep) == 0:
                continue
            if mask[t] != one:
                out[_P_MASK] = k
        if not math.isfinite(rewards[t]):
            out[_P_REWARDS] = k
        if not math.isfinite(values[t]):
            out[_P_VALUES] = k
        if score is not None and not math.isfinite(real(score[t])):
            out[_P_SCORE] = k
    if (out < 0).all():
        out[_P_OVERFLOW] = 0


def mask_bits(mask: np.ndarray | None) -> tuple[np.ndarray | None, np.unsignedinteger, np.unsignedinteger]:
    """(bits, keep, one): how the kernels read a flat mask of any dtype in place, without a pass over it.

    bits is a view of the mask's own memory as unsigned integers of its width (uint8 for bool and
    int8, uint16 for int16 and float16, uint32 for int32 and float32, uint64 for int64 and float64),
    so the kernels are compiled once per width, not once per dtype. A token is valid when
    `bits & keep != 0` (keep drops a float's sign bit: -0.0 is 0) and an entry is 0/1 when it is 0
    or exactly `one` (1.0's bit pattern for floats). A mask of another width or byte order (rare:
    long double, big-endian) is first turned into 0/1 bytes, with 2 for an entry that is neither.
    """
    if mask is None:
        return None, np.uint8(0xFF), np.uint8(1)
    how = _MASK_VIEWS.get(mask.dtype)
    if how is None:
        how = _MASK_VIEWS[mask.dtype] = _mask_view(mask.dtype)
    unsigned, keep, one = how
    if unsigned is None:
        return np.where((mask == 0) | (mask == 1), mask != 0, 2).astype(np.uint8), keep, one
    return mask.view(unsigned), keep, one


_MASK_VIEWS: dict[np.dtype, tuple] = {}  # mask dtype -> `_mask_view`'s answer, worked out once per dtype


def _mask_view(dtype: np.dtype) -> tuple:
    """(unsigned dtype to view a mask of `dtype` as, keep, one) for `mask_bits`; unsigned None: the
    mask is turned into 0/1 bytes (2 for an entry that is neither), read with keep 0xFF and one 1."""
    size = dtype.itemsize
    if dtype.kind not in "biuf" or size not in (1, 2, 4, 8) or not dtype.isnative:
        return None, np.uint8(0xFF), np.uint8(1)
    unsigned = np.dtype(f"u{size}")
    ones = (1 << (8 * size)) - 1
    if dtype.kind == "f":
        return unsigned, unsigned.type(ones >> 1), np.ones(1, dtype=dtype).view(unsigned)[0]
    return unsigned, unsigned.type(ones), unsigned.type(1)


class Plan:
    """What `_scan` takes besides the data, for one spec and row layout: the row order, each row's
    lambda and cut, and the flags. `Plan(spec, starts, lengths)` works these out once; `run` makes
    one per call, and the API keeps them for padded batches it sees again (`api._fast_padded`).

    starts, lengths: [B] int64, row i is tokens [starts[i], starts[i] + lengths[i]) of the flat
    columns. `reusable`: whether nothing here depends on the data, only on the spec and the layout
    (gae, mc, and sae with the logprob or entropy rule, or none); for vapo (valid counts), the
    quantile rule (each row's quantile) and the rules with boundaries of their own, `run` fills in
    lam_rows, cuts, given and factors from the data."""

    def __init__(self, spec: EstimatorSpec, starts: np.ndarray, lengths: np.ndarray):
        n_rows = starts.shape[0]
        self.spec, self.starts, self.lengths = spec, starts, lengths
        # the rules whose cuts are constants (or no rule): nothing below depends on the data
        self.reusable = spec.estimator in ("gae", "mc", "sae") and spec.boundary in (None, "logprob", "entropy")
        self.lam_rows = np.full(n_rows, spec.lam if spec.estimator in ("gae", "sae") else 1.0)
        self.score_sign, self.cuts = 1.0, _NO_CUTS
        if spec.boundary == "logprob":
            self.cuts = np.full(n_rows, math.log(spec.threshold))
        elif spec.boundary == "entropy":
            self.score_sign = -1.0  # entropy > h  <=>  -entropy < -h
            self.cuts = np.full(n_rows, -spec.entropy_threshold)
        # rows of similar length share a lockstep scan; padded rows are all alike, so keep them in order
        uniform = n_rows == 0 or lengths.min() == lengths.max()
        self.order = np.arange(n_rows, dtype=np.int64) if uniform else \
            np.argsort(lengths, kind="stable").astype(np.int64)
        self.critic_f = None if spec.critic_lam is None else spec.gamma * spec.critic_lam
        self.zero = True if spec.mask_mode == "zero" else None

    # how the scan reads a flat mask and float16 / bfloat16 scores, as methods for the API's fast path
    mask_bits = staticmethod(mask_bits)
    half_bits = staticmethod(half_bits)

    def scan(self, rewards, values, mask, keep, one, score, compute_dtype, given=None, factors=None, lam_rows=None,
             cuts=None):
        """(advantages [N], returns [N] in `compute_dtype`, boundaries [N] bool, final [B] float64): the
        scan of flat columns rewards, values [N] (float32 or float64), mask [N] as `mask_bits` gives it
        (with keep and one) or None, score [N] (`half_bits`) or None; given [N] bool, factors [N]
        float64, lam_rows [B] and cuts [B] when the data decides them (`run`). final[i] is not finite
        when row i has a bad token or overflowed (`run` finds which)."""
        n = rewards.shape[0]
        adv = np.empty(n, dtype=compute_dtype)
        ret = np.empty(n, dtype=compute_dtype)
        # a rule's boundaries are written at every token; without a rule, nowhere
        bnd = np.empty(n, dtype=np.bool_) if score is not None or given is not None else np.zeros(n, dtype=np.bool_)
        final = np.zeros(self.starts.shape[0], dtype=np.float64)
        _scan(self.order, rewards, values, mask, keep, one, score, self.score_sign,
              self.cuts if cuts is None else cuts, given, factors, self.lam_rows if lam_rows is None else lam_rows,
              self.spec.gamma, self.critic_f, self.zero, self.starts, self.lengths, adv, ret, bnd, final)
        return adv, ret, bnd, final


def run(spec: EstimatorSpec, rows: Rows, compute_dtype: np.dtype):
    """Scan every row of `rows`; same contract as `reference.run`. Log-probs or entropy may also be
    float16 or bfloat16 bits (`arrays.BFLOAT16_BITS`): `reads_half_bits`."""
    n = rows.rewards.shape[0]
    n_rows = rows.starts.shape[0]
    starts, lengths = rows.starts, rows.lengths
    problems = np.full((n_rows, len(PROBLEM_COLUMNS)), -1, dtype=np.int64)
    mask, keep, one = mask_bits(rows.mask)  # checked for 0/1 as the scan reads it
    plan = Plan(spec, starts, lengths)

    lam_rows = cuts = score = given = factors = None
    if spec.estimator == "vapo":
        counts = lengths.copy()
        if mask is not None:
            valid_counts(mask, keep, starts, lengths, counts)
        with np.errstate(divide="ignore", over="ignore"):  # an empty row or a tiny alpha: lambda 0
            lam_rows = np.clip(1.0 - 1.0 / (spec.alpha * counts), 0.0, 1.0)
    if spec.estimator == GIVEN_LAMBDAS:
        factors = np.empty(n, dtype=np.float64)
        lambda_factors(rows.lambdas, mask, keep, starts, lengths, spec.mask_mode == "zero", factors)
    if spec.boundary in ("logprob", "quantile", "entropy"):
        score = half_bits(rows.score)  # half precision as bits, decoded by `real`
        if spec.boundary == "quantile":
            cuts = np.empty(n_rows, dtype=np.float64)
            row_quantiles(score, mask, keep, starts, lengths, spec.quantile, cuts)
    elif spec.boundary == "given":
        given = rows.given
    elif spec.boundary == "fixed":
        given = np.empty(n, dtype=np.bool_)
        fixed_boundaries(mask, keep, starts, lengths, spec.segment_length, given)
    elif spec.boundary == "delimiter":
        given = np.empty(n, dtype=np.bool_)
        delimiters = np.asarray(spec.delimiter_ids, dtype=np.int64)
        delimiter_boundaries(rows.response_ids, mask, keep, starts, lengths, delimiters, given)

    adv, ret, bnd, final = plan.scan(rows.rewards, rows.values, mask, keep, one, score, compute_dtype, given=given,
                                     factors=factors, lam_rows=lam_rows, cuts=cuts)
    for i in np.flatnonzero(~np.isfinite(final)):
        _diagnose(rows.rewards, rows.values, mask, keep, one, score, starts[i], lengths[i], problems[i])
    return adv, ret, bnd, problems


run.reads_half_bits = True  # api: pass float16 / bfloat16 log-probs and entropy as they are (see `run`)
