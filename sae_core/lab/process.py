"""The lab's synthetic RLVR processes, whose values, advantages and policy gradient are known exactly.

A task (a prompt) is a sequence of T positions; at position t the policy picks one of at most K
options with probabilities p[t, k] (softmax of the policy's logits), and the option moves a hidden
bit z ("the answer will be right if nothing else happens", z = 1 at the start): z' = 1 with
probability `next_one[t, k, z]`. The reward is verifiable and binary: 1 when z = 1 after the last
position (flipped with probability `label_noise`), on the last token, as in RL with verifiable
rewards. Position kinds:

- routine: one near-certain option that keeps z and two rare slips (0.1%-1% each by default), one
  harmless, one harmful (it breaks z);
- fork (`fork_rate`): two to four harmless options of moderate probability (Dirichlet): the
  low-probability tokens that change nothing, so that the threshold changes the boundary rate;
- decision (`decision_rate`): two to four options, at least one right and one wrong. A wrong option
  is rare (probability log-uniform in [0.005, 0.15], below the paper's threshold) with probability
  `alignment`, else common (uniform in [0.2, 0.3]); the right options share the rest (Dirichlet).

Processes (`kind`):
- "overwrite": a decision sets z (right: 1, wrong: 0) whatever came before, so later decisions erase
  earlier ones and only the last one matters;
- "absorbing": a wrong decision or harmful slip breaks z for good; a right option keeps z, and
  repairs a broken one with probability `recovery`.

Exact solution (`solve`): the state before position t is (t, z); backwards,
V[t, z] = sum_k p[t, k] Q[t, k, z], Q[t, k, z] = n V[t+1, 1] + (1 - n) V[t+1, 0] with
n = next_one[t, k, z]; forwards, the occupancy d[t, z] = P(z_t = z). The advantage of the sampled
option is A_t = Q[t, a_t, z_t] - V[t, z_t] (its expectation given the past is 0), in the same time
index as `sae_core` (values[t] is the value of the prefix before token t, gamma = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

K = 4  # options per position at most
KINDS = ("overwrite", "absorbing")
RARE_RANGE = (0.005, 0.15)  # a rare wrong option's probability (log-uniform)
COMMON_RANGE = (0.2, 0.3)  # a common wrong option's probability (uniform)


@dataclass(frozen=True)
class ProcessConfig:
    """A family of tasks. Lengths are in tokens; rates are per position."""

    kind: str = "absorbing"  # "overwrite" or "absorbing" (see the module docstring)
    min_length: int = 512
    max_length: int = 1024
    decision_rate: float = 0.008  # share of positions that are decisions
    branching: tuple[int, int] = (2, 4)  # options at a decision or fork, inclusive range
    alignment: float = 0.8  # share of wrong decision options that are rare (below p = 0.15)
    fork_rate: float = 0.02  # share of positions with harmless options of moderate probability
    slip_rate: float = 0.004  # at a routine position, the total probability of the two slips
    harmful_slip_share: float = 0.1  # of a slip's probability, the part that breaks z
    recovery: float = 0.0  # absorbing: chance that a right option repairs a broken z
    shuffle: bool = False  # permute the options at each position (no "option 0 is routine")
    label_noise: float = 0.0  # probability that the verifier flips the reward

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"min_length/max_length: need 1 <= min_length <= max_length, got "
                             f"{self.min_length}, {self.max_length}")
        lo, hi = self.branching
        if not 2 <= lo <= hi <= K:
            raise ValueError(f"branching: need 2 <= low <= high <= {K}, got {self.branching}")
        for name in ("decision_rate", "alignment", "fork_rate", "slip_rate", "harmful_slip_share", "recovery",
                     "label_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.decision_rate + self.fork_rate > 1.0:
            raise ValueError("decision_rate + fork_rate: must be at most 1")

    @classmethod
    def from_dict(cls, doc: dict) -> ProcessConfig:
        """From JSON-like keys; unknown keys are errors naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown process key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        doc = dict(doc)
        if "branching" in doc:
            doc["branching"] = tuple(doc["branching"])
        return cls(**doc)


