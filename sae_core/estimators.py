"""The public estimator API: lambda schedules and boundary rules on one masked reverse scan.

Per response, tokens t = 0..T-1 with a mask m_t (1 = a token the policy generated):

    delta_t = r_t + gamma * V_next(t) - V_t
    A_t     = delta_t + gamma * lambda_t * A_next(t)        (A after the last token = 0)
    R_t     = A_t + V_t                                      (critic target)

`V_t` is the critic's value of the prefix *before* token t; `next(t)` is the next position that
takes part (mask modes below); V and A after the last one are 0. Every estimator is a choice of
the per-token `lambda_t`:

    gae    lambda_t = lam
    mc     lambda_t = 1
    sae    lambda_t = lam if token next(t) is a boundary, else 1
    vapo   lambda_t = clip(1 - 1 / (alpha * L), 0, 1), L = the row's number of valid tokens

Mask modes:
    skip   (veRL) masked tokens are transparent: next(t) jumps over them; their outputs are 0.
    zero   (OpenRLHF) masked tokens take part with r = V = 0 and are never boundaries.

Masked tokens are never boundaries, so in zero mode an interior gap (tool output) lies inside a
segment: sae steps through it with lambda 1 and the V = 0 of its steps cancel, where gae applies
lam at each of them. On right-padded data the two modes give the same outputs. Inputs at masked
positions are never read as numbers in either mode, so NaN padding is harmless.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ._arrays import ResultForm, as_numpy, as_tensor, astype, flat, is_tensor, kind, result_form, to_caller

ESTIMATORS = ("gae", "mc", "sae", "vapo")
BOUNDARY_RULES = ("logprob", "fixed", "delimiter", "quantile", "entropy", "given")
MASK_MODES = ("skip", "zero")
BACKENDS = ("auto", "reference", "numba", "torch", "triton")

# The option that selects each boundary rule, and the per-token data each rule reads.
_RULE_OPTION = {
    "fixed": "segment_length",
    "delimiter": "delimiter_ids",
    "quantile": "quantile",
    "entropy": "entropy_threshold",
    "given": "boundaries",
}
_RULE_DATA = {
    "logprob": "logprobs",
    "quantile": "logprobs",
    "delimiter": "response_ids",
    "entropy": "entropy",
    "given": "boundaries",
}
_SAE_OPTIONS = ("boundary", "segment_length", "delimiter_ids", "response_ids", "quantile", "entropy",
                "entropy_threshold", "boundaries")
_OPTIONS = {"gae": (), "mc": (), "sae": _SAE_OPTIONS, "vapo": ("alpha",)}

# Columns of the per-row problem table every backend fills: the first bad token of the row
# (index within the row), -1 where the row is clean.
PROBLEM_COLUMNS = ("response_mask", "rewards", "values", "score", "overflow")


class Advantages(NamedTuple):
    """Result of an estimator, in the caller's array type, dtype and device.

    advantages: [B, T] (or flat [N]) float, A_t for the actor.
    returns:    [B, T] (or flat [N]) float, R_t, the critic's target.
    boundaries: [B, T] (or flat [N]) bool, True where a token starts a new segment; all False for
                estimators without segments and at masked positions.
    """

    advantages: Any
    returns: Any
    boundaries: Any


@dataclass(frozen=True)
class EstimatorSpec:
    """A validated estimator with its parameters: what every backend computes.

    `boundary` is None for estimators without segments (gae, mc, vapo).
    """

    estimator: str
    gamma: float
    lam: float
    critic_lam: float | None
    mask_mode: str
    boundary: str | None = None
    threshold: float = 0.2
    alpha: float = 0.05
    segment_length: int | None = None
    delimiter_ids: tuple[int, ...] = ()
    quantile: float | None = None
    entropy_threshold: float | None = None

    @property
    def score_name(self) -> str | None:
        """The per-token float column the boundary rule compares: 'logprobs', 'entropy' or None."""
        return {"logprob": "logprobs", "quantile": "logprobs", "entropy": "entropy"}.get(self.boundary)

    def params(self) -> dict[str, Any]:
        """The parameters that determine the outputs, for logs and file metadata."""
        out: dict[str, Any] = {"estimator": self.estimator, "gamma": self.gamma, "mask_mode": self.mask_mode,
                               "critic_lam": self.critic_lam}
        if self.estimator in ("gae", "sae"):
            out["lam"] = self.lam
        if self.estimator == "vapo":
            out["alpha"] = self.alpha
        if self.boundary is not None:
            out["boundary"] = self.boundary
            out.update({
                "logprob": {"threshold": self.threshold},
                "fixed": {"segment_length": self.segment_length},
                "delimiter": {"delimiter_ids": list(self.delimiter_ids)},
                "quantile": {"quantile": self.quantile},
                "entropy": {"entropy_threshold": self.entropy_threshold},
                "given": {},
            }[self.boundary])
        return out


@dataclass
class Rows:
    """Flat per-token columns and the row layout that backends scan.

    Every per-token array is 1-D over N tokens; row i is `[starts[i], starts[i] + lengths[i])`.
    `mask` is None when every token is valid. The padded layout [B, T] is the special case
    starts = arange(B) * T, lengths = T, so one kernel serves both.
    """

    rewards: np.ndarray
    values: np.ndarray
    mask: np.ndarray | None
    starts: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray | None = None
    response_ids: np.ndarray | None = None
    entropy: np.ndarray | None = None
    given: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray | None:
        return self.entropy if self.entropy is not None else self.logprobs


# ----------------------------------------------------------------------------------------------
# public API


def compute_advantages(
    rewards: Any,
    values: Any,
    response_mask: Any,
    *,
    estimator: str = "sae",
    logprobs: Any = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    threshold: float = 0.2,
    mask_mode: str = "skip",
    critic_lam: float | None = None,
    backend: str = "auto",
    **estimator_options: Any,
) -> Advantages:
    """Advantages and critic targets for padded `[B, T]` responses.

    Args:
        rewards: [B, T] float, r_t, the token-level reward of token t (in RLVR: the outcome reward
            on the last valid token, perhaps plus per-token KL terms). numpy array or torch tensor.
        values: [B, T] float, V_t, the critic's value of the prefix *before* token t.
        response_mask: [B, T] bool/int/float holding 0 and 1; 1 = a token the policy generated.
            Right padding and interior gaps (multi-turn tool output) are both allowed. None means
            every token is valid.
        estimator: "gae", "mc", "sae" or "vapo" (see the module docstring for each lambda_t).
        logprobs: [B, T] float, l_t, the natural-log probability of sampled token t under the
            behaviour policy. Needed by sae's "logprob" (default) and "quantile" boundary rules.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1]; for sae, the lambda applied at segment boundaries.
        threshold: sae's probability threshold p in (0, 1]: token t is a boundary when
            l_t < log(p). The paper uses 0.2.
        mask_mode: "skip" (veRL: masked tokens transparent) or "zero" (OpenRLHF: masked tokens take
            part with r = V = 0).
        critic_lam: lambda in [0, 1] of decoupled critic targets (VAPO / VC-PPO, usually 1.0):
            R_t = A'_t + V_t with A' the GAE advantage at critic_lam over the same mask. When None,
            R_t = A_t + V_t with the estimator's own A_t.
        backend: "numba" (CPU), "torch" (the tensors' device), "triton" (CUDA tensors), "reference"
            (a plain float64 loop, the executable spec), or "auto": numba for numpy arrays and CPU
            tensors, triton for CUDA tensors when triton imports, else torch. The backends compute
            in float64 inside, except that torch scans float32 results in float32 where that is
            provably within 1e-5 of float64 (every factor gamma * lambda_t is 0, 1 or <= 0.98).
        **estimator_options: for "vapo": `alpha` (default 0.05). For "sae", one boundary rule:
            - `boundary="logprob"` (default): l_t < log(threshold);
            - `segment_length=M` (`boundary="fixed"`): the k-th valid token of a row (k from 0)
              is a boundary when k % M == 0;
            - `delimiter_ids=[...]` with `response_ids` ([B, T] int, `boundary="delimiter"`): the
              token after a delimiter token (the next valid one) is a boundary;
            - `quantile=q` (`boundary="quantile"`): l_t below the q-quantile (numpy's linear method)
              of the row's valid l_t;
            - `entropy_threshold=h` with `entropy` ([B, T] float, `boundary="entropy"`):
              entropy_t > h;
            - `boundaries` ([B, T] bool, `boundary="given"`): boundaries chosen by the caller.
            Passing a rule's option selects that rule; `boundary=` may name it explicitly.

    Returns:
        Advantages(advantages, returns, boundaries): [B, T] each, in the array type, device and
        dtype of `rewards` (promoted with `values`; float32 and float64 stay as they are,
        float16/bfloat16 results are rounded through float32; integer inputs give float64 for
        numpy and torch's default dtype for tensors). Only valid tokens carry meaning: in "skip" mode advantages,
        returns and boundaries are 0/False at masked positions; in "zero" mode masked positions
        carry the values of the zero-reward, zero-value steps they are. No autograd graph is built.

    Raises:
        ValueError naming the argument (and the first bad row and token) for mismatched shapes,
        non-finite rewards/values/logprobs/entropy on valid tokens, a mask other than 0/1,
        parameters out of range, or data the chosen rule needs but was not given.
        TypeError for an option the estimator does not take.
    """
    def layout(r):
        if r.ndim != 2:
            raise ValueError(f"rewards must be 2-D [B, T] (padded); got shape {tuple(r.shape)}. "
                             "Flat columns with offsets go to compute_advantages_ragged.")
        B, T = r.shape
        return np.arange(B, dtype=np.int64) * T, np.full(B, T, dtype=np.int64)

    return _compute(layout, rewards, values, response_mask, estimator, logprobs, gamma, lam, threshold, mask_mode,
                    critic_lam, backend, estimator_options)


def compute_advantages_ragged(
    rewards: Any,
    values: Any,
    offsets: Any,
    *,
    response_mask: Any = None,
    estimator: str = "sae",
    logprobs: Any = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    threshold: float = 0.2,
    mask_mode: str = "skip",
    critic_lam: float | None = None,
    backend: str = "auto",
    **estimator_options: Any,
) -> Advantages:
    """The ragged twin of `compute_advantages`: flat columns plus row offsets.

    This is the layout of Arrow list columns and of packed sequences (cu_seqlens).

    Args:
        rewards: [N] float, r_t of all rows concatenated.
        values: [N] float, V_t (value of the prefix before token t).
        offsets: [B + 1] int64, non-decreasing, offsets[0] == 0 and offsets[-1] == N: row i is
            `rewards[offsets[i]:offsets[i + 1]]` with its own time index t = 0..len-1.
        response_mask: [N] 0/1, or None (every token valid, the usual case for Arrow rollouts).
        logprobs, and the per-token estimator options (`response_ids`, `entropy`, `boundaries`):
            [N] each, flat like `rewards`.
        Every other argument as in `compute_advantages`.

    Returns:
        Advantages with flat [N] arrays, in the caller's array type, dtype and device.
    """
    def layout(r):
        if r.ndim != 1:
            raise ValueError(f"rewards must be 1-D [N] for the ragged layout; got shape {tuple(r.shape)}")
        offs = _check_offsets(offsets, r.shape[0])
        return offs[:-1].copy(), np.diff(offs)

    return _compute(layout, rewards, values, response_mask, estimator, logprobs, gamma, lam, threshold, mask_mode,
                    critic_lam, backend, estimator_options)


def estimator_params(estimator: str = "sae", *, logprobs: Any = None, gamma: float = 1.0, lam: float = 0.95,
                     threshold: float = 0.2, mask_mode: str = "skip", critic_lam: float | None = None,
                     require_data: bool = True, **estimator_options: Any) -> dict[str, Any]:
    """The validated parameters of an estimator, as `EstimatorSpec.params()`: for logs and file
    metadata. Takes the keyword arguments of `compute_advantages`; raises as it does. Per-token data
    (`logprobs`, `response_ids`, ...) is only checked for presence, and not even that with
    require_data=False (parameters checked before any data exists, e.g. from a command line)."""
    if not require_data and estimator == "sae":
        needs = _RULE_DATA.get(_boundary_rule(estimator_options, require_data=False))
        if needs == "logprobs":
            logprobs = True if logprobs is None else logprobs
        elif needs is not None and estimator_options.get(needs) is None:
            estimator_options = {**estimator_options, needs: True}
    spec, _ = _make_spec(estimator, gamma, lam, threshold, mask_mode, critic_lam, logprobs, estimator_options)
    return spec.params()


def _compute(layout, rewards, values, response_mask, estimator, logprobs, gamma, lam, threshold, mask_mode,
             critic_lam, backend, estimator_options) -> Advantages:
    """The body of both public functions; `layout(rewards)` checks the shape and gives (starts, lengths)."""
    spec, data = _make_spec(estimator, gamma, lam, threshold, mask_mode, critic_lam, logprobs, estimator_options)
    form = result_form(rewards, values)
    kernel, tensors = _backend(backend, form)
    r = _token_array("rewards", rewards, form, None, tensors)
    starts, lengths = layout(r)
    shape = tuple(r.shape)
    columns = {"rewards": flat(r),
               **_columns({"values": values, "response_mask": response_mask, **data}, form, shape, tensors)}
    adv, ret, bnd = _run(kernel, spec, _rows(columns, starts, lengths), form)
    out = Advantages(to_caller(adv.reshape(shape), form), to_caller(ret.reshape(shape), form),
                     to_caller(bnd.reshape(shape), form, is_float=False))
    _check_half_precision(out, form)
    return out


def _check_half_precision(out: Advantages, form: ResultForm) -> None:
    """float16 results can overflow where the float64 scan did not (beyond 65504): say so."""
    if str(form.out_dtype) not in ("float16", "torch.float16"):
        return
    for name, x in (("advantages", out.advantages), ("returns", out.returns)):
        finite = x.isfinite() if is_tensor(x) else np.isfinite(x)
        if not bool(finite.all()):
            raise ValueError(f"{name} overflow float16 (beyond 65504); pass float32 inputs to get them")


# ----------------------------------------------------------------------------------------------
# validation


def _make_spec(estimator, gamma, lam, threshold, mask_mode, critic_lam, logprobs, options):
    """Validate the scalar arguments and options; return the spec and the per-token data it needs."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}; got {mask_mode!r}")
    gamma = _unit_interval("gamma", gamma)
    lam = _unit_interval("lam", lam)
    critic_lam = None if critic_lam is None else _unit_interval("critic_lam", critic_lam)
    threshold = _scalar("threshold", threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a probability in (0, 1]; got {threshold}")
    allowed = _OPTIONS[estimator]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes no options"
        raise TypeError(f"estimator {estimator!r} {takes}; got unexpected option(s) {', '.join(unknown)}")

    fields: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if estimator == "vapo":
        alpha = _scalar("alpha", options.get("alpha", 0.05))
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0; got {alpha}")
        fields["alpha"] = alpha
    if estimator == "sae":
        rule = _boundary_rule(options)
        fields["boundary"] = rule
        if rule == "fixed":
            m = options["segment_length"]
            if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= m <= _INT64_MAX:
                raise ValueError(f"segment_length must be an integer from 1 to 2**63 - 1; got {m!r}")
            fields["segment_length"] = int(m)
        elif rule == "delimiter":
            fields["delimiter_ids"] = _token_ids("delimiter_ids", options["delimiter_ids"])
        elif rule == "quantile":
            q = _scalar("quantile", options["quantile"])
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be in [0, 1]; got {q}")
            fields["quantile"] = q
        elif rule == "entropy":
            fields["entropy_threshold"] = _scalar("entropy_threshold", options["entropy_threshold"])
        needs = _RULE_DATA.get(rule)
        given = {"logprobs": logprobs, "response_ids": options.get("response_ids"),
                 "entropy": options.get("entropy"), "boundaries": options.get("boundaries")}
        for name, option, other_rule in (("entropy", "entropy_threshold", "entropy"),
                                         ("response_ids", "delimiter_ids", "delimiter")):
            if given[name] is not None and rule != other_rule:
                raise ValueError(f"{name} is read only by boundary={other_rule!r}, which needs {option}=...; "
                                 f"the rule here is boundary={rule!r}")
        if needs is not None:
            if given[needs] is None:
                raise ValueError(_missing_data_message(rule, needs))
            data[needs] = given[needs]
    spec = EstimatorSpec(estimator=estimator, gamma=gamma, lam=lam, critic_lam=critic_lam, mask_mode=mask_mode,
                         threshold=threshold, **fields)
    return spec, data


_INT64_MAX = 2**63 - 1


def _token_ids(name: str, ids: Any) -> tuple[int, ...]:
    """A non-empty, sorted tuple of distinct int64 token ids from an int, a sequence or an array."""
    if is_tensor(ids):
        ids = ids.detach().cpu().numpy()
    items = np.asarray(ids, dtype=object).ravel().tolist() if isinstance(ids, np.ndarray) else (
        [ids] if isinstance(ids, numbers.Integral) else list(ids))
    if not items or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items):
        raise ValueError(f"{name} must be a non-empty list of integer token ids; got {ids!r}")
    if not all(-_INT64_MAX - 1 <= i <= _INT64_MAX for i in items):
        raise ValueError(f"{name} must be int64 token ids; got {ids!r}")
    return tuple(sorted({int(i) for i in items}))


def boundary_rule(estimator: str, options: Mapping[str, Any], *, require_data: bool = True) -> str | None:
    """The boundary rule that `compute_advantages(estimator=estimator, **options)` applies.

    None for the estimators without segments (gae, mc, vapo). For sae: `boundary` when given, else
    the rule whose option is set (segment_length: "fixed", delimiter_ids: "delimiter", quantile:
    "quantile", entropy_threshold: "entropy", boundaries: "given"), else "logprob". Raises
    ValueError, with compute_advantages' message, when options select different rules, `boundary`
    names an unknown rule, or the rule's option is missing. With require_data=False, the per-token
    data a rule reads need not be there (boundary="given" without `boundaries`): for parameters
    checked before the data exists, or whose data comes from elsewhere, such as a file's columns.
    """
    if estimator != "sae":
        return None
    return _boundary_rule(options, require_data=require_data)


def _boundary_rule(options: Mapping[str, Any], require_data: bool = True) -> str:
    selected = [rule for rule, opt in _RULE_OPTION.items() if options.get(opt) is not None]
    rule = options.get("boundary")
    if rule is None:
        if len(selected) > 1:
            opts = ", ".join(_RULE_OPTION[r] for r in selected)
            raise ValueError(f"options {opts} select different boundary rules; pass one, or boundary=...")
        return selected[0] if selected else "logprob"
    if rule not in BOUNDARY_RULES:
        raise ValueError(f"boundary must be one of {BOUNDARY_RULES}; got {rule!r}")
    option = _RULE_OPTION.get(rule)
    is_data = option == _RULE_DATA.get(rule)  # "given": its option is the per-token data itself
    if option is not None and options.get(option) is None and (require_data or not is_data):
        raise ValueError(f"boundary={rule!r} needs the option {_RULE_OPTION[rule]}=...")
    others = [_RULE_OPTION[r] for r in selected if r != rule]
    if others:
        raise ValueError(f"option(s) {', '.join(others)} do not apply to boundary={rule!r}")
    return rule


def _missing_data_message(rule: str, name: str) -> str:
    what = {
        "logprobs": "logprobs=[B, T] float, the log-probability of each sampled token under the behaviour policy",
        "response_ids": "response_ids=[B, T] int, the sampled token ids",
        "entropy": "entropy=[B, T] float, the policy's entropy at each token",
        "boundaries": "boundaries=[B, T] bool",
    }[name]
    return f"estimator 'sae' with boundary={rule!r} needs {what}"


def _scalar(name: str, x: Any) -> float:
    if is_tensor(x) or isinstance(x, np.ndarray):
        size = x.numel() if is_tensor(x) else x.size
        if size != 1:
            raise ValueError(f"{name} must be a scalar; got shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    return x


def _unit_interval(name: str, x: Any) -> float:
    x = _scalar(name, x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {x}")
    return x


def _token_array(name: str, x: Any, form: ResultForm, shape: tuple | None, tensors: bool) -> Any:
    """`x` as numpy (or, for the torch backends, a tensor on the caller's device), checked against
    the shape of rewards and given the dtype the kernels read."""
    cast = form.compute_dtype if name in ("rewards", "values") else None
    arr = as_tensor(x, name, form, dtype=cast) if tensors else as_numpy(x, name, form, dtype=cast)
    if shape is not None and tuple(arr.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(arr.shape)} but rewards has shape {shape}")
    k = kind(arr)
    if name == "response_mask" and k not in "biuf":
        raise ValueError(f"response_mask must be bool, int or float 0/1; got dtype {arr.dtype}")
    if name in ("logprobs", "entropy"):
        if k not in "iuf":
            raise ValueError(f"{name} must be a float array; got dtype {arr.dtype}")
        if k != "f":
            arr = astype(arr, np.float64)
    if name == "response_ids":
        if k not in "iu":
            raise ValueError(f"response_ids must hold integer token ids; got dtype {arr.dtype}")
        arr = astype(arr, np.int64)
    if name == "boundaries":
        if k not in "biu":
            raise ValueError(f"boundaries must be bool (or 0/1 int); got dtype {arr.dtype}")
        if k != "b":
            bad = astype((arr != 0) & (arr != 1), np.uint8).reshape(-1)
            if bad.any():
                i = int(bad.argmax())  # the first bad position
                raise ValueError(f"boundaries must hold 0/1; flat position {i} holds {arr.reshape(-1)[i].item()}")
            arr = astype(arr, np.bool_)
    return arr


def _check_offsets(offsets: Any, n: int) -> np.ndarray:
    offs = as_numpy(offsets, "offsets")
    if offs.ndim != 1 or offs.shape[0] < 1:
        raise ValueError(f"offsets must be 1-D [B + 1] with at least one entry; got shape {offs.shape}")
    if offs.dtype.kind not in "iu":
        raise ValueError(f"offsets must be integers (int64); got dtype {offs.dtype}")
    offs = offs.astype(np.int64, copy=False)
    if offs[0] != 0:
        raise ValueError(f"offsets[0] must be 0; got {offs[0]}")
    steps = np.diff(offs)
    bad = np.flatnonzero(steps < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"offsets decrease at row {i}: offsets[{i}] = {offs[i]} > offsets[{i + 1}] = {offs[i + 1]}"
        )
    if offs[-1] != n:
        raise ValueError(f"offsets[-1] must equal the number of tokens in rewards ({n}); got {offs[-1]}")
    return offs


def _columns(arrays: dict[str, Any], form: ResultForm, shape: tuple, tensors: bool) -> dict[str, Any]:
    """Each given per-token array as a checked, contiguous, flat column (a view where possible):
    numpy for the CPU backends, tensors on the caller's device for the torch backends."""
    return {name: flat(_token_array(name, x, form, shape, tensors)) for name, x in arrays.items() if x is not None}


def _rows(columns: dict[str, np.ndarray], starts: np.ndarray, lengths: np.ndarray) -> Rows:
    return Rows(
        rewards=columns["rewards"],
        values=columns["values"],
        mask=columns.get("response_mask"),
        starts=starts,
        lengths=lengths,
        logprobs=columns.get("logprobs"),
        response_ids=columns.get("response_ids"),
        entropy=columns.get("entropy"),
        given=columns.get("boundaries"),
    )


def _backend(name: str, form: ResultForm):
    """(run function, whether it takes torch tensors) for a backend name; "auto" picks numba for
    numpy arrays and CPU tensors, triton for CUDA tensors when triton imports, else torch."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    on_gpu = form.torch and form.device.type != "cpu"
    if name == "auto":
        name = "numba"
        if on_gpu:
            from .kernels import triton_scan

            name = "triton" if triton_scan.available(form.device) else "torch"
    if name == "reference":
        from .kernels import reference

        return reference.run, False
    if name == "numba":
        from .kernels import numba_scan

        return numba_scan.run, False
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ValueError(f"backend={name!r} needs torch, which is not installed") from None
    if name == "torch":
        from .kernels import torch_scan

        return torch_scan.run, True
    from .kernels import triton_scan

    device = form.device if form.torch else None
    if not triton_scan.available(device):
        raise ValueError(triton_scan.unavailable_reason(device))
    return triton_scan.run, True


def _run(kernel, spec: EstimatorSpec, rows: Rows, form: ResultForm):
    adv, ret, bnd, problems = kernel(spec, rows, form.compute_dtype)
    _raise_for_problems(problems, spec, rows)
    return adv, ret, bnd


def _raise_for_problems(problems: np.ndarray, spec: EstimatorSpec, rows: Rows) -> None:
    """Raise for the first argument (in PROBLEM_COLUMNS order) that has a bad token."""
    if not problems.size or problems.max() < 0:
        return
    for col, name in enumerate(PROBLEM_COLUMNS):
        bad_rows = np.flatnonzero(problems[:, col] >= 0)
        if not bad_rows.size:
            continue
        i = int(bad_rows[0])
        t = int(problems[i, col])
        more = f"; {bad_rows.size - 1} more row(s) have one too" if bad_rows.size > 1 else ""
        if name == "response_mask":
            value = rows.mask[rows.starts[i] + t].item()
            raise ValueError(f"response_mask must hold only 0 and 1; row {i}, token {t} holds {value}{more}")
        if name == "overflow":
            raise ValueError(
                f"advantages overflow to a non-finite value in row {i}: every input is finite, but their "
                f"magnitude is too large for the scan{more}"
            )
        if name == "score":
            name = spec.score_name
            arr = rows.score
        else:
            arr = getattr(rows, name)
        value = arr[rows.starts[i] + t].item()
        raise ValueError(
            f"{name} has a non-finite value ({value}) at row {i}, token {t}, a valid token "
            f"(response_mask is 1 there){more}"
        )
