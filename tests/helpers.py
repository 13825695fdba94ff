"""Hypothesis strategies and small utilities shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st


@dataclass
class Batch:
    """A padded batch of responses: [B, T] arrays plus the per-token data boundary rules read."""

    rewards: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    logprobs: np.ndarray
    response_ids: np.ndarray
    entropy: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def shape(self):
        return self.rewards.shape


MASK_KINDS = ("full", "right_padded", "gaps", "empty_rows")


@st.composite
def masks(draw, B: int, T: int, kind: str | None = None) -> np.ndarray:
    """[B, T] bool: all valid, right padding, interior gaps (multi-turn), or some all-masked rows."""
    kind = kind or draw(st.sampled_from(MASK_KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "full":
        return np.ones((B, T), dtype=bool)
    if kind == "right_padded":
        lengths = rng.integers(0, T + 1, size=B)
        return np.arange(T)[None, :] < lengths[:, None]
    if kind == "gaps":
        keep = draw(st.floats(0.2, 0.95))
        return rng.random((B, T)) < keep
    mask = rng.random((B, T)) < 0.8
    mask[rng.random(B) < 0.5] = False
    return mask


@st.composite
def batches(draw, max_b: int = 5, max_t: int = 40, dtype=None, mask_kind: str | None = None,
            t_values=None, min_t: int = 0) -> Batch:
    """Padded batches with random rewards, values, log-probs (strictly negative), ids and entropy."""
    B = draw(st.integers(0, max_b))
    T = draw(st.sampled_from(t_values)) if t_values else draw(st.integers(min_t, max_t))
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = draw(masks(B, T, mask_kind))
    sparse = draw(st.booleans())
    if sparse:  # RLVR: an outcome reward on the last valid token only
        rewards = np.zeros((B, T))
        for i in range(B):
            idx = np.flatnonzero(mask[i])
            if idx.size:
                rewards[i, idx[-1]] = rng.choice([0.0, 1.0])
    else:
        rewards = rng.normal(size=(B, T))
    values = rng.uniform(-2.0, 2.0, size=(B, T))
    logprobs = -rng.exponential(1.0, size=(B, T)) - 1e-6
    response_ids = rng.integers(0, 6, size=(B, T))
    entropy = rng.exponential(1.0, size=(B, T))
    return Batch(rewards.astype(dtype), values.astype(dtype), mask, logprobs.astype(dtype), response_ids,
                 entropy.astype(dtype))


unit = st.floats(0.0, 1.0)
thresholds = st.one_of(st.floats(1e-4, 1.0), st.sampled_from([1.0, 0.2, 1e-4]))

# sae boundary rules with the options each needs, as (options, needs) pairs
RULES = ("logprob", "fixed", "delimiter", "quantile", "entropy", "given")


@st.composite
def estimator_kwargs(draw, batch: Batch) -> dict:
    """Keyword arguments for compute_advantages: an estimator, its own options, its parameters and
    the per-token data its boundary rule reads."""
    estimator = draw(st.sampled_from(["gae", "mc", "sae", "vapo"]))
    kw = {
        "estimator": estimator,
        "gamma": draw(unit),
        "mask_mode": draw(st.sampled_from(["skip", "zero"])),
        "critic_lam": draw(st.one_of(st.none(), unit)),
    }
    if estimator in ("gae", "sae"):
        kw["lam"] = draw(unit)
    if estimator == "vapo":
        kw["alpha"] = draw(st.floats(0.01, 2.0))
    if estimator == "sae":
        rule = draw(st.sampled_from(RULES))
        if rule == "logprob":
            kw.update(logprobs=batch.logprobs, threshold=draw(thresholds))
        elif rule == "fixed":
            kw.update(segment_length=draw(st.integers(1, 7)))
        elif rule == "delimiter":
            kw.update(delimiter_ids=draw(st.lists(st.integers(0, 5), min_size=1, max_size=3)),
                      response_ids=batch.response_ids)
        elif rule == "quantile":
            kw.update(logprobs=batch.logprobs, quantile=draw(unit))
        elif rule == "entropy":
            kw.update(entropy=batch.entropy, entropy_threshold=draw(st.floats(0.0, 3.0)))
        else:
            seed = draw(st.integers(0, 2**32 - 1))
            kw.update(boundary="given", given_boundaries=np.random.default_rng(seed).random(batch.shape) < 0.3)
    return kw


def backends(*, triton_too: bool = True) -> list[str]:
    """The backends to test here: reference, numba, torch (when torch imports), and triton when its
    kernels can run on CPU tensors (TRITON_INTERPRET=1, no GPU) and `triton_too`."""
    names = ["reference", "numba"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return names
    names.append("torch")
    from sae_core.kernels import triton_scan

    if triton_too and triton_scan.available(None):
        names.append("triton")
    return names


def to_ragged(x: np.ndarray) -> np.ndarray:
    """[B, T] -> flat [B * T] (each padded row becomes one ragged row of length T)."""
    return np.ascontiguousarray(x).reshape(-1)


def ragged_kwargs(kw: dict) -> dict:
    """Estimator kwargs with every [B, T] array flattened for compute_advantages_ragged."""
    return {k: to_ragged(v) if isinstance(v, np.ndarray) and v.ndim == 2 else v for k, v in kw.items()}


def tolerance(dtype) -> dict:
    """assert_allclose tolerances: float32 outputs are rounded float64 computations."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-5, "atol": 1e-5}
    return {"rtol": 1e-10, "atol": 1e-10}


def rollouts(n=20, seed=0, max_len=40, prefix="r", min_len=0):
    """A trajectory table of n responses of min_len..max_len tokens: response ids, a mask with gaps,
    log-probs, values, a group id per four rows and a 0/1 reward."""
    from sae_core import trajectory as tj

    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    return tj.from_ragged(offsets, {
        "response_ids": rng.integers(0, 50, size=total),
        "response_mask": rng.random(total) < 0.9,
        "logprobs": -rng.exponential(1.0, size=total),
        "values": rng.normal(size=total)},
        {"trajectory_id": [f"{prefix}{i}" for i in range(n)], "group_id": [f"g{i // 4}" for i in range(n)],
         "reward": rng.integers(0, 2, size=n).astype(np.float32)})
