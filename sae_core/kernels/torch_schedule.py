"""The schedule on torch tensors, shared by the torch and Triton backends.

`schedule` checks the mask and the boundary rule's data and computes what a scan needs besides
rewards and values, for every row at once as tensor ops on the rows' device: the boundaries, vapo's
per-row lambda, and for the caller's lambdas the per-token factors c_p. The math is that of
`sae_core.schedules` (one row, numpy), which states it; every tensor here is flat [N] over the
rows laid end to end (`types.Rows`), indexed by flat token position.

`diagnose` finds the first bad input of the rows whose scan came out non-finite; a backend whose
rows are not independent passes its own re-scan of a lone row (no import of any scan here).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..types import GIVEN_LAMBDAS, PROBLEM_COLUMNS, EstimatorSpec, Rows


@dataclass
class Schedule:
    """What the scan needs besides rewards and values; every tensor is [N] on the rows' device."""

    valid: torch.Tensor  # bool, the mask
    boundaries: torch.Tensor  # bool, False where no rule applies and at masked tokens
    lam_rows: torch.Tensor | None  # [B] float64, each row's lambda (vapo), or None: spec.lam / 1 for all
    rows: Rows
    problems: np.ndarray  # [B, len(PROBLEM_COLUMNS)] int64, the first bad token per row and column
    # [N] float64, c_p (schedules.affine_factors) for the caller's lambdas (GIVEN_LAMBDAS), else None
    factors: torch.Tensor | None = None

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


def schedule(spec: EstimatorSpec, rows: Rows, out: tuple[torch.Tensor, torch.Tensor] | None = None) -> Schedule:
    """Validate the mask and the boundary rule's data, and compute boundaries and lambdas.

    out: a pair of [N] bool tensors that the mask as bool (a mask not bool already) and the
    boundaries of the logprob and entropy rules (or of none) are written into, instead of new
    tensors (on the CPU new memory costs page faults: `torch_scan.cpu_empty`)."""
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
        # != 0 (NaN too) as a conversion: a fraction of the time of a comparison on the CPU
        valid = rows.mask.bool() if out is None else out[0].copy_(rows.mask)
        if not _all_zero_one(rows.mask):
            broken = valid & (rows.mask != 1)
            problems[:, PROBLEM_COLUMNS.index("response_mask")] = first_per_row(broken, sched.row_of, starts)
    sched.valid = valid
    score = rows.score if spec.boundary in ("logprob", "quantile", "entropy") else None
    # one reduction in the common case: the sum of all scores is finite unless one is not (or the
    # sum overflows, a false alarm that only costs the exact search below); then the sum of the
    # valid ones (torch.where is slow on the CPU, so it comes second)
    if score is not None and not bool(torch.isfinite(score.sum())) and (
            rows.mask is None or not bool(torch.isfinite(torch.where(valid, score, 0.0).sum()))):
        problems[:, PROBLEM_COLUMNS.index("score")] = first_per_row(valid & ~torch.isfinite(score),
                                                                    sched.row_of, starts)

    if spec.estimator == "vapo":
        counts = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(0, sched.row_of, valid.double())
        sched.lam_rows = (1.0 - 1.0 / (spec.alpha * counts)).clamp(0.0, 1.0)  # counts 0: -inf, clamped to 0
    if spec.estimator == GIVEN_LAMBDAS:
        sched.factors = _affine_factors(spec, rows, valid, sched.row_of)
    row_of = sched.row_of if spec.boundary in ("quantile", "fixed", "delimiter") else None

    rule = spec.boundary
    boundaries = None
    if rule in ("logprob", "entropy"):
        if rule == "logprob":
            compare, cut = "lt", exact_cut(math.log(spec.threshold), score.dtype, "below")
        else:
            compare, cut = "gt", exact_cut(spec.entropy_threshold, score.dtype, "above")
        boundaries = _compare(compare, score, cut, None if out is None else out[1])
        _and(boundaries, valid)
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
    if boundaries is None:  # no rule
        boundaries = torch.zeros(n, dtype=torch.bool, device=device) if out is None else out[1].zero_()
    sched.boundaries = boundaries
    return sched


def _compare(op: str, score: torch.Tensor, cut: float, out: torch.Tensor | None) -> torch.Tensor:
    """[N] bool: score < cut (op "lt") or score > cut ("gt"), into `out` when given. A float32 or
    float64 score on the CPU is compared by numpy, which took a third of torch's time for a
    comparison that writes bool (2^19 float32 tokens: 0.09-0.10 ms against 0.26-0.43,
    docs/performance.md); `cut` is a Python float that compares exactly in the score's dtype
    (`exact_cut`), as numpy and torch both compare a Python float in the array's dtype."""
    numpy_op, torch_op = _COMPARISONS[op]
    if score.device.type == "cpu" and score.dtype in (torch.float32, torch.float64):
        got = torch.from_numpy(np.empty(score.shape[0], dtype=np.bool_)) if out is None else out
        numpy_op(score.detach().numpy(), cut, out=got.numpy())
        return got
    return torch_op(score, cut) if out is None else torch_op(score, cut, out=out)


