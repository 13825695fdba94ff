"""The estimator lab: synthetic RLVR rollouts whose true values and advantages are known exactly.

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

Critics. `critic_values` turns the exact values into what a trained critic might say: iid noise,
a smooth drift along the response (a random walk), shrinkage toward the batch's mean value (the
sparse-reward failure the SAE paper describes), or a sum of these.

`compare` runs every estimator on the same rollouts through `compute_advantages_ragged` and scores
its advantages against the exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .estimators import compute_advantages_ragged

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
    Per row [B]: reward float32 (the verifier's 0/1), task int64 (the prompt), z_final int8.
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
    """z after an option with `effect` (BREAK and SET_WRONG both make it 0)."""
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


@dataclass(frozen=True)
class Critic:
    """A critic's errors on top of the exact values; strengths are in value units (0..1)."""

    noise: float = 0.0  # iid Gaussian per token
    drift: float = 0.0  # a random walk along the response, reaching about this size at its end
    shrink: float = 0.0  # in [0, 1]: V_hat = (1 - shrink) * V + shrink * mean(V)

    @property
    def name(self) -> str:
        parts = [f"{k} {v:g}" for k, v in asdict(self).items() if v]
        return ", ".join(parts) if parts else "exact"


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


# ----------------------------------------------------------------------------------------------
# the comparison


@dataclass(frozen=True)
class Estimator:
    """A label and the keyword arguments of compute_advantages_ragged (`random_boundaries` marks the
    control: sae with boundaries drawn at random at the rate of sae with `threshold`)."""

    label: str
    kwargs: Mapping[str, Any]
    random_boundaries: bool = False


def default_estimators(lam: float = 0.95) -> list[Estimator]:
    return [
        Estimator("mc", {"estimator": "mc"}),
        Estimator("gae lam 0.9", {"estimator": "gae", "lam": 0.9}),
        Estimator(f"gae lam {lam:g}", {"estimator": "gae", "lam": lam}),
        Estimator("gae lam 0.99", {"estimator": "gae", "lam": 0.99}),
        Estimator("vapo", {"estimator": "vapo"}),
        Estimator("sae p 0.05", {"estimator": "sae", "threshold": 0.05, "lam": lam}),
        Estimator("sae p 0.2", {"estimator": "sae", "threshold": 0.2, "lam": lam}),
        Estimator("sae p 0.5", {"estimator": "sae", "threshold": 0.5, "lam": lam}),
        Estimator("fixed 32", {"estimator": "sae", "segment_length": 32, "lam": lam}),
        Estimator("random at sae p 0.2 rate", {"estimator": "sae", "threshold": 0.2, "lam": lam}, True),
    ]


METRICS = ("pearson", "spearman", "pearson_segment", "spearman_segment", "pearson_decisions", "bias", "variance",
           "mse", "sign_agreement")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.shape[0])
    ranks[order] = np.arange(x.shape[0])
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else math.nan


def score(estimated: np.ndarray, exact: np.ndarray, segment_of: np.ndarray, decision: np.ndarray) -> dict[str, float]:
    """Agreement of [N] estimated advantages with the [N] exact ones.

    pearson / spearman: over tokens. pearson_segment / spearman_segment: over segments
    (`segment_of` [N] int64, a common segmentation), each segment's summed advantages. pearson_decisions: over the tokens at
    decision positions ([N] bool `decision`), where nearly all of the credit is. bias, variance,
    mse: of the error estimated - exact. sign_agreement: the share of tokens with |exact| > 1e-3
    whose signs agree.
    """
    est = estimated.astype(np.float64)
    err = est - exact
    seg_est = np.bincount(segment_of, weights=est)
    seg_exact = np.bincount(segment_of, weights=exact)
    big = np.abs(exact) > 1e-3
    return {
        "pearson": _pearson(est, exact),
        "spearman": _pearson(_ranks(est), _ranks(exact)),
        "pearson_segment": _pearson(seg_est, seg_exact),
        "spearman_segment": _pearson(_ranks(seg_est), _ranks(seg_exact)),
        "pearson_decisions": _pearson(est[decision], exact[decision]) if decision.sum() > 2 else math.nan,
        "bias": float(err.mean()),
        "variance": float(err.var()),
        "mse": float((err ** 2).mean()),
        "sign_agreement": float((np.sign(est[big]) == np.sign(exact[big])).mean()) if big.any() else math.nan,
    }


def segments(rollouts: Rollouts, threshold: float = 0.2) -> np.ndarray:
    """[N] int64: the segment of each token under sae's logprob rule at `threshold` (a segment
    starts at a boundary or at a response's first token), numbered across the batch."""
    starts = rollouts.logprobs < np.float32(math.log(threshold))
    starts[rollouts.offsets[:-1][np.diff(rollouts.offsets) > 0]] = True
    return np.cumsum(starts) - 1


