"""sae_openrlhf: `--algo.advantage.estimator sae` (and `vapo`) for OpenRLHF 0.11.2, without a fork.

Two pieces:
- `sae_openrlhf.train_ppo_ray`: a wrapper of `openrlhf.cli.train_ppo_ray` that accepts every
  upstream flag, adds ours (`--algo.advantage.sae.*`), keeps the critic, and makes each Ray worker
  run `install()` at start-up (Ray's `worker_process_setup_hook`);
- `install()`: patches `RemoteExperienceMaker.compute_advantages_and_returns` when
  `openrlhf.trainer.ppo_utils.experience_maker` is imported (or now, if it is). The patch acts only
  when the run's arguments enable sae; otherwise OpenRLHF runs its own code unchanged.

How the SAE run goes through OpenRLHF: the wrapper records our estimator under
`args.algo.advantage.sae.estimator` and hands OpenRLHF `--algo.advantage.estimator gae`, so that
OpenRLHF builds a critic and does everything it does for GAE (length penalties, KL-shaped token
rewards, zero-mode masking, its advantage normalisation); the one step that differs, GAE's
advantages and returns per experience, is computed by `sae_core` (see `sae_openrlhf.experience`).
"""

from __future__ import annotations

from sae_core.integration.hooks import on_import
from sae_core.integration.translate import ADDED_ESTIMATORS, wrap_attribute

ESTIMATORS = ADDED_ESTIMATORS  # what --algo.advantage.estimator gains


def _patch_experience_maker(module) -> None:
    from .experience import compute_advantages_and_returns_wrapper

    cls = getattr(module, "RemoteExperienceMaker", None)
    if cls is not None:
        wrap_attribute(cls, "compute_advantages_and_returns", compute_advantages_and_returns_wrapper)


PATCHES = {"openrlhf.trainer.ppo_utils.experience_maker": _patch_experience_maker}


def install() -> None:
    """Patch OpenRLHF's experience maker now or when it is imported; idempotent. Ray runs this in
    every worker of a run started by `sae_openrlhf.train_ppo_ray`."""
    on_import(PATCHES)


def worker_setup() -> None:
    """Ray's worker_process_setup_hook for runs started by `sae_openrlhf.train_ppo_ray`: install the
    patch, then run the hook the run had before ours, if any (named in SAE_OPENRLHF_NEXT_SETUP_HOOK)."""
    import importlib
    import os

    install()
    previous = os.environ.get("SAE_OPENRLHF_NEXT_SETUP_HOOK")
    if previous:
        module, _, name = previous.rpartition(".")
        getattr(importlib.import_module(module), name)()


install()
