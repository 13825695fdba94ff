"""The lab's synthetic RLVR process, whose true values and advantages are known exactly.

The process. A task (a prompt) is a sequence of T positions; at position t the policy picks one of
at most K options with known probabilities p[t, k], and each option has an effect on a hidden bit
z ("the answer will be right if nothing else happens"): keep z, break it (z = 0) or set it (z = 1).
Most positions are routine: one near-certain option that keeps z, and rare slips, some harmless,
some that break. A few positions are decisions: two to four options of moderate probability, each
setting z to right or wrong. The reward is verifiable and binary, 1 when z = 1 after the last
position (flipped with probability `label_noise`), as in RL with verifiable rewards.

Exact values. The state before position t is (t, z), so dynamic programming backwards gives
V[t, z] = sum_k p[t, k] * V[t + 1, effect_k(z)], with V[T, z] the expected reward. Transitions are
deterministic given the option, so with gamma = 1 the exact advantage of the sampled option is
A_t = V[t + 1, z_{t+1}] - V[t, z_t]: per token, in the same time index as `sae_core`
(values[t] is the value of the prefix before token t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEEP, BREAK, SET_RIGHT, SET_WRONG = 0, 1, 2, 3
K = 4  # options per position at most


@dataclass(frozen=True)
class TaskConfig:
    """The synthetic process. Lengths are in tokens; rates are per position."""

    min_length: int = 512
    max_length: int = 1024
    decision_rate: float = 0.02  # share of positions that are decisions
    branching: tuple[int, int] = (2, 4)  # options at a decision, inclusive range
    decision_concentration: float = 1.0  # Dirichlet concentration of a decision's option probabilities
    slip_rate: float = 0.01  # at a routine position, the total probability of the two slip options
    harmful_slip_share: float = 0.5  # of a slip's probability, the part that breaks z
    label_noise: float = 0.0  # probability that the verifier flips the reward


@dataclass
class Rollouts:
    """Sampled responses with their exact values and advantages, in the ragged layout.

    offsets: [B + 1] int64; row i is tokens offsets[i]..offsets[i + 1] - 1 (t = 0..L_i - 1).
    Per token [N]: response_ids int32 (position * K + option), logprobs float32 (log p of the
    sampled option), true_values float64 (V[t, z_t], before token t), true_advantages float64
    (V[t + 1, z_{t+1}] - V[t, z_t]), decision bool (the position is a decision).
    Per row [B]: reward float32 (the verifier's 0/1), task int64 (the prompt).
    """

    offsets: np.ndarray
    response_ids: np.ndarray
    logprobs: np.ndarray
    true_values: np.ndarray
    true_advantages: np.ndarray
    decision: np.ndarray
    reward: np.ndarray
    task: np.ndarray

    @property
    def rewards(self) -> np.ndarray:
        """[N] float32 token-level rewards: the outcome on each response's last token."""
        out = np.zeros(self.response_ids.shape[0], dtype=np.float32)
        out[self.offsets[1:] - 1] = self.reward
        return out


def make_task(cfg: TaskConfig, rng: np.random.Generator):
    """One task: (probs [T, K] float64, effects [T, K] int8, decision [T] bool)."""
    T = int(rng.integers(cfg.min_length, cfg.max_length + 1))
    probs = np.zeros((T, K))
    effects = np.zeros((T, K), dtype=np.int8)
    decision = rng.random(T) < cfg.decision_rate
    # routine: the near-certain option, a harmless and a harmful slip
    slip = rng.uniform(0.2, 1.8, size=T) * cfg.slip_rate
    probs[:, 0] = 1.0 - slip
    probs[:, 1] = slip * (1.0 - cfg.harmful_slip_share)
    probs[:, 2] = slip * cfg.harmful_slip_share
    effects[:, 2] = BREAK
    for t in np.flatnonzero(decision):
        b = int(rng.integers(cfg.branching[0], cfg.branching[1] + 1))
        p = rng.dirichlet(np.full(b, cfg.decision_concentration))
        right = rng.random(b) < 0.5
        right[rng.integers(b)] = True  # at least one way to be right
        probs[t] = 0.0
        probs[t, :b] = p
        effects[t] = KEEP
        effects[t, :b] = np.where(right, SET_RIGHT, SET_WRONG)
    return probs, effects, decision


def _next_z(z: np.ndarray, effect: np.ndarray) -> np.ndarray:
    """int8 z after an option with `effect` (same shape; BREAK and SET_WRONG both make it 0)."""
    return np.select([effect == KEEP, effect == SET_RIGHT], [z, 1], default=0).astype(np.int8)


def exact_values(probs: np.ndarray, effects: np.ndarray, label_noise: float) -> np.ndarray:
    """[T + 1, 2] float64: V[t, z], the probability of reward 1 from the state before position t."""
    T = probs.shape[0]
    V = np.empty((T + 1, 2))
    V[T] = [label_noise, 1.0 - label_noise]
    for t in range(T - 1, -1, -1):
        for z in (0, 1):
            nz = _next_z(np.full(K, z, dtype=np.int8), effects[t])
            V[t, z] = probs[t] @ V[t + 1, nz]
    return V


def sample(cfg: TaskConfig, tasks: int, samples: int, seed: int = 0) -> Rollouts:
    """`samples` responses to each of `tasks` tasks, with exact values and advantages.

    Everything follows from `seed`; rows are ordered task by task.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for task in range(tasks):
        probs, effects, decision = make_task(cfg, rng)
        V = exact_values(probs, effects, cfg.label_noise)
        T = probs.shape[0]
        cum = np.cumsum(probs, axis=1)
        u = rng.random((samples, T))
        options = np.minimum((u[:, :, None] > cum[None, :, :]).sum(-1), K - 1)  # [n, T]
        z = np.empty((samples, T + 1), dtype=np.int8)
        z[:, 0] = 1
        for t in range(T):
            z[:, t + 1] = _next_z(z[:, t], effects[t, options[:, t]])
        values = V[np.arange(T + 1)[None, :], z]  # [n, T + 1]
        right = z[:, T] == 1
        flip = rng.random(samples) < cfg.label_noise
        parts.append(dict(
            response_ids=(np.arange(T)[None, :] * K + options).astype(np.int32),
            logprobs=np.log(probs[np.arange(T)[None, :], options]).astype(np.float32),
            true_values=values[:, :T], true_advantages=values[:, 1:] - values[:, :T],
            decision=np.broadcast_to(decision, (samples, T)), reward=(right ^ flip).astype(np.float32),
            task=np.full(samples, task, dtype=np.int64), length=T))
    lengths = np.concatenate([np.full(samples, p["length"]) for p in parts])
    flat = {k: np.concatenate([p[k].reshape(-1) for p in parts]) for k in
            ("response_ids", "logprobs", "true_values", "true_advantages", "decision")}
    return Rollouts(offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    reward=np.concatenate([p["reward"] for p in parts]),
                    task=np.concatenate([p["task"] for p in parts]), **flat)
