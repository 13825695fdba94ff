"""The public estimator API: arguments in, a validated spec, a scan, results in the caller's arrays.

This module only turns arguments into a spec (`registry.make_spec`) and a flat row layout
(`checks`), hands them to a backend (`kernels.select`), and turns the results back into the
caller's array type, dtype and device. The math is in `sae_core.schedules`; the estimators, rules,
options and defaults are in `sae_core.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import checks, kernels, registry
from .arrays import BFLOAT16_BITS, astype, flat, is_tensor, result_form, to_caller
from .types import GIVEN_LAMBDAS, Advantages, EstimatorSpec


def compute_advantages(
    rewards: Any,
    values: Any,
    response_mask: Any,
    *,
    estimator: str,
    gamma: float = 1.0,
    mask_mode: str = "skip",
    critic_lam: float | None = None,
    backend: str = "auto",
    logprobs: Any = None,
    response_ids: Any = None,
    entropy: Any = None,
    given_boundaries: Any = None,
    **options: Any,
) -> Advantages:
    """Advantages and critic targets for padded `[B, T]` responses.

    Per response, tokens t = 0..T-1: delta_t = r_t + gamma * V_next(t) - V_t,
    A_t = delta_t + gamma * lambda_t * A_next(t), R_t = A_t + V_t, with each estimator's
    lambda_t (`sae_core.schedules`).

    Args:
        rewards: [B, T] float, r_t, the token-level reward of token t (in RLVR: the outcome reward
            on the last valid token, perhaps plus per-token KL terms). numpy array or torch tensor.
        values: [B, T] float, V_t, the critic's value of the prefix *before* token t.
        response_mask: [B, T] bool/int/float holding 0 and 1; 1 = a token the policy generated.
            Right padding and interior gaps (multi-turn tool output) are both allowed. None means
            every token is valid.
        estimator: "gae", "mc", "sae" or "vapo" (required: the name goes into every log and file).
        gamma: discount in [0, 1].
        mask_mode: "skip" (veRL: masked tokens transparent) or "zero" (OpenRLHF: masked tokens take
            part with r = V = 0).
        critic_lam: lambda in [0, 1] of decoupled critic targets (VAPO / VC-PPO, usually 1.0):
            R_t = A'_t + V_t with A' the GAE advantage at critic_lam over the same mask. When None,
            R_t = A_t + V_t with the estimator's own A_t.
        backend: "numba" (CPU), "torch" (the tensors' device), "triton" (CUDA tensors), "reference"
            (a plain float64 loop, the executable spec), or "auto": numba for numpy arrays and CPU
            tensors, triton for CUDA tensors when triton imports, else torch.
        logprobs: [B, T] float, l_t, the natural-log probability of sampled token t under the
            behaviour policy: the data of sae's "logprob" (default) and "quantile" rules.
        response_ids: [B, T] int, the sampled token ids: the data of the "delimiter" rule.
        entropy: [B, T] float, the policy's entropy at token t: the data of the "entropy" rule.
        given_boundaries: [B, T] bool, True where token t starts a segment: the data of the
            "given" rule (boundary="given").
        **options: the estimator's own scalar options, and only those (`registry.ESTIMATORS`):
            gae: lam (0.95). mc: none. vapo: alpha (0.05). sae: lam (0.95, at boundaries) and one
            boundary rule, chosen by `boundary=` or by setting its option: threshold (logprob,
            0.2: l_t < log(threshold)), segment_length (fixed), delimiter_ids (delimiter),
            quantile (quantile), entropy_threshold (entropy), or boundary="given".

    Returns:
        Advantages(advantages, returns, boundaries): [B, T] each, in the array type, device and
        dtype of `rewards` (promoted with `values`; float32 and float64 stay as they are,
        float16/bfloat16 results are rounded through float32; integer inputs give float64 for
        numpy and torch's default dtype for tensors). Only valid tokens carry meaning: in "skip"
        mode advantages, returns and boundaries are 0/False at masked positions; in "zero" mode
        masked positions carry the values of the zero-reward, zero-value steps they are. No
        autograd graph is built.

    Raises:
        ValueError naming the argument (and the first bad row and token) for mismatched shapes,
        non-finite rewards/values/logprobs/entropy on valid tokens, a mask other than 0/1,
        parameters out of range, or data the chosen rule needs but was not given.
        TypeError for an option the estimator does not take.
    """
    spec, data = _spec_and_data(estimator, gamma, mask_mode, critic_lam, options,
                                {"logprobs": logprobs, "response_ids": response_ids, "entropy": entropy,
                                 "given_boundaries": given_boundaries})
    if backend in ("auto", "numba"):
        out = _fast_padded(spec, data, rewards, values, response_mask)
        if out is not None:
            return out
    return _compute(spec, data, _padded_layout, rewards, values, response_mask, backend)


def compute_advantages_ragged(
    rewards: Any,
    values: Any,
    offsets: Any,
    *,
    estimator: str,
    response_mask: Any = None,
    gamma: float = 1.0,
    mask_mode: str = "skip",
    critic_lam: float | None = None,
    backend: str = "auto",
    logprobs: Any = None,
    response_ids: Any = None,
    entropy: Any = None,
    given_boundaries: Any = None,
    **options: Any,
) -> Advantages:
    """The ragged twin of `compute_advantages`: flat columns plus row offsets.

    This is the layout of Arrow list columns and of packed sequences (cu_seqlens).

    Args:
        rewards: [N] float, r_t of all rows concatenated.
        values: [N] float, V_t (value of the prefix before token t).
        offsets: [B + 1] int64, non-decreasing, offsets[0] == 0 and offsets[-1] == N: row i is
            `rewards[offsets[i]:offsets[i + 1]]` with its own time index t = 0..len-1.
        response_mask: [N] 0/1, or None (every token valid, the usual case for Arrow rollouts).
        logprobs, response_ids, entropy, given_boundaries: [N] each, flat like `rewards`.
        Every other argument as in `compute_advantages`.

    Returns:
        Advantages with flat [N] arrays, in the caller's array type, dtype and device.
    """
    spec, data = _spec_and_data(estimator, gamma, mask_mode, critic_lam, options,
                                {"logprobs": logprobs, "response_ids": response_ids, "entropy": entropy,
                                 "given_boundaries": given_boundaries})
    return _compute(spec, data, _ragged_layout(offsets), rewards, values, response_mask, backend)


def compute_advantages_from_lambdas(
    rewards: Any,
    values: Any,
    response_mask: Any,
    lambdas: Any,
    *,
    gamma: float = 1.0,
    mask_mode: str = "skip",
    critic_lam: float | None = None,
    backend: str = "auto",
) -> Advantages:
    """Advantages with a lambda schedule of the caller's own (as rlax's `lambda_returns` takes one).

    The same recursion and scan as every estimator, with lambda_t given per token: for trying a
    new schedule without touching any kernel. `lambdas` = lam everywhere is `gae`, and the sae
    schedule of `sae_core.schedules.row_lambdas` is `sae`, in skip mode and, in zero mode, on rows
    without interior gaps: zero mode's masked steps take lambda 1, since nothing at a masked
    position is read.

    Args:
        rewards, values, response_mask: [B, T], as in `compute_advantages`.
        lambdas: [B, T] float in [0, 1] on valid tokens, lambda_t: the weight of A_next(t) in
            A_t = delta_t + gamma * lambda_t * A_next(t). Read only at valid tokens; the value at
            a row's last valid token multiplies nothing.
        gamma, mask_mode, critic_lam, backend: as in `compute_advantages` ("triton" is not
            available for given lambdas; "auto" takes torch for CUDA tensors).

    Returns:
        Advantages(advantages, returns, boundaries), boundaries all False.
    """
    base = registry.make_spec("gae", gamma=gamma, mask_mode=mask_mode, critic_lam=critic_lam)
    spec = EstimatorSpec(estimator=GIVEN_LAMBDAS, gamma=base.gamma, lam=1.0, critic_lam=base.critic_lam,
                         mask_mode=base.mask_mode)
    if lambdas is None:
        raise ValueError("lambdas is required: [B, T] float, lambda_t of each token")
    return _compute(spec, {"lambdas": lambdas}, _padded_layout, rewards, values, response_mask, backend,
                    check=_check_lambdas)


def estimator_params(estimator: str, **kwargs: Any) -> dict[str, Any]:
    """The validated parameters of an estimator as files and logs record them, e.g.
    `{"estimator": "sae", "gamma": 1.0, "mask_mode": "skip", "critic_lam": None, "lam": 0.95,
    "boundary": "logprob", "threshold": 0.2}`.

    Takes the scalar keyword arguments of `compute_advantages` (gamma, mask_mode, critic_lam and
    the estimator's options; no per-token data) and raises as it does: for checking a command
    line or a trainer's config before any data exists.
    """
    return registry.estimator_params(estimator, **kwargs)


# ----------------------------------------------------------------------------------------------


_SPECS: dict[tuple, tuple[EstimatorSpec, tuple[str, ...]]] = {}  # _spec_and_data's checked results, by _spec_key
_SPECS_MAX = 256  # distinct argument sets remembered (a training run uses one or two); then it starts over


def _spec_key(estimator, gamma, mask_mode, critic_lam, options, given) -> tuple | None:
    """A key that determines `_spec_and_data`'s outcome, or None when an argument is not a plain
    Python scalar (or a list / tuple of ints). Each value goes in with its type, since 1 == 1.0 ==
    True but gamma=True is refused and gamma=1 is not, and a float with its sign (-0.0 == 0.0, but
    the spec keeps the sign); then the names of the data given."""
    if type(estimator) is not str or type(mask_mode) is not str:
        return None
    key = [estimator, mask_mode, tuple(name for name, x in given.items() if x is not None)]
    for name, value in (("gamma", gamma), ("critic_lam", critic_lam), *sorted(options.items())):
        t = type(value)
        if t is float:
            value = (value, math.copysign(1.0, value))
        elif t is list or t is tuple:
            if not all(type(v) is int for v in value):
                return None
            value = tuple(value)
        elif not (t is int or t is bool or t is str or value is None):
            return None
        key.append((name, t, value))
    return tuple(key)


def _spec_and_data(estimator, gamma, mask_mode, critic_lam, options, given) -> tuple[EstimatorSpec, dict]:
    """The validated spec, and the per-token data its rule reads (checked for presence).

    Arguments seen before (`_spec_key`) skip the checks: their outcome depends on nothing else,
    and every call of a training run passes the same ones (about 60 us a call saved here, more
    when the call follows a large kernel and Python's own data has left the caches)."""
    key = _spec_key(estimator, gamma, mask_mode, critic_lam, options, given)
    known_spec = _SPECS.get(key) if key is not None else None
    if known_spec is not None:
        spec, needs = known_spec
        return spec, {name: given[name] for name in needs}
    spec, data = _checked_spec_and_data(estimator, gamma, mask_mode, critic_lam, options, given)
    if key is not None:
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        _SPECS[key] = (spec, tuple(data))
    return spec, data


def _checked_spec_and_data(estimator, gamma, mask_mode, critic_lam, options, given) -> tuple[EstimatorSpec, dict]:
    """`_spec_and_data` without the memo: every check, every time."""
    known = registry.ESTIMATORS.get(estimator)  # an unknown name is refused by make_spec below
    if known is not None and known.segmental and options.get("boundary") is None:
        for rule in registry.RULES.values():  # data that only an option-less rule reads selects it (given)
            if rule.option is None and given.get(rule.data) is not None:
                options = {**options, "boundary": rule.name}
    spec = registry.make_spec(estimator, gamma=gamma, mask_mode=mask_mode, critic_lam=critic_lam, **options)
    needs = registry.needed_data(spec)
    for name, value in given.items():
        if value is None or name in needs or name == "logprobs":  # log-probs may come along unused
            continue
        rules = [r for r in registry.RULES.values() if r.data == name]
        reader = rules[0]
        how = f"{reader.option}=..." if reader.option else f"boundary={reader.name!r}"
        raise ValueError(f"{name} is read only by boundary={reader.name!r}, which needs {how}; the rule here is "
                         f"{'boundary=' + repr(spec.boundary) if spec.boundary else 'none (' + estimator + ')'}")
    data = {}
    for name in needs:
        if given.get(name) is None:
            d = registry.DATA[name]
            raise ValueError(f"estimator {estimator!r} with boundary={spec.boundary!r} needs "
                             f"{name}=[B, T] {d.kind}, {d.help}")
        data[name] = given[name]
    return spec, data


_PLANS: dict[tuple, Any] = {}  # numba_scan.Plan by (spec, B, T), for `_fast_padded`
_PLANS_MAX = 64
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_MASKS = frozenset(np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                                          np.uint64, np.int64, np.float16, np.float32, np.float64))
_SCORES = frozenset((np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), BFLOAT16_BITS))


def _fast_padded(spec: EstimatorSpec, data: dict, rewards, values, response_mask) -> Advantages | None:
    """`compute_advantages` on the numba backend for what a training step passes, or None for the
    general path (`_compute`) to take it.

    The common case: numpy arrays or CPU tensors, [B, T] and C-contiguous, float32 or float64
    rewards and values, a mask of any width the kernel reads (or None), float log-probs or entropy
    for the rule, and a spec whose scan arguments do not depend on the data (`numba_scan.Plan`:
    gae, mc, sae with the logprob or entropy rule). Everything the general path checks per call
    depends, for these, on the arguments' types, dtypes and shapes alone, which this checks; the
    data (a non-finite value on a valid token, a mask entry other than 0 or 1) the kernel checks,
    as there. When any row's final state is not finite, this gives up (None) and the general path
    scans again and raises its error. The scan is the same call with the same arguments, so the
    results are the general path's to the bit (`tests/test_api.py`); what it saves is the general
    path's Python, about 30 us a call, and 150-200 us right after a large kernel or copy, when
    Python's own code and data have left the caches (docs/performance.md).
    """
    r, v = _cpu_view(rewards), _cpu_view(values)
    if r is None or v is None or r.ndim != 2 or v.shape != r.shape or r.size == 0 \
            or r.dtype not in _FLOATS or v.dtype not in _FLOATS or is_tensor(rewards) != is_tensor(values):
        return None
    m = None
    if response_mask is not None:
        m = _cpu_view(response_mask)
        if m is None or m.shape != r.shape or m.dtype not in _MASKS:
            return None
    score = None
    if spec.boundary is not None:
        score = _cpu_view(data.get(registry.score_data(spec) or "", None))
        if score is None or score.shape != r.shape or score.dtype not in _SCORES:
            return None
    key = (spec, r.shape)
    plan = _PLANS.get(key)
    if plan is None:
        from .kernels.numba_scan import Plan

        B, T = r.shape
        plan = Plan(spec, np.arange(B, dtype=np.int64) * T, np.full(B, T, dtype=np.int64))
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    if not plan.reusable:
        return None
    mask, keep, one = plan.mask_bits(None if m is None else m.reshape(-1))
    compute = _FLOATS[1] if _FLOATS[1] in (r.dtype, v.dtype) else _FLOATS[0]
    adv, ret, bnd, final = plan.scan(r.reshape(-1), v.reshape(-1), mask, keep, one,
                                     None if score is None else plan.half_bits(score.reshape(-1)), compute)
    if not np.isfinite(final).all():
        return None
    shape = r.shape
    adv, ret, bnd = adv.reshape(shape), ret.reshape(shape), bnd.reshape(shape)
    if is_tensor(rewards):
        import torch

        adv, ret, bnd = torch.from_numpy(adv), torch.from_numpy(ret), torch.from_numpy(bnd)
    return Advantages(adv, ret, bnd)


def _cpu_view(x) -> np.ndarray | None:
    """A numpy view of a C-contiguous numpy array or CPU tensor (bfloat16 as `BFLOAT16_BITS`), or
    None for anything else (`_fast_padded` leaves those to the general path)."""
    if type(x) is np.ndarray:
        return x if x.flags.c_contiguous else None
    if not is_tensor(x) or x.device.type != "cpu" or not x.is_contiguous():
        return None
    import torch

    x = x.detach()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(BFLOAT16_BITS)
    # the dtypes numpy views as they are (not wider unsigned ints, complex or float8, for example)
    return x.numpy() if x.dtype in (torch.float16, torch.float32, torch.float64, torch.bool, torch.uint8,
                                    torch.int8, torch.int16, torch.int32, torch.int64) else None


def _padded_layout(r) -> tuple[np.ndarray, np.ndarray]:
    if r.ndim != 2:
        raise ValueError(f"rewards must be 2-D [B, T] (padded); got shape {tuple(r.shape)}. "
                         "Flat columns with offsets go to compute_advantages_ragged.")
    B, T = r.shape
    return np.arange(B, dtype=np.int64) * T, np.full(B, T, dtype=np.int64)


def _ragged_layout(offsets) -> Callable:
    def layout(r):
        if r.ndim != 1:
            raise ValueError(f"rewards must be 1-D [N] for the ragged layout; got shape {tuple(r.shape)}")
        offs = checks.check_offsets(offsets, r.shape[0])
        return offs[:-1].copy(), np.diff(offs)

    return layout


def _compute(spec: EstimatorSpec, data: dict, layout: Callable, rewards, values, response_mask, backend: str,
             check: Callable | None = None) -> Advantages:
    """Check the arrays, lay them out flat, scan, and return the results in the caller's form."""
    form = result_form(rewards, values)
    kernel, tensors = kernels.select(backend, form, spec)
    r = checks.token_array("rewards", rewards, form, None, tensors)
    starts, lengths = layout(r)
    shape = tuple(r.shape)
    half_bits = getattr(kernel, "reads_half_bits", False)
    columns = {"rewards": flat(r), **checks.columns({"values": values, "response_mask": response_mask, **data},
                                                    form, shape, tensors, half_bits)}
    rows = checks.rows(columns, starts, lengths)
    if check is not None:
        check(rows)
    adv, ret, bnd, problems = kernel(spec, rows, form.compute_dtype)
    checks.raise_for_problems(problems, spec, rows)
    out = Advantages(to_caller(adv.reshape(shape), form), to_caller(ret.reshape(shape), form),
                     to_caller(bnd.reshape(shape), form, is_float=False))
    checks.check_half_precision(out, form)
    return out


def _check_lambdas(rows) -> None:
    """lambda_t must be a number in [0, 1] at every valid token."""
    lam = rows.lambdas
    valid = None if rows.mask is None else (rows.mask != 0)
    bad = ~((lam >= 0) & (lam <= 1))  # NaN fails both
    if valid is not None:
        bad = bad & valid
    bad = astype(bad, np.bool_)
    if bool(bad.any()):
        i = int(bad.nonzero()[0][0]) if is_tensor(bad) else int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(rows.starts, i, side="right") - 1)  # empty rows sharing its start come first
        raise ValueError(f"lambdas must be in [0, 1] on valid tokens; row {row}, token {i - rows.starts[row]} "
                         f"holds {lam[i].item()}")
