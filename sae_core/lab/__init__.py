"""The estimator lab: synthetic RLVR processes whose values, advantages and policy gradient are known
exactly, critics hand-made and learned, every estimator and control on the same rollouts, and the
pre-registered study that compares them (`sae lab`).

    process      the processes ("overwrite", "absorbing"), their exact solution by dynamic
                 programming, sampling, continuations from a state
    gradient     the exact policy gradient of a tabular softmax policy, and batch estimates of it
    critics      hand-made critics: exact, blind, late, exact at decisions or at boundaries
    learned      critics learned from rollouts (ridge regression on prefix features; MC or TD targets)
    estimators   the estimators and controls (matched GAE, random, fixed, oracle boundaries)
    metrics      cosine to the exact gradient (batch, pooled, bias/variance), per-segment and per-token
                 correlations
    stats        t-intervals, the pre-registered paired contrasts
    closed_loop  PPO on the tabular policy with a learned critic alongside; the exact expected reward
    study        `sae lab`: settings x critics x estimators x paired seeds
    present      tables (text, Markdown for docs/lab.md) and the plot
    demo         `sae demo` (imported on use: it needs pyarrow)

Findings: docs/lab.md.
"""

from .process import ProcessConfig, Rollouts, Solution, Task, exact_gradient, make_tasks, rollout, sample, solve
from .study import CriticSpec, StudyConfig

__all__ = ["CriticSpec", "ProcessConfig", "Rollouts", "Solution", "StudyConfig", "Task", "exact_gradient",
           "make_tasks", "rollout", "sample", "solve"]
