"""Estimator speed against a GAE loop over T and a memory floor, all measured in the same run.

    .venv/bin/python benchmarks/estimators.py
    python3 benchmarks/estimators.py --device cuda            (a GPU machine; see gpu_check.sh)

CPU (default), on float32 inputs (right-padded responses, 90-100% of T long, a bool mask):
- the loop: veRL 0.9.1's own `compute_gae_advantage_return` (its Python loop over T, plus its
  whitening) when verl imports, else the same recurrence as a plain torch loop (`loop_gae` below);
- our GAE and SAE on the numba backend, and SAE on the torch backend (CPU tensors), all through
  the public `compute_advantages`; the torch backend twice: with lam 0.95 (it scans in float32)
  and with lam 0.99 (a factor past F32_MAX_FACTOR: it scans in float64);
- the floor: numpy copying three float32 [B, T] arrays (reading rewards, values and log-probs and
  writing as much back, at best).

CUDA (`--device cuda`): the loop (`loop_gae`; veRL when it imports), SAE on the torch and Triton
backends, and the floor: a device-to-device copy of the same three tensors; plus the bandwidth
each achieves, counting the bytes a fused kernel must move (reads: rewards, values, log-probs,
mask; writes: advantages, returns, boundaries), against a large device-to-device copy.

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

CPU_SHAPES = [(256, 8192), (32, 32768)]
GPU_SHAPES = [(512, 8192), (64, 32768)]
BYTES_PER_TOKEN = 4 + 4 + 4 + 1 + 4 + 4 + 1  # r, V, logprobs, mask in; A, R, boundaries out


def make_inputs(B: int, T: int, seed: int = 0):
    """RLVR-like rollouts: outcome reward on the last valid token, critic values, log-probs."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(0.9 * T), T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    rewards = np.zeros((B, T), dtype=np.float32)
    rewards[np.arange(B), lengths - 1] = rng.integers(0, 2, size=B).astype(np.float32)
    values = rng.uniform(0.0, 1.0, size=(B, T)).astype(np.float32)
    # mostly confident tokens, about 5% low-probability forks (p < 0.2: SAE boundaries)
    forks = rng.random((B, T)) < 0.05
    probs = np.where(forks, rng.uniform(0.01, 0.2, (B, T)), rng.uniform(0.5, 1.0, (B, T)))
    logprobs = np.log(probs).astype(np.float32)
    return rewards, values, mask, logprobs


def loop_gae(rewards, values, mask, gamma: float, lam: float):
    """GAE in skip mode as a plain torch loop over T, one step per token on [B] slices: the
    recurrence veRL and OpenRLHF run, for machines where veRL is not installed."""
    import torch

    with torch.no_grad():
        mask = mask.to(rewards.dtype)
        next_value = torch.zeros_like(rewards[:, 0])
        next_adv = torch.zeros_like(rewards[:, 0])
        out = torch.empty_like(rewards)
        for t in range(rewards.shape[1] - 1, -1, -1):
            adv = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * next_adv
            next_value = torch.lerp(next_value, values[:, t], mask[:, t])  # masked: carried
            next_adv = torch.lerp(next_adv, adv, mask[:, t])
            out[:, t] = next_adv
        return out, out + values


def interleaved(candidates: dict, rounds: int, sync=None) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in `rounds` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def the_loop():
    """(name, function) of the loop to beat: veRL's own GAE when verl imports, else `loop_gae`."""
    try:
        from verl.trainer.ppo.core_algos import compute_gae_advantage_return

        return "veRL GAE", compute_gae_advantage_return
    except ImportError:
        return "loop GAE", loop_gae


