"""The torch backend: the masked reverse scan as tensor ops, on the tensors' own device (CPU or CUDA).

It uses the affine form of the numba backend (see `numba_scan`): per token, with c_t the lambda that
token t imposes on its predecessor,

    f_t = gamma * c_t,  e_t = gamma * V_t + f_t * u_t,  u_t = r_t - V_t
    S_t = e_t + f_t * S_{t+1};   A_t = u_t + S_{t+1};   R_t = r_t + S'_{t+1}

with skip-mode masked tokens as identity steps (f = 1, e = 0) and zero-mode ones as r = V = 0.
Rows lie end to end in one flat column; each row's last token gets f = 0 in the scan, which cuts
the link to the next row, so padded and ragged batches are the same computation.

The scan (`reverse_affine_scan`) is a log-depth doubling over pairs (f, e) inside chunks of
`CHUNK` tokens, the same scan over the chunks' totals (recursively), then one fix-up: no Python
loop over T. It only multiplies and adds, with no division, logarithm or (gamma * lambda)^-t
rescaling, so no length can make it overflow: products of f only shrink towards 0.

It computes in float64 whatever the input dtype, like the numba and reference backends, and
returns the caller's dtype. float32 arithmetic would be safe but not accurate enough: lambda itself
rounds to float32 (0.9995 by 2.3e-8), and over a horizon of 1 / (1 - lambda) tokens (2,000 for
VAPO's lambda on a 40k-token row) the weights drift by about 5e-5, past the 1e-5 the backends
must agree to. float64 costs about 1.7x on the CPU and, on a GPU, only bandwidth of temporaries.

`schedule` (validation, boundaries, per-token lambdas) is shared with the Triton backend.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..estimators import PROBLEM_COLUMNS, EstimatorSpec, Rows

CHUNK = 128  # tokens per doubling block: 7 doubling steps, then a scan over N / 128 chunk totals


@dataclass
class Schedule:
    """What the scan needs besides rewards and values; every tensor is [N] on the rows' device."""

    valid: torch.Tensor  # bool, the mask
    boundaries: torch.Tensor  # bool, False where no rule applies and at masked tokens
    lam_rows: torch.Tensor | None  # [B] float64, each row's lambda (vapo), or None: spec.lam / 1 for all
    rows: Rows
    problems: np.ndarray  # [B, len(PROBLEM_COLUMNS)] int64, the first bad token per row and column

    @functools.cached_property
    def row_of(self) -> torch.Tensor:
        """[N] int64: the row of each token."""
        return row_index(self.rows)

    def row_lambdas(self, spec: EstimatorSpec, dtype) -> torch.Tensor:
        """[B] each row's lambda: the vapo lambda, else lam (gae, sae) or 1 (mc)."""
        if self.lam_rows is not None:
            return self.lam_rows.to(dtype)
        return torch.full((self.rows.starts.shape[0],), spec.lam if spec.estimator in ("gae", "sae") else 1.0,
                          dtype=dtype, device=self.rows.rewards.device)


def row_index(rows: Rows) -> torch.Tensor:
    """[N] int64: the row of each token."""
    device = rows.rewards.device
    lengths = torch.as_tensor(rows.lengths, device=device)
    return torch.repeat_interleave(torch.arange(rows.starts.shape[0], device=device), lengths,
                                   output_size=rows.rewards.shape[0])


def first_per_row(bad: torch.Tensor, row_of: torch.Tensor, starts: np.ndarray) -> np.ndarray:
    """[B] int64: per row, the index within the row of the first True of the flat [N] `bad`, -1 if none."""
    n_rows = starts.shape[0]
    n = bad.shape[0]
    if not bool(bad.any()):
        return np.full(n_rows, -1, dtype=np.int64)
    first = torch.full((n_rows,), n, dtype=torch.int64, device=bad.device)
    positions = torch.arange(n, device=bad.device)
    first.scatter_reduce_(0, row_of[bad], positions[bad], reduce="amin")
    first = first.cpu().numpy()
    return np.where(first < n, first - starts, -1)


