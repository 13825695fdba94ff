"""The Triton backend: one program per row scans its tokens in chunks, for CUDA tensors.

The math and its time index are in `sae_core.schedules`; the affine form and its index
convention are those of `torch_scan`: per token t, with c_t the lambda that token t imposes on its
predecessor (c_next(t) = lambda_t), f_t = gamma * c_t, e_t = gamma * V_t + f_t * u_t, u_t = r_t - V_t,
S_t = e_t + f_t * S_{t+1}, A_t = u_t + S_{t+1}, R_t = r_t + S'_{t+1}.

The schedule (mask checks, boundaries, per-row lambdas) comes from `torch_schedule.schedule`,
computed once; the kernel only builds the affine pairs and scans. A program walks its row from the
end in chunks of `BLOCK` tokens. For the tokens t of a chunk it loads the pair of token t + 1,
(f_{t+1}, e_{t+1}), and `tl.associative_scan(..., reverse=True)` composes them into Y_t = S_{t+1},
the state arriving at t; the chunk's total carries into the next chunk to the left. Then
A_t = u_t + Y_t and R_t = r_t + Y'_t are written directly. Inputs are loaded in their dtype and
computed in float64 registers: no float32 error analysis (see `torch_scan`) is needed here; only
the stores round to the output dtype. A row's last token has Y = 0, and each row's final state
S_0 = e_0 + f_0 * Y_0 goes to `final`, non-finite exactly when an input on a valid token was (or
the row's float64 scan overflowed). Rows are independent programs, so a row's final state is its
own (`torch_schedule.diagnose` needs no re-scan).

The caller's own lambdas (estimator GIVEN_LAMBDAS) are not supported here; `sae_core.kernels`
sends them to the torch backend.

In CI there is no GPU: `TRITON_INTERPRET=1` (set before triton is imported) runs the same kernel
on CPU tensors, which is how the tests check it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..types import GIVEN_LAMBDAS, EstimatorSpec, Rows
from .torch_schedule import diagnose, schedule

BLOCK = 1024  # tokens per chunk of a row on a GPU
INTERPRETED_BLOCK = 16  # under the interpreter: small, so that short test rows still span chunks

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def interpreted() -> bool:
    """Whether Triton runs its interpreter on CPU tensors (TRITON_INTERPRET=1) instead of a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device) -> bool:
    """Whether the Triton backend can run on tensors on `device` (None: numpy inputs, the CPU)."""
    if triton is None:
        return False
    on_cuda = device is not None and device.type == "cuda"
    return on_cuda if not interpreted() else not on_cuda


UNSUPPORTED_LAMBDAS = ("backend='triton' does not support the caller's own lambdas "
                       "(compute_advantages_from_lambdas); use backend='torch' or 'auto'")


def unavailable_reason(device) -> str:
    if triton is None:
        return "backend='triton' needs the triton package, which does not import here"
    if interpreted():
        return "backend='triton' under TRITON_INTERPRET=1 runs on CPU tensors only"
    return f"backend='triton' needs CUDA tensors; these are on {device or 'the CPU (numpy)'}"


