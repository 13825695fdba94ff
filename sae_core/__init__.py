"""sae_core: advantage estimators for LLM PPO (GAE, MC, SAE, VAPO) on one masked reverse scan.

Framework-agnostic: numpy arrays or torch tensors in, the same type out. Never imports verl or
openrlhf.
"""

from .estimators import (
    BACKENDS,
    BOUNDARY_RULES,
    ESTIMATORS,
    MASK_MODES,
    Advantages,
    EstimatorSpec,
    compute_advantages,
    compute_advantages_ragged,
)
from .whiten import masked_whiten

__all__ = [
    "Advantages",
    "BACKENDS",
    "BOUNDARY_RULES",
    "ESTIMATORS",
    "EstimatorSpec",
    "MASK_MODES",
    "compute_advantages",
    "compute_advantages_ragged",
    "masked_whiten",
]

__version__ = "0.1.0"
