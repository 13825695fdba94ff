"""sae_verl: `algorithm.adv_estimator=sae` in veRL 0.9.1, with nothing to set up but `pip install`.

veRL imports every `verl.plugins` entry point in every process that imports verl; sae-rl declares
this package as one. On import it arranges, lazily (an import hook, so that a process which never
imports veRL's trainer pays nothing and a process where it cannot import is unaffected):

- when `verl.trainer.ppo.core_algos` is imported: the names of `ESTIMATORS` are registered with
  `register_adv_est`, so veRL's config checks know them;
- when `verl.trainer.ppo.ray_trainer` (the legacy trainer) and `verl.trainer.ppo.v1.utils` (the
  v1 trainer, which binds `compute_advantage` by name) are imported: `compute_advantage` is wrapped.
  For our estimators the wrapper hands values, behaviour log-probs, the response mask and the
  token-level rewards to `sae_core` on the tensors' own device (see `sae_verl.estimator`); every
  other estimator goes to veRL's own function untouched;
- the step's SAE metrics (boundary fraction, mean segment length) are added where veRL gathers
  each step's metrics: `compute_data_metrics` of the legacy trainer, `_compute_advantage` of the
  v1 trainer.

Importing this package twice, or reloading it, wraps nothing twice.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from sae_core.import_hooks import on_import

ESTIMATORS = ("sae", "vapo")  # the estimators of sae_core that veRL cannot feed: they read values / log-probs

_ORIGINAL = "__sae_rl_original__"  # the attribute our wrappers keep veRL's function under


def _register(core_algos) -> None:
    from .estimator import registry_stub

    for name in ESTIMATORS:
        current = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if current is None or getattr(current, "__sae_rl__", False):
            core_algos.ADV_ESTIMATOR_REGISTRY[name] = registry_stub(name)
        # a name some other plugin registered first is left to it


def _wrap_compute_advantage(original: Callable) -> Callable:
    if hasattr(original, _ORIGINAL):
        return original
    signature = inspect.signature(original)

    @functools.wraps(original)
    def compute_advantage(*args: Any, **kwargs: Any):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        estimator = bound.arguments["adv_estimator"]
        name = getattr(estimator, "value", estimator)
        if name not in ESTIMATORS:
            return original(*args, **kwargs)
        from .estimator import compute

        return compute(bound.arguments["data"], name, gamma=bound.arguments["gamma"],
                       config=bound.arguments["config"])

    setattr(compute_advantage, _ORIGINAL, original)
    return compute_advantage


def _wrap_data_metrics(original: Callable) -> Callable:
    """The legacy trainer's per-step metrics, plus the SAE metrics of the step's advantages."""
    if hasattr(original, _ORIGINAL):
        return original

    @functools.wraps(original)
    def compute_data_metrics(*args: Any, **kwargs: Any):
        from .estimator import pop_metrics

        metrics = original(*args, **kwargs)
        metrics.update(pop_metrics())
        return metrics

    setattr(compute_data_metrics, _ORIGINAL, original)
    return compute_data_metrics


def _wrap_v1_compute_advantage(original: Callable) -> Callable:
    """The v1 trainer's `_compute_advantage(self, batch, metrics)`: its `metrics` get ours."""
    if hasattr(original, _ORIGINAL):
        return original

    @functools.wraps(original)
    def _compute_advantage(self, batch, metrics, *args: Any, **kwargs: Any):
        from .estimator import pop_metrics

        out = original(self, batch, metrics, *args, **kwargs)
        metrics.update(pop_metrics())
        return out

    setattr(_compute_advantage, _ORIGINAL, original)
    return _compute_advantage


def _patch_binding(module) -> None:
    if hasattr(module, "compute_advantage"):
        module.compute_advantage = _wrap_compute_advantage(module.compute_advantage)


def _patch_ray_trainer(module) -> None:
    _patch_binding(module)
    if hasattr(module, "compute_data_metrics"):
        module.compute_data_metrics = _wrap_data_metrics(module.compute_data_metrics)


def _patch_v1_trainer_base(module) -> None:
    for obj in vars(module).values():
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and "_compute_advantage" in vars(obj):
            obj._compute_advantage = _wrap_v1_compute_advantage(vars(obj)["_compute_advantage"])


# module name -> what to do once it has been executed
PATCHES: dict[str, Callable[[Any], None]] = {
    "verl.trainer.ppo.core_algos": _register,
    "verl.trainer.ppo.ray_trainer": _patch_ray_trainer,
    "verl.trainer.ppo.v1.utils": _patch_binding,
    "verl.trainer.ppo.v1.trainer_base": _patch_v1_trainer_base,
    "verl.experimental.separation.ray_trainer": _patch_ray_trainer,  # binds both names too
}


def install() -> None:
    """Patch the target modules already imported, and the others when they are. Idempotent."""
    on_import(PATCHES)


install()
