"""Estimator speed against veRL's GAE loop and a memory floor, measured in the same run.

    .venv/bin/python benchmarks/estimators.py            (or: ./dev main)

For each shape it times, on the same float32 inputs (right-padded responses, 90-100% of T long):
- veRL 0.9.1's `compute_gae_advantage_return` (its Python loop over T, plus its whitening), when
  verl imports;
- our GAE and SAE on the numba backend, through the public `compute_advantages`;
- the floor: numpy copying three float32 [B, T] arrays (what reading rewards, values and
  log-probs and writing as much back costs at best).

Candidates are timed in interleaved rounds (one call each per round) and the median is reported,
so a noisy neighbour slows all of them alike. Compilation happens in a warm-up call first.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from sae_core import compute_advantages

SHAPES = [(256, 8192), (32, 32768)]


def make_inputs(B: int, T: int, seed: int = 0):
    """RLVR-like rollouts: outcome reward on the last valid token, critic values, log-probs."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(0.9 * T), T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    rewards = np.zeros((B, T), dtype=np.float32)
    rewards[np.arange(B), lengths - 1] = rng.integers(0, 2, size=B).astype(np.float32)
    values = rng.uniform(0.0, 1.0, size=(B, T)).astype(np.float32)
    # mostly confident tokens, a few low-probability forks (about 5% below p = 0.2)
    logprobs = np.log(rng.beta(8.0, 1.0, size=(B, T))).astype(np.float32)
    return rewards, values, mask, logprobs


def interleaved(candidates: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in `rounds` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def verl_gae():
    """veRL's own GAE, or None when verl is not installed."""
    try:
        import torch  # noqa: F401
        from verl.trainer.ppo.core_algos import compute_gae_advantage_return
    except ImportError:
        return None
    return compute_gae_advantage_return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds for the fast candidates")
    parser.add_argument("--verl-rounds", type=int, default=3, help="calls of veRL's loop (seconds each)")
    args = parser.parse_args()

    import numba

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
          f"numpy {np.__version__}, numba {numba.__version__}")
    verl = verl_gae()
    if verl is None:
        print("verl is not installed: its column is skipped (./dev setup installs it)")

    inputs = {shape: make_inputs(*shape) for shape in SHAPES}
    ours = {}
    for shape, (rewards, values, mask, logprobs) in inputs.items():
        candidates = {
            "floor": lambda: (rewards.copy(), values.copy(), logprobs.copy()),
            "gae": lambda: compute_advantages(rewards, values, mask, estimator="gae", backend="numba"),
            "sae": lambda: compute_advantages(rewards, values, mask, estimator="sae", logprobs=logprobs,
                                              backend="numba"),
        }
        for fn in candidates.values():  # warm-up: compilation and first-touch page faults
            fn()
        ours[shape] = interleaved(candidates, args.rounds)
    # veRL last: torch's thread pool keeps spinning a little after each op and would slow ours
    rows = []
    for (B, T), (rewards, values, mask, logprobs) in inputs.items():
        verl_s = float("nan")
        if verl is not None:
            import torch

            tr, tv, tm = torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(mask).long()
            verl_s = interleaved({"verl": lambda: verl(tr, tv, tm, 1.0, 0.95)}, args.verl_rounds)["verl"]
        med = ours[(B, T)]
        rows.append((B, T, verl_s, med["gae"], med["sae"], med["floor"]))

    print()
    header = (f"{'shape':>14} {'veRL GAE':>10} {'our GAE':>9} {'our SAE':>9} {'floor':>9} "
              f"{'veRL/SAE':>9} {'SAE/floor':>9} {'GAE/floor':>9}")
    print(header)
    print("-" * len(header))
    for B, T, verl_s, gae_s, sae_s, floor_s in rows:
        print(f"{f'[{B}, {T}]':>14} {verl_s * 1e3:>8.1f}ms {gae_s * 1e3:>7.2f}ms {sae_s * 1e3:>7.2f}ms "
              f"{floor_s * 1e3:>7.2f}ms {verl_s / sae_s:>8.0f}x {sae_s / floor_s:>8.2f}x {gae_s / floor_s:>8.2f}x")
    print("\nfloor: numpy copying three float32 [B, T] arrays; times are medians of interleaved rounds.")
    print("targets: veRL/SAE >= 150x, SAE/floor <= 2.0x")


if __name__ == "__main__":
    main()
