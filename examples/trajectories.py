"""Save a batch of rollouts in the trajectory standard, validate it, stream it back.

    .venv/bin/python examples/trajectories.py [DIR]

Writes DIR/rollouts.parquet (default: a temporary directory). Every setting sits in `Config`.
"""

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sae_core import compute_advantages
from sae_core import trajectory as tj


@dataclass
class Config:
    batch: int = 8  # responses
    max_len: int = 32  # tokens per response, padded
    vocab: int = 1000
    threshold: float = 0.2  # sae's probability threshold
    seed: int = 0


cfg = Config()
rng = np.random.default_rng(cfg.seed)
out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
out_dir.mkdir(parents=True, exist_ok=True)

# What a trainer holds after a rollout: right-padded [B, T] arrays and per-response scores.
lengths = rng.integers(1, cfg.max_len + 1, size=cfg.batch)
response_mask = np.arange(cfg.max_len)[None, :] < lengths[:, None]
ids = rng.integers(0, cfg.vocab, size=(cfg.batch, cfg.max_len)).astype(np.int32)
old_log_probs = np.log(rng.uniform(0.01, 1.0, size=ids.shape)).astype(np.float32)
values = rng.uniform(0, 1, size=ids.shape).astype(np.float32)
scores = rng.integers(0, 2, size=cfg.batch).astype(np.float32)  # verifiable outcome reward
uids = [f"rollout-{i}" for i in range(cfg.batch)]

table = tj.from_padded({"response_ids": ids, "logprobs": old_log_probs, "values": values}, response_mask,
                       {"trajectory_id": uids, "group_id": [f"prompt-{i // 4}" for i in range(cfg.batch)],
                        "reward": scores})
table = tj.compute(table, estimator="sae", threshold=cfg.threshold)
path = tj.write_table(table, out_dir / "rollouts.parquet")
print(tj.validate_file(path).line())

# Stream it back: each batch to the ragged layout (views of the file's buffers) and to [B, T].
for batch in tj.iter_batches(path, batch_size=4):
    ragged = tj.to_ragged(batch, ["values", "advantages"])
    padded = tj.to_padded(batch, ["values", "advantages"])
    print(f"batch of {batch.num_rows}: {ragged.offsets[-1]} tokens, padded to {padded['values'].shape}")

# The file's advantages are those of compute_advantages on the padded arrays.
rewards = np.zeros_like(values)
rewards[np.arange(cfg.batch), lengths - 1] = scores
direct = compute_advantages(rewards, values, response_mask, estimator="sae", logprobs=old_log_probs,
                            threshold=cfg.threshold)
stored = tj.to_padded(tj.read_table(path), ["advantages"], length=cfg.max_len)["advantages"]
assert np.allclose(stored, direct.advantages, rtol=1e-6, atol=1e-7)
print("stored advantages equal compute_advantages on the padded batch")
