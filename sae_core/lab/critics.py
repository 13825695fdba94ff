"""Critics with controlled errors: the exact values of the lab's process, plus what a trained
critic might get wrong.

Three error models, alone or summed (strengths in value units, values being in [0, 1]):
iid Gaussian noise per token; a smooth drift along the response (a random walk that restarts at
each response, scaled to reach about `drift` at its end); and shrinkage toward the batch's mean
value, V_hat = (1 - shrink) * V + shrink * mean(V) (shrink 1: a critic that has learned only the
mean, the sparse-reward failure the SAE paper describes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .process import Rollouts


@dataclass(frozen=True)
class Critic:
    """A critic's errors on top of the exact values; strengths are in value units (0..1)."""

    noise: float = 0.0  # iid Gaussian per token
    drift: float = 0.0  # a random walk along the response, reaching about this size at its end
    shrink: float = 0.0  # in [0, 1]: V_hat = (1 - shrink) * V + shrink * mean(V)

    @property
    def name(self) -> str:
        """The nonzero errors, e.g. "noise 0.1, drift 0.2"; "exact" for none."""
        parts = [f"{k} {v:g}" for k, v in asdict(self).items() if v]
        return ", ".join(parts) if parts else "exact"


DEFAULT_CRITICS = (Critic(), Critic(noise=0.1), Critic(noise=0.3), Critic(noise=0.5), Critic(drift=0.5),
                   Critic(shrink=1.0), Critic(noise=0.05, drift=0.2, shrink=0.9))


def critic_values(rollouts: Rollouts, critic: Critic, seed: int = 0) -> np.ndarray:
    """[N] float32 values V_hat[t] (before token t) of a critic with `critic`'s errors."""
    rng = np.random.default_rng(seed)
    v = rollouts.true_values.copy()
    if critic.shrink:
        v = (1.0 - critic.shrink) * v + critic.shrink * v.mean()
    if critic.noise:
        v = v + rng.normal(0.0, critic.noise, size=v.shape)
    if critic.drift:
        steps = rng.normal(0.0, 1.0, size=v.shape)
        lengths = np.diff(rollouts.offsets)
        walk = np.cumsum(steps)
        starts = np.repeat(rollouts.offsets[:-1], lengths)
        before = np.concatenate([[0.0], walk])[starts]  # restart the walk at each response
        scale = critic.drift / np.sqrt(np.repeat(np.maximum(lengths, 1), lengths))
        v = v + (walk - before) * scale
    return v.astype(np.float32)
