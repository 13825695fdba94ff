"""`sae demo`: the estimator lab end to end, through the same code path users take.

1. Draw rollouts from the lab's synthetic RLVR process and write them in the trajectory standard,
   with a critic that errs (noise, drift, shrinkage) as `values` and the exact values and
   advantages as extra columns (`true_values`, `true_advantages`).
2. Recompute them with several estimators (`sae_core.tools.recompute`, as `sae recompute` does).
3. Score each estimator's advantages against the exact ones and print the table.
4. Write the HTML report (`sae report`) of the recomputed file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import trajectory as tj
from .critics import Critic, critic_values
from .process import Rollouts, TaskConfig, sample
from .scoring import format_table, score, segments, summarize

RUNS = ("gae", "mc", "vapo", "sae", "sae:threshold=0.5")  # `sae recompute --estimator` values


@dataclass(frozen=True)
class DemoConfig:
    tasks: int = 24
    samples: int = 8
    seed: int = 0
    critic: Critic = Critic(noise=0.1, drift=0.2, shrink=0.5)
    task: TaskConfig = TaskConfig()


def write_rollouts(rollouts: Rollouts, values: np.ndarray, path: Path) -> Path:
    """The lab's rollouts as a trajectory file: `values` from the critic, the exact ones beside."""
    n = rollouts.reward.shape[0]
    table = tj.from_ragged(
        rollouts.offsets,
        {"response_ids": rollouts.response_ids, "logprobs": rollouts.logprobs, "values": values,
         "true_values": rollouts.true_values, "true_advantages": rollouts.true_advantages,
         "decision": rollouts.decision},
        {"trajectory_id": [f"lab-{i}" for i in range(n)], "group_id": [f"task-{t}" for t in rollouts.task],
         "reward": rollouts.reward})
    return tj.write_table(table, path, overwrite=True)


def run(out_dir: str | Path, config: DemoConfig = DemoConfig(), report: bool = True) -> str:
    """Run the demo into `out_dir`; returns the text it prints. With `report`, raises
    `sae_core.extras.MissingExtra` (one line naming the `report` extra) at once without matplotlib."""
    from ..tools.recompute import plan_runs, recompute

    if report:
        from ..tools.report import require_matplotlib

        require_matplotlib("sae demo (its report; --no-report skips it)")

    out_dir = Path(out_dir)
    lines = []
    start = time.perf_counter()
    rollouts = sample(config.task, config.tasks, config.samples, seed=config.seed)
    values = critic_values(rollouts, config.critic, seed=config.seed + 1000)
    src = write_rollouts(rollouts, values, out_dir / "rollouts.parquet")
    lines.append(f"1. {rollouts.reward.shape[0]} responses ({rollouts.offsets[-1]:,} tokens) of "
                 f"{config.tasks} synthetic tasks, critic with {config.critic.name}: {src}")
    runs = plan_runs(list(RUNS))  # the registry's defaults: gae and sae at the paper's lambda
    dst = out_dir / "recomputed.parquet"
    result = recompute(src, dst, runs, overwrite=True, progress=False)
    if not result.ok:
        raise RuntimeError(result.files[0].error)
    lines.append(f"2. recomputed with {', '.join(RUNS)}: {dst}")
    table = tj.read_table(dst)
    exact = tj.to_ragged(table, ["true_advantages"]).tokens["true_advantages"].astype(np.float64)
    segment_of = segments(rollouts)  # the file keeps the rollouts' row order
    scores = {}
    for r in runs:
        est = tj.to_ragged(table, [f"advantages{r.suffix}"]).tokens[f"advantages{r.suffix}"]
        scores[r.suffix.lstrip("_")] = score(est, exact, segment_of, rollouts.decision)
    lines.append("3. each estimator's advantages against the exact ones (one rollout set, no CI):")
    lines.append(format_table(summarize([scores])))
    if report:
        from ..tools.report import write_report

        page = write_report(dst, out_dir / "report.html")
        lines.append(f"4. report: {page}")
    lines.append(f"done in {time.perf_counter() - start:.1f} s; "
                 "`sae lab` runs the full sweep over critics and seeds")
    return "\n".join(lines)
