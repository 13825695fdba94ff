"""The torch backend: the masked reverse scan as tensor ops, on the tensors' own device (CPU or CUDA).

The math and its time index are in `sae_core.schedules`. This backend scans its affine form, one
index convention throughout: per token t of the flat column, with c_t the lambda that token t
imposes on its predecessor (c_next(t) = lambda_t, `schedules.affine_factors`),

    f_t = gamma * c_t,  e_t = gamma * V_t + f_t * u_t,  u_t = r_t - V_t
    S_t = e_t + f_t * S_{t+1};   A_t = u_t + S_{t+1};   R_t = r_t + S'_{t+1}

(without a critic's lambda S' = S, and A is computed as R_t - V_t: one pass, no u).

with skip-mode masked tokens as identity steps (f = 1, e = 0) and zero-mode ones as r = V = 0.
Rows lie end to end in one flat [N] column (`types.Rows`); each row's last token gets f = 0 in the
scan, which cuts the link to the next row, so padded and ragged batches are the same computation.
The schedule (mask checks, boundaries, per-row lambdas, the caller's factors c_t) comes from
`torch_schedule`.

The scan itself (`torch_affine.reverse_affine_scan`: blocks on the CPU, doubling on a GPU) only
multiplies and adds, with no division, logarithm or (gamma * lambda)^-t rescaling, so no length
can make it overflow: products of f only shrink towards 0.

Precision. The reference and numba backends compute in float64. This one computes in float32
when the caller's dtype is float32 or narrower and float32 is provably close enough, else in
float64 (`scan_dtype`); it returns the caller's dtype either way. Its errors in float32, relative
to the outputs' scale:
- each factor f rounds to float32 (by up to 6e-8), and a weight k factors deep drifts by k times
  that. Where every factor is 0, 1 or at most F32_MAX_FACTOR (0.98), the weights shrink at
  least as f^k, so the drift averages at most 6e-8 * f / (1 - f) <= 3e-6;
- sums and products of the scan go through about 30 roundings, on partial sums bounded by a few
  times the outputs: another ~3e-6. On the CPU (`torch_affine`) a token's state takes at most
  BLOCK - 1 steps and a fix-up per level of blocks, and a float32 group of 2^19 tokens has four
  levels (2^19, 2^16, 2^13 and 2^10 tokens; the 128 totals left are summed in float64); the GPU's
  doubling takes log2(CHUNK) steps and a fix-up per level, three levels at 2^21 tokens (A = R - V and
  e = r + d (V - r) round once more each, on numbers of the outputs' and V's scale, as
  u = r - V and f r + d V did).
Both stay below the 1e-5 the backends agree to in float32. A factor in (0.98, 1) (VAPO's
lambda on long rows, gamma = 0.999, lam = 0.99) has a horizon of hundreds or thousands of
tokens, over which the drift would pass 1e-5 (0.9995 rounds by 2.3e-8; over 2,000 tokens the
weights drift by about 5e-5), so those scans run in float64; so do scans of the caller's own
lambdas (any factor in [0, 1]). A float32 scan that overflows (inputs near float32's limit) is run
again in float64 before any error is reported.

On the CPU, rows go in groups of about CPU_GROUP_TOKENS tokens (`run`), masks and boundaries
enter as 0/1 factors (`scan`), and the outputs and temporaries live in memory from numpy
(`cpu_empty`, `Scratch`: huge pages, and one work space for all groups, as page faults on fresh
memory cost as much as the passes themselves); why is in docs/performance.md.
"""

from __future__ import annotations

import numpy as np
import torch

from ..types import GIVEN_LAMBDAS, PROBLEM_COLUMNS, EstimatorSpec, Rows
from .torch_affine import reverse_affine_scan
from .torch_schedule import Schedule, any_true, diagnose, first_per_row, part, schedule, span

F32_MAX_FACTOR = 0.98  # the largest factor f = gamma * lambda (other than 1) scanned in float32


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
    n = rows.rewards.shape[0]
    # on the CPU: the mask as bool and the boundaries (the output, a tensor of its own) in memory
    # from `cpu_empty`
    flags = (cpu_empty(n, torch.bool), cpu_empty(n, torch.bool)) if device.type == "cpu" else None
    parts = []
    for first, last in groups:
        piece = part(rows, first, last)
        lo, hi = span(rows, first, last)
        sched = schedule(spec, piece, None if flags is None else (flags[0][lo:hi], flags[1][lo:hi]))
        problems[first:last] = sched.problems
        parts.append((first, last, piece, sched))
    if (problems >= 0).any():
        return None, None, None, problems
    dtype = scan_dtype(spec, [sched for *_, sched in parts], out_dtype)
    if device.type == "cpu":
        return _run_cpu(spec, rows, parts, dtype, out_dtype, problems, flags[1])
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


