"""Does SAE beat GAE on toy_ppo's task? A paired comparison with its contrasts written down first.

    .venv/bin/python examples/toy_ppo_study.py --reduced --out /tmp/toy-study   # about 11 min, 2 CPU cores
    .venv/bin/python examples/toy_ppo_study.py --out /tmp/toy-study-full --device cuda      # the full study
    .venv/bin/python examples/toy_ppo_study.py --measure                       # time the full study's steps

The design (issue 17). Every run is examples/toy_ppo.py's PPO. For each task variant (toy_ppo.VARIANTS:
responses of about 41, 121 and 390 tokens) and seed, one supervised warm start and one value warm-up
(the critic regressed on the warm-started policy's Monte Carlo returns) are made once and shared
by every run of that seed (toy_ppo.warm_models, cached under OUT/cache), and every run sees the
same prompts and sampler seed: runs are paired by seed. Every estimator's critic learns from
critic_lam = 1 targets, and each critic learning rate in the sweep is run for every estimator.

The estimators (ESTIMATORS): GAE at lambda 0.95, 0.99 and 0.999; GAE with its horizon matched to
SAE's segments (lambda = 1 - 1/L, L the mean segment length of sae's threshold rule on the value
warm-up's rollouts of that seed); SAE (p = 0.2, lambda 0.95 at boundaries); SAE with random
boundaries at SAE's measured boundary rate; SAE with fixed segments of length round(L); and MC.

The primary measure is the area under the held-out pass-rate curve divided by the steps
(toy_ppo.pass_rate_auc: the mean pass rate over training); the final pass rate is secondary.
The contrasts (CONTRASTS) and the selection rule (SELECTION) are fixed in this file before any
run: differences paired by seed, mean and 95% t-interval (Student's t quantile for n - 1
degrees of freedom: `sae_core.lab.stats`, the estimator lab's statistics).

Output under --out: runs/<variant>-seed<S>-<estimator>-clr<lr>/ (toy_ppo's log.jsonl and a
result.json written last: a run with result.json is finished and skipped on a rerun),
warm/<variant>-seed<S>.json (the warm-up's statistics and time), and study.json: every run's
AUC and final pass rate, the per-estimator means and the contrasts.
"""

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sae_core import registry
from sae_core.atomic import write_text_atomic
from sae_core.lab.stats import interval, t_quantile  # noqa: F401 - t_quantile: part of this runner's API

# toy_ppo.py sits beside this file and examples/ is not a package: load it by path.
_spec = importlib.util.spec_from_file_location("toy_ppo", Path(__file__).resolve().parent / "toy_ppo.py")
toy = importlib.util.module_from_spec(_spec)
sys.modules["toy_ppo"] = toy
_spec.loader.exec_module(toy)


def _segment_length(info: dict) -> float:
    """L, the mean segment length of sae's threshold rule on the seed's value warm-up rollouts."""
    if not info.get("boundary_fraction"):
        raise ValueError(f"the value warm-up found no sae boundaries ({info}); horizon-matched, random and "
                         "fixed-length baselines need a measured segment length (set value_warmup > 0)")
    return info["mean_segment_length"]


# name -> toy_ppo.Config fields, given the seed's value warm-up statistics (toy_ppo.value_warmup)
ESTIMATORS = {
    "gae-0.95": lambda info: {"estimator": "gae", "lam": 0.95},
    "gae-0.99": lambda info: {"estimator": "gae", "lam": 0.99},
    "gae-0.999": lambda info: {"estimator": "gae", "lam": 0.999},
    "gae-horizon": lambda info: {"estimator": "gae", "lam": 1 - 1 / _segment_length(info)},
    "sae": lambda info: {"estimator": "sae", "lam": registry.PAPER_LAM, "threshold": registry.PAPER_THRESHOLD},
    "sae-random": lambda info: {"estimator": "sae", "lam": registry.PAPER_LAM,
                                "random_boundaries": _segment_length(info) and info["boundary_fraction"]},
    "sae-fixed": lambda info: {"estimator": "sae", "lam": registry.PAPER_LAM,
                               "segment_length": max(1, round(_segment_length(info)))},
    "mc": lambda info: {"estimator": "mc"},
}
GAE_CANDIDATES = ("gae-0.95", "gae-0.99", "gae-0.999")