def cpu(args) -> None:
    import numba
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
          f"torch threads {torch.get_num_threads()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"torch {torch.__version__}")
    loop_name, loop = the_loop()
    inputs = {shape: make_inputs(*shape) for shape in CPU_SHAPES}
    ours = {}
    # numba first, before any torch op: torch's OpenMP threads keep spinning for a while after each
    # op and would take a core from numba's threads
    for shape, (rewards, values, mask, logprobs) in inputs.items():
        fast = {
            "floor": lambda: (rewards.copy(), values.copy(), logprobs.copy()),
            "gae": lambda: compute_advantages(rewards, values, mask, estimator="gae", backend="numba"),
            "sae": lambda: compute_advantages(rewards, values, mask, estimator="sae", logprobs=logprobs,
                                              backend="numba"),
        }
        for fn in fast.values():  # warm-up: compilation and first-touch page faults
            fn()
        ours[shape] = interleaved(fast, args.rounds)
    for shape, (rewards, values, mask, logprobs) in inputs.items():
        tr, tv, tm, tl = (torch.from_numpy(x) for x in (rewards, values, mask, logprobs))
        slow = {
            "torch": lambda: compute_advantages(tr, tv, tm, estimator="sae", logprobs=tl, backend="torch"),
            # lam 0.99 puts a factor above F32_MAX_FACTOR: the torch backend scans in float64
            "torch64": lambda: compute_advantages(tr, tv, tm, estimator="sae", logprobs=tl, lam=0.99,
                                                  backend="torch"),
        }
        for fn in slow.values():
            fn()
        ours[shape].update(interleaved(slow, max(3, args.rounds // 3)))
    rows = []
    for (B, T), (rewards, values, mask, _) in inputs.items():
        tr, tv, tm = torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(mask).long()
        loop_s = interleaved({"loop": lambda: loop(tr, tv, tm, 1.0, 0.95)}, args.loop_rounds)["loop"]
        med = ours[(B, T)]
        rows.append((B, T, loop_s, med["gae"], med["sae"], med["torch"], med["torch64"], med["floor"]))

    print()
    header = (f"{'shape':>14} {loop_name:>10} {'numba GAE':>10} {'numba SAE':>10} {'torch SAE':>10} "
              f"{'torch f64':>10} {'floor':>8} {'loop/numba':>11} {'loop/torch':>11} {'loop/f64':>9} "
              f"{'SAE/floor':>10}")
    print(header)
    print("-" * len(header))
    for B, T, loop_s, gae_s, sae_s, torch_s, torch64_s, floor_s in rows:
        print(f"{f'[{B}, {T}]':>14} {loop_s * 1e3:>8.1f}ms {gae_s * 1e3:>8.2f}ms {sae_s * 1e3:>8.2f}ms "
              f"{torch_s * 1e3:>8.2f}ms {torch64_s * 1e3:>8.2f}ms {floor_s * 1e3:>6.2f}ms {loop_s / sae_s:>10.0f}x "
              f"{loop_s / torch_s:>10.0f}x {loop_s / torch64_s:>8.0f}x {sae_s / floor_s:>9.2f}x")
    print("\nfloor: numpy copying three float32 [B, T] arrays; times are medians of interleaved rounds.")
    print("torch SAE (lam 0.95) scans in float32; torch f64 is SAE with lam 0.99, past the float32 limit of")
    print("sae_core.kernels.torch_scan.F32_MAX_FACTOR, so the same backend scans in float64.")
    print("targets: loop/numba SAE >= 150x, numba SAE/floor <= 2.0x, loop/torch SAE >= 30x at [256, 8192]")


def cuda(args) -> None:
    import torch

    from sae_core.kernels import triton_scan

    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"triton {getattr(triton_scan.triton, '__version__', 'missing')}")
    sync = torch.cuda.synchronize
    big = torch.empty(1 << 28, dtype=torch.float32, device=device)  # 1 GiB
    copy_s = interleaved({"copy": lambda: big.clone()}, 10, sync)["copy"]
    copy_gbs = 2 * big.numel() * 4 / copy_s / 1e9
    del big
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (bytes read + written)")
    loop_name, loop = the_loop()
    backends = ["torch"] + (["triton"] if triton_scan.available(device) else [])
    header = (f"{'shape':>14} {loop_name:>10} {'floor':>9} " + " ".join(f"{b + ' SAE':>11}" for b in backends)
              + " " + " ".join(f"{b + ' GB/s':>16}" for b in backends) + f" {'loop/triton':>12}")
    lines = []
    for B, T in GPU_SHAPES:
        r, v, m, lp = (torch.from_numpy(x).to(device) for x in make_inputs(B, T))
        candidates = {"floor": lambda: (r.clone(), v.clone(), lp.clone())}
        for b in backends:
            candidates[b] = (lambda b=b: compute_advantages(r, v, m, estimator="sae", logprobs=lp, backend=b))
        for fn in candidates.values():
            fn()
        med = interleaved(candidates, args.rounds, sync)
        loop_s = interleaved({"loop": lambda: loop(r, v, m.long(), 1.0, 0.95)}, args.loop_rounds, sync)["loop"]
        moved = BYTES_PER_TOKEN * B * T
        cells = " ".join(f"{med[b] * 1e3:>9.3f}ms" for b in backends)
        rates = " ".join(f"{moved / med[b] / 1e9:>7.0f} ({moved / med[b] / 1e9 / copy_gbs:>5.0%})" for b in backends)
        speedup = f"{loop_s / med['triton']:>11.0f}x" if "triton" in med else f"{'-':>12}"
        lines.append(f"{f'[{B}, {T}]':>14} {loop_s * 1e3:>8.1f}ms {med['floor'] * 1e3:>7.3f}ms {cells} {rates} {speedup}")
    print()
    print(header)
    print("-" * len(header))
    print("\n".join(lines))
    print(f"\nGB/s counts {BYTES_PER_TOKEN} bytes per token; (%) is against the copy above. floor: a device-to-device "
          "copy of rewards, values and log-probs.")
    print("targets: triton >= 50% of the copy bandwidth, loop/triton >= 1000x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds for the fast candidates")
    parser.add_argument("--loop-rounds", type=int, default=3, help="calls of the loop over T (seconds each)")
    args = parser.parse_args()
    cpu(args) if args.device == "cpu" else cuda(args)


if __name__ == "__main__":
    main()
