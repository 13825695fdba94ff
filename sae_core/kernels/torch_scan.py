"""The torch backend: the masked reverse scan as tensor ops, on the tensors' own device (CPU or CUDA).

The math and its time index are in `sae_core.schedules`. This backend scans its affine form, one
index convention throughout: per token t of the flat column, with c_t the lambda that token t
imposes on its predecessor (c_next(t) = lambda_t, `schedules.affine_factors`),

    f_t = gamma * c_t,  e_t = gamma * V_t + f_t * u_t,  u_t = r_t - V_t
    S_t = e_t + f_t * S_{t+1};   A_t = u_t + S_{t+1};   R_t = r_t + S'_{t+1}

with skip-mode masked tokens as identity steps (f = 1, e = 0) and zero-mode ones as r = V = 0.
Rows lie end to end in one flat [N] column (`types.Rows`); each row's last token gets f = 0 in the
scan, which cuts the link to the next row, so padded and ragged batches are the same computation.
The schedule (mask checks, boundaries, per-row lambdas, the caller's factors c_t) comes from
`torch_schedule`.

The scan (`reverse_affine_scan`) is a log-depth doubling over pairs (f, e) inside chunks of
`CHUNK` tokens, the same scan over the chunks' totals (recursively), then one fix-up: no Python
loop over T. It only multiplies and adds, with no division, logarithm or (gamma * lambda)^-t
rescaling, so no length can make it overflow: products of f only shrink towards 0.

Precision. The reference and numba backends compute in float64. This one computes in float32
when the caller's dtype is float32 or narrower and float32 is provably close enough, else in
float64 (`scan_dtype`); it returns the caller's dtype either way. Its errors in float32, relative
to the outputs' scale:
- each factor f rounds to float32 (by up to 6e-8), and a weight k factors deep drifts by k times
  that. Where every factor is 0, 1 or at most F32_MAX_FACTOR (0.98), the weights shrink at
  least as f^k, so the drift averages at most 6e-8 * f / (1 - f) <= 3e-6;
- sums and products of the scan go through about 20 roundings (the doubling depth times the
  levels), on partial sums bounded by a few times the outputs: another ~2e-6.
Both stay below the 1e-5 the backends agree to in float32. A factor in (0.98, 1) (VAPO's
lambda on long rows, gamma = 0.999, lam = 0.99) has a horizon of hundreds or thousands of
tokens, over which the drift would pass 1e-5 (0.9995 rounds by 2.3e-8; over 2,000 tokens the
weights drift by about 5e-5), so those scans run in float64; so do scans of the caller's own
lambdas (any factor in [0, 1]). A float32 scan that overflows (inputs near float32's limit) is run
again in float64 before any error is reported.

On the CPU, rows go in groups of about CPU_GROUP_TOKENS tokens (`run`) and masks and boundaries
enter as 0/1 factors (`scan`); why is in docs/performance.md.
"""

from __future__ import annotations

import numpy as np
import torch

from ..types import GIVEN_LAMBDAS, PROBLEM_COLUMNS, EstimatorSpec, Rows
from .torch_schedule import Schedule, diagnose, first_per_row, part, schedule, span

CHUNK = 128  # tokens per doubling block: 7 doubling steps, then a scan over N / 128 chunk totals
F32_MAX_FACTOR = 0.98  # the largest factor f = gamma * lambda (other than 1) scanned in float32


