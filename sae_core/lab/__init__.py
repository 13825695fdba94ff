"""The estimator lab: synthetic RLVR rollouts whose true values and advantages are known exactly,
critics with controlled errors, and every estimator scored against the exact advantages.

    process   the synthetic process and its exact values (dynamic programming), `sample`
    critics   `Critic` error models (noise, drift, shrinkage) on top of the exact values
    scoring   `compare`: each estimator through `compute_advantages_ragged`, scored; `summarize`
    sweep     `sae lab`: every critic over seeds
    demo      `sae demo`: the lab end to end through files, `sae recompute` and `sae report`
              (imported on use: it needs pyarrow)

Findings: docs/lab.md.
"""

from .critics import DEFAULT_CRITICS, Critic, critic_values
from .process import Rollouts, TaskConfig, exact_values, make_task, sample
from .scoring import (
    METRICS,
    TABLE_METRICS,
    Estimator,
    Summary,
    compare,
    default_estimators,
    format_table,
    logprob_boundaries,
    score,
    segments,
    summarize,
)
from .sweep import SweepConfig, sweep

__all__ = [
    "Critic", "DEFAULT_CRITICS", "Estimator", "METRICS", "Rollouts", "Summary", "SweepConfig",
    "TABLE_METRICS",
    "TaskConfig", "compare", "critic_values", "default_estimators", "exact_values", "format_table",
    "logprob_boundaries", "make_task", "sample", "score", "segments", "summarize", "sweep",
]
