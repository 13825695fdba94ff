"""The schedules, in one place: per estimator and boundary rule, lambda_t and the boundary flags of one row.

Per response, tokens t = 0..T-1 with a mask m_t (1 = a token the policy generated):

    delta_t = r_t + gamma * V_next(t) - V_t
    A_t     = delta_t + gamma * lambda_t * A_next(t)        (A after the last token = 0)
    R_t     = A_t + V_t                                      (critic target)

`V_t` is the critic's value of the prefix *before* token t; `next(t)` is the next position that
takes part (mask modes below); V and A after the last one are 0. With a decoupled critic
(`critic_lam` not None), R_t = A'_t + V_t instead, with A' the same recursion at lambda_t =
critic_lam over the same positions.

Mask modes (which positions take part, and so next(t)):

    skip   (veRL) masked tokens are transparent: next(t) is the next *valid* token; masked tokens
           output A = R = 0.
    zero   (OpenRLHF) every position takes part, next(t) = t + 1; a masked token is a step with
           r = V = 0 (and, for the caller's lambdas, lambda = 1).

Every estimator is a choice of the per-token lambda_t (the factor of A_next(t), indexed at t):

    gae      lambda_t = lam
    mc       lambda_t = 1
    sae      lambda_t = lam if token next(t) is a boundary, else 1   (1 when t has no next)
    vapo     lambda_t = clip(1 - 1 / (alpha * L), 0, 1), L = the row's number of valid tokens
             (0 for a row without valid tokens)
    lambdas  lambda_t given by the caller (`types.GIVEN_LAMBDAS`, in [0, 1]); read at valid tokens
             only, 1 at masked ones. So lambdas = lam everywhere is gae, and sae's lambda_t
             given back is sae, in skip mode; in zero mode only where no gap step is followed
             by a valid token (gae has lam at gap steps, sae lam before a boundary).

sae's boundary rules (a boundary is a valid token that starts a new segment; masked tokens never
are, so in zero mode an interior gap lies inside a segment):

    logprob    logprobs_t < log(threshold)
    quantile   logprobs_t < the q-quantile (numpy's linear method) of the row's valid logprobs
    entropy    entropy_t > entropy_threshold
    fixed      t is the k-th valid token of its row (k from 0) and k % segment_length == 0
    delimiter  the valid token before t is one of delimiter_ids
    given      the caller's flag given_t

Inputs at masked positions are never read as numbers, so NaN padding is harmless.

The fast kernels scan the same recursion as a first-order affine map over *every* position
(`sae_core.kernels`), with `c_p`, the lambda that position p imposes on its predecessor:
c_next(t) = lambda_t (`affine_factors`). Then, with u_t = r_t - V_t,

    S_t = e_t + f_t * S_{t+1},   f_t = gamma * c_t,   e_t = gamma * V_t + f_t * u_t
    A_t = u_t + S_{t+1},         R_t = r_t + S_{t+1}  (S' with f' = gamma * critic_lam for R)

where S_{t+1} is the state arriving at t from the right; a skip-mode masked position is the
identity step (f = 1, e = 0). Unrolled, S_p = gamma * (V_p + c_p * A_p), so A_t = u_t +
gamma * V_next(t) + gamma * c_next(t) * A_next(t): the recursion above.

Every function here treats one row, as plain numpy: `valid` is a [T] bool array (the mask),
per-token inputs are [T] slices of that row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .types import GIVEN_LAMBDAS, EstimatorSpec


def next_positions(spec: EstimatorSpec, valid: np.ndarray) -> np.ndarray:
    """[T] int64: next(t), the next position after t that takes part in the spec's mask mode, or -1.

    Defined for masked t too (in skip mode: the next valid token after t)."""
    T = len(valid)
    out = np.full(T, -1, dtype=np.int64)
    if spec.mask_mode == "zero":
        out[:-1] = np.arange(1, T)
        return out
    following = -1
    for t in range(T - 1, -1, -1):
        out[t] = following
        if valid[t]:
            following = t
    return out


def row_boundaries(spec: EstimatorSpec, valid: np.ndarray, data: Mapping[str, Any]) -> np.ndarray:
    """[T] bool: which tokens of one row start a new segment under the spec's rule (never a masked
    one; all False for estimators without segments).

    data: the row's [T] slices by name, "logprobs" (float), "response_ids" (int), "entropy"
    (float), "given_boundaries" (bool), keyed as `registry.DATA`; only the one the rule reads is needed.
    """
    valid = np.asarray(valid, dtype=bool)
    T = len(valid)
    rule = spec.boundary
    if rule is None:
        return np.zeros(T, dtype=bool)
    if rule in ("logprob", "quantile"):
        logprobs = np.asarray(data["logprobs"], dtype=np.float64)
        if rule == "logprob":
            cut = math.log(spec.threshold)
        elif valid.any():
            cut = float(np.quantile(logprobs[valid], spec.quantile))
        else:
            return np.zeros(T, dtype=bool)
        with np.errstate(invalid="ignore"):  # NaN padding at masked tokens
            return valid & (logprobs < cut)
    if rule == "entropy":
        with np.errstate(invalid="ignore"):
            return valid & (np.asarray(data["entropy"], dtype=np.float64) > spec.entropy_threshold)
    if rule == "given":
        return valid & np.asarray(data["given_boundaries"], dtype=bool)
    if rule == "fixed":
        k = np.cumsum(valid) - valid  # how many valid tokens come before t
        return valid & (k % spec.segment_length == 0)
    if rule == "delimiter":
        out = np.zeros(T, dtype=bool)
        after_delimiter = False
        for t in range(T):
            if valid[t]:
                out[t] = after_delimiter
                after_delimiter = int(data["response_ids"][t]) in spec.delimiter_ids
        return out
    raise AssertionError(rule)


def row_lambdas(spec: EstimatorSpec, valid: np.ndarray, boundaries: np.ndarray,
                lambdas: np.ndarray | None = None) -> np.ndarray:
    """[T] float64: lambda_t of one row, the factor of A_next(t) (the table in the module docstring).

    boundaries: [T] bool from `row_boundaries` (read by sae only). lambdas: [T] float, the caller's
    lambda_t for estimator GIVEN_LAMBDAS (read at valid tokens only).
    """
    valid = np.asarray(valid, dtype=bool)
    T = len(valid)
    if spec.estimator == "gae":
        return np.full(T, spec.lam)
    if spec.estimator == "mc":
        return np.ones(T)
    if spec.estimator == "vapo":
        L = int(valid.sum())
        return np.full(T, min(1.0, max(0.0, 1.0 - 1.0 / (spec.alpha * L))) if L else 0.0)
    if spec.estimator == "sae":
        nxt = next_positions(spec, valid)
        at_boundary = np.asarray(boundaries, dtype=bool)[np.maximum(nxt, 0)] & (nxt >= 0)
        return np.where(at_boundary, spec.lam, 1.0)
    if spec.estimator == GIVEN_LAMBDAS:
        return np.where(valid, np.asarray(lambdas, dtype=np.float64), 1.0)
    raise AssertionError(spec.estimator)


def row_advantages(spec: EstimatorSpec, valid: np.ndarray, rewards: np.ndarray, values: np.ndarray,
                   lambdas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A_t and R_t ([T] float64 each) of one row by the recursion of the module docstring, one
    Python step per position that takes part, from the row's rewards and values ([T] float) and
    `row_lambdas`. Positions that do not take part (skip mode, masked) get 0."""
    T = len(valid)
    gamma = spec.gamma
    order = [t for t in range(T) if valid[t]] if spec.mask_mode == "skip" else list(range(T))
    adv = np.zeros(T)
    ret = np.zeros(T)
    v_next = a_next = critic_next = 0.0
    for t in reversed(order):
        r_t = float(rewards[t]) if valid[t] else 0.0
        v_t = float(values[t]) if valid[t] else 0.0
        delta = r_t + gamma * v_next - v_t
        a_t = delta + gamma * float(lambdas[t]) * a_next
        if spec.critic_lam is None:
            ret[t] = a_t + v_t
        else:
            critic_next = delta + gamma * spec.critic_lam * critic_next
            ret[t] = critic_next + v_t
        adv[t] = a_t
        v_next, a_next = v_t, a_t
    return adv, ret


def affine_factors(spec: EstimatorSpec, valid: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """[T] float64: c_p, the lambda position p imposes on its predecessor in the kernels' affine
    form (module docstring): c_next(t) = lambda_t. A position that is nobody's next gets 0 (the
    row's first position that takes part: c only scales the row's final state there) or 1 (a
    skip-mode masked position: an identity step whatever c is)."""
    c = np.where(np.asarray(valid, dtype=bool) | (spec.mask_mode == "zero"), 0.0, 1.0)
    nxt = next_positions(spec, valid)
    takes_part = c == 0.0
    has_next = takes_part & (nxt >= 0)
    c[nxt[has_next]] = np.asarray(lambdas, dtype=np.float64)[has_next]
    return c


__all__ = ["affine_factors", "next_positions", "row_advantages", "row_boundaries", "row_lambdas"]
