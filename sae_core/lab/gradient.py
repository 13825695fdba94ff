"""Policy gradients in the lab: the exact one, and each estimator's batch estimate of it.

The policy is tabular: a softmax over each position's options, logits[j][t, k] for task j. The
objective is the mean expected reward over the batch's tasks, J = mean_j V_j[0, 1], so its gradient
is the concatenation of `process.exact_gradient` per task, divided by the number of tasks.

A batch of rollouts and per-token advantages A_hat estimates it by the score-function estimator
g_hat[j][t, k] = (1 / n_j) sum_{i in task j} A_hat[i, t] (1[a_{i,t} = k] - p_j[t, k]) / tasks,
unbiased when A_hat = A (the exact advantages), since E[(1[a = k] - p_k)(Q_a - V)] = p_k (Q_k - V).
Vectors are flat: task j's [T_j, K] block after task j - 1's (`layout`).
"""

from __future__ import annotations

import math

import numpy as np

from .process import K, Rollouts, exact_gradient


def layout(rollouts: Rollouts) -> np.ndarray:
    """[tasks + 1] int64: task j's block is flat entries layout[j] * K .. layout[j + 1] * K - 1."""
    return np.concatenate([[0], np.cumsum([t.length for t in rollouts.tasks])]).astype(np.int64)


def exact(rollouts: Rollouts) -> np.ndarray:
    """[sum_j T_j * K] float64: dJ/dlogits of J = mean over `rollouts.tasks` of the expected reward,
    under the policies that sampled `rollouts` (`rollouts.probs`)."""
    parts = [exact_gradient(t, p) for t, p in zip(rollouts.tasks, rollouts.probs)]
    return np.concatenate([g.reshape(-1) for g in parts]) / len(parts)


def batch(rollouts: Rollouts, advantages: np.ndarray) -> np.ndarray:
    """[sum_j T_j * K] float64: the score-function estimate of `exact(rollouts)` from [N] per-token
    `advantages` (any float dtype; A_hat[t] weighs the score of token t's sampled option)."""
    adv = np.asarray(advantages, dtype=np.float64)
    if adv.shape != rollouts.positions.shape:
        raise ValueError(f"advantages: shape {adv.shape}, expected [{rollouts.positions.shape[0]}] (one per token)")
    base = layout(rollouts)
    ntasks = len(rollouts.tasks)
    per_task = np.bincount(rollouts.task, minlength=ntasks).astype(np.float64)  # responses per task
    row = rollouts.row_of_token
    weight = adv / per_task[rollouts.task[row]] / ntasks
    cell = base[rollouts.task[row]] + rollouts.positions  # (task, t) index
    size = int(base[-1])
    chosen = np.bincount(cell * K + rollouts.options, weights=weight, minlength=size * K)
    total = np.bincount(cell, weights=weight, minlength=size)
    probs = np.concatenate([p.reshape(-1, K) for p in rollouts.probs])  # [sum T_j, K]
    return chosen - (total[:, None] * probs).reshape(-1)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b of two [M] float64 vectors without BLAS: with OpenBLAS's threads on a busy 2-core machine a
    100k-long `a @ b` took 8 ms instead of 20 us (einsum's own loop: 50-90 us either way)."""
    return float(np.einsum("i,i->", a, b))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two flat [D] vectors (NaN when either is zero)."""
    na, nb = math.sqrt(dot(a, a)), math.sqrt(dot(b, b))
    return dot(a, b) / (na * nb) if na > 0 and nb > 0 else float("nan")


def bias_variance(estimates: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Split of the mean squared error of [R, D] repeated batch estimates against the [D] truth,
    relative to |truth|^2: bias2 = |mean - truth|^2, variance = mean |estimate - mean|^2 (NaN when
    R = 1), mse = bias2 + variance; and pooled_cosine = cosine(mean, truth)."""
    mean = estimates.mean(0)
    norm = dot(truth, truth)
    err = mean - truth
    bias2 = dot(err, err) / norm
    variance = float(((estimates - mean) ** 2).sum(1).mean()) / norm if estimates.shape[0] > 1 else math.nan
    return {"bias2": bias2, "variance": variance, "mse": bias2 + variance, "pooled_cosine": cosine(mean, truth)}
