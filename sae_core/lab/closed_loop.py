"""The closed loop: a tabular policy trained by PPO with a learned critic alongside, scored by the exact
expected reward.

The policy is one [T_j, K] table of logits per task, starting at the task's own logits (absent options
stay at -inf). Before iteration 0 a critic is fitted on rollouts of the initial policy (the shared
value warm-up); then each iteration samples `samples` responses per task from the current policy,
values them with the critic, turns them into per-token advantages with the caller's `advantage_fn`
(critic targets are Monte Carlo, the same for every estimator, i.e. critic_lam = 1), optionally
whitens them, takes `epochs` full-batch gradient-ascent steps on the PPO clipped surrogate, and
refits the critic on that iteration's rollouts plus the last `window - 1` iterations' ones.

The surrogate is normalised as the policy gradient (`gradient.batch`): for task j with n_j responses,
L = (1 / tasks) sum_j (1 / n_j) sum_{i, t} min(rho A, clip(rho, 1 - eps, 1 + eps) A), with
rho = pi(a_t) / pi_old(a_t); at rho = 1 its gradient is the score-function estimate of dJ/dlogits.
Its gradient w.r.t. the logits of cell (j, t) is, per token, c * rho * A * (1[a = k] - pi[t, k]),
where c is the token's weight and the clipped branch (A > 0 and rho > 1 + eps, or A < 0 and
rho < 1 - eps) contributes 0.

J_j = solve(task_j, pi_j).expected_reward is exact; the loop records J = mean_j J_j before each
iteration's update and after the last one, and its mean over those points (the area under the curve).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .learned import LearnedCritic
from .process import K, Rollouts, Task, rollout, softmax, solve

AdvantageFn = Callable[[Rollouts, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoopConfig:
    """iterations: PPO iterations; samples: responses per task per iteration; epochs: gradient steps on
    each batch; lr: step size on the logits; clip: PPO's epsilon; whiten: standardise advantages over the
    batch; window: iterations of rollouts the critic is refitted on; warmup_samples: responses per task
    for the value warm-up; critic: the learned critic (Monte Carlo targets)."""

    iterations: int = 100
    samples: int = 8
    epochs: int = 4
    lr: float = 2.0
    clip: float = 0.2
    whiten: bool = False
    window: int = 4
    warmup_samples: int = 32
    critic: LearnedCritic = field(default_factory=lambda: LearnedCritic(target="mc", buckets=256, max_tokens=8192))

    def __post_init__(self):
        for name in ("iterations", "samples", "epochs", "window", "warmup_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0 or not 0 < self.clip < 1:
            raise ValueError(f"lr, clip: need lr > 0 and 0 < clip < 1, got {self.lr}, {self.clip}")
        if self.critic.target != "mc":
            raise ValueError("critic: the closed loop trains the critic on Monte Carlo targets (target='mc')")


@dataclass
class LoopResult:
    """curve [iterations + 1] float64: the exact mean expected reward J before each iteration's update,
    then after the last; auc: its mean (the closed-loop measure); critic_rmse [iterations] float64: the
    critic's RMSE against the exact values on each iteration's batch; seconds: wall time."""

    curve: np.ndarray
    auc: float
    critic_rmse: np.ndarray
    seconds: float


def _cells(r: Rollouts) -> tuple[np.ndarray, np.ndarray]:
    """[N] int64 cell (task, t) index into the stacked [sum T_j, K] tables, and [N] float64 token weights."""
    base = np.concatenate([[0], np.cumsum([t.length for t in r.tasks])])
    task = r.task[r.row_of_token]
    per_task = np.bincount(r.task, minlength=len(r.tasks)).astype(np.float64)
    return base[task] + r.positions, 1.0 / per_task[task] / len(r.tasks)


def surrogate(probs: np.ndarray, old_probs: np.ndarray, r: Rollouts, advantages: np.ndarray,
              clip: float) -> float:
    """The clipped surrogate L (module docstring) of the stacked [sum T_j, K] float64 `probs` (current
    policy) against `old_probs` (sampling policy), for [N] per-token `advantages` of rollouts `r`."""
    cell, w = _cells(r)
    a = r.options.astype(np.int64)
    rho = probs[cell, a] / old_probs[cell, a]
    adv = np.asarray(advantages, dtype=np.float64)
    return float(np.sum(w * np.minimum(rho * adv, np.clip(rho, 1 - clip, 1 + clip) * adv)))


def surrogate_gradient(probs: np.ndarray, old_probs: np.ndarray, r: Rollouts, advantages: np.ndarray,
                       clip: float) -> np.ndarray:
    """[sum T_j, K] float64: dL/dlogits of `surrogate` (same arguments), analytic."""
    cell, w = _cells(r)
    a = r.options.astype(np.int64)
    rho = probs[cell, a] / old_probs[cell, a]
    adv = np.asarray(advantages, dtype=np.float64)
    clipped = ((adv > 0) & (rho > 1 + clip)) | ((adv < 0) & (rho < 1 - clip))
    g = np.where(clipped, 0.0, w * rho * adv)  # d(rho A)/dlogit = rho A (1[a = k] - pi_k)
    size = probs.shape[0]
    chosen = np.bincount(cell * K + a, weights=g, minlength=size * K).reshape(size, K)
    total = np.bincount(cell, weights=g, minlength=size)
    return chosen - total[:, None] * probs


def _stack(tables: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(tables), axis=0)


def run(tasks: Sequence[Task], advantage_fn: AdvantageFn, config: LoopConfig = LoopConfig(),
        seed: int = 0) -> LoopResult:
    """Train the tabular policy of `tasks` by PPO for `config.iterations` (module docstring).

    advantage_fn(rollouts, values) -> [N] advantages, from the batch and the critic's [N] float32 values
    (before token t); e.g. exact ones: `lambda r, v: r.true_advantages`."""
    if not tasks:
        raise ValueError("tasks: empty")
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 3])
    lengths = [t.length for t in tasks]
    split = np.cumsum(lengths)[:-1]
    logits = _stack([t.logits for t in tasks]).copy()
    probs = softmax(logits)
    window: list[Rollouts] = [rollout(tasks, config.warmup_samples, rng)]
    critic = config.critic.fit(window)
    curve = np.empty(config.iterations + 1)
    rmse = np.empty(config.iterations)
    for it in range(config.iterations):
        per_task = np.split(probs, split)
        solutions = [solve(t, p) for t, p in zip(tasks, per_task)]
        curve[it] = np.mean([s.expected_reward for s in solutions])
        batch = rollout(tasks, config.samples, rng, probs=per_task, solutions=solutions)
        values = critic.values(batch)
        rmse[it] = float(np.sqrt(np.mean((values - batch.true_values) ** 2)))
        adv = np.asarray(advantage_fn(batch, values), dtype=np.float64)
        if adv.shape != batch.positions.shape:
            raise ValueError(f"advantage_fn: returned shape {adv.shape}, expected [{batch.positions.shape[0]}]")
        if config.whiten:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        old = probs
        for _ in range(config.epochs):
            logits = logits + config.lr * surrogate_gradient(probs, old, batch, adv, config.clip)
            probs = softmax(logits)
        window = (window + [batch])[-config.window:]
        critic = config.critic.fit(window)
    curve[-1] = np.mean([solve(t, p).expected_reward for t, p in zip(tasks, np.split(probs, split))])
    return LoopResult(curve=curve, auc=float(curve.mean()), critic_rmse=rmse, seconds=time.perf_counter() - start)