_COMPARISONS = {"lt": (np.less, torch.lt), "gt": (np.greater, torch.gt)}  # `_compare`'s ops


def _and(x: torch.Tensor, y: torch.Tensor) -> None:
    """x &= y for [N] bool tensors, as their bytes (0 or 1): on the CPU several times faster than
    the bool op."""
    x.view(torch.uint8).bitwise_and_(y.view(torch.uint8))


def any_true(x: torch.Tensor) -> bool:
    """Whether the bool tensor `x` holds a True: its bytes' maximum, which on the CPU takes a
    tenth of the time of torch.any."""
    return x.numel() > 0 and bool(x.view(torch.uint8).max())


def _all_zero_one(mask: torch.Tensor) -> bool:
    """Whether every entry of the non-bool `mask` is 0 or 1, in one or two reductions (comparisons
    that produce bool tensors are slow on the CPU). Integers: min >= 0 and max <= 1. Floats in
    [0, 1] (NaN fails that check): m - m*m is 0 at 0 and 1 and > 0 in between (m*m rounds to at
    most m, and to less: m (1 - m) is at least half the spacing at m, as 1 - m is at least the
    spacing below 1), so their sum is 0 iff none is in between: a sum of non-negative terms is at
    least its largest."""
    if mask.numel() == 0:
        return True
    lo, hi = torch.aminmax(mask)
    if not bool((lo >= 0) & (hi <= 1)):
        return False
    if not mask.dtype.is_floating_point:
        return True
    return not bool(torch.addcmul(mask, mask, mask, value=-1).sum() > 0)


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


def _affine_factors(spec: EstimatorSpec, rows: Rows, valid: torch.Tensor, row_of: torch.Tensor) -> torch.Tensor:
    """[N] float64: `schedules.affine_factors` of every row, for the caller's lambdas: c_p is the
    lambda_t of the position t that p is next of (1 for a masked t in zero mode); 0 where p is its
    row's first position that takes part, 1 at masked positions in skip mode."""
    lam = torch.where(valid, rows.lambdas.to(torch.float64), 1.0)  # masked lambdas: never read as numbers
    if spec.mask_mode == "zero":
        before = torch.arange(-1, lam.shape[0] - 1, device=lam.device)
        before = torch.where(before >= torch.as_tensor(rows.starts, device=lam.device)[row_of], before, -1)
    else:
        before = _previous_valid(valid, row_of, rows.starts)
    c = torch.where(before >= 0, lam[before.clamp(min=0)], 0.0)
    if spec.mask_mode == "skip":
        c = torch.where(valid, c, 1.0)
    return c


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


def diagnose(spec: EstimatorSpec, rows: Rows, valid: torch.Tensor, row_of: torch.Tensor, suspects: np.ndarray,
             problems: np.ndarray, alone_is_finite: Callable[[EstimatorSpec, Rows], bool] | None = None) -> None:
    """Rows `suspects` ([k] int) whose final state is not finite: into `problems`, the first
    non-finite reward or value of each row (on a valid token), else an overflow.

    alone_is_finite(spec, one_row): whether a lone row's scan is finite, for a backend whose rows
    are not independent (the torch scan cuts the link between rows with f = 0, and 0 * inf is NaN:
    an overflowing row turns the rows before it NaN too); a suspect without bad inputs then counts
    as an overflow only if it still is not finite alone. None: each row's final state is its own.
    """
    for column, x in (("rewards", rows.rewards), ("values", rows.values)):
        problems[:, PROBLEM_COLUMNS.index(column)] = first_per_row(valid & ~torch.isfinite(x), row_of, rows.starts)
    for i in suspects:
        if (problems[i] >= 0).any():
            continue
        if alone_is_finite is None or not alone_is_finite(spec, part(rows, int(i), int(i) + 1)):
            problems[i, PROBLEM_COLUMNS.index("overflow")] = 0


def part(rows: Rows, first: int, last: int) -> Rows:
    """Rows [first, last) of `rows`, their flat columns as views."""
    if first == 0 and last == rows.starts.shape[0]:
        return rows
    lo, hi = span(rows, first, last)

    def cut(x):
        return None if x is None else x[lo:hi]

    return Rows(rewards=cut(rows.rewards), values=cut(rows.values), mask=cut(rows.mask),
                starts=rows.starts[first:last] - lo, lengths=rows.lengths[first:last], logprobs=cut(rows.logprobs),
                response_ids=cut(rows.response_ids), entropy=cut(rows.entropy), given=cut(rows.given),
                lambdas=cut(rows.lambdas))


def span(rows: Rows, first: int, last: int) -> tuple[int, int]:
    """The flat token range [lo, hi) of rows [first, last)."""
    if last <= first:
        return 0, 0
    return int(rows.starts[first]), int(rows.starts[last - 1] + rows.lengths[last - 1])
