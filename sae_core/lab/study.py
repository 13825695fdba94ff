"""The pre-registered estimator study (`sae lab`): settings x critics x estimators x paired seeds.

For each setting (a `ProcessConfig`) and seed s, everything below shares the seed's draws, so
estimators and critics are compared on the same rollouts (paired by seed):

1. tasks: `tasks` prompts of the setting ("seen"), and as many new ones ("unseen");
2. training rollouts of the seen prompts (up to the largest `rollouts_per_prompt` of the learned
   critics; a critic fitted on n uses the first n per prompt);
3. `batches` evaluation batches of `samples` responses per prompt, drawn afresh (never fitted on),
   for the seen prompts and for the unseen ones;
4. every critic's values on the evaluation batches of its prompts, and every estimator's metrics
   (`metrics.evaluate`) against the exact gradient and advantages of those batches.

The results keep every seed's number; summaries are means with t-intervals over seeds, and the
contrasts fixed in `stats.CONTRASTS` before the first run are paired differences by seed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from . import closed_loop
from . import critics as hand
from . import gradient, learned, metrics, stats
from .closed_loop import LoopConfig
from .estimators import advantages, default_estimators, logprob_boundaries, quick_estimators
from .process import ProcessConfig, make_tasks, rollout

THRESHOLDS = (0.05, 0.1, 0.2, 0.5)  # boundary rates reported per setting


@dataclass(frozen=True)
class CriticSpec:
    """One critic of the study. kind: a hand-made critic of `critics` ("exact", "blind", "late",
    "exact_at_decisions", "exact_at_boundaries") or "learned"; prompts: "seen" or "unseen" (which
    evaluation batches it is scored on); params: the kind's options, `critics.HandCritic` fields for a
    hand-made kind (late: k; exact_at_boundaries: threshold; noise, drift, shrink), `learned.LearnedCritic`
    fields for "learned". Checked when made: a bad kind or option is a ValueError naming the critic."""

    name: str
    kind: str
    prompts: str = "seen"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.prompts not in ("seen", "unseen"):
            raise ValueError(f"critic {self.name!r}: prompts must be 'seen' or 'unseen', got {self.prompts!r}")
        try:
            self.make()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"critic {self.name!r}: {exc}") from None

    def make(self, seed: int = 0) -> hand.HandCritic | learned.LearnedCritic:
        """The critic this spec describes (a learned one unfitted, its fitting seeded by `seed`)."""
        if self.kind == "learned":
            return learned.LearnedCritic(**dict(self.params), seed=seed)
        return hand.HandCritic(self.kind, **dict(self.params))


DEFAULT_SETTINGS: tuple[tuple[str, ProcessConfig], ...] = (
    ("absorbing", ProcessConfig()),
    ("absorbing, misaligned", ProcessConfig(alignment=0.1, decision_rate=0.005)),
    ("absorbing, forks", ProcessConfig(fork_rate=0.15)),
    ("overwrite", ProcessConfig(kind="overwrite", decision_rate=0.02, slip_rate=0.01, harmful_slip_share=0.5,
                                fork_rate=0.0)),
    ("absorbing, 4k-8k", ProcessConfig(min_length=4096, max_length=8192, decision_rate=0.001, slip_rate=0.002,
                                       harmful_slip_share=0.05)),
)

DEFAULT_CRITICS: tuple[CriticSpec, ...] = (
    CriticSpec("exact", "exact"),
    CriticSpec("blind", "blind"),
    CriticSpec("late 16", "late", params={"k": 16}),
    CriticSpec("exact at decisions", "exact_at_decisions"),
    CriticSpec("exact at boundaries", "exact_at_boundaries", params={"threshold": 0.2}),
    CriticSpec("learned mc n8", "learned", params={"target": "mc", "rollouts_per_prompt": 8}),
    CriticSpec("learned mc n32", "learned", params={"target": "mc", "rollouts_per_prompt": 32}),
    CriticSpec("learned mc n128", "learned", params={"target": "mc", "rollouts_per_prompt": 128}),
    CriticSpec("learned td n32", "learned", params={"target": "td", "rollouts_per_prompt": 32}),
    CriticSpec("learned mc n32, unseen", "learned", "unseen", {"target": "mc", "rollouts_per_prompt": 32}),
)


LOOP_ESTIMATORS = ("mc", "gae 0.95", "gae 0.99", "gae 0.999", "gae matched", "sae p0.2", "random", "fixed")


@dataclass(frozen=True)
class LoopStudy:
    """The closed-loop part: PPO on the tabular policy of `tasks` prompts of `process` for each of
    `estimators` (labels of `estimators.default_estimators`) and the exact advantages (the ceiling),
    over `seeds` paired seeds (same tasks, same initial critic; `closed_loop.run`)."""

    setting: str = "absorbing, 256-512"
    process: ProcessConfig = ProcessConfig(min_length=256, max_length=512)
    estimators: tuple[str, ...] = LOOP_ESTIMATORS
    seeds: int = 10
    tasks: int = 8
    loop: LoopConfig = LoopConfig()


@dataclass(frozen=True)
class StudyConfig:
    """What `sae lab` runs. tasks x samples responses per evaluation batch, `batches` batches per seed."""

    settings: tuple[tuple[str, ProcessConfig], ...] = DEFAULT_SETTINGS
    critics: tuple[CriticSpec, ...] = DEFAULT_CRITICS
    estimators: str = "default"  # "default" or "quick" (`estimators.quick_estimators`)
    seeds: int = 10
    tasks: int = 16
    samples: int = 8
    batches: int = 4
    segment_rollouts: int = 32  # rollouts from each segment end for the per-segment ground truth
    setting_tasks: tuple[tuple[str, int], ...] = (("absorbing, 4k-8k", 4),)  # fewer prompts for long settings
    closed_loop: LoopStudy | None = LoopStudy()

    def tasks_for(self, setting: str) -> int:
        """Prompts per batch in `setting` (`setting_tasks`, else `tasks`)."""
        return dict(self.setting_tasks).get(setting, self.tasks)

    @classmethod
    def quick(cls) -> StudyConfig:
        """`sae lab --quick`: two settings, five critics, the quick estimators, 3 seeds (under 2 minutes)."""
        keep = {"exact", "blind", "exact at boundaries", "learned mc n32", "learned mc n32, unseen"}
        short = tuple((n, replace(c, min_length=256, max_length=512)) for n, c in DEFAULT_SETTINGS[:2])
        loop = LoopStudy(estimators=("mc", "gae 0.95", "sae p0.2"), seeds=3, tasks=4,
                         process=ProcessConfig(min_length=128, max_length=256), loop=LoopConfig(iterations=100))
        return cls(settings=short, critics=tuple(c for c in DEFAULT_CRITICS if c.name in keep),
                   estimators="quick", seeds=3, tasks=8, batches=2, segment_rollouts=8, closed_loop=loop)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StudyConfig:
        """From JSON: {"settings": {"name": {ProcessConfig keys}}, "critics": [{"name", "kind", ...}],
        "seeds": ..., ...}; unknown keys are errors naming them."""
        doc = dict(doc)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown lab config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {k: doc[k] for k in known - {"settings", "critics", "setting_tasks"} if k in doc}
        if "setting_tasks" in doc:
            kwargs["setting_tasks"] = tuple((str(k), int(v)) for k, v in dict(doc["setting_tasks"]).items())
        if "settings" in doc:
            kwargs["settings"] = tuple((n, ProcessConfig.from_dict(c)) for n, c in doc["settings"].items())
        if "critics" in doc:
            kwargs["critics"] = tuple(CriticSpec(**c) for c in doc["critics"])
        if "closed_loop" in doc:
            kwargs["closed_loop"] = None if doc["closed_loop"] is None else _loop_from_dict(doc["closed_loop"])
        config = cls(**kwargs)
        if config.estimators not in ("default", "quick"):
            raise ValueError(f"estimators: {config.estimators!r} is not 'default' or 'quick'")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `from_dict` reads back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["settings"] = {n: asdict(c) for n, c in self.settings}
        out["critics"] = [asdict(c) | {"params": dict(c.params)} for c in self.critics]
        out["setting_tasks"] = dict(self.setting_tasks)
        if self.closed_loop is not None:
            loop = self.closed_loop
            out["closed_loop"] = {"setting": loop.setting, "process": asdict(loop.process),
                                  "estimators": list(loop.estimators), "seeds": loop.seeds, "tasks": loop.tasks,
                                  "loop": asdict(loop.loop)}
        return out


def _loop_from_dict(doc: Mapping[str, Any]) -> LoopStudy:
    """A LoopStudy from `StudyConfig.to_dict`'s "closed_loop" entry (unknown keys are errors)."""
    doc = dict(doc)
    known = {f.name for f in fields(LoopStudy)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"unknown closed_loop key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "process" in doc:
        doc["process"] = ProcessConfig.from_dict(doc["process"])
    if "estimators" in doc:
        doc["estimators"] = tuple(doc["estimators"])
    if "loop" in doc:
        loop = dict(doc["loop"])
        if "critic" in loop:
            loop["critic"] = learned.LearnedCritic(**loop["critic"])
        doc["loop"] = LoopConfig(**loop)
    return LoopStudy(**doc)


def run_loop(study: LoopStudy, progress=None) -> dict[str, Any]:
    """{"auc": {label: [per seed]}, "final": {label: [per seed]}, "curves": {label: [mean J per iteration]}};
    "exact" is the loop with the exact advantages (the ceiling)."""
    by_label = {e.label: e for e in default_estimators()}
    unknown = [e for e in study.estimators if e not in by_label]
    if unknown:
        raise ValueError(f"closed_loop.estimators: unknown {', '.join(unknown)}; known: {', '.join(by_label)}")
    labels = ["exact"] + list(study.estimators)
    out: dict[str, Any] = {"auc": {k: [] for k in labels}, "final": {k: [] for k in labels}, "curves": {}}
    curves: dict[str, list] = {k: [] for k in labels}
    for seed in range(study.seeds):
        tasks = make_tasks(study.process, study.tasks, seed)
        for label in labels:
            if label == "exact":
                fn = lambda r, v: r.true_advantages  # noqa: E731
            else:
                est, rng = by_label[label], _rng(seed, 6)
                fn = lambda r, v, est=est, rng=rng: advantages(est, r, v, rng)  # noqa: E731
            res = closed_loop.run(tasks, fn, study.loop, seed=seed)
            out["auc"][label].append(res.auc)
            out["final"][label].append(float(res.curve[-1]))
            curves[label].append(res.curve)
            if progress is not None:
                progress.update()
    out["curves"] = {k: np.mean(v, axis=0).round(5).tolist() for k, v in curves.items()}
    return out


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def setting_profile(batch) -> dict[str, float]:
    """What a setting looks like on one batch of `Rollouts`: reward rate, mean length, boundary rate at
    each of `THRESHOLDS`, the share of exact advantage mass sum |A_t| on tokens below p = 0.2 ("aligned
    mass"), the share of tokens whose exact advantage is 0."""
    a = np.abs(batch.true_advantages)
    out = {"reward_rate": float(batch.reward.mean()), "mean_length": float(batch.lengths.mean())}
    for p in THRESHOLDS:
        out[f"boundary_rate_p{p:g}"] = float(logprob_boundaries(batch, p).mean())
    below = logprob_boundaries(batch)
    out["aligned_mass"] = float(a[below].sum() / a.sum()) if a.sum() > 0 else math.nan
    out["zero_advantage_share"] = float((a < 1e-12).mean())
    return out


def critic_values(spec: CriticSpec, batch, fitted, rng: np.random.Generator | None = None) -> np.ndarray:
    """[N] float32 values of `spec`'s critic on one evaluation batch (`fitted`: the learned critic, fitted;
    `rng`: draws a hand-made critic's noise or drift)."""
    return fitted.values(batch) if spec.kind == "learned" else spec.make().values(batch, rng)


def run_seed(config: StudyConfig, cfg: ProcessConfig, seed: int, estimators, tasks: int | None = None
             ) -> dict[str, Any]:
    """One setting at one seed: {"profile", "critics": {name: {"metrics": {label: {metric}}, "fit": {...}}}}.
    tasks: prompts per batch (default `config.tasks`)."""
    tasks = config.tasks if tasks is None else tasks
    seen = make_tasks(cfg, tasks, seed)
    unseen = make_tasks(cfg, tasks, seed + 1_000_003)
    most = max([int(c.params.get("rollouts_per_prompt", 0)) for c in config.critics if c.kind == "learned"],
               default=0)
    train = rollout(seen, most, _rng(seed, 1)) if most else None
    evals = {"seen": [rollout(seen, config.samples, _rng(seed, 2, b)) for b in range(config.batches)],
             "unseen": [rollout(unseen, config.samples, _rng(seed, 3, b)) for b in range(config.batches)]}
    out: dict[str, Any] = {"profile": setting_profile(evals["seen"][0]), "critics": {}}
    shared = {}  # per prompt set: the exact gradient and the segments' ground truth, whatever the critic
    for prompts in sorted({c.prompts for c in config.critics}):
        first = evals[prompts][0]
        shared[prompts] = {"truth": gradient.exact(first),
                           "segments": metrics.SegmentTruth(first, _rng(seed, 5), config.segment_rollouts)}
    for spec in config.critics:
        fitted, fit = None, {}
        if spec.kind == "learned":
            fitted = spec.make(seed).fit(train)
            fit = {k: v for k, v in learned.evaluate(fitted, evals[spec.prompts][0]).items() if k.startswith("rmse")}
        batches = evals[spec.prompts]
        values = [critic_values(spec, b, fitted, _rng(seed, 8, i)) for i, b in enumerate(batches)]
        result = metrics.evaluate(batches, values, estimators, _rng(seed, 4), **shared[spec.prompts])
        out["critics"][spec.name] = {"metrics": result, "fit": fit}
    return out


def run(config: StudyConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run the study; returns the JSON-ready results (see `summarize` for the summary part).

    {"config": ..., "estimators": [labels], "runs": {setting: [per seed: run_seed(...)]}, "summary": ...,
    "seconds": float}. progress: a tqdm bar on stderr; None: only when stderr is a terminal."""
    from tqdm import tqdm

    estimators = quick_estimators() if config.estimators == "quick" else default_estimators()
    start = time.perf_counter()
    bar = tqdm(total=len(config.settings) * config.seeds, desc="lab", unit=" seeds", file=sys.stderr,
               disable=progress is False or (progress is None and not sys.stderr.isatty()))
    runs: dict[str, list] = {}
    for name, cfg in config.settings:
        runs[name] = []
        for s in range(config.seeds):
            runs[name].append(run_seed(config, cfg, s, estimators, config.tasks_for(name)))
            bar.update()
    bar.close()
    doc = {"config": config.to_dict(), "estimators": [e.label for e in estimators], "runs": runs}
    doc["expected_bias"] = {name: metrics.expected_bias(rollout(make_tasks(cfg, config.tasks_for(name), 0),
                                                                config.samples, _rng(0, 7)), estimators)
                            for name, cfg in config.settings}
    if config.closed_loop is not None:
        loop = config.closed_loop
        bar = tqdm(total=loop.seeds * (len(loop.estimators) + 1), desc="closed loop", unit=" runs", file=sys.stderr,
                   disable=progress is False or (progress is None and not sys.stderr.isatty()))
        doc["closed_loop"] = run_loop(loop, bar)
        doc["closed_loop"]["summary"] = summarize_loop(doc["closed_loop"])
        bar.close()
    doc["summary"] = summarize(doc)
    doc["seconds"] = time.perf_counter() - start
    return doc


def _by_seed(runs: list, critic: str, label: str, metric: str) -> list[float]:
    return [float(r["critics"][critic]["metrics"][label][metric]) for r in runs]


def summarize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Means and t-intervals over seeds, and the pre-registered contrasts, from `run`'s per-seed runs.

    {setting: {"profile": {key: [mean, half]}, "critics": {critic: {"fit": {key: [mean, half]},
    "metrics": {label: {metric: [mean, half]}}, "contrasts": {contrast: {metric: [mean, half, n]}}}}}}"""
    out: dict[str, Any] = {}
    for setting, runs in doc["runs"].items():
        prof = {k: list(stats.interval([r["profile"][k] for r in runs])) for k in runs[0]["profile"]}
        crit: dict[str, Any] = {}
        for critic, first in runs[0]["critics"].items():
            labels = list(first["metrics"])
            names = list(first["metrics"][labels[0]])
            table = {lab: {m: list(stats.interval(_by_seed(runs, critic, lab, m))) for m in names}
                     for lab in labels}
            fit = {k: list(stats.interval([r["critics"][critic]["fit"][k] for r in runs])) for k in first["fit"]}
            per_seed = {lab: {m: _by_seed(runs, critic, lab, m) for m in names} for lab in labels}
            crit[critic] = {"fit": fit, "metrics": table,
                            "contrasts": [asdict(c) for c in stats.preregistered(per_seed, stats.PRIMARY_METRICS)]}
        out[setting] = {"profile": prof, "critics": crit}
    return out


def summarize_loop(loop: Mapping[str, Any]) -> dict[str, Any]:
    """{"metrics": {label: {"auc"|"final": [mean, half, n]}}, "contrasts": [...]} of `run_loop`'s result."""
    by_seed = {k: {"auc": loop["auc"][k], "final": loop["final"][k]} for k in loop["auc"]}
    return {"metrics": {k: {m: list(stats.interval(v)) for m, v in row.items()} for k, row in by_seed.items()},
            "contrasts": [asdict(c) for c in stats.preregistered(by_seed, ("auc", "final"))]}


def _rounded(x: Any, digits: int) -> Any:
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return x


def compact(doc: Mapping[str, Any], seed_metrics: tuple[str, ...] | None = stats.PRIMARY_METRICS,
            digits: int = 6, summary_digits: int = 4) -> dict[str, Any]:
    """`run`'s document for a file: the per-seed runs as lists over seeds ("per_seed": {setting:
    {"profile": {key: [...]}, "critics": {critic: {"fit": {key: [...]}, "metrics": {label: {metric:
    [...]}}}}}}), with only `seed_metrics` per estimator (None: all), floats to `digits` significant
    digits and the summary's to `summary_digits` (its tables show at most 4 decimals). The summary
    keeps every metric's mean and interval, so the tables and contrasts read from it stay complete."""
    out = {k: v for k, v in doc.items() if k != "runs"}
    per_seed: dict[str, Any] = {}
    for name, runs in doc["runs"].items():
        first = runs[0]
        per_seed[name] = {"profile": {k: [r["profile"][k] for r in runs] for k in first["profile"]}, "critics": {}}
        for critic, e in first["critics"].items():
            labels = list(e["metrics"])
            names = [m for m in e["metrics"][labels[0]] if seed_metrics is None or m in seed_metrics]
            per_seed[name]["critics"][critic] = {
                "fit": {k: [r["critics"][critic]["fit"][k] for r in runs] for k in e["fit"]},
                "metrics": {lab: {m: _by_seed(runs, critic, lab, m) for m in names} for lab in labels}}
    out["per_seed"] = per_seed
    out["seed_metrics"] = "all" if seed_metrics is None else list(seed_metrics)
    summary = _rounded(out.pop("summary"), summary_digits)
    out = _rounded(out, digits)
    out["summary"] = summary
    return out