def _run_cpu(spec: EstimatorSpec, rows: Rows, parts: list, dtype, out_dtype, problems: np.ndarray,
             boundaries: torch.Tensor):
    """`run`'s scans on the CPU: outputs and each group's temporaries in memory from `cpu_empty`,
    the temporaries in one `Scratch` that every group reuses. `boundaries`: [N] bool, the output,
    which the rules that `torch_schedule.schedule` writes there have filled in already."""
    n = rows.rewards.shape[0]
    adv, ret = cpu_empty(n, out_dtype), cpu_empty(n, out_dtype)
    scratch = Scratch(max((hi - lo for lo, hi in (span(rows, a, b) for a, b, *_ in parts)), default=0), dtype)
    for first, last, piece, sched in parts:
        lo, hi = span(rows, first, last)
        _scan_checked(spec, piece, sched, dtype, out_dtype, out=(adv[lo:hi], ret[lo:hi]), scratch=scratch)
        problems[first:last] = sched.problems
        if hi > lo and sched.boundaries.data_ptr() != boundaries[lo:hi].data_ptr():
            boundaries[lo:hi] = sched.boundaries
    if (problems >= 0).any():
        return None, None, None, problems
    return adv, ret, boundaries, problems


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.bool: np.bool_}


def cpu_empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised [n] CPU tensor in memory that numpy allocates: numpy asks Linux for huge
    pages (madvise) for arrays of 4 MiB or more, so that first writes fault once per 2 MiB rather
    than once per 4 KiB page. Memory fresh from the system costs ~1.25 us per 4 KiB fault here,
    the time of moving ~40 KiB through an elementwise pass: torch.empty's faults were about
    half the torch backend's time at [256, 8192] (docs/performance.md)."""
    return torch.from_numpy(np.empty(n, dtype=_NUMPY_DTYPES[dtype]))


class Scratch:
    """Work space for one group's [n] temporaries on the CPU, handed out in order by `take` and
    all taken back by `reset` (the next group's or scan's start): every group reuses the memory
    that the first one faulted in (`cpu_empty`). Unused slots cost no memory, as untouched pages
    are not backed. A request it cannot serve (another dtype, longer, no slot left) gets torch.empty."""

    SLOTS = 12  # the temporaries one scan holds at once, with a critic's second scan

    def __init__(self, tokens: int, dtype: torch.dtype):
        self.tokens, self.dtype, self.used = tokens, dtype, 0
        self.buffer = cpu_empty(self.SLOTS * tokens, dtype).view(self.SLOTS, tokens) if tokens else None

    def reset(self) -> None:
        self.used = 0

    def take(self, n: int, dtype: torch.dtype, device) -> torch.Tensor:
        """An uninitialised [n] tensor of `dtype` on `device`."""
        if self.buffer is None or dtype != self.dtype or n > self.tokens or self.used == self.SLOTS \
                or device.type != "cpu":
            return torch.empty(n, dtype=dtype, device=device)
        self.used += 1
        return self.buffer[self.used - 1, :n]