def schedule(spec: EstimatorSpec, rows: Rows) -> Schedule:
    """Validate the mask and the boundary rule's data, and compute boundaries and lambdas."""
    device = rows.rewards.device
    n = rows.rewards.shape[0]
    starts, lengths = rows.starts, rows.lengths
    n_rows = starts.shape[0]
    problems = np.full((n_rows, len(PROBLEM_COLUMNS)), -1, dtype=np.int64)
    sched = Schedule(valid=None, boundaries=None, lam_rows=None, rows=rows, problems=problems)
    if rows.mask is None:
        valid = torch.ones(n, dtype=torch.bool, device=device)
    elif rows.mask.dtype == torch.bool:
        valid = rows.mask
    else:
        valid = rows.mask != 0
        broken = valid & (rows.mask != 1)
        if bool(broken.any()):
            problems[:, PROBLEM_COLUMNS.index("response_mask")] = first_per_row(broken, sched.row_of, starts)
    sched.valid = valid
    score = rows.score if spec.boundary in ("logprob", "quantile", "entropy") else None
    if score is not None:
        # one reduction in the common case: the sum of the valid scores is finite unless one is not
        # (or the sum overflows, a false alarm that only costs the exact search below)
        total = (score if rows.mask is None else torch.where(valid, score, 0.0)).sum()
        if not bool(torch.isfinite(total)):
            problems[:, PROBLEM_COLUMNS.index("score")] = first_per_row(valid & ~torch.isfinite(score),
                                                                        sched.row_of, starts)

    if spec.estimator == "vapo":
        counts = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(0, sched.row_of, valid.double())
        sched.lam_rows = (1.0 - 1.0 / (spec.alpha * counts)).clamp(0.0, 1.0)  # counts 0: -inf, clamped to 0
    row_of = sched.row_of if spec.boundary in ("quantile", "fixed", "delimiter") else None

    rule = spec.boundary
    boundaries = torch.zeros(n, dtype=torch.bool, device=device)
    if rule == "logprob":
        boundaries = valid & (score < exact_cut(math.log(spec.threshold), score.dtype, "below"))
    elif rule == "entropy":
        boundaries = valid & (score > exact_cut(spec.entropy_threshold, score.dtype, "above"))
    elif rule == "given":
        boundaries = valid & rows.given
    elif rule == "quantile":
        cuts = _row_quantiles(score, valid, row_of, starts, lengths, spec.quantile)
        boundaries = valid & (score.double() < cuts[row_of])
    elif rule == "fixed":
        index = _valid_index_in_row(valid, row_of, starts)
        boundaries = valid & (index % spec.segment_length == 0)
    elif rule == "delimiter":
        delimiters = torch.as_tensor(spec.delimiter_ids, device=device)
        is_delimiter = valid & torch.isin(rows.response_ids, delimiters)
        before = _previous_valid(valid, row_of, starts)
        boundaries = valid & (before >= 0) & is_delimiter[before.clamp(min=0)]
    sched.boundaries = boundaries
    return sched


def exact_cut(cut: float, dtype, side: str) -> float:
    """A threshold in `dtype` that compares like the float64 `cut` for every `dtype` value x:
    x < result iff x < cut (side "below"), x > result iff x > cut (side "above")."""
    if dtype == torch.float64:
        return cut
    cut = float(cut)
    rounded = np.float32(cut)  # half precision scores arrive as float32
    # compare as float64: numpy would round a Python float to float32 against a float32 scalar
    if side == "below" and float(rounded) < cut:  # the smallest float32 >= cut
        rounded = np.nextafter(rounded, np.float32(np.inf))
    if side == "above" and float(rounded) > cut:  # the largest float32 <= cut
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _valid_index_in_row(valid, row_of, starts) -> torch.Tensor:
    """[N] int64: how many valid tokens of the same row come before each token."""
    count = torch.cumsum(valid.long(), 0)
    before_row = torch.cat([count.new_zeros(1), count])[torch.as_tensor(starts, device=valid.device)]
    return count - valid.long() - before_row[row_of]


def _previous_valid(valid, row_of, starts) -> torch.Tensor:
    """[N] int64: the flat index of the previous valid token of the same row, -1 if none."""
    n = valid.shape[0]
    positions = torch.where(valid, torch.arange(n, device=valid.device), -1)
    latest = torch.cummax(positions, 0).values  # the last valid index at or before t
    before = torch.cat([latest.new_full((1,), -1), latest[:-1]])
    row_start = torch.as_tensor(starts, device=valid.device)[row_of]
    return torch.where(before >= row_start, before, -1)


