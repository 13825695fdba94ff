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
  v1 trainer;
- each trainer's `fit` compiles our kernels before the first step (`estimator.warm_up`) and lets
  `compute` know the trainer (its `global_steps` names the dumps); the v1 trainer's
  `_compute_advantage` also lets `compute` read from TransferQueue the fields it does not fetch.

Importing this package twice, or reloading it, wraps nothing twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from sae_core.integration.hooks import on_import
from sae_core.integration.translate import ADDED_ESTIMATORS, wrap_attribute

# The estimators this plugin adds to veRL (its generic estimator path cannot feed them values and log-probs)
ESTIMATORS = ADDED_ESTIMATORS


def _register(core_algos) -> None:
    from .estimator import registry_stub

    for name in ESTIMATORS:
        current = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if current is None or getattr(current, "__sae_rl__", False):
            core_algos.ADV_ESTIMATOR_REGISTRY[name] = registry_stub(name)
        # a name some other plugin registered first is left to it


def _compute_advantage_wrapper(original: Callable) -> Callable:
    signature = inspect.signature(original)

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

    return compute_advantage


def _data_metrics_wrapper(original: Callable) -> Callable:
    """The legacy trainer's per-step metrics, plus the SAE metrics of the step's advantages."""

    def compute_data_metrics(*args: Any, **kwargs: Any):
        from .estimator import pop_metrics

        metrics = original(*args, **kwargs)
        metrics.update(pop_metrics())
        return metrics

    return compute_data_metrics


def _fit_wrapper(original: Callable) -> Callable:
    """A trainer's `fit`: our kernels compiled before the first step (when the run's estimator is
    ours), and the trainer known to `compute` (its global step names the dumps)."""

    def fit(self, *args: Any, **kwargs: Any):
        from .estimator import trainer_step, warm_up

        warm_up(getattr(self, "config", None))
        with trainer_step(self):
            return original(self, *args, **kwargs)

    return fit


def _v1_compute_advantage_wrapper(tq_module) -> Callable[[Callable], Callable]:
    """The v1 trainer's `_compute_advantage(self, batch, metrics)`: `compute` may read the fields
    this step does not fetch (responses, prompts, entropy) from TransferQueue, and `metrics` get ours."""

    def make(original: Callable) -> Callable:
        def _compute_advantage(self, batch, metrics, *args: Any, **kwargs: Any):
            from .estimator import pop_metrics, trainer_step

            def fetch(names):
                return tq_module.tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                                 select_fields=list(names))

            with trainer_step(self, fetch=fetch, v1=True):
                out = original(self, batch, metrics, *args, **kwargs)
            metrics.update(pop_metrics())
            return out

        return _compute_advantage

    return make


def _patch_binding(module) -> None:
    wrap_attribute(module, "compute_advantage", _compute_advantage_wrapper)


def _own_classes(module):
    return [obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__]


def _patch_ray_trainer(module) -> None:
    _patch_binding(module)
    wrap_attribute(module, "compute_data_metrics", _data_metrics_wrapper)
    for cls in _own_classes(module):  # RayPPOTrainer (SeparateRayPPOTrainer has a fit of its own)
        wrap_attribute(cls, "fit", _fit_wrapper)


def _patch_v1_trainer_base(module) -> None:
    for cls in _own_classes(module):  # PPOTrainer, the base of every v1 trainer
        wrap_attribute(cls, "_compute_advantage", _v1_compute_advantage_wrapper(module))
        wrap_attribute(cls, "fit", _fit_wrapper)


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