# Written before any run. Each contrast is SAE minus a baseline, paired by seed, per variant.
# SELECTION: every estimator is scored at its own best critic learning rate (highest mean AUC over
# seeds; the same rule for all), and "best-gae" is the GAE candidate with the highest mean AUC at
# its best rate. Picking the best of three GAE settings on the same seeds favours GAE.
# The contrasts are also reported at each critic learning rate separately.
SELECTION = "per estimator, the critic lr with the highest mean AUC over seeds; best-gae: best of GAE_CANDIDATES"
CONTRASTS = (("sae", "best-gae"), ("sae", "gae-horizon"), ("sae", "sae-random"), ("sae", "sae-fixed"),
             ("sae", "mc"))
MEASURES = ("auc", "final")  # primary, secondary


@dataclasses.dataclass(frozen=True)
class Study:
    """What to run: the grid, and the toy_ppo.Config fields shared by every run."""

    variants: tuple = ("short", "long", "scratchpad")
    seeds: int = 10
    critic_lrs: tuple = (3e-4, 1e-3)
    estimators: tuple = tuple(ESTIMATORS)
    toy: dict = dataclasses.field(default_factory=lambda: {"steps": 150, "eval_every": 10, "eval_prompts": 1024,
                                                           "batch": 128, "value_warmup": 20, "save_every": 0})

    def runs(self) -> list[tuple]:
        return [(v, s, e, lr) for v in self.variants for s in range(self.seeds) for e in self.estimators
                for lr in self.critic_lrs]


FULL = Study()
# About 11 minutes on this project's 2-core CPU machine: the short variant, 5 seeds, 6 estimators,
# one critic lr, 30 PPO steps of 128 prompts (3,840 samples), 256 evaluation prompts.
REDUCED = Study(variants=("short",), seeds=5, critic_lrs=(1e-3,),
                estimators=("gae-0.95", "gae-horizon", "sae", "sae-random", "sae-fixed", "mc"),
                toy={"steps": 30, "eval_every": 5, "eval_prompts": 256, "batch": 128, "value_warmup": 10,
                     "save_every": 0})


# ----------------------------------------------------------------------------------------------
# statistics


