"""Critics learned from sampled rollouts, with function approximation shared across states.

A learned critic sees only the prefix before token t: the prompt, the position and the options taken
so far, never the hidden state z. Its model is linear (ridge regression, closed form) in features of
that prefix:

- an intercept and t / T (T: the response's length);
- a one-hot of the prompt, for prompts seen in training (unseen prompts: zeros, so that only the
  shared features speak);
- "what happened so far": hashed indicators of the (prompt, position, option) of every non-modal
  token taken before t (option != the position's most likely option under the task's base policy),
  into `buckets` buckets; collisions are the sharing between states. `hash_prompt=False` hashes
  (position, option) only, shared across prompts;
- the count of non-modal tokens so far and, per probability bin (under the sampling policy: below
  0.001, 0.001-0.01, 0.01-0.05, 0.05-0.2), their count and whether there was any. The bins are
  shared across prompts and positions and carry the surprise of a token, which separates harmful
  slips (about 10x rarer than harmless ones by default) from harmless ones on prompts never seen;
  the "any" indicators fit a break that is permanent (absorbing), which a count extrapolates badly.

Predictions are clipped to [0, 1] (values are probabilities of reward 1). Targets: "mc" regresses on
the response's final reward; "td" on lambda-returns G_t = r_t + (1 - lam) V_hat[t + 1] + lam G_{t + 1}
bootstrapped on the critic's own predictions, refitted `td_iterations` times from a constant critic.
Fitting uses at most `max_tokens` training tokens drawn at random (the features of all tokens of a
response are needed only at prediction, which is O(N) by cumulative sums).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .critics import blind
from .estimators import logprob_boundaries
from ..registry import PAPER_THRESHOLD
from .process import Rollouts

TARGETS = ("mc", "td")
BINS = (0.001, 0.01, 0.05, 0.2)  # probability bins of non-modal tokens: below 0.001, 0.001-0.01, ...
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """uint64 -> uint64 finaliser of splitmix64 (a cheap, well-spread hash)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def prompt_key(task) -> int:
    """A 63-bit fingerprint of a task's content (equal tasks from the same seed get equal keys)."""
    h = hashlib.blake2b(task.logits.tobytes() + task.next_one.tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def row_exclusive_cumsum(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[N] float64: for each token, the sum of [N] `x` over the earlier tokens of its row (0 at a row's start)."""
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    lengths = np.diff(offsets)
    return c[:-1] - np.repeat(c[offsets[:-1]], lengths)


@dataclass
class _Events:
    """The non-modal tokens of one Rollouts: flat token index, bucket, low-probability flag; plus per-token
    cumulative counts (before token t) and per-token prompt ids (-1 unseen) and t / T."""

    index: np.ndarray
    bucket: np.ndarray
    low: np.ndarray
    live: np.ndarray
    count: np.ndarray
    binned: np.ndarray
    prompt: np.ndarray
    tfrac: np.ndarray


def _events(r: Rollouts, buckets: int, hash_prompt: bool, seen: dict[int, int]) -> _Events:
    keys = [prompt_key(t) for t in r.tasks]
    modal = np.concatenate([np.argmax(t.logits, axis=1) for t in r.tasks])
    base = np.concatenate([[0], np.cumsum([t.length for t in r.tasks])])
    row = r.row_of_token
    task = r.task[row]
    pos = r.positions.astype(np.int64)
    nonmodal = r.options != modal[base[task] + pos]
    level = np.searchsorted(np.log(BINS), r.logprobs, side="right")  # 0: below BINS[0] ... len(BINS): above
    low = nonmodal & (level < len(BINS))
    index = np.flatnonzero(nonmodal)
    key = np.array(keys, dtype=np.uint64)[task[index]] if hash_prompt else np.zeros(index.size, np.uint64)
    h = _mix(_mix(key) ^ (pos[index].astype(np.uint64) * np.uint64(8) + r.options[index].astype(np.uint64)))
    lengths = r.lengths
    prompt = np.array([seen.get(k, -1) for k in keys], dtype=np.int64)[task]
    # a prompt-specific bucket of an unseen prompt would only replay another prompt's weight
    live = prompt[index] >= 0 if hash_prompt else np.ones(index.size, bool)
    return _Events(index=index, bucket=(h % np.uint64(buckets)).astype(np.int64), low=low[index], live=live,
                   count=row_exclusive_cumsum(nonmodal, r.offsets), binned=np.stack([row_exclusive_cumsum(nonmodal & (level == b), r.offsets) for b in range(len(BINS))], 1),
                   prompt=prompt,
                   tfrac=pos / np.repeat(lengths, lengths))


@dataclass(frozen=True)
class LearnedCritic:
    """How to learn a critic (see the module docstring). target: "mc" or "td"; lam: TD's lambda (ignored
    by "mc"); buckets: hashed history features; ridge: L2 penalty on all weights but the intercept, in
    units of responses (it is scaled by the tokens fitted per response, since a response's tokens share
    its outcome); rollouts_per_prompt: use only the first n responses of each task in training (None: all);
    hash_prompt: hash (prompt, position, option) rather than (position, option); td_iterations: refits
    for "td"; max_tokens: training tokens drawn at random for the fit; seed: that draw's seed."""

    target: str = "mc"
    lam: float = 0.95
    buckets: int = 1024
    ridge: float = 10.0
    rollouts_per_prompt: int | None = None
    hash_prompt: bool = True
    td_iterations: int = 4
    max_tokens: int = 32768
    seed: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target: {self.target!r} is not one of {', '.join(TARGETS)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam: must be in [0, 1], got {self.lam!r}")
        if self.buckets < 1 or self.max_tokens < 1 or self.td_iterations < 1:
            raise ValueError("buckets, max_tokens, td_iterations: must be >= 1")
        if self.ridge < 0:
            raise ValueError(f"ridge: must be >= 0, got {self.ridge!r}")
        if self.rollouts_per_prompt is not None and self.rollouts_per_prompt < 1:
            raise ValueError(f"rollouts_per_prompt: must be >= 1 or None, got {self.rollouts_per_prompt!r}")

    @property
    def name(self) -> str:
        """E.g. "learned mc n=32", "learned td(0.95) n=all"."""
        target = "mc" if self.target == "mc" else f"td({self.lam:g})"
        return f"learned {target} n={self.rollouts_per_prompt or 'all'}"

    def fit(self, train: Rollouts | Sequence[Rollouts]) -> FittedCritic:
        """The critic fitted on `train` (one Rollouts, or several, e.g. a window of PPO iterations)."""
        parts = [train] if isinstance(train, Rollouts) else list(train)
        if not parts:
            raise ValueError("train: no rollouts")
        if self.rollouts_per_prompt is not None:
            parts = [first_rows(r, self.rollouts_per_prompt) for r in parts]
        seen: dict[int, int] = {}
        for r in parts:
            for t in r.tasks:
                seen.setdefault(prompt_key(t), len(seen))
        fitted = FittedCritic(config=self, seen=seen, weights=np.zeros(_width(self, len(seen))))
        fitted.weights[0] = float(np.mean(np.concatenate([r.reward for r in parts])))
        events = [_events(r, self.buckets, self.hash_prompt, seen) for r in parts]
        rng = np.random.default_rng(self.seed)
        total = sum(r.positions.shape[0] for r in parts)
        picks = [np.sort(rng.choice(r.positions.shape[0], size=min(r.positions.shape[0],
                 max(1, round(self.max_tokens * r.positions.shape[0] / total))), replace=False)) for r in parts]
        designs = [_design(fitted, r, e, p) for r, e, p in zip(parts, events, picks)]
        gram, solve_rhs = _normal_equations(designs, fitted.weights.shape[0])
        rows = sum(r.reward.shape[0] for r in parts)
        # tokens of a response share its outcome, so the penalty is per response, not per token
        penalty = self.ridge * sum(p.size for p in picks) / rows
        gram[np.arange(1, gram.shape[0]), np.arange(1, gram.shape[0])] += penalty
        iterations = 1 if self.target == "mc" else self.td_iterations
        for _ in range(iterations):
            if self.target == "mc":
                y = [r.reward[r.row_of_token[p]].astype(np.float64) for r, p in zip(parts, picks)]
            else:
                y = [lambda_returns(r, fitted._predict(r, e), self.lam)[p] for r, e, p in zip(parts, events, picks)]
            fitted.weights = np.linalg.solve(gram, solve_rhs(y))
        return fitted


def _width(cfg: LearnedCritic, prompts: int) -> int:
    return DENSE + prompts + cfg.buckets


DENSE = 3 + 2 * len(BINS)  # intercept, t / T, count, per probability bin: count and any


@dataclass
class FittedCritic:
    """A fitted learned critic. weights [D] float64 over [intercept, t/T, count, per bin count, per bin any,
    prompt one-hot (seen prompts), buckets]; seen: prompt_key -> one-hot column."""

    config: LearnedCritic
    seen: dict[int, int]
    weights: np.ndarray = field(repr=False)

    def values(self, rollouts: Rollouts) -> np.ndarray:
        """[N] float32 values V_hat[t] (before token t) in [0, 1], from the prefix only."""
        e = _events(rollouts, self.config.buckets, self.config.hash_prompt, self.seen)
        return self._predict(rollouts, e).astype(np.float32)

    def _predict(self, r: Rollouts, e: _Events) -> np.ndarray:
        w = self.weights
        b0 = DENSE + len(self.seen)
        nb = len(BINS)
        v = w[0] + w[1] * e.tfrac + w[2] * e.count + e.binned @ w[3:3 + nb] + (e.binned > 0) @ w[3 + nb:3 + 2 * nb]
        v = v + np.where(e.prompt >= 0, w[DENSE + np.maximum(e.prompt, 0)], 0.0)
        contrib = np.zeros(r.positions.shape[0])
        contrib[e.index[e.live]] = w[b0 + e.bucket[e.live]]
        return np.clip(v + row_exclusive_cumsum(contrib, r.offsets), 0.0, 1.0)


def _design(f: FittedCritic, r: Rollouts, e: _Events, picks: np.ndarray):
    """Features of the tokens `picks` (flat indices into `r`), sparse: the [M, DENSE + P] float64 dense
    block, and the bucket entries as (token in 0..M-1, bucket) pairs [E] int64, one per event before it."""
    M = picks.size
    X = np.zeros((M, DENSE + len(f.seen)))
    X[:, 0] = 1.0
    X[:, 1] = e.tfrac[picks]
    X[:, 2] = e.count[picks]
    X[:, 3:3 + len(BINS)] = e.binned[picks]
    X[:, 3 + len(BINS):DENSE] = e.binned[picks] > 0
    pr = e.prompt[picks]
    X[np.flatnonzero(pr >= 0), DENSE + pr[pr >= 0]] = 1.0
    # events strictly before each picked token, in its own row: a contiguous range of e.index
    index, bucket = e.index[e.live], e.bucket[e.live]
    lo = np.searchsorted(index, r.offsets[r.row_of_token[picks]])
    n = np.searchsorted(index, picks) - lo
    which = np.repeat(np.arange(M), n)
    ev = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
    return X, which, bucket[ev]


def _normal_equations(designs, width: int):
    """X^T X [D, D] of the stacked sparse designs, and a function from the per-design targets [M] to X^T y [D]."""
    dense = designs[0][0].shape[1]
    B = width - dense
    gram = np.zeros((width, width))
    for X, which, col in designs:
        gram[:dense, :dense] += X.T @ X
        sd = np.stack([np.bincount(col, weights=X[which, i], minlength=B) for i in range(dense)], axis=1)
        gram[dense:, :dense] += sd
        gram[:dense, dense:] += sd.T
        # bucket x bucket: every pair of events before the same token
        n = np.bincount(which, minlength=X.shape[0])
        start = np.cumsum(n) - n
        a = np.repeat(np.arange(which.size), n[which])
        b = start[which[a]] + np.arange(a.size) - np.repeat(np.cumsum(n[which]) - n[which], n[which])
        gram[dense:, dense:] += np.bincount(col[a] * B + col[b], minlength=B * B).reshape(B, B)

    def rhs(targets):
        out = np.zeros(width)
        for (X, which, col), y in zip(designs, targets):
            out[:dense] += X.T @ y
            out[dense:] += np.bincount(col, weights=y[which], minlength=B)
        return out

    return gram, rhs


def lambda_returns(r: Rollouts, values: np.ndarray, lam: float) -> np.ndarray:
    """[N] float64 lambda-returns G_t = r_t + (1 - lam) V[t + 1] + lam G_{t + 1} (gamma 1; V and G are 0
    after a response's last token), from [N] `values` V[t] (before token t) and the token rewards."""
    lengths = r.lengths
    B, L = lengths.shape[0], int(lengths.max())
    col = np.arange(r.positions.shape[0]) - np.repeat(r.offsets[:-1], lengths)
    row = r.row_of_token
    rew = np.zeros((B, L + 1))
    val = np.zeros((B, L + 1))
    rew[row, col] = r.rewards
    val[row, col] = values
    G = np.zeros((B, L + 1))
    for t in range(L - 1, -1, -1):  # positions past a row's end hold zeros, so they leave G at 0
        G[:, t] = rew[:, t] + (1.0 - lam) * val[:, t + 1] + lam * G[:, t + 1]
    return G[row, col]


def first_rows(r: Rollouts, n: int) -> Rollouts:
    """The first `n` responses of each task of `r` (all of them where a task has fewer)."""
    rank = np.zeros(r.task.shape[0], dtype=np.int64)
    for j in np.unique(r.task):
        where = np.flatnonzero(r.task == j)
        rank[where] = np.arange(where.size)
    return subset_rows(r, np.flatnonzero(rank < n))


def subset_rows(r: Rollouts, rows: np.ndarray) -> Rollouts:
    """The responses `rows` ([R] int, increasing) of `r`, same tasks and policies."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = r.lengths[rows]
    starts = np.repeat(r.offsets[rows], lengths)
    tok = starts + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = {k: getattr(r, k)[tok] for k in ("positions", "options", "response_ids", "logprobs", "state",
                                            "true_values", "true_advantages", "decision")}
    return Rollouts(offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), reward=r.reward[rows],
                    task=r.task[rows], tasks=r.tasks, probs=r.probs, **flat)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")


def evaluate(fitted: FittedCritic, rollouts: Rollouts, threshold: float = PAPER_THRESHOLD) -> dict[str, float]:
    """RMSEs on `rollouts` (which should not be the ones `fitted` was fitted on) against the exact values:
    rmse (all tokens), rmse_decisions (decision positions), rmse_boundaries (tokens with probability
    < `threshold`); the same with suffix "_constant" for the per-prompt constant V[0, 1] (the blind
    critic); and the token counts tokens, decisions, boundaries."""
    v = fitted.values(rollouts).astype(np.float64)
    c = blind(rollouts).astype(np.float64)
    truth = rollouts.true_values
    masks = {"": np.ones(truth.shape[0], bool), "_decisions": rollouts.decision.astype(bool),
             "_boundaries": logprob_boundaries(rollouts, threshold)}
    out: dict[str, float] = {}
    for suffix, m in masks.items():
        out["rmse" + suffix] = _rmse(v[m], truth[m])
        out["rmse" + suffix + "_constant"] = _rmse(c[m], truth[m])
    out.update(tokens=float(truth.shape[0]), decisions=float(masks["_decisions"].sum()),
               boundaries=float(masks["_boundaries"].sum()))
    return out


def compare(train: Rollouts, seen_eval: Rollouts, unseen_eval: Rollouts, critics: Sequence[LearnedCritic]
            ) -> list[dict]:
    """Fit each critic on `train` and evaluate it out of sample on fresh rollouts of the seen prompts
    (`seen_eval`) and on rollouts of other prompts (`unseen_eval`). One dict per (critic, split):
    critic (name), target, n, split ("seen"/"unseen") and `evaluate`'s RMSEs."""
    rows = []
    for critic in critics:
        fitted = critic.fit(train)
        for split, ev in (("seen", seen_eval), ("unseen", unseen_eval)):
            rows.append(dict(critic=critic.name, target=critic.target, n=critic.rollouts_per_prompt, split=split,
                             **evaluate(fitted, ev)))
    return rows