@dataclass(frozen=True)
class Task:
    """One prompt of a process.

    logits [T, K] float64: the base policy's log-probabilities (-inf for absent options).
    next_one [T, K, 2] float64: P(z_{t+1} = 1 | option k at t, z_t = z).
    decision [T] bool: decision positions. terminal [2] float64: P(reward 1 | z after the last position).
    """

    logits: np.ndarray
    next_one: np.ndarray
    decision: np.ndarray
    terminal: np.ndarray

    @property
    def length(self) -> int:
        return int(self.logits.shape[0])

    @property
    def probs(self) -> np.ndarray:
        """[T, K] float64: the base policy's option probabilities."""
        return softmax(self.logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """[..., K] float64 probabilities of [..., K] logits (-inf: probability 0)."""
    m = logits.max(-1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(-1, keepdims=True)


def make_task(cfg: ProcessConfig, rng: np.random.Generator) -> Task:
    """One task of `cfg`'s family, drawn with `rng`."""
    T = int(rng.integers(cfg.min_length, cfg.max_length + 1))
    probs = np.zeros((T, K))
    keep = np.array([0.0, 1.0])
    next_one = np.broadcast_to(keep, (T, K, 2)).copy()
    kind = rng.random(T)
    decision = kind < cfg.decision_rate
    fork = (kind >= cfg.decision_rate) & (kind < cfg.decision_rate + cfg.fork_rate)
    slip = rng.uniform(0.2, 1.8, size=T) * cfg.slip_rate
    probs[:, 0] = 1.0 - slip
    probs[:, 1] = slip * (1.0 - cfg.harmful_slip_share)
    probs[:, 2] = slip * cfg.harmful_slip_share
    next_one[:, 2] = 0.0
    lo, hi = cfg.branching
    for t in np.flatnonzero(fork):
        b = int(rng.integers(lo, hi + 1))
        probs[t] = 0.0
        probs[t, :b] = rng.dirichlet(np.ones(b))
        next_one[t] = keep
    right_one = np.array([1.0, 1.0]) if cfg.kind == "overwrite" else np.array([cfg.recovery, 1.0])
    for t in np.flatnonzero(decision):
        b = int(rng.integers(lo, hi + 1))
        right = rng.random(b) < 0.5
        right[rng.integers(b)] = True
        if right.all():
            right[rng.integers(b)] = False
        p = np.zeros(b)
        wrong = np.flatnonzero(~right)
        rare = rng.random(wrong.size) < cfg.alignment
        p[wrong[rare]] = np.exp(rng.uniform(np.log(RARE_RANGE[0]), np.log(RARE_RANGE[1]), rare.sum()))
        p[wrong[~rare]] = rng.uniform(*COMMON_RANGE, (~rare).sum())
        p[right] = (1.0 - p.sum()) * rng.dirichlet(np.ones(right.sum()))
        probs[t] = 0.0
        probs[t, :b] = p
        next_one[t] = keep
        next_one[t, :b] = np.where(right[:, None], right_one[None, :], 0.0)
    if cfg.shuffle:
        perm = np.argsort(rng.random((T, K)), axis=1)
        probs = np.take_along_axis(probs, perm, axis=1)
        next_one = np.take_along_axis(next_one, perm[:, :, None], axis=1)
    with np.errstate(divide="ignore"):
        logits = np.log(probs)
    return Task(logits=logits, next_one=next_one, decision=decision,
                terminal=np.array([cfg.label_noise, 1.0 - cfg.label_noise]))


def make_tasks(cfg: ProcessConfig, count: int, seed: int) -> list[Task]:
    """`count` tasks of `cfg`'s family; everything follows from `seed`."""
    rng = np.random.default_rng([seed, 1])
    return [make_task(cfg, rng) for _ in range(count)]


@dataclass
class Solution:
    """The exact solution of one task under one policy (see `solve`).

    values [T + 1, 2]: V[t, z], the probability of reward 1 from the state before position t
    (row T: after the last position). q [T, K, 2]: Q[t, k, z]. occupancy [T + 1, 2]: P(z_t = z).
    """

    values: np.ndarray
    q: np.ndarray
    occupancy: np.ndarray

    @property
    def expected_reward(self) -> float:
        """J = V[0, 1]: the policy's expected reward on the task (z starts at 1)."""
        return float(self.values[0, 1])


def solve(task: Task, probs: np.ndarray | None = None) -> Solution:
    """Exact V, Q and occupancy of `task` under `probs` ([T, K] float64; default: the task's policy)."""
    p = task.probs if probs is None else probs
    T = task.length
    V = np.empty((T + 1, 2))
    Q = np.empty((T, K, 2))
    V[T] = task.terminal
    n = task.next_one
    for t in range(T - 1, -1, -1):
        Q[t] = n[t] * V[t + 1, 1] + (1.0 - n[t]) * V[t + 1, 0]
        V[t] = p[t] @ Q[t]
    d = np.empty((T + 1, 2))
    d[0] = [0.0, 1.0]
    for t in range(T):
        one = float((p[t] @ n[t]) @ d[t])  # p[t] @ n[t]: P(z' = 1 | z)
        d[t + 1] = [1.0 - one, one]
    return Solution(values=V, q=Q, occupancy=d)


def exact_gradient(task: Task, probs: np.ndarray | None = None, solution: Solution | None = None) -> np.ndarray:
    """[T, K] float64: dJ/dlogits[t, k] of J = V[0, 1] for a softmax policy over each position's options.

    = sum_z d[t, z] p[t, k] (Q[t, k, z] - V[t, z]) (the policy gradient theorem with the exact
    occupancy). Absent options (probability 0) get 0.
    """
    p = task.probs if probs is None else probs
    s = solve(task, p) if solution is None else solution
    adv = s.q - s.values[:-1, None, :]  # [T, K, 2]
    return p * np.einsum("tz,tkz->tk", s.occupancy[:-1], adv)


@dataclass
class Rollouts:
    """Sampled responses with their exact values and advantages, in the ragged layout.

    offsets: [B + 1] int64; row i is tokens offsets[i]..offsets[i + 1] - 1 (t = 0..L_i - 1).
    Per token [N]: positions int32 (t), options int8 (the sampled option), response_ids int32
    (t * K + option), logprobs float32 (log p of the sampled option under the sampling policy),
    state int8 (z_t, before token t), true_values float64 (V[t, z_t]), true_advantages float64
    (Q[t, a_t, z_t] - V[t, z_t]), decision bool (the position is a decision).
    Per row [B]: reward float32 (the verifier's 0/1), task int64 (index into `tasks`).
    tasks: the Task objects; probs: each task's [T, K] sampling policy.
    """

    offsets: np.ndarray
    positions: np.ndarray
    options: np.ndarray
    response_ids: np.ndarray
    logprobs: np.ndarray
    state: np.ndarray
    true_values: np.ndarray
    true_advantages: np.ndarray
    decision: np.ndarray
    reward: np.ndarray
    task: np.ndarray
    tasks: list = field(default_factory=list)
    probs: list = field(default_factory=list)

    @property
    def rewards(self) -> np.ndarray:
        """[N] float32 token-level rewards: the outcome on each response's last token."""
        out = np.zeros(self.response_ids.shape[0], dtype=np.float32)
        out[self.offsets[1:] - 1] = self.reward
        return out

    @property
    def lengths(self) -> np.ndarray:
        """[B] int64 response lengths."""
        return np.diff(self.offsets)

    @property
    def row_of_token(self) -> np.ndarray:
        """[N] int64: the row (response) of each token."""
        return np.repeat(np.arange(self.lengths.shape[0]), self.lengths)


def _sample_options(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, T] int8 options drawn from [T, K] probabilities."""
    cum = np.cumsum(p, axis=1)
    u = rng.random((n, p.shape[0]))
    return np.minimum((u[:, :, None] > cum[None, :, :]).sum(-1), K - 1).astype(np.int8)


def _step(z: np.ndarray, n1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int8 next z given the [..] probabilities n1 that it is 1 (deterministic when n1 is 0 or 1)."""
    return (rng.random(z.shape) < n1).astype(np.int8)


def rollout(tasks: Sequence[Task], samples: int, rng: np.random.Generator,
            probs: Sequence[np.ndarray] | None = None, solutions: Sequence[Solution] | None = None) -> Rollouts:
    """`samples` responses to each task under `probs` (default: each task's own policy); rows are
    ordered task by task. `solutions`: the tasks' `solve` under the same policies, if already known."""
    probs = [t.probs for t in tasks] if probs is None else list(probs)
    solutions = [solve(t, p) for t, p in zip(tasks, probs)] if solutions is None else list(solutions)
    parts = []
    for j, (task, p, s) in enumerate(zip(tasks, probs, solutions)):
        T = task.length
        options = _sample_options(p, samples, rng)
        z = np.empty((samples, T + 1), dtype=np.int8)
        z[:, 0] = 1
        for t in range(T):
            z[:, t + 1] = _step(z[:, t], task.next_one[t, options[:, t], z[:, t]], rng)
        zt = z[:, :T]
        tt = np.broadcast_to(np.arange(T), (samples, T))
        values = s.values[tt, zt]
        final = rng.random(samples) < task.terminal[z[:, T]]
        with np.errstate(divide="ignore"):
            lp = np.log(p[tt, options])
        parts.append(dict(
            positions=tt.astype(np.int32), options=options, response_ids=(tt * K + options).astype(np.int32),
            logprobs=lp.astype(np.float32), state=zt, true_values=values,
            true_advantages=s.q[tt, options, zt] - values, decision=np.broadcast_to(task.decision, (samples, T)),
            reward=final.astype(np.float32), task=np.full(samples, j, dtype=np.int64), length=T))
    lengths = np.concatenate([np.full(samples, q["length"]) for q in parts])
    flat = {k: np.concatenate([q[k].reshape(-1) for q in parts]) for k in
            ("positions", "options", "response_ids", "logprobs", "state", "true_values", "true_advantages",
             "decision")}
    return Rollouts(offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    reward=np.concatenate([q["reward"] for q in parts]),
                    task=np.concatenate([q["task"] for q in parts]), tasks=list(tasks), probs=probs, **flat)


def sample(cfg: ProcessConfig, tasks: int, samples: int, seed: int = 0) -> Rollouts:
    """`samples` responses to each of `tasks` new tasks of `cfg`, under the tasks' own policies.

    Everything follows from `seed` (the tasks from `make_tasks(cfg, tasks, seed)`)."""
    return rollout(make_tasks(cfg, tasks, seed), samples, np.random.default_rng([seed, 2]))


def continue_from(task: Task, positions: np.ndarray, states: np.ndarray, samples: int, rng: np.random.Generator,
                  probs: np.ndarray | None = None) -> np.ndarray:
    """[M] float64: the mean reward of `samples` continuations from each state (positions[m], states[m]),
    i.e. a Monte Carlo estimate of V[t, z]. positions [M] int in 0..T (T: after the last position),
    states [M] int 0/1."""
    p = task.probs if probs is None else probs
    T = task.length
    t0 = np.repeat(np.asarray(positions, dtype=np.int64), samples)
    z = np.repeat(np.asarray(states, dtype=np.int8), samples)
    if t0.size and (t0.min() < 0 or t0.max() > T):
        raise ValueError(f"positions: must be in 0..{T}")
    cum = np.cumsum(p, axis=1)
    for t in range(int(t0.min()) if t0.size else T, T):
        live = t0 <= t
        u = rng.random(int(live.sum()))
        opt = np.minimum((u[:, None] > cum[t][None, :]).sum(-1), K - 1)
        z[live] = _step(z[live], task.next_one[t, opt, z[live]], rng)
    reward = rng.random(z.shape) < task.terminal[z]
    return reward.reshape(-1, samples).mean(1) if samples else np.zeros(len(positions))