def paired_interval(a, b, level: float = 0.95) -> dict:
    """Mean of the paired differences a[i] - b[i] (i a seed) and its t-interval.

    Args: a, b: [n] floats, n >= 2, in the same seed order.
    Returns: n, mean, half_width = t(1 - (1 - level)/2, n - 1) * sd / sqrt(n), low, high, diffs.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"a and b must be paired 1-D sequences of at least 2 values; got shape {d.shape}")
    mean, half, n = interval(d, level)  # the lab's t-interval (sae_core.lab.stats)
    return {"n": n, "mean": mean, "half_width": half, "low": mean - half, "high": mean + half, "diffs": d.tolist()}


def summarize(study: Study, results: list[dict]) -> dict:
    """Per variant: each estimator's mean AUC and final pass rate (with t half-widths) at each
    critic lr, the selected lr, and the CONTRASTS at the selected lrs and at each lr."""
    out = {}
    seeds = list(range(study.seeds))
    for variant in study.variants:
        by = {(r["estimator"], r["critic_lr"], r["seed"]): r for r in results if r["variant"] == variant}

        def values(name, lr, measure):
            return [by[(name, lr, s)][measure] for s in seeds]

        table = {}
        for name in study.estimators:
            for lr in study.critic_lrs:
                if all((name, lr, s) in by for s in seeds):
                    table[f"{name}@{lr:g}"] = {m: {"mean": float(np.mean(values(name, lr, m))),
                                                   "half_width": paired_half(values(name, lr, m))}
                                               for m in MEASURES}
        best_lr = {}
        for name in study.estimators:
            done = [lr for lr in study.critic_lrs if f"{name}@{lr:g}" in table]
            if done:
                best_lr[name] = max(done, key=lambda lr: table[f"{name}@{lr:g}"]["auc"]["mean"])
        gae = [n for n in GAE_CANDIDATES if n in best_lr]
        if gae:
            best_lr["best-gae"] = None
            best_gae = max(gae, key=lambda n: table[f"{n}@{best_lr[n]:g}"]["auc"]["mean"])
        contrasts = []
        for a, b in CONTRASTS:
            b_name = best_gae if b == "best-gae" and gae else b
            if a not in best_lr or b_name not in best_lr or b_name == "best-gae":
                continue
            settings = [("selected", best_lr[a], best_lr[b_name])] + [
                (f"{lr:g}", lr, lr) for lr in study.critic_lrs
                if f"{a}@{lr:g}" in table and f"{b_name}@{lr:g}" in table]
            for label, lr_a, lr_b in settings:
                for m in MEASURES:
                    contrasts.append({"contrast": f"{a} - {b}", "baseline": b_name, "critic_lr": label,
                                      "lr_a": lr_a, "lr_b": lr_b, "measure": m,
                                      **paired_interval(values(a, lr_a, m), values(b_name, lr_b, m))})
        out[variant] = {"estimators": table, "selected_critic_lr": {k: v for k, v in best_lr.items() if v},
                        "best_gae": best_gae if gae else None, "contrasts": contrasts}
    return out


def paired_half(x) -> float | None:
    """Half-width of the 95% t-interval of the mean of x (None for fewer than 2 values)."""
    return interval(x)[1] if len(x) >= 2 else None


# ----------------------------------------------------------------------------------------------
# running


def run_name(variant: str, seed: int, estimator: str, critic_lr: float) -> str:
    return f"{variant}-seed{seed}-{estimator}-clr{critic_lr:g}"


def base_config(study: Study, variant: str, seed: int, out: Path, device: str, threads: int):
    return toy.Config(**{**study.toy, **toy.VARIANTS[variant]}, seed=seed, cache=str(out / "cache"),
                      device=device, threads=threads)


def run_study(study: Study, out: Path, device: str = "cpu", threads: int = 2) -> dict:
    """Run every run of the grid not finished under `out` (resumable), then write and return
    out/study.json (see the module docstring)."""
    out = Path(out)
    results = []
    for variant in study.variants:
        for seed in range(study.seeds):
            todo = [(e, lr) for e in study.estimators for lr in study.critic_lrs
                    if not (out / "runs" / run_name(variant, seed, e, lr) / "result.json").exists()]
            if todo:
                base = base_config(study, variant, seed, out, device, threads)
                start = time.perf_counter()
                policy, critic, info = toy.warm_models(base)
                warm_path = out / "warm" / f"{variant}-seed{seed}.json"
                if not warm_path.exists():  # a cache hit would time the load, not the warm-up
                    write_text_atomic(warm_path, json.dumps({**info, "seconds": time.perf_counter() - start}),
                                      overwrite=True)
            for e, lr in todo:
                cfg = dataclasses.replace(base, **ESTIMATORS[e](info), critic_lr=lr,
                                          out=str(out / "runs" / run_name(variant, seed, e, lr)))
                print(f"== {run_name(variant, seed, e, lr)}")
                history = toy.train(cfg, policy, critic)
                result = {"variant": variant, "seed": seed, "estimator": e, "critic_lr": lr,
                          "auc": history[-1]["eval_auc"], "final": history[-1]["eval_pass_rate"],
                          "start": history[0]["eval_pass_rate"], "seconds": history[-1]["seconds"],
                          "step_seconds": history[-1]["seconds"] / cfg.steps, **trace_means(history),
                          "config": dataclasses.asdict(cfg)}
                write_text_atomic(Path(cfg.out) / "result.json", json.dumps(result, indent=1), overwrite=True)
            for e, lr in ((e, lr) for e in study.estimators for lr in study.critic_lrs):
                results.append(json.loads((out / "runs" / run_name(variant, seed, e, lr) / "result.json").read_text()))
    warm = {p.stem: json.loads(p.read_text()) for p in sorted((out / "warm").glob("*.json"))}
    report = {"study": dataclasses.asdict(study), "selection": SELECTION, "contrasts_planned": CONTRASTS,
              "warm": warm, "runs": [{k: v for k, v in r.items() if k != "config"} for r in results],
              "summary": summarize(study, results)}
    write_text_atomic(out / "study.json", json.dumps(report, indent=1), overwrite=True)
    return report


def trace_means(history: list[dict]) -> dict:
    """Means over a run's PPO steps of the boundary and departure statistics (None where no step had one)."""
    keys = ("boundary_fraction", "mean_segment_length", "departed", "boundary_near_departure",
            "departure_to_boundary", "boundaries_before_departure", "critic_loss")
    out = {}
    for k in keys:
        xs = [r[k] for r in history[1:] if r.get(k) is not None and np.isfinite(r[k])]
        out[k] = float(np.mean(xs)) if xs else None
    return out


