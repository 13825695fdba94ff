"""Advantages for a batch of PPO rollouts, the way a training loop calls sae_core.

    .venv/bin/python examples/quickstart.py

Every hyperparameter sits in `Config`; the script reads top to bottom.
"""

from dataclasses import dataclass

import numpy as np

from sae_core import compute_advantages, compute_advantages_ragged, masked_whiten, segment_stats


@dataclass
class Config:
    batch: int = 4  # responses
    max_len: int = 12  # tokens per response, padded
    gamma: float = 1.0  # RLVR: no discount
    lam: float = 0.95  # lambda at segment boundaries
    threshold: float = 0.2  # a token with probability below this starts a new segment (the paper's p)
    critic_lam: float = 1.0  # critic targets from Monte Carlo returns (VAPO / VC-PPO style)
    seed: int = 0


cfg = Config()
rng = np.random.default_rng(cfg.seed)

# What a framework hands over after a rollout: [B, T] tensors, right-padded.
lengths = rng.integers(cfg.max_len // 2, cfg.max_len + 1, size=cfg.batch)
response_mask = np.arange(cfg.max_len)[None, :] < lengths[:, None]
rewards = np.zeros((cfg.batch, cfg.max_len), dtype=np.float32)
# verifiable outcome reward on the last valid token: half the answers right (a batch all wrong,
# as random 0/1 rewards can give, has no signal: every critic target would be 0)
rewards[np.arange(cfg.batch), lengths - 1] = rng.permutation(np.arange(cfg.batch) % 2)
values = rng.uniform(0, 1, size=(cfg.batch, cfg.max_len)).astype(np.float32)  # critic V(prefix before t)
# behaviour-policy log-probabilities: routine tokens are near-certain, about 15% are low-probability forks
forks = rng.random((cfg.batch, cfg.max_len)) < 0.15
probs = np.where(forks, rng.uniform(0.01, 0.2, forks.shape), rng.uniform(0.6, 1.0, forks.shape))
logprobs = np.log(probs).astype(np.float32)

sae = compute_advantages(rewards, values, response_mask, estimator="sae", logprobs=logprobs, gamma=cfg.gamma,
                         lam=cfg.lam, threshold=cfg.threshold, critic_lam=cfg.critic_lam)
gae = compute_advantages(rewards, values, response_mask, estimator="gae", gamma=cfg.gamma, lam=cfg.lam,
                         critic_lam=cfg.critic_lam)

# veRL whitens advantages over the batch's valid tokens before the policy loss.
actor_advantages = masked_whiten(sae.advantages, response_mask)

np.set_printoptions(precision=3, suppress=True, linewidth=120)
# Show a response that got the reward: with critic_lam = 1 and gamma = 1 a critic target is the
# Monte Carlo return, the outcome reward at every token (all 0 on a row rewarded 0).
i = int(np.argmax(rewards.sum(axis=1) > 0))
n = lengths[i]
print(f"response {i}, valid tokens only, outcome reward {rewards[i].sum():g}")
print("  p(token)    ", np.exp(logprobs[i, :n]))
print("  boundary    ", sae.boundaries[i, :n].astype(int))
print("  V (critic)  ", values[i, :n])
print("  A (gae)     ", gae.advantages[i, :n])
print("  A (sae)     ", sae.advantages[i, :n])
print("  R (critic)  ", sae.returns[i, :n])
print(f"                critic targets with critic_lam={cfg.critic_lam:g}, gamma={cfg.gamma:g}: the reward-to-go, "
      "here the outcome reward (without critic_lam: R = A + V)")
print("  A (whitened)", actor_advantages[i, :n])
# What the adapters log per step: boundaries per valid token, and valid tokens per segment.
fraction, segment_length = segment_stats(sae.boundaries, response_mask)
print(f"boundary fraction {fraction:.3f}, mean segment length {segment_length:.1f} "
      f"over {int(response_mask.sum())} tokens")

# The same rows as flat columns plus offsets (Arrow list columns, packed sequences):
offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
flat = compute_advantages_ragged(rewards[response_mask], values[response_mask], offsets, estimator="sae",
                                 logprobs=logprobs[response_mask], gamma=cfg.gamma, lam=cfg.lam,
                                 threshold=cfg.threshold, critic_lam=cfg.critic_lam)
assert np.array_equal(flat.advantages, sae.advantages[response_mask])
print("ragged layout gives the same advantages")
