"""`sae demo`: what the estimator lab finds, at a glance, and the path users take through files.

1. At a glance: the primary metric (the cosine between each estimator's batch policy gradient and the
   exact one) with t-intervals over paired seeds, for GAE, SAE, MC and the controls, on one setting
   where SAE wins and one where it loses (`CELLS`, chosen from docs/lab.md's full study), each with
   the contrast SAE minus GAE(0.95) and a one-line reason; a plot of it in `lab.png`.
2. The user's path: rollouts of the lab's process written in the trajectory standard with a learned
   critic's values and the exact values and advantages beside (`true_values`, `true_advantages`),
   recomputed with several estimators (`sae_core.tools.recompute`, as `sae recompute` does), each
   recomputed set scored against the exact policy gradient, and the HTML report of the file.
3. `index.html`: the table, the plot and a link to the report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import trajectory as tj
from ..atomic import write_bytes_atomic, write_text_atomic
from ..tools.summary_format import text_table
from . import gradient, learned, stats
from .estimators import quick_estimators
from .process import ProcessConfig, Rollouts, make_tasks, rollout
from .study import CriticSpec, StudyConfig, run_seed

RUNS = ("gae", "mc", "vapo", "sae", "sae:threshold=0.5")  # `sae recompute --estimator` values
SHOWN = ("mc", "gae 0.95", "gae 0.999", "gae matched", "sae p0.2", "random", "fixed", "oracle")
BASELINE = "gae 0.95"  # the GAE users run


@dataclass(frozen=True)
class Cell:
    """One (setting, critic) of the study, with why SAE wins or loses there."""

    title: str
    setting: str
    process: ProcessConfig
    critic: CriticSpec
    reason: str


CELLS = (
    Cell("SAE wins", "critic on unseen prompts", ProcessConfig(),
         CriticSpec("learned mc n32, unseen", "learned", "unseen", {"target": "mc", "rollouts_per_prompt": 32}),
         "the critic never saw these prompts and knows little more than their mean, so GAE 0.95, "
         "which bootstraps on it at every token, inherits its errors; SAE bootstraps at ~1% of tokens."),
    Cell("SAE loses", "critic fitted on 128 rollouts", ProcessConfig(),
         CriticSpec("learned mc n128", "learned", "seen", {"target": "mc", "rollouts_per_prompt": 128}),
         "this critic registers what slips and wrong decisions did, so GAE 0.95 credits each token from "
         "nearby values; SAE ignores them inside ~150-token segments and stays close to Monte Carlo."),
)


@dataclass(frozen=True)
class DemoConfig:
    seeds: int = 8  # paired seeds of the at-a-glance comparison
    tasks: int = 16  # prompts per batch there
    file_tasks: int = 24  # prompts of the rollout file
    samples: int = 8  # responses per prompt
    seed: int = 0


def write_rollouts(rollouts: Rollouts, values: np.ndarray, path: Path, overwrite: bool = False) -> Path:
    """The lab's rollouts as a trajectory file: `values` from the critic, the exact ones beside."""
    n = rollouts.reward.shape[0]
    table = tj.from_ragged(
        rollouts.offsets,
        {"response_ids": rollouts.response_ids, "logprobs": rollouts.logprobs, "values": values,
         "true_values": rollouts.true_values, "true_advantages": rollouts.true_advantages,
         "decision": rollouts.decision},
        {"trajectory_id": [f"lab-{i}" for i in range(n)], "group_id": [f"task-{t}" for t in rollouts.task],
         "reward": rollouts.reward})
    return tj.write_table(table, path, overwrite=overwrite)


def glance(config: DemoConfig) -> list[dict]:
    """Per cell: {"cell", "by_seed": {label: [cos_batch per seed]}, "contrast": (mean, half, n)}."""
    estimators = [e for e in quick_estimators() if e.label in SHOWN]
    out = []
    for cell in CELLS:
        study = StudyConfig(settings=((cell.setting, cell.process),), critics=(cell.critic,), seeds=config.seeds,
                            tasks=config.tasks, samples=config.samples, batches=2, segment_rollouts=4)
        runs = [run_seed(study, cell.process, config.seed + s, estimators) for s in range(config.seeds)]
        by_seed = {e.label: [r["critics"][cell.critic.name]["metrics"][e.label]["cos_batch"] for r in runs]
                   for e in estimators}
        out.append({"cell": cell, "by_seed": by_seed,
                    "contrast": stats.contrast(by_seed["sae p0.2"], by_seed[BASELINE])})
    return out


def verdict(mean: float, half: float) -> str:
    """"SAE wins" / "SAE loses" when the interval excludes 0, else "no clear difference"."""
    if not half == half or abs(mean) <= half:
        return "no clear difference"
    return "SAE wins" if mean > 0 else "SAE loses"


def glance_text(cells: list[dict], seeds: int) -> str:
    """The at-a-glance table: estimators as rows, the two cells as columns, then a verdict per cell."""
    head = ["estimator"] + [f"{c['cell'].title}: {c['cell'].setting}" for c in cells]
    rows = [[label] + [stats.format_interval(*stats.interval(c["by_seed"][label])[:2]) for c in cells]
            for label in cells[0]["by_seed"]]
    lines = [f"cosine between each estimator's batch policy gradient and the exact gradient "
             f"(mean ± 95% t-interval over {seeds} paired seeds; higher is better)", *text_table(head, rows)]
    for c in cells:
        mean, half, n = c["contrast"]
        lines.append(f"{c['cell'].title} ({c['cell'].setting}): sae p0.2 - {BASELINE} = "
                     f"{stats.format_interval(mean, half)} -> {verdict(mean, half)}. Why: {c['cell'].reason}")
    return "\n".join(lines)