def _row_quantiles(score, valid, row_of, starts, lengths, q) -> torch.Tensor:
    """[B] float64: the q-quantile of each row's valid scores (NaN for a row without any), by
    numpy's linear method, from one sort of the flat column (memory O(N) whatever the lengths)."""
    n_rows = starts.shape[0]
    device = score.device
    if score.shape[0] == 0:
        return torch.full((n_rows,), float("nan"), dtype=torch.float64, device=device)
    keys = torch.where(valid, score.double(), float("inf"))  # masked tokens sort after the row's valid ones
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(row_of[order], stable=True).indices]  # by row, then by score
    ordered = keys[order]
    counts = torch.zeros(n_rows, dtype=torch.int64, device=device).index_add_(0, row_of, valid.long())
    first = torch.as_tensor(starts, device=device)
    position = (counts - 1).clamp(min=0).double() * q
    below = position.floor().long().clamp(max=(counts - 1).clamp(min=0))
    above = (below + 1).clamp(max=(counts - 1).clamp(min=0))
    weight = position - below.double()
    a = ordered[(first + below).clamp(max=score.shape[0] - 1)]
    b = ordered[(first + above).clamp(max=score.shape[0] - 1)]
    diff = b - a
    # numpy's _lerp, including its switch of formula at weight 0.5, so ties match numpy exactly
    cuts = torch.where(weight >= 0.5, b - diff * (1.0 - weight), a + diff * weight)
    return torch.where(counts > 0, cuts, float("nan"))


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


def diagnose(spec: EstimatorSpec, rows: Rows, valid: torch.Tensor, row_of: torch.Tensor, suspects: np.ndarray,
             problems: np.ndarray) -> None:
    """Rows whose final state is not finite: the first non-finite reward or value, else overflow.

    Where the scan cuts the link between rows, 0 * inf is NaN: an overflowing row turns the rows
    before it NaN too. So a suspect without bad inputs is scanned again alone, and counts as an
    overflow only if it still is not finite.
    """
    for column, x in (("rewards", rows.rewards), ("values", rows.values)):
        problems[:, PROBLEM_COLUMNS.index(column)] = first_per_row(valid & ~torch.isfinite(x), row_of, rows.starts)
    for i in suspects:
        if (problems[i] >= 0).any():
            continue
        alone = _part(rows, int(i), int(i) + 1)
        with torch.no_grad():
            adv, ret, final = scan(spec, alone, schedule(spec, alone))
        if not (bool(torch.isfinite(adv).all()) and bool(torch.isfinite(ret).all()) and bool(torch.isfinite(final).all())):
            problems[i, PROBLEM_COLUMNS.index("overflow")] = 0


def run(spec: EstimatorSpec, rows: Rows, compute_dtype: np.dtype):
    """Scan every row of `rows` (torch tensors); same contract as `reference.run`, tensors out.

    On the CPU the rows go in groups of about CPU_GROUP_TOKENS tokens, so that the dozen or so
    temporaries of the elementwise passes stay in the cache instead of streaming through memory;
    a GPU takes the whole batch at once. Every group is validated before any is scanned, so the
    errors are the same whatever the grouping.
    """
    out_dtype = torch.float64 if compute_dtype == np.float64 else torch.float32
    groups = [(0, rows.starts.shape[0])]
    if rows.rewards.device.type == "cpu":
        groups = _row_groups(rows.lengths, CPU_GROUP_TOKENS)
    problems = np.full((rows.starts.shape[0], len(PROBLEM_COLUMNS)), -1, dtype=np.int64)
    parts = []
    for first, last in groups:
        part = _part(rows, first, last)
        sched = schedule(spec, part)
        problems[first:last] = sched.problems
        parts.append((first, last, part, sched))
    if (problems >= 0).any():
        return None, None, None, problems
    outputs = []
    for first, last, part, sched in parts:
        with torch.no_grad():
            adv, ret, final = scan(spec, part, sched)
        suspects = np.flatnonzero(~torch.isfinite(final).cpu().numpy())
        if suspects.size:
            diagnose(spec, part, sched.valid, sched.row_of, suspects, sched.problems)
            problems[first:last] = sched.problems
        outputs.append((adv.to(out_dtype), ret.to(out_dtype), sched.boundaries))
    if (problems >= 0).any():
        return None, None, None, problems
    if len(outputs) == 1:
        return (*outputs[0], problems)
    return (*(torch.cat(column) for column in zip(*outputs)), problems)


