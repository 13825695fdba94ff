"""The SAE step inside OpenRLHF's `RemoteExperienceMaker.compute_advantages_and_returns`.

OpenRLHF computes, per experience (B responses, A action tokens each; [B, A] tensors), shaped token
rewards (the outcome on the last action token, minus the KL term, plus length penalties), then
for `gae` calls `self.get_advantages_and_returns(values, rewards, action_mask, gamma, lambd)` and
afterwards normalises the advantages over all experiences' action tokens. With sae enabled the
wrapper below lets all of that run, with that one call answered by `sae_core` instead: the same
values, shaped rewards and action mask, what the boundary rule reads (the experience's behaviour
log-probs, `rollout_log_probs` when present, else `action_log_probs`; or the sampled token ids,
the action part of `sequences`), mask mode `zero` (OpenRLHF's GAE treats masked positions as
zero-reward, zero-value steps), gamma from `--algo.advantage.gamma`, and the estimator's options
from `--algo.advantage.sae.*` (see `sae_openrlhf.train_ppo_ray`).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

from sae_core import compute_advantages, registry
from sae_core.integration import translate
from sae_core.segments import segment_counts

PREFIX = "--algo.advantage.sae."
LOGPROB_KEYS = ("rollout_log_probs", "action_log_probs")  # auto: the first present
# This adapter's own settings, beside the registry's options (a flag each, see train_ppo_ray).
ADAPTER_OPTIONS = (
    registry.Option("logprobs", "choice", "which log-probs the boundary rules read: auto (rollout_log_probs "
                    "when present, else action_log_probs) or one of them", default="auto",
                    choices=("auto", *LOGPROB_KEYS)),
)
ADAPTER_NAMES = ("estimator", *(o.name for o in ADAPTER_OPTIONS))  # estimator: set by train_ppo_ray
FRAMEWORK = "OpenRLHF's experience"


def sae_options(args: Any) -> dict[str, Any] | None:
    """The run's `algo.advantage.sae` options when sae (or vapo) is on, else None."""
    section = getattr(getattr(getattr(args, "algo", None), "advantage", None), "sae", None)
    if section is None:
        return None
    options = vars(section) if isinstance(section, SimpleNamespace) else dict(section)
    if options.get("estimator") is None:
        return None
    return {k: v for k, v in options.items() if v is not None}


def compute_advantages_and_returns_wrapper(original):
    """The wrapper of `RemoteExperienceMaker.compute_advantages_and_returns` (applied through
    `translate.wrap_once`): OpenRLHF's own method, with its `get_advantages_and_returns` answered
    by sae_core for the run's estimator when sae (or vapo) is on."""

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

    return compute_advantages_and_returns


def wrap_compute_advantages_and_returns(original):
    """`original` wrapped once (see `compute_advantages_and_returns_wrapper`)."""
    return translate.wrap_once(original, compute_advantages_and_returns_wrapper)


def _advantages(experience, values, rewards, action_mask, gamma: float, options: dict[str, Any]):
    """[B, A] advantages and returns of one experience; per-sample SAE metrics go to its info."""
    estimator = options["estimator"]
    if values is None:
        raise ValueError(f"--algo.advantage.estimator {estimator} needs the critic's values, and this "
                         "experience has none (is --critic.model_name_or_path set, or did the critic fail to "
                         "start?)")
    kwargs = translate.estimator_kwargs(estimator, options, adapter=ADAPTER_NAMES, gamma=gamma,
                                        mask_mode="zero")
    sources = {name: functools.partial(read, experience, action_mask, options)
               for name, read in SOURCES.items()}
    per_token = translate.per_token_data(estimator, kwargs, sources, framework=FRAMEWORK,
                                         setting=f"{PREFIX}boundary")
    out = compute_advantages(rewards, values, action_mask, estimator=estimator, **kwargs, **per_token)
    if registry.ESTIMATORS[estimator].segmental and action_mask is not None:
        n_valid, n_boundaries, n_segments = segment_counts(out.boundaries, action_mask)
        experience.info["sae_boundary_fraction"] = n_boundaries.float() / n_valid.clamp(min=1)
        experience.info["sae_mean_segment_length"] = n_valid.float() / n_segments.clamp(min=1)
    return out.advantages, out.returns


def _logprobs(experience, action_mask, options: dict[str, Any]):
    keys, value = translate.choose_logprobs(options.get("logprobs", "auto"), LOGPROB_KEYS,
                                            lambda key: getattr(experience, key, None),
                                            setting=f"{PREFIX}logprobs")
    if value is None:
        raise ValueError(f"--algo.advantage.estimator {options['estimator']} needs the behaviour log-probs, "
                         f"and the experience has no {' or '.join(keys)}")
    return value


def _response_ids(experience, action_mask, options: dict[str, Any]):
    return experience.sequences[:, -action_mask.shape[1]:]


def _entropy(experience, action_mask, options: dict[str, Any]):
    value = getattr(experience, "entropy", None)
    if value is None:
        raise ValueError(f"{PREFIX}boundary=entropy needs per-token entropies, which {FRAMEWORK} does not "
                         "carry (OpenRLHF 0.11.2 stores none); use another boundary rule")
    return value


# registry.DATA name -> how to read it from an experience; the data a rule reads with no entry
# here (given_boundaries) is refused when the flags are parsed
SOURCES = {"logprobs": _logprobs, "response_ids": _response_ids, "entropy": _entropy}