def _scan_checked(spec: EstimatorSpec, rows: Rows, sched: Schedule, dtype, out_dtype, out=None, scratch=None):
    """The fast `scan` in `dtype`. If anything in it came out non-finite, the careful scan again:
    in `dtype` (an inf or NaN under the mask: the same numbers as the fast scan would give), then
    in float64 (a float32 overflow). Then `diagnose` the rows still not finite (into
    sched.problems): a bad input or a float64 overflow."""
    with torch.no_grad():
        adv, ret, final = scan(spec, rows, sched, dtype, out_dtype, out, careful=False, scratch=scratch)
        if not bool(torch.isfinite(final).all()):
            adv, ret, final = scan(spec, rows, sched, dtype, out_dtype, out, careful=True, scratch=scratch)
        if dtype != torch.float64 and not bool(torch.isfinite(final).all()):
            adv, ret, final = scan(spec, rows, sched, torch.float64, out_dtype, out, careful=True, scratch=scratch)
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
    if spec.estimator in ("gae", "mc", "sae") and _f32_factors(
            {"gae": [g * spec.lam], "mc": [g], "sae": [g, g * spec.lam]}[spec.estimator], spec):
        return torch.float32  # whatever the schedules: they can only drop factors from these
    if spec.estimator == "vapo":
        lams = [float(s.lam_rows.max()) for s in scheds if s.lam_rows is not None and s.lam_rows.numel()]
        factors = [g * max(lams, default=0.0)]
    else:
        factors = {"gae": [g * spec.lam], "mc": [g], "sae": [g, g * spec.lam]}[spec.estimator]
        if spec.estimator == "sae" and scheds and not any(any_true(s.boundaries) for s in scheds):
            factors = [g]
        elif spec.estimator == "sae" and scheds and all(_all_boundaries(spec, s) for s in scheds):
            factors = [g * spec.lam]
    return torch.float32 if _f32_factors(factors, spec) else torch.float64


def _f32_factors(factors: list[float], spec: EstimatorSpec) -> bool:
    """Whether these factors, with the critic's gamma * critic_lam, are each 1 or at most F32_MAX_FACTOR."""
    if spec.critic_lam is not None:
        factors = [*factors, spec.gamma * spec.critic_lam]
    return all(f == 1.0 or f <= F32_MAX_FACTOR for f in factors)


def _all_boundaries(spec: EstimatorSpec, sched: Schedule) -> bool:
    """Whether sae's factor gamma (lambda 1 before a non-boundary) multiplies only zeros: every valid
    token is a boundary, so gamma is applied only after a row's last valid token (to A = 0 there), and
    in zero mode no masked token lies before a valid one (an interior gap takes part, with A != 0).
    Then sae scans in the dtype gae does and equals it exactly (the "every token a boundary" case)."""
    if any_true(sched.valid ^ sched.boundaries):  # boundaries lie within valid: valid & ~boundaries
        return False
    if spec.mask_mode != "zero" or bool(sched.valid.all()):
        return True
    index = torch.arange(sched.valid.shape[0], device=sched.valid.device)
    last = torch.full((sched.rows.starts.shape[0],), -1, dtype=torch.int64, device=sched.valid.device)
    last = last.scatter_reduce(0, sched.row_of[sched.valid], index[sched.valid], reduce="amax")
    return not bool((~sched.valid & (index < last[sched.row_of])).any())


