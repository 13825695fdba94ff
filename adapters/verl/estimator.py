"""What `compute_advantage` does for sae-rl's estimators inside veRL: translate, call sae_core, whiten.

Reads from the DataProto's batch ([B, T] tensors, T = the response length, on the trainer's device):
`token_level_rewards`, `values` (the critic's; needs `critic.enable=True` for estimators other
than gae), `response_mask`, and the behaviour log-probs: `rollout_log_probs` (the sampler's own,
present when `actor_rollout_ref.rollout.calculate_log_probs=True`) when the batch has them, else
`old_log_probs` (recomputed by the actor before the update). Writes `advantages` (whitened over
the batch's valid tokens exactly as veRL's GAE does) and `returns` (not whitened), like veRL's GAE.

Options come from `algorithm.sae` (Hydra: `+algorithm.sae.threshold=0.2` and so on):
    threshold      sae's probability threshold p (default 0.2, the paper's)
    lam            lambda at segment boundaries (default 0.95, the paper's; algorithm.lam is veRL's
                   GAE lambda and is not used)
    critic_lam     lambda of decoupled critic targets (default None: R = A + V)
    boundary       sae's boundary rule: logprob (default), fixed, delimiter, quantile, entropy
    segment_length, delimiter_ids, quantile, entropy_threshold: the rules' options
    alpha          vapo's alpha (default 0.05)
    logprobs       "auto" (default: rollout_log_probs, else old_log_probs), "rollout_log_probs" or
                   "old_log_probs"
    mask_mode      "skip" (default, veRL's own GAE semantics) or "zero"
    whiten         whiten advantages as veRL's GAE does (default true)
    dump_dir       write each call's rollouts and outputs there, in the trajectory standard
gamma is `algorithm.gamma`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

from sae_core import compute_advantages
from sae_core.estimators import estimator_params
from sae_core.metrics import segment_stats

OPTIONS = ("threshold", "lam", "critic_lam", "boundary", "segment_length", "delimiter_ids", "quantile",
           "entropy_threshold", "alpha", "logprobs", "mask_mode", "whiten", "dump_dir")
PAPER = {"threshold": 0.2, "lam": 0.95}
LOGPROB_KEYS = ("rollout_log_probs", "old_log_probs")

_pending: dict[str, float] = {}
_dump_counter = itertools.count()


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
        raise ValueError(f"algorithm.sae must be a mapping of options; got {section!r}")
    unknown = sorted(set(section) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) algorithm.sae.{', algorithm.sae.'.join(unknown)}; "
                         f"known: {', '.join(OPTIONS)}")
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
    rule = opts.get("boundary")
    kwargs: dict[str, Any] = {"gamma": gamma, "mask_mode": opts.get("mask_mode", "skip"),
                              "critic_lam": opts.get("critic_lam")}
    if estimator == "sae":
        kwargs["lam"] = opts.get("lam", PAPER["lam"])
        kwargs["threshold"] = opts.get("threshold", PAPER["threshold"])
        for key in ("boundary", "segment_length", "delimiter_ids", "quantile", "entropy_threshold"):
            if opts.get(key) is not None:
                kwargs[key] = opts[key]
        if rule in (None, "logprob", "quantile"):
            kwargs["logprobs"] = _logprobs(batch, opts.get("logprobs", "auto"), estimator)
        elif rule == "delimiter":
            kwargs["response_ids"] = batch["responses"]
        elif rule == "entropy":
            if "entropys" not in batch.keys():
                raise ValueError("algorithm.sae.boundary=entropy needs per-token entropies (batch key 'entropys'), "
                                 "which this trainer does not store; use another boundary rule")
            kwargs["entropy"] = batch["entropys"]
    elif estimator == "vapo":
        kwargs["alpha"] = opts.get("alpha", 0.05)
    recorded = estimator_params(estimator, **kwargs)  # checks the options before any work
    out = compute_advantages(rewards, values, mask, estimator=estimator, **kwargs)
    advantages = out.advantages
    if opts.get("whiten", True):
        from verl.utils import torch_functional as verl_F

        advantages = verl_F.masked_whiten(advantages, mask)
    batch["advantages"] = advantages
    batch["returns"] = out.returns
    _pending.update(step_metrics(out.boundaries, mask, estimator))
    if opts.get("dump_dir"):
        dump(data, out, opts["dump_dir"], recorded)
    return data


def _logprobs(batch, choice: str, estimator: str):
    keys = LOGPROB_KEYS if choice == "auto" else (choice,)
    if choice not in ("auto", *LOGPROB_KEYS):
        raise ValueError(f"algorithm.sae.logprobs must be auto, rollout_log_probs or old_log_probs; got {choice!r}")
    for key in keys:
        if key in batch.keys():
            return batch[key]
    raise ValueError(
        f"adv_estimator={estimator} needs the behaviour log-probs of the sampled tokens, and the batch has no "
        f"{' or '.join(keys)}: set actor_rollout_ref.rollout.calculate_log_probs=True (rollout_log_probs), or let "
        "the actor recompute old_log_probs (the default for PPO)")


def step_metrics(boundaries, mask, estimator: str) -> dict[str, float]:
    """sae/boundary_fraction: boundaries per valid token; sae/mean_segment_length: valid tokens per
    segment, a segment starting at a boundary or at a response's first valid token
    (`sae_core.metrics.segment_stats`)."""
    if estimator != "sae":
        return {}
    fraction, length = segment_stats(boundaries, mask)
    return {"sae/boundary_fraction": fraction, "sae/mean_segment_length": length}


def pop_metrics() -> dict[str, float]:
    """The metrics of the advantages computed since the last call (the trainer logs them per step)."""
    out = dict(_pending)
    _pending.clear()
    return out


def dump(data, out, directory: str, recorded: Mapping[str, Any]) -> str:
    """Write this call's rollouts and outputs to `directory/step-XXXXXXXX.parquet`, atomically
    (a second call in the same step gets `-1`, `-2`, ...). Returns the path.

    Rows are responses; columns: trajectory_id, group_id (veRL's uid), step, prompt_ids,
    response_ids, response_mask, logprobs (rollout_log_probs, else old_log_probs, when present),
    values, rewards (token-level), and the outputs advantages (before whitening), returns,
    boundaries; `recorded` (the estimator's parameters) goes to the metadata.
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
    for key in LOGPROB_KEYS:
        if key in batch.keys():
            tokens["logprobs"] = batch[key]
            break
    floats = ("values", "rewards", "advantages", "returns", "logprobs")
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
