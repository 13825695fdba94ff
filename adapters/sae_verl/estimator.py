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
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
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


def compute(data, estimator: str, *, gamma: float, config: Any):
    """Fill `data.batch["advantages"]` and `["returns"]` ([B, T], the rewards' dtype and device)
    with `estimator` computed by sae_core; returns `data` (veRL's convention)."""
    opts = options(config)
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

    def entropy():
        if "entropys" not in batch.keys():
            raise ValueError(f"{SECTION}.boundary=entropy needs per-token entropies (batch key 'entropys'), "
                             "which this trainer does not store; use another boundary rule")
        return batch["entropys"]

    sources = {"logprobs": behaviour_logprobs, "response_ids": lambda: batch["responses"], "entropy": entropy}
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
        dump(data, out, opts["dump_dir"], recorded, logprobs, per_token)
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
         per_token: Mapping[str, Any] | None = None) -> str:
    """Write this call's rollouts and outputs to `directory/step-XXXXXXXX.parquet`, atomically
    (a second call in the same step gets `-1`, `-2`, ...). Returns the path.

    Rows are responses; columns: trajectory_id, group_id (veRL's uid), step, prompt_ids,
    response_ids, response_mask, logprobs (the [B, T] behaviour log-probs `algorithm.sae.logprobs`
    chose, when present), values, rewards (token-level), the per-token data the boundary rule read
    (`per_token`, by `registry.DATA` name: entropy, ...), and the outputs advantages (before
    whitening), returns, boundaries; `recorded` (the estimator's parameters) goes to the metadata.
    """
    import numpy as np

    from sae_core import trajectory as tj

    batch = data.batch
    step = data.meta_info.get("global_steps") if hasattr(data, "meta_info") else None
    step = int(step) if step is not None else next(_dump_counter)
    mask = batch["response_mask"].detach().cpu().numpy().astype(bool)
    n = mask.shape[0]
    tokens = {"response_ids": batch["responses"], "response_mask": mask, "values": batch["values"],
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
    if "prompts" in batch.keys() and "attention_mask" in batch.keys():
        prompts = batch["prompts"].detach().cpu().numpy()
        attn = batch["attention_mask"][:, : prompts.shape[1]].detach().cpu().numpy().astype(bool)
        rows["prompt_ids"] = [p[a].tolist() for p, a in zip(prompts, attn, strict=True)]
    # a response runs to its last valid token; masked tokens before it stay, with mask 0
    table = tj.from_padded(tokens, mask, rows, estimators={"advantages": dict(recorded)})
    path = os.path.join(directory, f"step-{step:08d}.parquet")
    for k in itertools.count(1):
        if not os.path.exists(path):
            break
        path = os.path.join(directory, f"step-{step:08d}-{k}.parquet")
    tj.write_table(table, path)
    return path