def measure(study: Study, device: str, threads: int, steps: int = 4, sft_steps: int = 100) -> dict:
    """Seconds per supervised step, value warm-up batch, PPO step and evaluation of each variant at
    the study's settings, and from them the whole study's cost in seconds. Timed after `sft_steps`
    warm-start steps (enough for most responses to end) and after a first batch of each kind (the
    kernels' first use); a PPO step from the log's clock between steps without an evaluation."""
    per, total = {}, 0.0
    for variant in study.variants:
        full = base_config(study, variant, 0, Path("/tmp"), device, threads)
        cfg = dataclasses.replace(full, cache="", sft_steps=sft_steps, value_warmup=1, steps=steps, eval_every=steps,
                                  out="/tmp/toy-ppo-measure")
        t0 = time.perf_counter()
        state = toy.warm_start(cfg)
        sft = (time.perf_counter() - t0) / sft_steps
        torch.manual_seed(0)
        policy, critic = toy.make_models(cfg)
        policy.load_state_dict(state)
        critic.transformer.load_state_dict(policy.transformer.state_dict())
        toy.value_warmup(cfg, policy, critic)
        t0 = time.perf_counter()
        toy.value_warmup(cfg, policy, critic)
        warmup = time.perf_counter() - t0
        clock = [r["seconds"] for r in toy.train(cfg, state, critic.state_dict())[1:]]
        step = float(np.mean(np.diff(clock[:-1])))  # steps 2 .. steps-1: no evaluation
        evals = clock[-1] - clock[-2] - step
        run = full.steps * step + (full.steps // full.eval_every + 1) * evals
        warm = full.sft_steps * sft + full.value_warmup * warmup
        cost = study.seeds * (warm + len(study.estimators) * len(study.critic_lrs) * run)
        per[variant] = {"sft_step_s": sft, "value_warmup_batch_s": warmup, "ppo_step_s": step, "eval_s": evals,
                        "response_length": toy.max_response_len(cfg.n_terms, cfg.scratchpad),
                        "run_s": run, "warm_s": warm, "variant_s": cost}
        total += cost
    return {"per_variant": per, "runs": len(study.runs()), "total_s": total, "total_h": total / 3600}


def plot(out: Path, path: Path) -> None:
    """Held-out pass rate against PPO steps, the mean over seeds of each estimator (at each critic
    lr), one panel per variant, from the runs under `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for result in sorted((out / "runs").glob("*/result.json")):
        r = json.loads(result.read_text())
        rows = [json.loads(line) for line in (result.parent / "log.jsonl").read_text().splitlines()]
        rows = [row for row in rows if "eval_pass_rate" in row]
        key = (r["variant"], f"{r['estimator']} (critic lr {r['critic_lr']:g})")
        curves.setdefault(key, []).append(([row["step"] for row in rows], [row["eval_pass_rate"] for row in rows]))
    variants = sorted({v for v, _ in curves})
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for (v, label), runs in sorted(curves.items()):
            if v == variant:
                ax.plot(runs[0][0], np.mean([y for _, y in runs], axis=0), label=f"{label}, {len(runs)} seeds")
        ax.set(title=f"variant {variant}", xlabel="PPO step", ylabel="held-out pass rate (mean over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reduced", action="store_true", help="the configuration that runs on 2 CPU cores")
    parser.add_argument("--measure", action="store_true", help="time a few steps per variant, estimate the cost")
    parser.add_argument("--out", default="toy-ppo-study", help="output directory (reruns skip finished runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default="", help="also write the mean pass-rate curves to this image")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    study = REDUCED if args.reduced else FULL
    if args.measure:
        cost = measure(study, args.device, args.threads)
        print(json.dumps(cost, indent=1))
        return cost
    report = run_study(study, Path(args.out), args.device, args.threads)
    for variant, s in report["summary"].items():
        for c in s["contrasts"]:
            if c["critic_lr"] != "selected" and len(study.critic_lrs) == 1:
                continue  # the same numbers as "selected"
            print(f"{variant}  {c['contrast']:<22} ({c['baseline']}, lr {c['critic_lr']})  {c['measure']:<5} "
                  f"{c['mean']:+.4f} ± {c['half_width']:.4f}")
    if args.plot:
        plot(Path(args.out), Path(args.plot))
    return report


if __name__ == "__main__":
    main()
