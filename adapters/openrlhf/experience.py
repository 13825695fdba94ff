"""The SAE step inside OpenRLHF's `RemoteExperienceMaker.compute_advantages_and_returns`.

OpenRLHF computes, per experience (B responses, A action tokens each; [B, A] tensors), shaped token
rewards (the outcome on the last action token, minus the KL term, plus length penalties), then
for `gae` calls `self.get_advantages_and_returns(values, rewards, action_mask, gamma, lambd)` and
afterwards normalises the advantages over all experiences' action tokens. With sae enabled the
wrapper below lets all of that run, with that one call answered by `sae_core` instead: the same
values, shaped rewards and action mask, the experience's behaviour log-probs (`rollout_log_probs`
when present, else `action_log_probs`), mask mode `zero` (OpenRLHF's GAE treats masked positions
as zero-reward, zero-value steps), gamma from `--algo.advantage.gamma`, lambda and the boundary
rule from `--algo.advantage.sae.*`.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

from sae_core import compute_advantages
from sae_core.metrics import segment_counts

_ORIGINAL = "__sae_rl_original__"
PAPER = {"threshold": 0.2, "lam": 0.95}
RULE_OPTIONS = ("boundary", "segment_length", "delimiter_ids", "quantile")


def sae_options(args: Any) -> dict[str, Any] | None:
    """The run's `algo.advantage.sae` options when sae (or vapo) is on, else None."""
    section = getattr(getattr(getattr(args, "algo", None), "advantage", None), "sae", None)
    if section is None:
        return None
    options = vars(section) if isinstance(section, SimpleNamespace) else dict(section)
    if options.get("estimator") is None:
        return None
    return {k: v for k, v in options.items() if v is not None}


def wrap_compute_advantages_and_returns(original):
    if hasattr(original, _ORIGINAL):
        return original

    @functools.wraps(original)
    def compute_advantages_and_returns(self, experiences):
        options = sae_options(self.strategy.args)
        if options is None:
            return original(self, experiences)
        by_values = {id(e.values): e for e in experiences}

        def get_advantages_and_returns(values, rewards, action_mask, gamma, lambd):
            experience = by_values.get(id(values))
            if experience is None:  # pragma: no cover (OpenRLHF passes experience.values itself)
                raise RuntimeError("sae_openrlhf could not match the values to an experience")
            return _advantages(experience, values, rewards, action_mask, gamma, options)

        self.get_advantages_and_returns = get_advantages_and_returns  # shadows the method for this call
        try:
            return original(self, experiences)
        finally:
            del self.get_advantages_and_returns

    setattr(compute_advantages_and_returns, _ORIGINAL, original)
    return compute_advantages_and_returns


def _advantages(experience, values, rewards, action_mask, gamma: float, options: dict[str, Any]):
    """[B, A] advantages and returns of one experience; per-sample SAE metrics go to its info."""
    if values is None:
        raise ValueError("--algo.advantage.estimator sae needs the critic's values, and this experience has none "
                         "(is --critic.model_name_or_path set, or did the critic fail to start?)")
    estimator = options["estimator"]
    kwargs: dict[str, Any] = {"gamma": gamma, "mask_mode": "zero", "critic_lam": options.get("critic_lam")}
    if estimator == "sae":
        kwargs["lam"] = options.get("lam", PAPER["lam"])
        kwargs["threshold"] = options.get("threshold", PAPER["threshold"])
        kwargs.update({k: options[k] for k in RULE_OPTIONS if k in options})
        if options.get("boundary", "logprob") in ("logprob", "quantile"):
            kwargs["logprobs"] = _logprobs(experience, options.get("logprobs", "auto"))
        elif options.get("boundary") == "delimiter":
            kwargs["response_ids"] = experience.sequences[:, -action_mask.shape[1]:]
    else:
        kwargs["alpha"] = options.get("alpha", 0.05)
    mask = action_mask if action_mask is not None else None
    out = compute_advantages(rewards, values, mask, estimator=estimator, **kwargs)
    if estimator == "sae" and mask is not None:
        n_valid, n_boundaries, n_segments = segment_counts(out.boundaries, mask)
        experience.info["sae_boundary_fraction"] = n_boundaries.float() / n_valid.clamp(min=1)
        experience.info["sae_mean_segment_length"] = n_valid.float() / n_segments.clamp(min=1)
    return out.advantages, out.returns


def _logprobs(experience, choice: str):
    if choice not in ("auto", "rollout_log_probs", "action_log_probs"):
        raise ValueError("--algo.advantage.sae.logprobs must be auto, rollout_log_probs or action_log_probs; "
                         f"got {choice!r}")
    keys = ("rollout_log_probs", "action_log_probs") if choice == "auto" else (choice,)
    for key in keys:
        value = getattr(experience, key, None)
        if value is not None:
            return value
    raise ValueError(f"--algo.advantage.estimator sae needs the behaviour log-probs, and the experience has no "
                     f"{' or '.join(keys)}")