def compare(rollouts: Rollouts, values: np.ndarray, estimators: Sequence[Estimator] | None = None, *,
            seed: int = 0, segment_threshold: float = 0.2) -> dict[str, dict[str, float]]:
    """{estimator label: score(...)} for every estimator on the same rollouts and critic values."""
    estimators = list(estimators or default_estimators())
    seg = segments(rollouts, segment_threshold)
    rewards = rollouts.rewards
    out = {}
    for est in estimators:
        kwargs = dict(est.kwargs)
        if est.random_boundaries:
            rate = float((rollouts.logprobs < np.float32(math.log(kwargs.pop("threshold")))).mean())
            kwargs["boundaries"] = np.random.default_rng(seed).random(rollouts.logprobs.shape[0]) < rate
        result = compute_advantages_ragged(rewards, values, rollouts.offsets, logprobs=rollouts.logprobs
                                           if kwargs.get("estimator") == "sae" and "boundaries" not in kwargs
                                           and "segment_length" not in kwargs else None, **kwargs)
        out[est.label] = score(result.advantages, rollouts.true_advantages, seg, rollouts.decision)
    return out


@dataclass
class Summary:
    """Scores over seeds: mean and the half-width of a 95% confidence interval (normal approximation)."""

    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    ci95: dict[str, dict[str, float]] = field(default_factory=dict)
    seeds: int = 0


def summarize(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> Summary:
    summary = Summary(seeds=len(runs))
    for label in runs[0]:
        summary.mean[label], summary.ci95[label] = {}, {}
        for metric in METRICS:
            xs = np.array([r[label][metric] for r in runs], dtype=float)
            summary.mean[label][metric] = float(np.nanmean(xs))
            summary.ci95[label][metric] = float(1.96 * np.nanstd(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 \
                else math.nan
    return summary


TABLE_METRICS = ("pearson", "pearson_segment", "pearson_decisions", "mse", "bias", "sign_agreement")


def format_table(summary: Summary, metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A fixed-width table: one row per estimator, mean (± 95% CI over seeds) per metric."""
    width = max(len(k) for k in summary.mean) + 2
    head = f"{'estimator':<{width}}" + "".join(f"{m:>20}" for m in metrics)
    lines = [head, "-" * len(head)]
    for label, row in summary.mean.items():
        cells = []
        for m in metrics:
            ci = summary.ci95[label][m]
            cells.append(f"{row[m]:>11.4f} ± {ci:<6.4f}" if not math.isnan(ci) else f"{row[m]:>20.4f}")
        lines.append(f"{label:<{width}}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the sweep (`sae lab`)


DEFAULT_CRITICS = (Critic(), Critic(noise=0.1), Critic(noise=0.3), Critic(noise=0.5), Critic(drift=0.5),
                   Critic(shrink=1.0), Critic(noise=0.05, drift=0.2, shrink=0.9))


@dataclass(frozen=True)
class SweepConfig:
    """What `sae lab` runs: every critic on `seeds` fresh rollout sets of `tasks` x `samples`."""

    task: TaskConfig = TaskConfig()
    critics: tuple[Critic, ...] = DEFAULT_CRITICS
    tasks: int = 16
    samples: int = 8
    seeds: int = 5
    lam: float = 0.95

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SweepConfig:
        """From JSON: {"task": {...TaskConfig}, "critics": [{"noise": 0.1}, ...], "tasks": ..., ...};
        unknown keys are errors."""
        doc = dict(doc)
        known = {"task", "critics", "tasks", "samples", "seeds", "lam"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown lab config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {k: doc[k] for k in ("tasks", "samples", "seeds", "lam") if k in doc}
        if "task" in doc:
            task = dict(doc["task"])
            if "branching" in task:
                task["branching"] = tuple(task["branching"])
            kwargs["task"] = TaskConfig(**task)
        if "critics" in doc:
            kwargs["critics"] = tuple(Critic(**c) for c in doc["critics"])
        return cls(**kwargs)


def sweep(config: SweepConfig, progress: bool | None = None) -> dict[str, Summary]:
    """{critic name: Summary over seeds}. Seed s draws the rollouts (seed s) and each critic's
    errors (seed 1000 + s), so every critic sees the same rollouts."""
    import sys

    from tqdm import tqdm

    runs: dict[str, list] = {c.name: [] for c in config.critics}
    estimators = default_estimators(config.lam)
    bar = tqdm(total=config.seeds * len(config.critics), desc="lab", unit=" runs", file=sys.stderr,
               disable=progress is False or (progress is None and not sys.stderr.isatty()))
    for s in range(config.seeds):
        rollouts = sample(config.task, config.tasks, config.samples, seed=s)
        for critic in config.critics:
            runs[critic.name].append(compare(rollouts, critic_values(rollouts, critic, seed=1000 + s), estimators,
                                             seed=s))
            bar.update()
    bar.close()
    return {name: summarize(r) for name, r in runs.items()}
