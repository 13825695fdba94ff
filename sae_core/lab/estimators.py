"""The estimators and controls the lab compares, all on the same rollouts and critic values.

Every one is a lambda schedule of `sae_core` (gamma = 1), computed by `compute_advantages_ragged`:
mc; gae at five lambdas and at the horizon matched to sae p=0.2; vapo; sae at four thresholds, the
quantile and entropy rules, and four lambdas at boundaries; and three controls with sae's lambda at
boundaries (`registry.PAPER_LAM`) but other boundaries, through the "given" rule:

- "random": each token a boundary independently with probability sae p=0.2's boundary rate on these
  rollouts (`Matched.rate`), drawn from the caller's rng: where boundaries fall versus how many;
- "fixed": every M-th token, M = sae p=0.2's mean segment length rounded (`Matched.segment_length`);
- "oracle": the tokens whose exact advantage is non-zero (|A| > ORACLE_TOL = 1e-9), as an upper bound
  on where boundaries could be put; "oracle 1e-3" only those with |A| > 1e-3. Both are reported
  because in the absorbing process every routine token before a mistake has |A| ~ 1e-4 (a slip risk
  passed): at 1e-9 about 60% of tokens are boundaries (nearly GAE(lam) on the correct prefix), at
  1e-3 about 0.6% (the decisions and harmful slips), with the defaults.

"gae matched" has lam = 1 - 1/L with L sae p=0.2's mean segment length, i.e. GAE's horizon
1/(1 - lam) equals the mean segment length: the same number of bootstraps, spread evenly.

Which schedules depend on the sampled actions matters (`action_dependent`): sae's lambda_t depends
on whether token t+1 is a boundary, i.e. on the next sampled action, so with the exact critic
E[lambda_t A_hat_{t+1} | s_t, a_t] = E[lambda(a_{t+1}) A(s_{t+1}, a_{t+1})] != 0 when lam < 1 and
sae is biased, and so is the quantile rule. Constant, position-only (entropy, fixed) and independent
random lambdas keep the estimate unbiased, and so does the oracle at 1e-9: in every state it lowers
lambda only before actions with A != 0, and E[1(A != 0) A] = E[A] = 0 (at 1e-3 it is slightly
biased, having left out the small non-zero advantages). `expected_gradient` gives each
estimator's exact expected batch gradient under the exact critic by dynamic programming, so that
bias is computed, not only sampled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import registry
from ..api import compute_advantages_ragged
from . import gradient
from .process import K, Rollouts, solve

MATCH_THRESHOLD = registry.PAPER_THRESHOLD  # the sae that "matched", "random" and "fixed" copy
QUANTILE = 0.01  # quantile rule: the lowest 1% of each response's log-probs (about sae p=0.2's rate)
ENTROPY_THRESHOLD = 0.3  # nats; routine positions have < 0.05, forks and decisions > 0.1 (mostly > 0.5)
ORACLE_TOL = 1e-9  # see the module docstring
MATERIAL_TOL = 1e-3
CONTROLS = ("gae_matched", "random", "fixed", "oracle")


@dataclass(frozen=True)
class Estimator:
    """One row of the comparison.

    label: short and stable (a JSON key and a table row). estimator: a `registry.ESTIMATORS` name.
    options: its keyword options for `compute_advantages_ragged` (lam, threshold, ...).
    control: None, or one of CONTROLS, which sets what `options` leaves out from the rollouts:
    "gae_matched" sets lam, "random"/"oracle" pass given boundaries, "fixed" sets segment_length.
    oracle_tol: the oracle's |A| cut.
    """

    label: str
    estimator: str
    options: Mapping[str, Any] = field(default_factory=dict)
    control: str | None = None
    oracle_tol: float = ORACLE_TOL

    def __post_init__(self):
        registry.check_estimator(self.estimator)
        if self.control is not None and self.control not in CONTROLS:
            raise ValueError(f"control: must be None or one of {CONTROLS}; got {self.control!r}")


def default_estimators() -> list[Estimator]:
    """The full comparison of issue 17, item 3 (21 estimators, labels unique)."""
    lam = registry.PAPER_LAM
    out = [Estimator("mc", "mc")]
    out += [Estimator(f"gae {x:g}", "gae", dict(lam=x)) for x in (0.9, 0.95, 0.99, 0.995, 0.999)]
    out += [Estimator("gae matched", "gae", control="gae_matched"), Estimator("vapo", "vapo")]
    out += [Estimator(f"sae p{p:g}", "sae", dict(threshold=p, lam=lam)) for p in (0.05, 0.1, MATCH_THRESHOLD, 0.5)]
    out += [Estimator("sae quantile", "sae", dict(quantile=QUANTILE, lam=lam)),
            Estimator("sae entropy", "sae", dict(entropy_threshold=ENTROPY_THRESHOLD, lam=lam))]
    out += [Estimator(f"sae p{MATCH_THRESHOLD:g} lam{x:g}", "sae", dict(threshold=MATCH_THRESHOLD, lam=x))
            for x in (0.0, 0.5, 0.8)]
    out += [Estimator("random", "sae", dict(lam=lam, boundary="given"), control="random"),
            Estimator("fixed", "sae", dict(lam=lam), control="fixed"),
            Estimator("oracle", "sae", dict(lam=lam, boundary="given"), control="oracle"),
            Estimator(f"oracle {MATERIAL_TOL:g}", "sae", dict(lam=lam, boundary="given"), control="oracle",
                      oracle_tol=MATERIAL_TOL)]
    return out


QUICK = ("mc", "gae 0.95", "gae 0.999", "gae matched", "vapo", f"sae p{MATCH_THRESHOLD:g}", "random", "fixed",
         "oracle")


def quick_estimators() -> list[Estimator]:
    """The QUICK subset of `default_estimators`, in the same order."""
    return [e for e in default_estimators() if e.label in QUICK]


# ----------------------------------------------------------------------------------------------
# per-token data the rules read


def token_probs(rollouts: Rollouts) -> np.ndarray:
    """[N, K] float64: the sampling policy's option probabilities at each token's position."""
    probs = np.concatenate([p.reshape(-1, K) for p in rollouts.probs])
    return probs[gradient.layout(rollouts)[rollouts.task[rollouts.row_of_token]] + rollouts.positions]


def entropy(rollouts: Rollouts) -> np.ndarray:
    """[N] float64: the exact entropy (nats) of the sampling policy at each token's position."""
    p = token_probs(rollouts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(1)


def logprob_boundaries(rollouts: Rollouts, threshold: float = MATCH_THRESHOLD) -> np.ndarray:
    """[N] bool: sae's logprob rule, logprobs[t] < log(threshold), compared as `sae_core` does (in
    float64); the one boundary rule of the lab (critics, learned critics and the study use it)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: must be in (0, 1], got {threshold!r}")
    return rollouts.logprobs.astype(np.float64) < math.log(threshold)


def oracle_boundaries(rollouts: Rollouts, tol: float = ORACLE_TOL) -> np.ndarray:
    """[N] bool: |true_advantages[t]| > tol, the tokens whose sampled option changes the exact value."""
    return np.abs(rollouts.true_advantages) > tol


@dataclass(frozen=True)
class Matched:
    """What the controls copy from a boundary set on a batch.

    rate: the share of tokens with t >= 1 that are boundaries (the chance that lambda_{t-1} < 1).
    mean_length: N / segments, a segment starting at a boundary or at a response's first token.
    lam: 1 - 1 / mean_length (GAE's horizon 1 / (1 - lam) = mean_length; 0 when mean_length is 1).
    segment_length: max(1, round(mean_length)).
    """

    rate: float
    mean_length: float
    lam: float
    segment_length: int


def matched(rollouts: Rollouts, boundaries: np.ndarray | None = None) -> Matched:
    """`Matched` of [N] bool `boundaries` (default: sae p=MATCH_THRESHOLD's on `rollouts`)."""
    b = logprob_boundaries(rollouts) if boundaries is None else np.asarray(boundaries, dtype=bool)
    if b.shape != rollouts.positions.shape:
        raise ValueError(f"boundaries: shape {b.shape}, expected [{rollouts.positions.shape[0]}]")
    later = rollouts.positions > 0
    rate = float(b[later].mean()) if later.any() else 0.0
    segments = int(b[later].sum()) + len(rollouts.offsets) - 1
    mean_length = b.shape[0] / max(segments, 1)
    return Matched(rate=rate, mean_length=mean_length, lam=1.0 - 1.0 / mean_length,
                   segment_length=max(1, int(round(mean_length))))


def random_boundaries(rollouts: Rollouts, rate: float, rng: np.random.Generator) -> np.ndarray:
    """[N] bool: each token a boundary independently with probability `rate`."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: must be in [0, 1], got {rate}")
    return rng.random(rollouts.positions.shape[0]) < rate


def call_options(est: Estimator, rollouts: Rollouts, rng: np.random.Generator | None = None,
                 match: Matched | None = None) -> dict[str, Any]:
    """The keyword arguments of `compute_advantages_ragged` for `est` on `rollouts`, data included.

    rng: draws the "random" control's boundaries (required for it). match: `matched(rollouts)`, if known.
    """
    opts = dict(est.options)
    if est.control in ("gae_matched", "random", "fixed"):
        match = match or matched(rollouts)
    if est.control == "gae_matched":
        opts["lam"] = match.lam
    elif est.control == "fixed":
        opts["segment_length"] = match.segment_length
    elif est.control == "random":
        if rng is None:
            raise ValueError(f"rng: estimator {est.label!r} draws random boundaries and needs an rng")
        opts["given_boundaries"] = random_boundaries(rollouts, match.rate, rng)
    elif est.control == "oracle":
        opts["given_boundaries"] = oracle_boundaries(rollouts, est.oracle_tol)
    rule = registry.boundary_rule(est.estimator, opts)
    for name in registry.needed_data(est.estimator, rule):
        if name == "logprobs":
            opts[name] = rollouts.logprobs
        elif name == "response_ids":
            opts[name] = rollouts.response_ids
        elif name == "entropy":
            opts[name] = entropy(rollouts)
    return opts


def advantages(est: Estimator, rollouts: Rollouts, values: np.ndarray, rng: np.random.Generator | None = None,
               match: Matched | None = None, backend: str = "auto") -> np.ndarray:
    """[N] float64 advantages of `est` on `rollouts` with [N] critic `values` (V before token t), gamma 1.

    rng: for the "random" control. match: `matched(rollouts)` if already computed.
    """
    values = np.asarray(values)
    if values.shape != rollouts.positions.shape:
        raise ValueError(f"values: shape {values.shape}, expected [{rollouts.positions.shape[0]}] (one per token)")
    result = compute_advantages_ragged(rollouts.rewards, values.astype(np.float64), rollouts.offsets,
                                       estimator=est.estimator, gamma=1.0, backend=backend,
                                       **call_options(est, rollouts, rng, match))
    return np.asarray(result.advantages, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# exact expectation under the exact critic


def action_dependent(est: Estimator) -> bool:
    """Whether `est`'s lambda_t can depend on sampled actions (then it may be biased with the exact
    critic): sae with the logprob or quantile rule, and the oracle (unbiased all the same at 1e-9)."""
    if est.estimator != "sae" or est.control in ("random", "fixed"):
        return False
    if est.control == "oracle":
        return True
    return registry.boundary_rule(est.estimator, est.options) in ("logprob", "quantile")


def _lambda_table(est: Estimator, T: int, probs: np.ndarray, adv: np.ndarray, match: Matched) -> np.ndarray:
    """[T, K, 2] float64 c[t, k, z]: E[lambda_{t-1}] when token t is option k in state z (row 0 unused)."""
    spec = registry.make_spec(est.estimator, **call_options_scalar(est, match))
    lam = spec.lam
    if est.estimator == "mc":
        return np.ones((T, K, 2))
    if est.estimator == "gae":
        return np.full((T, K, 2), lam)
    if est.estimator == "vapo":
        return np.full((T, K, 2), min(1.0, max(0.0, 1.0 - 1.0 / (spec.option("alpha") * T))))
    if est.control == "random":
        return np.full((T, K, 2), 1.0 - match.rate * (1.0 - lam))
    if est.control == "oracle":
        return np.where(np.abs(adv) > est.oracle_tol, lam, 1.0)
    rule = spec.boundary
    if rule == "logprob":
        with np.errstate(divide="ignore"):
            lp = np.log(probs).astype(np.float32).astype(np.float64)
        b = np.broadcast_to((lp < math.log(spec.threshold))[:, :, None], (T, K, 2))
    elif rule == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(1)
        b = np.broadcast_to((h > spec.entropy_threshold)[:, None, None], (T, K, 2))
    elif rule == "fixed":
        b = np.broadcast_to((np.arange(T) % spec.segment_length == 0)[:, None, None], (T, K, 2))
    else:
        raise ValueError(f"est: no exact expectation for {est.label!r} (its boundaries depend on the whole response)")
    return np.where(b, lam, 1.0)


def call_options_scalar(est: Estimator, match: Matched) -> dict[str, Any]:
    """`est`'s scalar options with the matched ones filled in (no per-token data)."""
    opts = dict(est.options)
    if est.control == "gae_matched":
        opts["lam"] = match.lam
    elif est.control == "fixed":
        opts["segment_length"] = match.segment_length
    return opts


def expected_gradient(est: Estimator, rollouts: Rollouts, match: Matched | None = None,
                      solutions: list | None = None) -> np.ndarray:
    """[sum_j T_j * K] float64: E[gradient.batch(rollouts, advantages(est, ...))] with the exact critic
    (values = true_values), over the sampling of the responses, for the tasks and policies of `rollouts`.

    Dynamic programming per task, with c[t, k, z] = E[lambda_{t-1} | token t is option k in state z]:
    G[t, k, z] = E[A_hat_t | z_t = z, a_t = k] = Q[t, k, z] - V[t, z] + sum_z' P(z' | t, k, z) F[t + 1, z'],
    F[t, z] = sum_k p[t, k] c[t, k, z] G[t, k, z] (F[T] = 0), and the gradient's cell (t, k) is
    sum_z d[t, z] p[t, k] (G[t, k, z] - sum_k' p[t, k'] G[t, k', z]) / tasks. G = Q - V (F = 0) exactly
    when c does not depend on (k, z). The matched controls use `match` (default `matched(rollouts)`), i.e.
    rates of this batch taken as fixed. Not defined for the quantile rule (raises ValueError).
    solutions: `process.solve` of each task under its policy, if already known (saves time).
    """
    match = match or matched(rollouts)
    if solutions is None:
        solutions = [solve(task, p) for task, p in zip(rollouts.tasks, rollouts.probs)]
    parts = []
    for task, p, s in zip(rollouts.tasks, rollouts.probs, solutions):
        T = task.length
        adv = s.q - s.values[:-1, None, :]
        c = _lambda_table(est, T, p, adv, match)
        G = adv.copy()
        F = np.zeros(2)
        n = task.next_one
        for t in range(T - 1, -1, -1):
            G[t] += n[t] * F[1] + (1.0 - n[t]) * F[0]
            F = (p[t][:, None] * c[t] * G[t]).sum(0)
        centred = G - np.einsum("tk,tkz->tz", p, G)[:, None, :]
        parts.append((p * np.einsum("tz,tkz->tk", s.occupancy[:-1], centred)).reshape(-1))
    return np.concatenate(parts) / len(parts)
