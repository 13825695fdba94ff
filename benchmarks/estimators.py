"""Estimator speed on the inputs frameworks pass, against veRL's loop and a memory floor, in one run.

    .venv/bin/python benchmarks/estimators.py                 (under `flock /tmp/heavy.lock` on a shared machine)
    python3 benchmarks/estimators.py --device cuda            (a GPU machine; see gpu_check.sh)

CPU (default), on right-padded responses, 90-100% of T long:
1. first call: a fresh process per case computes a small batch, once with an empty numba cache
   (compilation) and once with the cache that run left (a later process): seconds, import included;
2. [256, 8192] and [32, 32768]: the loop to beat (veRL 0.9.1's own `compute_gae_advantage_return`, a
   Python loop over T, plus its whitening, when verl imports; else `loop_gae`), the floor (numpy
   copying three float32 [B, T] arrays: reading rewards, values and log-probs and writing as much
   back, at best), and SAE through the public `compute_advantages` on float32 rewards and values
   with a mask of every dtype frameworks pass, and the framework layouts: veRL (int64
   response_mask, float32 values, bfloat16 or float32 log-probs, torch tensors) and OpenRLHF (zero
   mode, bool action_mask, torch tensors); on the numba backend and on the torch backend (CPU
   tensors; lam 0.99 makes it scan in float64: "torch f64"); then the floor and numba SAE again
   with cold caches (each call after reading a buffer twice the last-level cache: at [32, 32768]
   the floor's 24 MB fits a 32 MB L3, so the interleaved floor runs at cache speed there);
3. scaling: numba SAE (int64 mask) and the floor from [64, 1024] to [16, 131072], ns per token.

Candidates are timed in interleaved rounds (one call each per round) and the median is reported, so
a noisy neighbour slows all of them alike. The numba candidates go first, as one interleaved group,
then the torch ones: torch's OpenMP threads spin for a while after each op and would take a core
from numba's threads. Each candidate is called once before the rounds (compilation, page faults).

CUDA (`--device cuda`): the loop (`loop_gae`; veRL when it imports), SAE on the torch and Triton
backends with a bool and an int64 mask, and the floor: a device-to-device copy of the same three
tensors; plus the bandwidth each achieves, counting the bytes a fused kernel must move (reads:
rewards, values, log-probs, mask; writes: advantages, returns, boundaries), against a large
device-to-device copy, and the time that predicts (docs/performance.md, the cost model).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sae_core import compute_advantages

CPU_SHAPES = [(256, 8192), (32, 32768)]
GPU_SHAPES = [(512, 8192), (64, 32768)]
SCALING = [(64, 1024), (256, 1024), (64, 8192), (256, 8192), (32, 32768), (16, 131072)]
MASK_DTYPES = ["bool", "uint8", "int8", "int32", "int64", "float16", "float32", "float64"]
MUST = ["bool", "int64", "float32"]  # the masks the targets name
BYTES_PER_TOKEN = 4 + 4 + 4 + 1 + 4 + 4 + 1  # r, V, logprobs, bool mask in; A, R, boundaries out
# first-call cases: (name, mask dtype, estimator kwargs)
FIRST_CALLS = [("sae, bool mask", "bool", {}), ("sae, int64 mask (veRL)", "int64", {}),
               ("sae, float32 mask", "float32", {}), ("sae, bool mask, zero mode (OpenRLHF)", "bool",
                                                       {"mask_mode": "zero"})]


def cpu_model() -> str:
    """The CPU's model name, family/model and last-level cache as Linux reports them (ratios to the floor
    depend on the host: docs/performance.md, "A second machine"); "CPU model unknown" elsewhere."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]  # the first CPU's block
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
        l3 = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
        cache = f", L3 {l3.read_text().strip()}" if l3.exists() else ""
        return f"{info['model name']} (family {info['cpu family']} model {info['model']}){cache}"
    except (OSError, KeyError, ValueError):
        return "CPU model unknown"


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


def interleaved(candidates: dict, rounds: int, sync=None, before=None) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in `rounds` interleaved rounds; `before`
    (untimed) runs before each call."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            if before:
                before()
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


FIRST_CALL_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from sae_core import compute_advantages
B, T = 8, 64
r = np.zeros((B, T), np.float32)
lp = np.full((B, T), -0.1, np.float32)
compute_advantages(r, r, np.ones((B, T), dtype=sys.argv[1]), estimator="sae", logprobs=lp, backend="numba",
                   mask_mode=sys.argv[2])
