"""What `compute_advantage` does for sae-rl's estimators inside veRL: translate, call sae_core, whiten.

Reads from the DataProto's batch ([B, T] tensors, T = the response length, on the trainer's device):
`token_level_rewards`, `values` (the critic's; needs `critic.enable=True` for estimators other
than gae), `response_mask`, and what the boundary rule reads: the behaviour log-probs
(`rollout_log_probs`, the sampler's own, present when
`actor_rollout_ref.rollout.calculate_log_probs=True`, when the batch has them, else
`old_log_probs`, recomputed by the actor before the update), the sampled token ids (`responses`)
or per-token entropies (`entropys`). Writes `advantages` (whitened over the batch's valid tokens
exactly as veRL's GAE does) and `returns` (not whitened), like veRL's GAE.

Options come from `algorithm.sae` (Hydra: `+algorithm.sae.threshold=0.2` and so on):
- the options of sae and vapo as `sae_core.registry` defines them (`ESTIMATORS[name].options`,
  with their ranges and defaults, the paper's for sae; listed in the README): sae's `lam` (the
  lambda at segment boundaries; `algorithm.lam` is veRL's GAE lambda and is not used),
  `boundary` and each boundary rule's option, vapo's `alpha`. Options of the other estimator are
  ignored, so one section serves both;
- `critic_lam` and `mask_mode` (registry.COMMON; mask_mode "skip", the default, is veRL's own GAE
  semantics);
- this adapter's own settings (ADAPTER_OPTIONS):
    logprobs   "auto" (default: rollout_log_probs, else old_log_probs), "rollout_log_probs" or
               "old_log_probs"
    whiten     whiten advantages as veRL's GAE does (default true)
    dump_dir   write each call's rollouts and outputs there, in the trajectory standard
gamma is `algorithm.gamma`.

The trainer's step: the wrappers in `sae_verl` run each trainer's `fit` (and the v1 trainer's
advantage step) inside `trainer_step(...)`, so `compute` knows the trainer's `global_steps` (dumps are
named and stamped with it, also after a resume) and, on the v1 trainer, can read from TransferQueue
the fields its advantage step does not fetch (`responses` for the delimiter rule and the dump,
`entropy` for the entropy rule, `prompts` for the dump).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sae_core import compute_advantages, estimator_params, registry
from sae_core.integration import translate
from sae_core.segments import segment_stats

SECTION = "algorithm.sae"
COMMON_OPTIONS = ("critic_lam", "mask_mode")  # of registry.COMMON; gamma is algorithm.gamma
ADAPTER_OPTIONS = ("logprobs", "whiten", "dump_dir")
LOGPROB_KEYS = ("rollout_log_probs", "old_log_probs")

_pending: dict[str, float] = {}
_dump_counter = itertools.count()
_dumped: dict[tuple[str, int], int] = {}  # (directory, step) -> files written for that step by this process
log = logging.getLogger("sae_verl")


@dataclass
class TrainerStep:
    """What a trainer tells `compute` about the advantage step it is running.

    trainer: the trainer object (its `global_steps` is the step being trained, 1-based, restored on
    resume); fetch: on the v1 trainer, fetch(names) -> {name: [B, T_name] tensor, rows in the batch's
    order} read from TransferQueue (None on the legacy trainer, whose batch holds every key);
    v1: whether the v1 trainer runs the step.
    """

    trainer: Any = None
    fetch: Callable[[Sequence[str]], Mapping[str, Any]] | None = None
    v1: bool = False
    fetched: dict[str, Any] = field(default_factory=dict)  # name -> what `fetch` gave (None: not there)

    @property
    def step(self) -> int | None:
        step = getattr(self.trainer, "global_steps", None)
        return int(step) if step is not None else None

    def read(self, name: str) -> Any:
        """The field `name` as `fetch` gives it (a nested or [B, T_name] tensor), read from
        TransferQueue once per step however often it is asked for; None without `fetch` or when
        TransferQueue does not hold it."""
        if self.fetch is None:
            return None
        if name not in self.fetched:
            try:
                self.fetched[name] = self.fetch([name]).get(name)
            except Exception as exc:  # noqa: BLE001 -- TransferQueue raises its own types for a missing field
                log.debug("TransferQueue has no field %r: %s", name, exc)
                self.fetched[name] = None
        return self.fetched[name]


_steps: list[TrainerStep] = []


@contextlib.contextmanager
def trainer_step(trainer: Any, fetch: Callable[[Sequence[str]], Mapping[str, Any]] | None = None,
                 v1: bool = False) -> Iterator[TrainerStep]:
    """Run the block with `current_step()` telling `compute` about `trainer` (see TrainerStep)."""
    _steps.append(TrainerStep(trainer, fetch, v1))
    try:
        yield _steps[-1]
    finally:
        _steps.pop()


def current_step() -> TrainerStep:
    """The innermost `trainer_step` context, or an empty TrainerStep outside any."""
    return _steps[-1] if _steps else TrainerStep()


def known_options() -> tuple[str, ...]:
    """The keys `algorithm.sae` may hold, read from the registry now."""
    return translate.option_names(translate.ADDED_ESTIMATORS, COMMON_OPTIONS, ADAPTER_OPTIONS)


def registry_stub(name: str):
    """What `register_adv_est` gets: veRL's generic estimator path passes no values or log-probs,
    so the computation happens in the wrapped `compute_advantage`; reaching this means a trainer
    called the registry directly, which this adapter cannot serve."""

    def estimator(*args: Any, **kwargs: Any):
        raise RuntimeError(
            f"adv_estimator={name} is computed by sae_verl's wrapper of veRL's compute_advantage, which this "
            "trainer did not call (it called the estimator registry directly, without values and log-probs). "
            "Use veRL's ray_trainer or v1 trainer, or call sae_core.compute_advantages yourself.")

    estimator.__sae_rl__ = True
    estimator.__name__ = f"sae_rl_{name}"
    return estimator


def options(config: Any) -> dict[str, Any]:
    """`algorithm.sae` as a plain dict, checked for unknown keys (a typo would otherwise be silent)."""
    section = None
    if config is not None:
        section = config.get("sae", None) if hasattr(config, "get") else getattr(config, "sae", None)
    if section is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(section):
            section = OmegaConf.to_container(section, resolve=True)
    except ImportError:  # pragma: no cover (veRL depends on omegaconf)
        pass
    if not isinstance(section, Mapping):
        raise ValueError(f"{SECTION} must be a mapping of options; got {section!r}")
    known = known_options()
    unknown = sorted(set(section) - set(known))
    if unknown:
        named = ", ".join(f"{SECTION}.{key}" for key in unknown)
        raise ValueError(f"unknown option(s) {named}; known: {', '.join(known)}")
    return dict(section)


def batch_field(data, name: str, context: TrainerStep, shape: Sequence[int]) -> Any:
    """`data.batch[name]`, or on the v1 trainer the field fetched from TransferQueue (right-padded
    to `shape` = [B, T] of the response mask when it is per response token); None when neither has it."""
    if name in data.batch.keys():
        return data.batch[name]
    value = context.read(name)
    if value is None:
        return None
    import torch

    if getattr(value, "is_nested", False):
        value = torch.nested.to_padded_tensor(value, 0)
    if value.dim() == 2 and value.shape[0] == shape[0] and value.shape[1] != shape[1]:
        fixed = value.new_zeros(tuple(shape))
        n = min(value.shape[1], shape[1])
        fixed[:, :n] = value[:, :n]
        value = fixed
    return value


def where_missing(name: str, context: TrainerStep) -> str:
    """Why the batch has no `name`, and what provides it, in the words of the trainer running."""
    if context.v1:
        return (f"veRL's v1 trainer did not store {name!r} in TransferQueue this step")
    return f"veRL's batch has no {name!r} at the advantage step"


def compute(data, estimator: str, *, gamma: float, config: Any):
    """Fill `data.batch["advantages"]` and `["returns"]` ([B, T], the rewards' dtype and device)
    with `estimator` computed by sae_core; returns `data` (veRL's convention), resampled as veRL's
    GAE does when `algorithm.use_pf_ppo` is set (legacy trainer only)."""
    opts = options(config)
    context = current_step()
    pf_ppo = bool(config.get("use_pf_ppo", False)) if config is not None and hasattr(config, "get") else False
    if pf_ppo and context.v1:
        raise ValueError(
            f"algorithm.use_pf_ppo=True with adv_estimator={estimator} on veRL's v1 trainer: PF-PPO resamples the "
            "batch's rows, and the v1 trainer writes advantages back to TransferQueue by each row's key, so the "
            "resampled rows would land on the wrong responses. Use the legacy trainer (trainer.use_v1=False), "
            "where sae applies PF-PPO as veRL's gae does, or set algorithm.use_pf_ppo=False")
    batch = data.batch
    if "response_mask" not in batch.keys():
        from verl.trainer.ppo.ray_trainer import compute_response_mask

        batch["response_mask"] = compute_response_mask(data)
    mask = batch["response_mask"]
    rewards = batch["token_level_rewards"]
    if "values" not in batch.keys():
        raise ValueError(f"adv_estimator={estimator} needs the critic's values, and the batch has none: set "
                         "critic.enable=True (veRL runs a critic by default only for gae)")
    values = batch["values"]
    kwargs = translate.estimator_kwargs(estimator, opts, adapter=ADAPTER_OPTIONS, gamma=gamma)
    recorded = estimator_params(estimator, **kwargs)  # checks the options before any work
    keys, logprobs = translate.choose_logprobs(opts.get("logprobs", "auto"), LOGPROB_KEYS,
                                               lambda key: batch[key] if key in batch.keys() else None,
                                               setting=f"{SECTION}.logprobs")

    def behaviour_logprobs():
        if logprobs is None:
            raise ValueError(
                f"adv_estimator={estimator} needs the behaviour log-probs of the sampled tokens, and the "
                f"batch has no {' or '.join(keys)}: set actor_rollout_ref.rollout.calculate_log_probs=True "
                "(rollout_log_probs), or let the actor recompute old_log_probs (the default for PPO)")
        return logprobs

    def response_ids():
        ids = batch_field(data, "responses", context, mask.shape)
        if ids is None:
            raise ValueError(f"{SECTION}.boundary=delimiter reads the sampled token ids ('responses'): "
                             f"{where_missing('responses', context)}")
        return ids

    def entropy():
        # the legacy trainer's name, and the v1 trainer's (TransferQueue field)
        found = batch_field(data, "entropy" if context.v1 else "entropys", context, mask.shape)
        if found is None:
            if context.v1:
                how = ("the v1 trainer stores them only when the actor recomputes old_log_probs; "
                       "unset algorithm.rollout_correction.bypass_mode")
            else:
                how = ("veRL 0.9.1's legacy trainer computes them with old_log_probs and drops them before the "
                       "advantage step, and no setting keeps them; run the v1 trainer (trainer.use_v1=True), "
                       "which stores them, or use another boundary rule")
            raise ValueError(f"{SECTION}.boundary=entropy needs per-token entropies: {how}")
        return found

    sources = {"logprobs": behaviour_logprobs, "response_ids": response_ids, "entropy": entropy}
    per_token = translate.per_token_data(estimator, kwargs, sources, framework="veRL's batch",
                                         setting=f"{SECTION}.boundary")
    out = compute_advantages(rewards, values, mask, estimator=estimator, **kwargs, **per_token)
    advantages = out.advantages
    if opts.get("whiten", True):
        from verl.utils import torch_functional as verl_F

        advantages = verl_F.masked_whiten(advantages, mask)
    batch["advantages"] = advantages
    batch["returns"] = out.returns
    _pending.update(step_metrics(out.boundaries, mask, estimator))
    if opts.get("dump_dir"):
        dump(data, out, opts["dump_dir"], recorded, logprobs, per_token, context=context)
    if pf_ppo:  # as veRL's compute_advantage does after its GAE
        from verl.trainer.ppo import core_algos

        data = core_algos.compute_pf_ppo_reweight_data(data, config.pf_ppo.get("reweight_method"),
                                                       config.pf_ppo.get("weight_pow"))
    return data


def step_metrics(boundaries, mask, estimator: str) -> dict[str, float]:
    """sae/boundary_fraction: boundaries per valid token; sae/mean_segment_length: valid tokens per
    segment, a segment starting at a boundary or at a response's first valid token
    (`sae_core.segments.segment_stats`); none for estimators without segments."""
    if not registry.ESTIMATORS[estimator].segmental:
        return {}
    fraction, length = segment_stats(boundaries, mask)
    return {"sae/boundary_fraction": fraction, "sae/mean_segment_length": length}


def pop_metrics() -> dict[str, float]:
    """The metrics of the advantages computed since the last call (the trainer logs them per step)."""
    out = dict(_pending)
    _pending.clear()
    return out


def dump(data, out, directory: str, recorded: Mapping[str, Any], logprobs: Any = None,
         per_token: Mapping[str, Any] | None = None, context: TrainerStep | None = None) -> str:
    """Write this call's rollouts and outputs to `directory/step-XXXXXXXX.parquet`, atomically,
    XXXXXXXX being the trainer's `global_steps` (the step being trained, 1-based; after a resume the
    trainer's restored step, so a step run again replaces the file its first run left). A second
    call within the same step of this process gets `-1`, `-2`, .... Without a trainer (a direct call
    of veRL's compute_advantage) the step is `data.meta_info["global_steps"]`, else a count of the
    calls in this process. Returns the path.

    Rows are responses; columns: trajectory_id ("step{S}-{i}"), group_id (veRL's uid), step,
    prompt_ids (when the batch or TransferQueue has the prompts), response_ids, response_mask,
    logprobs (the [B, T] behaviour log-probs `algorithm.sae.logprobs` chose, when present), values,
    rewards (token-level), the per-token data the boundary rule read (`per_token`, by
    `registry.DATA` name: entropy, ...), and the outputs advantages (before whitening), returns,
    boundaries; `recorded` (the estimator's parameters) goes to the metadata.
    """
    import numpy as np

    from sae_core import trajectory as tj

    context = context or TrainerStep()
    batch = data.batch
    step = context.step
    if step is None and hasattr(data, "meta_info"):
        step = data.meta_info.get("global_steps")
    step = int(step) if step is not None else next(_dump_counter)
    mask_t = batch["response_mask"]
    mask = mask_t.detach().cpu().numpy().astype(bool)
    n = mask.shape[0]
    responses = batch_field(data, "responses", context, mask.shape)
    if responses is None:
        raise ValueError(f"{SECTION}.dump_dir: the dump needs the sampled token ids ('responses'): "
                         f"{where_missing('responses', context)}")
    tokens = {"response_ids": responses, "response_mask": mask, "values": batch["values"],
              "rewards": batch["token_level_rewards"], "advantages": out.advantages, "returns": out.returns,
              "boundaries": out.boundaries}
    for name, value in (per_token or {}).items():
        tokens[registry.DATA[name].column] = value
    if logprobs is not None:
        tokens["logprobs"] = logprobs
    floats = ("values", "rewards", "advantages", "returns", *(d.column for d in registry.DATA.values()
                                                            if d.kind == "float"))
    tokens = {k: v.detach().float().cpu().numpy() if k in floats else v for k, v in tokens.items()}
    uid = data.non_tensor_batch.get("uid") if hasattr(data, "non_tensor_batch") else None
    rows: dict[str, Any] = {"trajectory_id": [f"step{step}-{i}" for i in range(n)],
                            "step": np.full(n, step, dtype=np.int64)}
    if uid is not None:
        rows["group_id"] = [str(u) for u in uid]
    prompts = prompt_ids(data, context)
    if prompts is not None:
        rows["prompt_ids"] = prompts
    # a response runs to its last valid token; masked tokens before it stay, with mask 0
    table = tj.from_padded(tokens, mask, rows, estimators={"advantages": dict(recorded)})
    directory = os.path.abspath(directory)
    k = _dumped.get((directory, step), 0)
    _dumped[(directory, step)] = k + 1
    name = f"step-{step:08d}.parquet" if k == 0 else f"step-{step:08d}-{k}.parquet"
    path = os.path.join(directory, name)
    if os.path.exists(path):
        log.warning("sae_verl: replacing %s, left by an earlier run of step %d (a resumed run)", path, step)
    tj.write_table(table, path, overwrite=True)
    return path


def prompt_ids(data, context: TrainerStep) -> list[list[int]] | None:
    """Each row's prompt token ids without padding: from the legacy batch's `prompts` and
    `attention_mask` ([B, P] left-padded, [B, P + T]), or the v1 trainer's unpadded `prompts`
    field; None when neither is at hand."""
    batch = data.batch
    if "prompts" in batch.keys() and "attention_mask" in batch.keys():
        prompts = batch["prompts"].detach().cpu().numpy()
        attn = batch["attention_mask"][:, : prompts.shape[1]].detach().cpu().numpy().astype(bool)
        return [p[a].tolist() for p, a in zip(prompts, attn, strict=True)]
    value = context.read("prompts")
    if value is None:
        return None
    rows = value.unbind() if getattr(value, "is_nested", False) else list(value)
    return [r.detach().cpu().tolist() for r in rows]


_warmed: set[str] = set()


def warm_up(config: Any) -> float | None:
    """Compile (or load from numba's on-disk cache) the kernels `compute` will use, before the
    trainer's first step, so that `timing_s/adv` of step 1 measures the estimator and not the
    compiler. config: the trainer's full config (`algorithm.adv_estimator`, `algorithm.sae`,
    `algorithm.gamma`). Compiles for what both veRL trainers pass: float32 rewards, values and
    log-probs, an int64 `response_mask` ([B, T], from the tokenizer's attention mask or the agent
    loop), skip mode (`sae_core.kernels.warmup`). Returns the seconds spent, or None when the run's
    estimator is not one of ours, was warmed already in this process, or has settings `compute`
    will refuse (it says so at step 1). Says once what it did when it took over a second."""
    from sae_core.kernels import warmup

    algorithm = config.get("algorithm") if hasattr(config, "get") else getattr(config, "algorithm", None)
    if algorithm is None:
        return None
    estimator = str(getattr(algorithm.get("adv_estimator"), "value", algorithm.get("adv_estimator")))
    if estimator not in translate.ADDED_ESTIMATORS or estimator in _warmed:
        return None
    _warmed.add(estimator)
    try:
        kwargs = translate.estimator_kwargs(estimator, options(algorithm), adapter=ADAPTER_OPTIONS,
                                            gamma=float(algorithm.get("gamma", 1.0)))
        seconds = warmup(estimator, dtype="float32", mask_dtype="int64", data_dtype="float32", **kwargs)
    except (TypeError, ValueError):
        return None
    if seconds > 1.0:
        print(f"sae_verl: compiled the {estimator} kernels in {seconds:.1f} s before the first training step "
              "(first use after an install; numba caches them on disk)", flush=True)
    return seconds
