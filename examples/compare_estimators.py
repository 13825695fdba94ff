"""Advantage estimators side by side on toy_ppo's task: pass rate against samples seen, over seeds.

    .venv/bin/python examples/compare_estimators.py                  # gae, sae x 3 seeds
    .venv/bin/python examples/compare_estimators.py --estimators gae,mc,sae,vapo --seeds 5
    .venv/bin/python examples/compare_estimators.py --help           # also every flag of toy_ppo.py

For each seed the supervised warm start runs once and every estimator's PPO run starts from its
weights, with the same critic initialisation, the same prompts in the same order and the same
sampler seed (so the first rollout batch is identical), and is evaluated on the same held-out
prompts with the same sampler seed: the runs of one seed differ only in the estimator. Every
other setting is toy_ppo's (`Config`), passed through by flag.

Writes under --out: one toy_ppo output directory per run (`seed<S>-<estimator>/`: log.jsonl and
the rollouts in the trajectory standard), `results.json` (every run's log, rewritten after each
run), `table.md` and `table.csv` (below), and the plot `pass_rate.png` (or --plot): held-out pass
rate against samples seen, the mean over seeds as a line and the range over seeds as a band.

The table, per estimator: the warm start's pass rate; the final pass rate (the last evaluation),
mean and 95% t-interval over seeds; the mean pass rate over all evaluations (the area under the
curve divided by its width, so a run that learns earlier scores higher); both as differences
paired by seed against the first estimator listed (each seed's runs share their start, so the
paired difference removes the seed's luck); the largest drop of a run's pass rate below its best
so far (mean over seeds), as a measure of stability; and the last 10 steps' critic loss, boundary
fraction and mean segment length.

Timings, results, and larger settings for a GPU: docs/toy_ppo.md.
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

# toy_ppo.py sits beside this file and examples/ is not a package: load it by path.
_spec = importlib.util.spec_from_file_location("toy_ppo", Path(__file__).resolve().parent / "toy_ppo.py")
toy = importlib.util.module_from_spec(_spec)
sys.modules["toy_ppo"] = toy
_spec.loader.exec_module(toy)

arg = toy.arg


@dataclasses.dataclass
class CompareConfig:
    estimators: str = arg("gae,sae", "comma-separated estimators; paired differences are against the first")
    seeds: int = arg(3, "seeds 0 .. seeds-1")
    out: str = arg("toy-ppo-compare", "output directory")
    plot: str = arg("", "where to write the plot; empty: OUT/pass_rate.png")


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (no scipy here); beyond, 1.96
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def ci95(x) -> float:
    """Half-width of the 95% t-interval of the mean of x (nan for one value)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float("nan")
    t = _T975[len(x) - 2] if len(x) - 1 <= len(_T975) else 1.96
    return float(t * x.std(ddof=1) / np.sqrt(len(x)))