print(time.perf_counter() - t0)
"""


def first_calls() -> list[str]:
    """Seconds of a fresh process's first call (import included) per case: with an empty numba cache
    (it compiles), then with the cache that run left (it loads)."""
    lines = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for name, mask, kw in FIRST_CALLS:
            took = []
            for _ in ("cold", "warm"):
                out = subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT, mask, kw.get("mask_mode", "skip")],
                                     capture_output=True, text=True, env=env, check=True)
                took.append(float(out.stdout.split()[-1]))
            lines.append(f"{name:>40} {took[0]:>9.1f} s {took[1]:>9.2f} s")
    return lines


def cpu_candidates(B: int, T: int):
    """(numba candidates, torch candidates) at [B, T]: name -> a call, on the same data."""
    import torch

    rewards, values, mask, logprobs = make_inputs(B, T)
    tr, tv, tl, tm = (torch.from_numpy(x) for x in (rewards, values, logprobs, mask))
    tl16 = tl.to(torch.bfloat16)
    tm64 = tm.long()
    sae = dict(estimator="sae")
    numba = {"floor": lambda: (rewards.copy(), values.copy(), logprobs.copy())}
    for dt in MASK_DTYPES:
        m = mask.astype(dt)
        numba[f"numba {dt}"] = (lambda m=m: compute_advantages(rewards, values, m, logprobs=logprobs,
                                                               backend="numba", **sae))
    numba["numba veRL bf16"] = lambda: compute_advantages(tr, tv, tm64, logprobs=tl16, backend="numba", **sae)
    numba["numba veRL f32"] = lambda: compute_advantages(tr, tv, tm64, logprobs=tl, backend="numba", **sae)
    numba["numba OpenRLHF"] = lambda: compute_advantages(tr, tv, tm, logprobs=tl, mask_mode="zero",
                                                         backend="numba", **sae)
    slow = {}
    for dt in MUST:
        m = torch.from_numpy(mask.astype(dt))
        slow[f"torch {dt}"] = (lambda m=m: compute_advantages(tr, tv, m, logprobs=tl, backend="torch", **sae))
    slow["torch veRL bf16"] = lambda: compute_advantages(tr, tv, tm64, logprobs=tl16, backend="torch", **sae)
    slow["torch OpenRLHF"] = lambda: compute_advantages(tr, tv, tm, logprobs=tl, mask_mode="zero",
                                                        backend="torch", **sae)
    # lam 0.99 puts a factor above F32_MAX_FACTOR: the torch backend scans in float64
    slow["torch f64 int64"] = lambda: compute_advantages(tr, tv, tm64, logprobs=tl, lam=0.99, backend="torch", **sae)
    return numba, slow, (tr, tv, tm64)


class Evict:
    """Reads a buffer twice the size of the last-level cache (64 MiB, or 2x what sysfs reports), so
    the next call finds none of its data cached: inputs that a framework's previous step wrote
    long ago, rather than the previous benchmark round's. A read leaves clean lines, so the timed
    call pays no write-back of the buffer."""

    def __init__(self) -> None:
        size = 32 << 20
        try:
            with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
                text = f.read().strip().upper()
            size = int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0)
        except (OSError, ValueError):
            pass
        self.buf = np.ones(2 * size // 8, dtype=np.float64)  # written once: real pages, not the zero page

    def __call__(self) -> None:
        self.buf.sum()


def timed(candidates: dict, rounds: int) -> dict[str, float]:
    for fn in candidates.values():  # warm-up: compilation and first-touch page faults
        fn()
    return interleaved(candidates, rounds)


def cpu(args) -> None:
    import numba
    import torch

    print(f"machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, "
          f"numba threads {numba.get_num_threads()}, torch threads {torch.get_num_threads()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    checks = []
    if args.first_calls:
        print(f"\nfirst call in a fresh process (import included)\n{'case':>40} {'compiles':>11} {'loads':>11}")
        print("\n".join(first_calls()))
    loop_name, loop = the_loop()
    evict = Evict()
    for B, T in CPU_SHAPES:
        numba_c, torch_c, (tr, tv, tm64) = cpu_candidates(B, T)
        med = timed(numba_c, args.rounds)  # numba first, before any torch op (see the docstring)
        med.update(timed(torch_c, max(3, args.rounds // 3)))
        loop_s = interleaved({"loop": lambda: loop(tr, tv, tm64, 1.0, 0.95)}, args.loop_rounds)["loop"]
        floor = med["floor"]
        print(f"\n[{B}, {T}]: {loop_name} {loop_s * 1e3:.0f} ms, floor {floor * 1e3:.2f} ms\n"
              f"{'candidate':>18} {'ms':>8} {'x floor':>8} {'loop/x':>8}")
        for name, sec in med.items():
            if name != "floor":
                print(f"{name:>18} {sec * 1e3:>8.2f} {sec / floor:>8.2f} {loop_s / sec:>8.0f}")
        for dt in MUST:
            sec = med[f"numba {dt}"]
            checks.append((f"[{B}, {T}] numba SAE, {dt} mask: {sec / floor:.2f}x floor (<= 2.0), "
                           f"{loop_s / sec:.0f}x loop (>= 150)", sec / floor <= 2.0 and loop_s / sec >= 150))
        cold = interleaved({k: numba_c[k] for k in ["floor"] + [f"numba {dt}" for dt in MUST]},
                           max(5, args.rounds // 2), before=evict)
        print(f"{'cold caches:':>18} " + ", ".join(f"{k} {cold[k] / cold['floor']:.2f}x floor" for k in cold
                                                   if k != "floor") + f" (floor {cold['floor'] * 1e3:.2f} ms)")
        if (B, T) == CPU_SHAPES[0]:
            worst = max(med[k] for k in med if k.startswith("torch ") and "f64" not in k)
            checks.append((f"[{B}, {T}] torch SAE, slowest float32-scan layout: {loop_s / worst:.0f}x loop (>= 30)",
                           loop_s / worst >= 30))
    print(f"\nscaling: numba SAE with an int64 mask, float32 data\n{'shape':>16} {'tokens':>9} {'ms':>8} "
          f"{'ns/token':>9} {'floor ns/token':>15} {'x floor':>8}")
    for B, T in SCALING:
        rewards, values, mask, logprobs = make_inputs(B, T)
        m = mask.astype(np.int64)
        med = timed({"floor": lambda: (rewards.copy(), values.copy(), logprobs.copy()),
                     "sae": lambda: compute_advantages(rewards, values, m, estimator="sae", logprobs=logprobs,
                                                       backend="numba")}, args.rounds)
        n = B * T
        print(f"{f'[{B}, {T}]':>16} {n:>9} {med['sae'] * 1e3:>8.2f} {med['sae'] / n * 1e9:>9.2f} "
              f"{med['floor'] / n * 1e9:>15.2f} {med['sae'] / med['floor']:>8.2f}")
    print("\nfloor: numpy copying three float32 [B, T] arrays; times are medians of interleaved rounds; "
          "x floor = time / floor time; loop/x = the loop's time / time. cold caches: the same candidates, "
          "each call after reading a buffer twice the last-level cache (not part of the targets).")
    print("\ntargets:")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")


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
    big = None  # free the GiB before the candidates
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (bytes read + written)")
    loop_name, loop = the_loop()
    backends = ["torch"] + (["triton"] if triton_scan.available(device) else [])
    print(f"\n{'shape':>14} {'candidate':>14} {'ms':>9} {'B/token':>8} {'GB/s':>6} {'of copy':>8} "
          f"{'model ms':>9} {'loop/x':>8}")
    for B, T in GPU_SHAPES:
        r, v, m, lp = (torch.from_numpy(x).to(device) for x in make_inputs(B, T))
        m64 = m.long()
        candidates = {"floor": lambda: (r.clone(), v.clone(), lp.clone())}
        for b in backends:
            for name, mask in (("bool", m), ("int64", m64)):
                candidates[f"{b} {name}"] = (lambda b=b, mask=mask: compute_advantages(r, v, mask, estimator="sae",
                                                                                       logprobs=lp, backend=b))
        for fn in candidates.values():
            fn()
        med = interleaved(candidates, args.rounds, sync)
        loop_s = interleaved({"loop": lambda: loop(r, v, m64, 1.0, 0.95)}, args.loop_rounds, sync)["loop"]
        for name, sec in med.items():
            per_token = 24 if name == "floor" else BYTES_PER_TOKEN + (7 if name.endswith("int64") else 0)
            moved = per_token * B * T
            model = moved / (copy_gbs * 1e9)  # the cost model: the bytes at the copy's bandwidth
            print(f"{f'[{B}, {T}]':>14} {name:>14} {sec * 1e3:>9.3f} {per_token:>8} {moved / sec / 1e9:>6.0f} "
                  f"{moved / sec / 1e9 / copy_gbs:>8.0%} {model * 1e3:>9.3f} {loop_s / sec:>8.0f}")
        print(f"{'':>14} {loop_name + ' loop':>14} {loop_s * 1e3:>9.1f}")
    print(f"\nB/token: the bytes a fused kernel must move ({BYTES_PER_TOKEN} with a bool mask, 7 more with int64; the "
          "floor copies 3 x 4 bytes each way); of copy: against the device-to-device copy above; model ms: those "
          "bytes at the copy's bandwidth (docs/performance.md).")
    print("targets: triton >= 50% of the copy bandwidth, loop/triton >= 1000x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds for the fast candidates")
    parser.add_argument("--loop-rounds", type=int, default=3, help="calls of the loop over T (seconds each)")
    parser.add_argument("--no-first-calls", dest="first_calls", action="store_false",
                        help="skip the fresh-process first calls (a minute: each case compiles once)")
    args = parser.parse_args()
    cpu(args) if args.device == "cpu" else cuda(args)


if __name__ == "__main__":
    main()
