"""The types every layer shares: the validated estimator, the flat row layout, the problem table.

This module imports nothing from sae_core, so that the registry, the schedules, every kernel and
the public API can all depend on it without a cycle (see docs/architecture.md).

Time index: per response, tokens t = 0..T-1; `V_t` is the critic's value of the prefix before
token t; `lambda_t` multiplies A_next(t), the advantage of the next position that takes part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

# Columns of the per-row problem table every backend fills: the first bad token of the row
# (index within the row), -1 where the row is clean.
PROBLEM_COLUMNS = ("response_mask", "rewards", "values", "score", "overflow")

# An estimator name used only inside sae_core: lambda_t given per token by the caller
# (`compute_advantages_from_lambdas`); it is not in the registry's list of estimators.
GIVEN_LAMBDAS = "lambdas"


class Advantages(NamedTuple):
    """Result of an estimator, in the caller's array type, dtype and device.

    advantages: [B, T] (or flat [N]) float, A_t for the actor.
    returns:    [B, T] (or flat [N]) float, R_t, the critic's target.
    boundaries: [B, T] (or flat [N]) bool, True where token t starts a new segment; all False for
                estimators without segments and at masked positions.
    """

    advantages: Any
    returns: Any
    boundaries: Any


@dataclass(frozen=True)
class EstimatorSpec:
    """A validated estimator with its parameters: what every backend computes.

    Built by `sae_core.registry.make_spec`, which checks every value; fields that the estimator
    does not read keep their defaults. `boundary` is None for estimators without segments (gae,
    mc, vapo, given lambdas).
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
    extra: tuple[tuple[str, Any], ...] = ()  # options without a field here: (name, value), sorted

    def option(self, name: str) -> Any:
        """The value of the option `name`, a field or one of `extra`."""
        if name in self.__dataclass_fields__ and name != "extra":
            return getattr(self, name)
        return dict(self.extra)[name]


@dataclass
class Rows:
    """Flat per-token columns and the row layout that backends scan.

    Every per-token array is 1-D over N tokens (numpy for the CPU backends, torch tensors for the
    torch and Triton backends); row i is `[starts[i], starts[i] + lengths[i])`, its own time index
    t = 0..lengths[i]-1. `mask` is None when every token is valid. The padded layout [B, T] is the
    special case starts = arange(B) * T, lengths = T, so one kernel serves both.

    `given` holds the caller's boundaries (rule "given"); `lambdas` the caller's lambda_t
    (estimator GIVEN_LAMBDAS), in the time index of the module docstring: lambda_t multiplies
    A_next(t).
    """

    rewards: Any
    values: Any
    mask: Any
    starts: np.ndarray
    lengths: np.ndarray
    logprobs: Any = None
    response_ids: Any = None
    entropy: Any = None
    given: Any = None
    lambdas: Any = None

    @property
    def score(self) -> Any:
        """The float data a score rule compares (entropy, else log-probs), or None."""
        return self.entropy if self.entropy is not None else self.logprobs