def curve(history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(samples seen, held-out pass rate) at each evaluation of a run."""
    rows = [r for r in history if "eval_pass_rate" in r]
    return np.array([r["samples"] for r in rows], float), np.array([r["eval_pass_rate"] for r in rows])


def run_metrics(history: list[dict]) -> dict:
    x, y = curve(history)
    tail = [r for r in history if "critic_loss" in r][-10:]
    return {
        "start": y[0],
        "final": y[-1],
        "mean": float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0])),  # trapezoid AUC / width
        "worst_drop": float(np.max(np.maximum.accumulate(y) - y)),
        "critic_loss": float(np.mean([r["critic_loss"] for r in tail])),
        "boundary_fraction": float(np.mean([r["boundary_fraction"] for r in tail])),
        "segment_length": float(np.mean([r["mean_segment_length"] for r in tail])),
    }


def table(results: dict, estimators: list[str], seeds: list[int]) -> tuple[str, list[dict]]:
    """The markdown table and its rows (for the CSV)."""
    m = {e: [run_metrics(results[f"{s}/{e}"]["history"]) for s in seeds] for e in estimators}

    def col(e, key):  # [seeds]
        return np.array([r[key] for r in m[e]])

    base = estimators[0]
    rows = []
    for e in estimators:
        d_final, d_mean = col(e, "final") - col(base, "final"), col(e, "mean") - col(base, "mean")
        rows.append({
            "estimator": e, "start": col(e, "start").mean(),
            "final": col(e, "final").mean(), "final_ci95": ci95(col(e, "final")),
            "final_per_seed": " ".join(f"{v:.3f}" for v in col(e, "final")),
            "mean": col(e, "mean").mean(), "mean_ci95": ci95(col(e, "mean")),
            "d_final": d_final.mean(), "d_final_ci95": ci95(d_final),
            "d_mean": d_mean.mean(), "d_mean_ci95": ci95(d_mean),
            "worst_drop": col(e, "worst_drop").mean(), "critic_loss": col(e, "critic_loss").mean(),
            "boundary_fraction": col(e, "boundary_fraction").mean(),
            "segment_length": col(e, "segment_length").mean(),
        })
    lines = [
        f"| estimator | start | final | final per seed | mean over training | final - {base} | "
        f"mean - {base} | worst drop | critic loss | boundary fraction | mean segment length |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paired = ("- | -" if r["estimator"] == base else
                  f"{r['d_final']:+.3f} ± {r['d_final_ci95']:.3f} | "
                  f"{r['d_mean']:+.3f} ± {r['d_mean_ci95']:.3f}")
        lines.append(
            f"| {r['estimator']} | {r['start']:.3f} | {r['final']:.3f} ± {r['final_ci95']:.3f} | "
            f"{r['final_per_seed']} | {r['mean']:.3f} ± {r['mean_ci95']:.3f} | {paired} | "
            f"{r['worst_drop']:.3f} | {r['critic_loss']:.4f} | {r['boundary_fraction']:.3f} | "
            f"{r['segment_length']:.1f} |")
    return "\n".join(lines) + "\n", rows


def plot(results: dict, estimators: list[str], seeds: list[int], cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in estimators:
        x, _ = curve(results[f"{seeds[0]}/{e}"]["history"])
        ys = np.stack([curve(results[f"{s}/{e}"]["history"])[1] for s in seeds])
        line, = ax.plot(x, ys.mean(0), label=f"{e} (mean of {len(seeds)} seeds)")
        ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("samples seen (responses)")
    ax.set_ylabel(f"held-out pass rate ({cfg.eval_prompts} prompts, temperature 1)")
    ax.set_title(f"toy PPO, {cfg.n_terms}-term sums: mean and range over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    toy.add_arguments(parser, CompareConfig)
    toy.add_arguments(parser, toy.Config, skip=("seed", "estimator", "out"))
    args = vars(parser.parse_args(argv))
    cmp = CompareConfig(**{f.name: args.pop(f.name) for f in dataclasses.fields(CompareConfig)})
    cfg = toy.Config(**args)
    estimators = cmp.estimators.split(",")
    for e in estimators:
        if e not in toy.ESTIMATORS:
            parser.error(f"unknown estimator {e!r}; choose from {', '.join(toy.ESTIMATORS)}")
    if importlib.util.find_spec("matplotlib") is None:  # the plot comes last: say so before hours of training
        parser.error('the plot needs matplotlib: pip install "sae-rl[examples]"')
    seeds = list(range(cmp.seeds))
    out = Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)

    results, start = {}, time.perf_counter()
    for seed in seeds:
        state = toy.warm_start(dataclasses.replace(cfg, seed=seed))
        for e in estimators:
            run = dataclasses.replace(cfg, seed=seed, estimator=e, out=str(out / f"seed{seed}-{e}"))
            print(f"== seed {seed}, {e}  ({(time.perf_counter() - start) / 60:.1f} min so far)")
            results[f"{seed}/{e}"] = {"config": dataclasses.asdict(run), "history": toy.train(run, state)}
            (out / "results.json").write_text(json.dumps(results) + "\n")
    minutes = (time.perf_counter() - start) / 60

    md, rows = table(results, estimators, seeds)
    header = (f"{len(seeds)} seeds x {', '.join(estimators)}; {cfg.steps} PPO steps of {cfg.batch} "
              f"responses; {minutes:.1f} min\n\n")
    (out / "table.md").write_text(header + md)
    keys = list(rows[0])
    csv = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    (out / "table.csv").write_text("\n".join(csv) + "\n")
    plot_path = Path(cmp.plot) if cmp.plot else out / "pass_rate.png"
    plot(results, estimators, seeds, cfg, plot_path)
    print("\n" + header + md + f"\nplot: {plot_path}")
    return results


if __name__ == "__main__":
    main()
