"""sae_core: advantage estimators for LLM PPO (GAE, MC, SAE, VAPO) on one masked reverse scan.

Framework-agnostic: numpy arrays or torch tensors in, the same type out. Never imports verl or
openrlhf. The layers, from the bottom: `types`, `registry`, `schedules`, `kernels`, this API
(`api`, `checks`, `whiten`, `segments`), then `trajectory`, `tools`, `lab` and `integration`
(see docs/architecture.md).
"""

from . import registry
from .api import compute_advantages, compute_advantages_from_lambdas, compute_advantages_ragged, estimator_params
from .segments import segment_counts, segment_stats
from .types import Advantages
from .version import __version__
from .whiten import masked_whiten

ESTIMATORS = tuple(registry.ESTIMATORS)
BOUNDARY_RULES = tuple(registry.RULES)
MASK_MODES = registry.MASK_MODES
BACKENDS = registry.BACKENDS

__all__ = [
    "__version__",
    "Advantages",
    "BACKENDS",
    "BOUNDARY_RULES",
    "ESTIMATORS",
    "MASK_MODES",
    "compute_advantages",
    "compute_advantages_from_lambdas",
    "compute_advantages_ragged",
    "estimator_params",
    "masked_whiten",
    "segment_counts",
    "segment_stats",
]