def reverse_affine_scan(f: torch.Tensor, e: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """S with S_t = e_t + f_t * S_{t+1} and S_N = 0, for 1-D f and e of length N (both consumed:
    they serve as work space).

    Doubling inside chunks: after the step with distance d, (f_t, e_t) hold the composition of
    the 2d maps from t on (within the chunk), so log2(chunk) steps give each position's state up
    to its chunk's end. The chunks' totals are scanned the same way (recursively), and each chunk
    adds its incoming state times its products of f.
    """
    n = f.shape[0]
    if n == 0:
        return e.clone()
    m = -(-n // chunk)
    pad = m * chunk - n
    if pad:  # identity steps after the end
        f, e = torch.cat([f, f.new_ones(pad)]), torch.cat([e, e.new_zeros(pad)])
    F, E = f.view(m, chunk), e.view(m, chunk)
    F2, E2 = torch.empty_like(F), torch.empty_like(E)
    d = 1
    while d < chunk:
        # (f, e)_t <- (f_t f_{t+d}, e_t + f_t e_{t+d}); the last d positions of a chunk are done
        torch.addcmul(E[:, :-d], F[:, :-d], E[:, d:], out=E2[:, :-d])
        E2[:, -d:] = E[:, -d:]
        torch.mul(F[:, :-d], F[:, d:], out=F2[:, :-d])
        F2[:, -d:] = F[:, -d:]
        F, F2, E, E2 = F2, F, E2, E
        d *= 2
    if m > 1:
        totals = reverse_affine_scan(F[:, 0].contiguous(), E[:, 0].contiguous(), chunk)  # S at each chunk start
        incoming = torch.cat([totals[1:], totals.new_zeros(1)])
        E.addcmul_(F, incoming[:, None])
    return E.reshape(-1)[:n]


def run(spec: EstimatorSpec, rows: Rows, compute_dtype: np.dtype):
    """Scan every row of `rows` (torch tensors); same contract as `reference.run`, tensors out.

    On the CPU the rows go in groups of about CPU_GROUP_TOKENS tokens, so that the dozen or so
    temporaries of the elementwise passes stay in the cache instead of streaming through memory;
    a GPU takes the whole batch at once. Every group is validated before any is scanned, so the
    errors are the same whatever the grouping. Each group writes its slice of the outputs, which
    are allocated once in the caller's dtype.
    """
    out_dtype = torch.float64 if compute_dtype == np.float64 else torch.float32
    device = rows.rewards.device
    groups = [(0, rows.starts.shape[0])]
    if device.type == "cpu":
        tokens = CPU_GROUP_TOKENS
        if spec.estimator != "vapo" and scan_dtype(spec, [], out_dtype) == torch.float32:
            tokens *= 2  # float32 temporaries: twice the tokens in the same bytes
        groups = _row_groups(rows.lengths, tokens)
    problems = np.full((rows.starts.shape[0], len(PROBLEM_COLUMNS)), -1, dtype=np.int64)
    parts = []
    for first, last in groups:
        piece = part(rows, first, last)
        sched = schedule(spec, piece)
        problems[first:last] = sched.problems
        parts.append((first, last, piece, sched))
    if (problems >= 0).any():
        return None, None, None, problems
    dtype = scan_dtype(spec, [sched for *_, sched in parts], out_dtype)
    if len(parts) == 1:
        _, _, piece, sched = parts[0]
        adv, ret, _ = _scan_checked(spec, piece, sched, dtype, out_dtype)
        if (sched.problems >= 0).any():
            return None, None, None, sched.problems
        return adv, ret, sched.boundaries, sched.problems
    n = rows.rewards.shape[0]
    adv = torch.empty(n, dtype=out_dtype, device=device)
    ret = torch.empty(n, dtype=out_dtype, device=device)
    boundaries = torch.empty(n, dtype=torch.bool, device=device)
    for first, last, piece, sched in parts:
        lo, hi = span(rows, first, last)
        _scan_checked(spec, piece, sched, dtype, out_dtype, out=(adv[lo:hi], ret[lo:hi]))
        problems[first:last] = sched.problems
        boundaries[lo:hi] = sched.boundaries
    if (problems >= 0).any():
        return None, None, None, problems
    return adv, ret, boundaries, problems


def _scan_checked(spec: EstimatorSpec, rows: Rows, sched: Schedule, dtype, out_dtype, out=None):
    """The fast `scan` in `dtype`. If anything in it came out non-finite, the careful scan again:
    in `dtype` (an inf or NaN under the mask: the same numbers as the fast scan would give), then
    in float64 (a float32 overflow). Then `diagnose` the rows still not finite (into
    sched.problems): a bad input or a float64 overflow."""
    with torch.no_grad():
        adv, ret, final = scan(spec, rows, sched, dtype, out_dtype, out, careful=False)
        if not bool(torch.isfinite(final).all()):
            adv, ret, final = scan(spec, rows, sched, dtype, out_dtype, out, careful=True)
        if dtype != torch.float64 and not bool(torch.isfinite(final).all()):
            adv, ret, final = scan(spec, rows, sched, torch.float64, out_dtype, out, careful=True)
    suspects = np.flatnonzero(~torch.isfinite(final).cpu().numpy())
    if suspects.size:
        diagnose(spec, rows, sched.valid, sched.row_of, suspects, sched.problems, _alone_is_finite)
    return adv, ret, final


def _alone_is_finite(spec: EstimatorSpec, row: Rows) -> bool:
    """Whether one row, scanned alone in float64, has finite outputs and final state (for
    `torch_schedule.diagnose`: here an overflowing row turns the rows before it NaN too)."""
    with torch.no_grad():
        adv, ret, final = scan(spec, row, schedule(spec, row))  # float64
    return bool(torch.isfinite(adv).all()) and bool(torch.isfinite(ret).all()) and bool(torch.isfinite(final).all())


CPU_GROUP_TOKENS = 1 << 18  # 2 MiB per float64 temporary (2x the tokens in float32): a dozen fit in L3


def _row_groups(lengths: np.ndarray, tokens: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [first, last) of about `tokens` tokens each (at least one row)."""
    if lengths.shape[0] == 0:
        return [(0, 0)]
    ends = np.cumsum(lengths)
    groups, first = [], 0
    while first < lengths.shape[0]:
        base = ends[first - 1] if first else 0
        last = max(int(np.searchsorted(ends, base + tokens, side="right")), first + 1)
        groups.append((first, last))
        first = last
    return groups


def scan_dtype(spec: EstimatorSpec, scheds: list[Schedule], out_dtype) -> torch.dtype:
    """float32 if the outputs are float32 (or narrower) and every factor f = gamma * lambda_t of the
    scan is 0, 1 or at most F32_MAX_FACTOR, else float64 (see the module's docstring). `scheds`
    supplies vapo's per-row lambdas (none: vapo's factor counts as 0) and sae's boundaries (none
    anywhere: sae's only factor is gamma, so it scans in the dtype mc does and equals it exactly;
    every valid token a boundary: only gamma * lam counts, as for gae (`_all_boundaries`); no scheds:
    lam's factor counts). Masked tokens in skip mode have f = 1. The caller's own lambdas
    (GIVEN_LAMBDAS) are not inspected: always float64."""
    if out_dtype == torch.float64 or spec.estimator == GIVEN_LAMBDAS:
        return torch.float64
    g = spec.gamma
    if spec.estimator == "vapo":
        lams = [float(s.lam_rows.max()) for s in scheds if s.lam_rows is not None and s.lam_rows.numel()]
        factors = [g * max(lams, default=0.0)]
    else:
        factors = {"gae": [g * spec.lam], "mc": [g], "sae": [g, g * spec.lam]}[spec.estimator]
        if spec.estimator == "sae" and scheds and not any(bool(s.boundaries.any()) for s in scheds):
            factors = [g]
        elif spec.estimator == "sae" and scheds and all(_all_boundaries(spec, s) for s in scheds):
            factors = [g * spec.lam]
    if spec.critic_lam is not None:
        factors.append(g * spec.critic_lam)
    ok = all(f == 1.0 or f <= F32_MAX_FACTOR for f in factors)
    return torch.float32 if ok else torch.float64


def _all_boundaries(spec: EstimatorSpec, sched: Schedule) -> bool:
    """Whether sae's factor gamma (lambda 1 before a non-boundary) multiplies only zeros: every valid
    token is a boundary, so gamma is applied only after a row's last valid token (to A = 0 there), and
    in zero mode no masked token lies before a valid one (an interior gap takes part, with A != 0).
    Then sae scans in the dtype gae does and equals it exactly (the "every token a boundary" case)."""
    if bool((sched.valid & ~sched.boundaries).any()):
        return False
    if spec.mask_mode != "zero" or bool(sched.valid.all()):
        return True
    index = torch.arange(sched.valid.shape[0], device=sched.valid.device)
    last = torch.full((sched.rows.starts.shape[0],), -1, dtype=torch.int64, device=sched.valid.device)
    last = last.scatter_reduce(0, sched.row_of[sched.valid], index[sched.valid], reduce="amax")
    return not bool((~sched.valid & (index < last[sched.row_of])).any())


def scan(spec: EstimatorSpec, rows: Rows, sched: Schedule, dtype=torch.float64, out_dtype=torch.float64, out=None,
         careful: bool = True):
    """Advantages [N] and returns [N] in `out_dtype` (written into `out`, a pair of [N] tensors, when
    given), computed in `dtype` (float32 or float64: see `scan_dtype`), and each row's final state
    [B] in `dtype`: non-finite when an input of the row was (or of a later row: see `diagnose`),
    or when the row's outputs overflowed.

    Every pass is an elementwise op over the flat column. Masks and boundaries enter as 0/1
    factors rather than through torch.where (slower on the CPU: docs/performance.md):
    multiplying by 0 or 1 is exact for finite numbers. With careful=False that is all, and an inf
    or NaN under the mask, like one anywhere, makes every row's final state NaN: the caller then
    scans again with careful=True, which masks the inputs with torch.where and marks only the rows
    whose outputs are not finite.
    """
    device = rows.rewards.device
    n = rows.rewards.shape[0]
    masked = rows.mask is not None
    skip = masked and spec.mask_mode == "skip"  # masked tokens: identity steps, outputs 0
    g = spec.gamma

    def as_dtype(x):  # perhaps the caller's own tensor: never written to
        return x if x.dtype == dtype else x.to(dtype)

    r, v = as_dtype(rows.rewards), as_dtype(rows.values)
    keep = None  # [N] `dtype`, 1.0 at valid tokens and 0.0 at masked ones
    mask_e = False  # whether e (not r and V) gets the mask: skip mode's fast path, one op for two
    if masked:
        keep = sched.valid.view(torch.uint8).to(dtype)
        if careful:  # inf or NaN may sit under the mask: 0 * inf would be NaN
            r = torch.where(sched.valid, r, 0.0)
            v = torch.where(sched.valid, v, 0.0)
        elif skip:  # masked r and V only reach e (masked below) and outputs (masked at the end)
            mask_e = True
        else:  # zero mode: masked tokens are r = V = 0 tokens
            r, v = r * keep, v * keep
    u = r - v

    # e_t = gamma * V_t + f_t * u_t, computed as f_t * r_t + d_t * V_t with d_t = gamma - f_t: the
    # same number without the cancellation of V in u (in float32, V = 1000 would put 6e-5 of
    # noise into every token's e, even where f = gamma and e = gamma * r). Masked tokens in skip
    # mode have e = 0: r = V = 0 there, or e is masked itself.
    def factors(b, lam_gamma: float):
        """(f, d) where `b` [N] (0/1 in `dtype`, or None for none) marks the tokens whose factor is
        lam_gamma; the others have gamma, or 1 if masked in skip mode. f = base - d, with base
        gamma (1 at masked tokens in skip mode) and d = b * (gamma - lam_gamma): exact wherever
        lam_gamma >= gamma / 2 (no rounding in either subtraction), and the same ops for every
        estimator, so that sae with every token a boundary is gae to the last bit."""
        base = g
        if skip:
            base = 1.0 if g == 1.0 else keep.mul(g - 1.0).add_(1.0)
        d = 0.0 if b is None else b.mul(g - lam_gamma)
        if isinstance(d, float):
            f = base.clone() if isinstance(base, torch.Tensor) else torch.full((n,), base, dtype=dtype,
                                                                               device=device)
        else:
            f = torch.sub(base, d) if isinstance(base, torch.Tensor) else torch.rsub(d, base)
        return f, d

    def every(lam_gamma: float):
        """(f, d) with lam_gamma at every token (gae, the critic's lambda): at every valid token in
        skip mode, at masked ones too in zero mode."""
        return factors(keep if skip else torch.ones(n, dtype=dtype, device=device), lam_gamma)

    if sched.lam_rows is not None:  # vapo: each row's own lambda
        f = (g * sched.row_lambdas(spec, dtype))[sched.row_of]
        d = torch.rsub(f, g)
        if skip:
            f.sub_(1.0).mul_(keep).add_(1.0)
    elif sched.factors is not None:  # the caller's lambdas, as c_t (torch_schedule)
        f = sched.factors.to(dtype).mul(g)  # not in place: factors may be float64 already
        d = torch.rsub(f, g)
        if skip:
            f.sub_(1.0).mul_(keep).add_(1.0)
    elif spec.estimator == "sae":  # masked tokens are never boundaries
        f, d = factors(sched.boundaries.view(torch.uint8).to(dtype), g * spec.lam)
    elif spec.estimator == "gae":
        f, d = every(g * spec.lam)
    else:  # mc
        f, d = factors(None, g)
    starts = torch.as_tensor(rows.starts, device=device)
    nonempty = torch.as_tensor(rows.lengths > 0, device=device)
    firsts = starts[nonempty]
    lasts = (starts + torch.as_tensor(rows.lengths, device=device) - 1)[nonempty]

    def arriving(f_t, d_t):
        """S shifted: each token's S_{t+1} sits at t + 1, and 0 at every row's first token, so that
        x[:-1] + s[1:] adds the state arriving at t; and each row's total S_0 [B]. Consumes f_t."""
        e_t = torch.mul(f_t, r)
        if isinstance(d_t, torch.Tensor):
            e_t.addcmul_(d_t, v)
        elif d_t != 0.0:
            e_t.add_(v, alpha=d_t)
        if mask_e:
            e_t.mul_(keep)
        f_t[lasts] = 0.0  # a row's last token does not see the next row
        s = reverse_affine_scan(f_t, e_t)
        final = torch.zeros(rows.starts.shape[0], dtype=dtype, device=device)
        final[nonempty] = s[firsts]
        s[firsts] = 0.0  # what arrives at a row's last token: nothing
        return s, final

    s, final = arriving(f, d)
    if spec.critic_lam is None:
        s_critic = s
    else:
        s_critic, final_critic = arriving(*every(g * spec.critic_lam))
        final = final + 0.0 * final_critic  # NaN when either is not finite
    # masked: skip mode outputs 0; zero mode has r = V = 0, so A = R = the arriving state
    direct = out is not None and out[0].dtype == dtype  # write the caller's outputs directly
    adv, ret = out if direct else (torch.empty_like(u), torch.empty_like(u))
    torch.add(u[:-1], s[1:], out=adv[:-1])
    adv[-1:] = u[-1:]  # the last token of the last row: nothing arrives
    torch.add(r[:-1], s_critic[1:], out=ret[:-1])
    ret[-1:] = r[-1:]
    if skip:  # 0 where finite; a NaN stays and is caught below
        adv.mul_(keep)
        ret.mul_(keep)
    if not bool(torch.isfinite(adv.sum() + ret.sum())):  # an output is not finite (or just their sum)
        if not careful:
            return adv, ret, torch.full_like(final, float("nan"))
        bad = ~(torch.isfinite(adv) & torch.isfinite(ret))
        if bool(bad.any()):  # those rows count as not finite, like their final state
            bad_rows = first_per_row(bad, sched.row_of, rows.starts) >= 0
            final = torch.where(torch.as_tensor(bad_rows, device=device), float("nan"), final)
    if out is None:
        return adv.to(out_dtype), ret.to(out_dtype), final
    if not direct:
        out[0].copy_(adv)
        out[1].copy_(ret)
    return out[0], out[1], final