if triton is not None:

    @triton.jit
    def _compose(f_right, e_right, f_left, e_left):
        # reverse scans hand the accumulated right part first: S_t = e_t + f_t * S_{t+1}
        return f_left * f_right, e_left + f_left * e_right

    @triton.jit
    def _pairs(r_ptr, v_ptr, m_ptr, b_ptr, pos, inside, lam, gamma, critic_f,
               HAS_MASK: tl.constexpr, SEGMENTED: tl.constexpr, ZERO_MODE: tl.constexpr):
        """(f, e, f', e', valid, r0, u) of the tokens at `pos` where `inside`; identity elsewhere."""
        r = tl.load(r_ptr + pos, mask=inside, other=0.0).to(tl.float64)
        v = tl.load(v_ptr + pos, mask=inside, other=0.0).to(tl.float64)
        if HAS_MASK:
            valid = (tl.load(m_ptr + pos, mask=inside, other=0) != 0) & inside
        else:
            valid = inside
        r0 = tl.where(valid, r, 0.0)
        v0 = tl.where(valid, v, 0.0)
        u = r0 - v0
        if SEGMENTED:
            is_boundary = tl.load(b_ptr + pos, mask=inside, other=0) != 0
            c = tl.where(is_boundary, lam, 1.0)
        else:
            c = lam
        if ZERO_MODE:
            keep = inside
        else:
            keep = valid
        f = tl.where(keep, gamma * c, 1.0)
        e = tl.where(keep, gamma * v0 + f * u, 0.0)
        fc = tl.where(keep, critic_f, 1.0)
        ec = tl.where(keep, gamma * v0 + fc * u, 0.0)
        return f, e, fc, ec, valid, r0, u

    @triton.jit
    def _scan_rows(r_ptr, v_ptr, m_ptr, b_ptr, lam_ptr, params_ptr, starts_ptr, lengths_ptr, adv_ptr, ret_ptr,
                   final_ptr, HAS_MASK: tl.constexpr, SEGMENTED: tl.constexpr, ZERO_MODE: tl.constexpr,
                   HAS_CRITIC: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        start = tl.load(starts_ptr + row)
        length = tl.load(lengths_ptr + row)
        lam = tl.load(lam_ptr + row)
        gamma = tl.load(params_ptr)  # from a tensor: a Python float argument would be rounded to float32
        critic_f = tl.load(params_ptr + 1)
        lane = tl.arange(0, BLOCK)
        first = lane == 0
        carry = tl.full([], 0.0, dtype=tl.float64)
        carry_critic = carry
        n_chunks = tl.cdiv(length, BLOCK)
        for chunk in range(n_chunks):
            t = length - (chunk + 1) * BLOCK + lane  # positions in the row; negative before its start
            here = t >= 0
            # the pair of token t + 1 for t >= 0; none after the row's last token (Y = 0 there) and
            # identity before the row, so the carry leaving the row's first chunk is Y_0
            nxt = t + 1
            f1, e1, fc1, ec1, _v, _r, _u = _pairs(r_ptr, v_ptr, m_ptr, b_ptr, start + nxt,
                                                 (nxt >= 1) & (nxt < length), lam, gamma, critic_f,
                                                 HAS_MASK, SEGMENTED, ZERO_MODE)
            f1 = tl.where(nxt < length, f1, 0.0)
            fc1 = tl.where(nxt < length, fc1, 0.0)
            scan_f, scan_e = tl.associative_scan((f1, e1), 0, _compose, reverse=True)
            arriving = scan_e + scan_f * carry
            _f, _e, _fc, _ec, valid, r0, u = _pairs(r_ptr, v_ptr, m_ptr, b_ptr, start + t, here, lam, gamma,
                                                   critic_f, HAS_MASK, SEGMENTED, ZERO_MODE)
            if HAS_CRITIC:
                scan_fc, scan_ec = tl.associative_scan((fc1, ec1), 0, _compose, reverse=True)
                arriving_critic = scan_ec + scan_fc * carry_critic
            else:
                arriving_critic = arriving
            if ZERO_MODE:
                masked_a = arriving
                masked_r = arriving_critic
            else:
                masked_a = arriving * 0.0
                masked_r = arriving * 0.0
            a = tl.where(valid, u + arriving, masked_a)
            tl.store(adv_ptr + start + t, a.to(adv_ptr.dtype.element_ty), mask=here)
            ret = tl.where(valid, r0 + arriving_critic, masked_r)
            tl.store(ret_ptr + start + t, ret.to(ret_ptr.dtype.element_ty), mask=here)
            # the state arriving at the chunk's first position enters the next chunk's last token
            carry = tl.sum(tl.where(first, arriving, 0.0), 0)
            carry_critic = tl.sum(tl.where(first, arriving_critic, 0.0), 0)
        # the row's own total: S_0 = e_0 + f_0 * Y_0 (and the critic's), NaN if any input was
        f0, e0, fc0, ec0, _v, _r, _u = _pairs(r_ptr, v_ptr, m_ptr, b_ptr, start + lane, first & (lane < length), lam,
                                             gamma, critic_f, HAS_MASK, SEGMENTED, ZERO_MODE)
        total = tl.sum(tl.where(first, e0 + f0 * carry, 0.0), 0)
        if HAS_CRITIC:
            total += 0.0 * tl.sum(tl.where(first, ec0 + fc0 * carry_critic, 0.0), 0)
        tl.store(final_ptr + row, total)


def run(spec: EstimatorSpec, rows: Rows, compute_dtype: np.dtype):
    """Scan every row of `rows` (torch tensors on a GPU, or on the CPU when interpreted); same
    contract as `reference.run`, tensors out."""
    if spec.estimator == GIVEN_LAMBDAS:
        raise ValueError(UNSUPPORTED_LAMBDAS)
    sched = schedule(spec, rows)
    if (sched.problems >= 0).any():
        return None, None, None, sched.problems
    dtype = torch.float64 if compute_dtype == np.float64 else torch.float32
    device = rows.rewards.device
    r, v = rows.rewards, rows.values  # flat, contiguous, in the compute dtype; float64 inside the kernel
    n = r.shape[0]
    n_rows = rows.starts.shape[0]
    mask = rows.mask
    if mask is not None and mask.dtype != torch.uint8:
        mask = (mask != 0).to(torch.uint8)
    boundaries = sched.boundaries.to(torch.uint8) if spec.boundary is not None else None
    adv = torch.empty(n, dtype=dtype, device=device)
    ret = torch.empty(n, dtype=dtype, device=device)
    final = torch.zeros(n_rows, dtype=torch.float64, device=device)
    if n_rows:
        starts = torch.as_tensor(rows.starts, device=device)
        lengths = torch.as_tensor(rows.lengths, device=device)
        critic_f = spec.gamma * spec.critic_lam if spec.critic_lam is not None else 1.0
        params = torch.tensor([spec.gamma, critic_f], dtype=torch.float64, device=device)
        _scan_rows[(n_rows,)](
            r, v, mask if mask is not None else r, boundaries if boundaries is not None else r,
            sched.row_lambdas(spec, torch.float64), params, starts, lengths, adv, ret, final,
            HAS_MASK=mask is not None, SEGMENTED=boundaries is not None, ZERO_MODE=spec.mask_mode == "zero",
            HAS_CRITIC=spec.critic_lam is not None, BLOCK=INTERPRETED_BLOCK if interpreted() else BLOCK,
        )
    suspects = np.flatnonzero(~torch.isfinite(final).cpu().numpy())
    if suspects.size:
        diagnose(spec, rows, sched.valid, sched.row_of, suspects, sched.problems)
    return adv, ret, sched.boundaries, sched.problems