def scan(spec: EstimatorSpec, rows: Rows, sched: Schedule, dtype=torch.float64, out_dtype=torch.float64, out=None,
         careful: bool = True, scratch: Scratch | None = None):
    """Advantages [N] and returns [N] in `out_dtype` (written into `out`, a pair of [N] tensors, when
    given), computed in `dtype` (float32 or float64: see `scan_dtype`), and each row's final state
    [B] in `dtype`: non-finite when an input of the row was (or of a later row: see `diagnose`),
    or when the row's outputs overflowed.

    Every pass is an elementwise op over the flat column. Masks and boundaries enter as 0/1
    factors rather than through torch.where (slower on the CPU: docs/performance.md):
    multiplying by 0 or 1 is exact for finite numbers. With careful=False that is all, and an inf
    or NaN under the mask, like one anywhere, makes every row's final state NaN: the caller then
    scans again with careful=True, which masks the inputs with torch.where and marks only the rows
    whose outputs are not finite. `scratch`: where the [N] temporaries go (on the CPU: `Scratch`).
    """
    device = rows.rewards.device
    n = rows.rewards.shape[0]
    masked = rows.mask is not None
    skip = masked and spec.mask_mode == "skip"  # masked tokens: identity steps, outputs 0
    g = spec.gamma
    if scratch is not None:
        scratch.reset()

    def new():  # an uninitialised [N] temporary
        return torch.empty(n, dtype=dtype, device=device) if scratch is None else scratch.take(n, dtype, device)

    def as_dtype(x):  # perhaps the caller's own tensor: never written to
        return x if x.dtype == dtype else x.to(dtype)

    r, v = as_dtype(rows.rewards), as_dtype(rows.values)
    keep = None  # [N] `dtype`, 1.0 at valid tokens and 0.0 at masked ones
    mask_e = False  # whether e (not r and V) gets the mask: skip mode's fast path, one op for two
    if masked:
        keep = new().copy_(sched.valid.view(torch.uint8))
        if careful:  # inf or NaN may sit under the mask: 0 * inf would be NaN
            r = torch.where(sched.valid, r, 0.0)
            v = torch.where(sched.valid, v, 0.0)
        elif skip:  # masked r and V only reach e (masked below) and outputs (masked at the end)
            mask_e = True
        else:  # zero mode: masked tokens are r = V = 0 tokens
            r, v = torch.mul(r, keep, out=new()), torch.mul(v, keep, out=new())

    # e_t = gamma * V_t + f_t * u_t, computed as f_t * r_t + d_t * V_t with d_t = gamma - f_t: the
    # same number without the cancellation of V in u (in float32, V = 1000 would put 6e-5 of
    # noise into every token's e, even where f = gamma and e = gamma * r). With gamma = 1 that is
    # torch.lerp(r, V, d) = r + d (V - r), one pass instead of two: exactly r where d = 0, and
    # elsewhere within a rounding or two of d V's own. Masked tokens in skip mode have e = 0:
    # r = V = 0 there, or e is masked itself.
    def factors(b, lam_gamma: float, own_b: bool = False):
        """(f, d) where `b` [N] (0/1 in `dtype`, or None for none) marks the tokens whose factor is
        lam_gamma; the others have gamma, or 1 if masked in skip mode. f = base - d, with base
        gamma (1 at masked tokens in skip mode) and d = b * (gamma - lam_gamma): exact wherever
        lam_gamma >= gamma / 2 (no rounding in either subtraction), and the same ops for every
        estimator, so that sae with every token a boundary is gae to the last bit. own_b: b is
        scratch, and becomes d."""
        base = g
        if skip:
            base = 1.0 if g == 1.0 else keep.mul(g - 1.0).add_(1.0)
        d = 0.0 if b is None else b.mul_(g - lam_gamma) if own_b else b.mul(g - lam_gamma)
        if isinstance(d, float):
            f = base.clone() if isinstance(base, torch.Tensor) else torch.full((n,), base, dtype=dtype,
                                                                               device=device)
        else:
            f = torch.sub(base if isinstance(base, torch.Tensor) else torch.tensor(base, dtype=dtype), d, out=new())
        return f, d

    def every(lam_gamma: float):
        """(f, d) with lam_gamma at every token (gae, the critic's lambda): at every valid token in
        skip mode, at masked ones too in zero mode."""
        return factors(keep if skip else new().fill_(1.0), lam_gamma, own_b=not skip)

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
        f, d = factors(new().copy_(sched.boundaries.view(torch.uint8)), g * spec.lam, own_b=True)
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
        if g == 1.0 and isinstance(d_t, torch.Tensor):  # f = 1 - d: one op, r + d (V - r), exactly r where d = 0
            e_t = torch.lerp(r, v, d_t, out=new())
        else:
            e_t = torch.mul(f_t, r, out=new())
            if isinstance(d_t, torch.Tensor):
                e_t.addcmul_(d_t, v)
            elif d_t != 0.0:
                e_t.add_(v, alpha=d_t)
        if mask_e:
            e_t.mul_(keep)
        f_t[lasts] = 0.0  # a row's last token does not see the next row
        s = reverse_affine_scan(f_t, e_t, empty=new)
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
    adv, ret = out if direct else (new(), new())
    torch.add(r[:-1], s_critic[1:], out=ret[:-1])
    ret[-1:] = r[-1:]  # the last token of the last row: nothing arrives
    if skip:  # 0 where finite; a NaN stays and is caught below
        ret.mul_(keep)
    if spec.critic_lam is None:  # A = R - V, as S' = S: one pass, and no u = r - V
        if skip:
            torch.addcmul(ret, keep, v, value=-1.0, out=adv)
        else:
            torch.sub(ret, v, out=adv)
    else:
        torch.sub(r[:-1], v[:-1], out=adv[:-1])
        adv[:-1] += s[1:]
        torch.sub(r[-1:], v[-1:], out=adv[-1:])
        if skip:
            adv.mul_(keep)
    # an output is not finite (or just their sum); without a critic's lambda A = R - V (or R - keep V)
    # is not finite wherever R is not, so A's sum answers for both
    total = adv.sum() if spec.critic_lam is None else adv.sum() + ret.sum()
    if not bool(torch.isfinite(total)):
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