def glance_plot(cells: list[dict]) -> bytes:
    """PNG bytes: per cell, each estimator's mean cosine with its t-interval (matplotlib, `report` extra)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(cells), sharey=True)
    for ax, c in zip(np.atleast_1d(axes), cells):
        labels = list(c["by_seed"])
        iv = [stats.interval(c["by_seed"][k]) for k in labels]
        colours = ["#c55a11" if k.startswith("sae") else "#f4b183" if k in ("random", "fixed") else
                   "#1f4e79" if k.startswith("gae") else "#7f7f7f" for k in labels]
        ax.bar(range(len(labels)), [m for m, _, _ in iv], yerr=[h for _, h, _ in iv], color=colours, capsize=3)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{c['cell'].title}: {c['cell'].setting}", fontsize=9)
        ax.axhline(0.0, color="#555", lw=0.6)
    np.atleast_1d(axes)[0].set_ylabel("cosine to the exact gradient")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    return buf.getvalue()


def run(out_dir: str | Path, config: DemoConfig = DemoConfig(), report: bool = True, overwrite: bool = False,
        as_json: bool = False) -> str:
    """Run the demo into `out_dir`; returns the text it prints (as_json: a JSON document of the same
    results: per cell each estimator's per-seed cosines and the contrast, the files written, each
    recomputed set's cosine). Refuses (FileExistsError) to replace the files of an earlier run unless
    `overwrite`. With `report`, raises `sae_core.extras.MissingExtra` (one line naming the `report`
    extra) at once without matplotlib."""
    from ..tools.recompute import plan_runs, recompute

    if report:
        from ..tools.report import require_matplotlib

        require_matplotlib("sae demo (its report and plot; --no-report skips them)")
    out_dir = Path(out_dir)
    names = ("rollouts.parquet", "recomputed.parquet") + (("report.html", "lab.png", "index.html") if report else ())
    if not overwrite:
        taken = [n for n in names if (out_dir / n).exists()]
        if taken:
            raise FileExistsError(f"{out_dir} holds an earlier demo ({', '.join(taken)}); pass --overwrite to "
                                  "replace it")
    start = time.perf_counter()
    cells = glance(config)
    text = glance_text(cells, config.seeds)
    lines = [text, ""]

    # the user's path: a file with a learned critic's values, recomputed, scored, reported
    cfg = ProcessConfig(min_length=256, max_length=512)
    tasks = make_tasks(cfg, config.file_tasks, config.seed)
    rng = np.random.default_rng([config.seed, 7])
    critic = learned.LearnedCritic(target="mc", seed=config.seed).fit(rollout(tasks, 32, rng))
    rollouts = rollout(tasks, config.samples, rng)
    src = write_rollouts(rollouts, critic.values(rollouts), out_dir / "rollouts.parquet", overwrite)
    lines.append(f"1. {rollouts.reward.shape[0]} responses ({rollouts.offsets[-1]:,} tokens) of {config.file_tasks} "
                 f"prompts, values from a critic learned on 32 other rollouts per prompt: {src}")
    runs = plan_runs(list(RUNS))  # the registry's defaults: gae and sae at the paper's lambda
    dst = out_dir / "recomputed.parquet"
    result = recompute(src, dst, runs, overwrite=overwrite, progress=False)
    if not result.ok:
        raise RuntimeError(result.files[0].error)
    lines.append(f"2. recomputed with {', '.join(RUNS)}: {dst}")
    table = tj.read_table(dst)
    exact = gradient.exact(rollouts)
    scored = {}
    for r in runs:
        column = f"advantages{r.suffix}"
        adv = tj.to_ragged(table, [column]).tokens[column].astype(np.float64)  # the file keeps the row order
        scored[r.suffix.lstrip("_")] = gradient.cosine(gradient.batch(rollouts, adv), exact)
    lines.append("3. each recomputed set's policy gradient against the exact one (cosine, this one batch): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in scored.items()))
    files = {"rollouts": str(src), "recomputed": str(dst)}
    if report:
        from ..tools.report import write_report

        page = write_report(dst, out_dir / "report.html")  # its existence was checked above
        png = glance_plot(cells)
        write_bytes_atomic(out_dir / "lab.png", png, overwrite=overwrite)
        body = (f"<h1>sae demo</h1><p>The estimator lab at a glance (docs/lab.md has the full study).</p>"
                f"<img alt='cosine to the exact gradient per estimator' style='max-width:100%' "
                f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                f"<pre>{html.escape(text)}</pre><p><a href='report.html'>The report of the recomputed file</a></p>")
        index = write_text_atomic(out_dir / "index.html", f"<!doctype html><meta charset='utf-8'><title>sae demo"
                                  f"</title><body style='font-family:sans-serif;max-width:1100px'>{body}</body>",
                                  overwrite=overwrite)
        lines.append(f"4. report: {page}; the plot and table above: {index}")
        files.update(report=str(page), plot=str(out_dir / "lab.png"), index=str(index))
    seconds = time.perf_counter() - start
    lines.append(f"done in {seconds:.1f} s; `sae lab` runs the full study (docs/lab.md)")
    if as_json:
        return json.dumps({
            "metric": "cos_batch", "seeds": config.seeds, "baseline": BASELINE,
            "cells": [{"title": c["cell"].title, "setting": c["cell"].setting, "critic": c["cell"].critic.name,
                       "reason": c["cell"].reason, "by_seed": c["by_seed"],
                       "contrast": dict(zip(("mean", "half_width", "n"), c["contrast"])),
                       "verdict": verdict(*c["contrast"][:2])} for c in cells],
            "recomputed_cosine": scored, "files": files, "seconds": seconds}, indent=1)
    return "\n".join(lines)
