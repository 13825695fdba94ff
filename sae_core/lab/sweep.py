"""The lab's sweep (`sae lab`): every critic on fresh rollout sets, over seeds.

Seed s draws the rollouts (seed s), each critic's errors (seed 1000 + s) and the control's random
boundaries (seed s), so within a seed every critic sees the same rollouts and every estimator the
same critic values.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .. import registry
from .critics import DEFAULT_CRITICS, Critic, critic_values
from .process import TaskConfig, sample
from .scoring import Summary, compare, default_estimators, summarize


@dataclass(frozen=True)
class SweepConfig:
    """What `sae lab` runs: every critic on `seeds` fresh rollout sets of `tasks` x `samples`.

    lam: gae's middle lambda and sae's lambda at boundaries (see `default_estimators`).
    """

    task: TaskConfig = TaskConfig()
    critics: tuple[Critic, ...] = DEFAULT_CRITICS
    tasks: int = 16
    samples: int = 8
    seeds: int = 5
    lam: float = registry.PAPER_LAM

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SweepConfig:
        """From JSON: {"task": {...TaskConfig}, "critics": [{"noise": 0.1}, ...], "tasks": ..., ...};
        unknown keys are errors."""
        doc = dict(doc)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown lab config key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {k: doc[k] for k in ("tasks", "samples", "seeds", "lam") if k in doc}
        if "task" in doc:
            task = dict(doc["task"])
            if "branching" in task:
                task["branching"] = tuple(task["branching"])
            kwargs["task"] = TaskConfig(**task)
        if "critics" in doc:
            kwargs["critics"] = tuple(Critic(**c) for c in doc["critics"])
        return cls(**kwargs)


def sweep(config: SweepConfig, progress: bool | None = None) -> dict[str, Summary]:
    """{critic name: Summary over seeds} of `compare` with `default_estimators(config.lam)`.

    progress: a tqdm bar on stderr; None: only when stderr is a terminal.
    """
    from tqdm import tqdm

    runs: dict[str, list] = {c.name: [] for c in config.critics}
    estimators = default_estimators(config.lam)
    bar = tqdm(total=config.seeds * len(config.critics), desc="lab", unit=" runs", file=sys.stderr,
               disable=progress is False or (progress is None and not sys.stderr.isatty()))
    for s in range(config.seeds):
        rollouts = sample(config.task, config.tasks, config.samples, seed=s)
        for critic in config.critics:
            values = critic_values(rollouts, critic, seed=1000 + s)
            runs[critic.name].append(compare(rollouts, values, estimators, seed=s))
            bar.update()
    bar.close()
    return {name: summarize(r) for name, r in runs.items()}