CPU_GROUP_TOKENS = 1 << 18  # 2 MiB per float64 temporary: a dozen fit in a 32 MiB L3


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


def _part(rows: Rows, first: int, last: int) -> Rows:
    """Rows [first, last) of `rows`, their flat columns as views."""
    if first == 0 and last == rows.starts.shape[0]:
        return rows
    lo = int(rows.starts[first]) if last > first else 0
    hi = int(rows.starts[last - 1] + rows.lengths[last - 1]) if last > first else 0

    def cut(x):
        return None if x is None else x[lo:hi]

    return Rows(rewards=cut(rows.rewards), values=cut(rows.values), mask=cut(rows.mask),
                starts=rows.starts[first:last] - lo, lengths=rows.lengths[first:last], logprobs=cut(rows.logprobs),
                response_ids=cut(rows.response_ids), entropy=cut(rows.entropy), given=cut(rows.given))


def scan(spec: EstimatorSpec, rows: Rows, sched: Schedule):
    """float64 advantages [N], returns [N] and each row's final state [B] (non-finite when an input
    of the row was, or an input of a later row: see `diagnose`)."""
    dtype = torch.float64
    device = rows.rewards.device
    everything_valid = rows.mask is None
    valid = sched.valid
    zero_mode = spec.mask_mode == "zero"

    def const(x):  # a 0-d tensor: a bare Python scalar in torch.where would compute in float32
        return torch.tensor(x, dtype=dtype, device=device)

    def where_valid(x, other):
        return x if everything_valid else torch.where(valid, x, other)

    r = where_valid(rows.rewards.to(dtype), 0.0)
    v = where_valid(rows.values.to(dtype), 0.0)
    u = r - v
    keep = None if (everything_valid or zero_mode) else valid  # None: every token is a step

    def steps(f_t):  # masked tokens in skip mode are identity steps
        return f_t if keep is None else torch.where(keep, f_t, 1.0)

    if sched.lam_rows is not None:
        f = steps(spec.gamma * sched.row_lambdas(spec, dtype)[sched.row_of])
    elif spec.boundary is not None:  # masked tokens are never boundaries: gamma there in zero mode
        f = steps(torch.where(sched.boundaries, const(spec.gamma * spec.lam), const(spec.gamma)))
    else:
        lam = spec.lam if spec.estimator == "gae" else 1.0
        f = steps(const(spec.gamma * lam).expand(u.shape)).clone()
    starts = torch.as_tensor(rows.starts, device=device)
    nonempty = torch.as_tensor(rows.lengths > 0, device=device)
    firsts = starts[nonempty]
    lasts = (starts + torch.as_tensor(rows.lengths, device=device) - 1)[nonempty]

    def arriving(f_t):
        """The state arriving at each token from its right, and each row's total (consumes f_t)."""
        e_t = (v.clone() if spec.gamma == 1.0 else v * spec.gamma).addcmul_(f_t, u)
        f_t[lasts] = 0.0  # a row's last token does not see the next row
        s = reverse_affine_scan(f_t, e_t)
        y = torch.empty_like(s)
        y[:-1] = s[1:]
        y[lasts] = 0.0  # the last token of every row, the last of all included
        final = torch.zeros(rows.starts.shape[0], dtype=dtype, device=device)
        final[nonempty] = s[firsts]
        return y, final

    y, final = arriving(f)
    if spec.critic_lam is None:
        y_critic = y
    else:
        y_critic, final_critic = arriving(steps(const(spec.gamma * spec.critic_lam).expand(u.shape)).clone())
        final = final + 0.0 * final_critic  # NaN when either is not finite
    # masked: skip mode outputs 0; zero mode has r = V = 0, so A = R = the arriving state
    adv = u.add_(y)
    ret = r + y_critic  # not in place: without a mask r may be the caller's own tensor
    if not (everything_valid or zero_mode):
        # finite here (a non-finite state is raised on before the outputs are read), so 0 * x = 0
        keep_factor = valid.to(dtype)
        adv.mul_(keep_factor)
        ret.mul_(keep_factor)
    return adv, ret, final
