"""Hand-made critics: the exact values of the lab's process, degraded in controlled ways.

Every critic maps a `Rollouts` to [N] float32 values V_hat[t], the value of the prefix before token t
(the index convention of `sae_core`). Some read the hidden state (`rollouts.state`) or the exact
values: they are oracles by construction, built to isolate one failure of a real critic:

- exact: V[t, z_t];
- blind: the row's prompt constant V[0, 1] (it registers nothing that happens in the response);
- late(k): registers a change of z k tokens late, V[t, z_{max(t - k, 0)}];
- exact_at_decisions: exact at decision positions, blind elsewhere;
- exact_at_boundaries(threshold): exact at tokens whose probability is below `threshold` (where SAE
  bootstraps), blind elsewhere.

The older error models stay available on top of any of them (strengths in value units, values being
in [0, 1]): iid Gaussian noise per token; a smooth drift along the response (a random walk that
restarts at each response, scaled to reach about `drift` at its end); and shrinkage toward the
batch's mean, V_hat = (1 - shrink) * V_hat + shrink * mean(V_hat).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import PAPER_THRESHOLD
from .estimators import logprob_boundaries
from .process import Rollouts, solve

KINDS = ("exact", "blind", "late", "exact_at_decisions", "exact_at_boundaries")


def exact(rollouts: Rollouts) -> np.ndarray:
    """[N] float32: the exact values V[t, z_t] (before token t) under the sampling policy."""
    return rollouts.true_values.astype(np.float32)


def blind(rollouts: Rollouts) -> np.ndarray:
    """[N] float32: each token gets its prompt's expected reward V[0, 1] (a critic that sees only the prompt)."""
    first = rollouts.true_values[rollouts.offsets[:-1]]  # z_0 = 1 on every row, so this is V[0, 1]
    return np.repeat(first, rollouts.lengths).astype(np.float32)


def value_tables(rollouts: Rollouts) -> list[np.ndarray]:
    """Per task j, the [T_j + 1, 2] float64 exact values V[t, z] under `rollouts.probs[j]`."""
    return [solve(t, p).values for t, p in zip(rollouts.tasks, rollouts.probs)]


def late(rollouts: Rollouts, k: int, tables: list[np.ndarray] | None = None) -> np.ndarray:
    """[N] float32: V[t, z_{max(t - k, 0)}], a critic that registers a change of z k >= 0 tokens late.

    `tables`: `value_tables(rollouts)` if already computed (it costs one `solve` per task)."""
    if int(k) != k or k < 0:
        raise ValueError(f"k: must be an integer >= 0, got {k!r}")
    k = int(k)
    tables = value_tables(rollouts) if tables is None else tables
    pos = rollouts.positions.astype(np.int64)
    seen = np.arange(pos.shape[0], dtype=np.int64) - np.minimum(pos, k)  # the flat index of token max(t - k, 0)
    z = rollouts.state[seen].astype(np.int64)
    task = rollouts.task[rollouts.row_of_token]
    base = np.concatenate([[0], np.cumsum([tab.shape[0] for tab in tables])])
    flat = np.concatenate([tab for tab in tables])  # [sum (T_j + 1), 2]
    return flat[base[task] + pos, z].astype(np.float32)


def exact_at_decisions(rollouts: Rollouts) -> np.ndarray:
    """[N] float32: exact at decision positions, the prompt constant (blind) elsewhere."""
    return np.where(rollouts.decision, exact(rollouts), blind(rollouts))


def exact_at_boundaries(rollouts: Rollouts, threshold: float = PAPER_THRESHOLD) -> np.ndarray:
    """[N] float32: exact at tokens with probability < `threshold` (where SAE bootstraps), blind elsewhere."""
    return np.where(logprob_boundaries(rollouts, threshold), exact(rollouts), blind(rollouts))


def add_errors(rollouts: Rollouts, values: np.ndarray, rng: np.random.Generator, noise: float = 0.0,
               drift: float = 0.0, shrink: float = 0.0) -> np.ndarray:
    """[N] float32: [N] `values` with shrinkage toward their mean, iid noise and a per-response drift added."""
    for name, v in (("noise", noise), ("drift", drift)):
        if v < 0:
            raise ValueError(f"{name}: must be >= 0, got {v!r}")
    if not 0.0 <= shrink <= 1.0:
        raise ValueError(f"shrink: must be in [0, 1], got {shrink!r}")
    v = np.asarray(values, dtype=np.float64).copy()
    if shrink:
        v = (1.0 - shrink) * v + shrink * v.mean()
    if noise:
        v = v + rng.normal(0.0, noise, size=v.shape)
    if drift:
        lengths = rollouts.lengths
        walk = np.cumsum(rng.normal(0.0, 1.0, size=v.shape))
        before = np.concatenate([[0.0], walk])[np.repeat(rollouts.offsets[:-1], lengths)]  # restart per response
        v = v + (walk - before) * drift / np.sqrt(np.repeat(np.maximum(lengths, 1), lengths))
    return v.astype(np.float32)


@dataclass(frozen=True)
class HandCritic:
    """A hand-made critic: `kind` (one of KINDS) with its parameter (`k` for late, `threshold` for
    exact_at_boundaries), plus optional noise, drift and shrink errors on top (value units)."""

    kind: str = "exact"
    k: int = 0
    threshold: float = PAPER_THRESHOLD
    noise: float = 0.0
    drift: float = 0.0
    shrink: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if int(self.k) != self.k or self.k < 0:
            raise ValueError(f"k: must be an integer >= 0, got {self.k!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold!r}")
        if self.noise < 0 or self.drift < 0 or not 0.0 <= self.shrink <= 1.0:
            raise ValueError(f"noise, drift, shrink: need noise >= 0, drift >= 0, 0 <= shrink <= 1, got "
                             f"{self.noise}, {self.drift}, {self.shrink}")

    @property
    def name(self) -> str:
        """E.g. "late(8)", "exact_at_boundaries(0.2)", "exact + noise 0.1"."""
        base = {"late": f"late({self.k})", "exact_at_boundaries": f"exact_at_boundaries({self.threshold:g})"}
        parts = [base.get(self.kind, self.kind)]
        parts += [f"{e} {getattr(self, e):g}" for e in ("noise", "drift", "shrink") if getattr(self, e)]
        return " + ".join(parts)

    def values(self, rollouts: Rollouts, rng: np.random.Generator | None = None) -> np.ndarray:
        """[N] float32 values V_hat[t] (before token t); `rng` draws the noise and drift (needed only for those)."""
        if self.kind == "exact":
            v = exact(rollouts)
        elif self.kind == "blind":
            v = blind(rollouts)
        elif self.kind == "late":
            v = late(rollouts, self.k)
        elif self.kind == "exact_at_decisions":
            v = exact_at_decisions(rollouts)
        else:
            v = exact_at_boundaries(rollouts, self.threshold)
        if not (self.noise or self.drift or self.shrink):
            return v
        if rng is None and (self.noise or self.drift):
            raise ValueError("rng: a critic with noise or drift needs a numpy Generator")
        return add_errors(rollouts, v, rng if rng is not None else np.random.default_rng(0),
                          self.noise, self.drift, self.shrink)


DEFAULT_CRITICS = (HandCritic("exact"), HandCritic("blind"), HandCritic("late", k=8), HandCritic("late", k=64),
                   HandCritic("exact_at_decisions"), HandCritic("exact_at_boundaries", threshold=PAPER_THRESHOLD),
                   HandCritic("exact", noise=0.1), HandCritic("exact", shrink=1.0))
