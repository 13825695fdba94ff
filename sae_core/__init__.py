"""sae_core: advantage estimators for LLM PPO (GAE, MC, SAE, VAPO) on one masked reverse scan.

Framework-agnostic: numpy arrays or torch tensors in, the same type out. Never imports verl or
openrlhf. The layers, from the bottom: `types`, `registry`, `schedules`, `kernels`, this API
(`api`, `checks`, `whiten`, `segments`), then `trajectory`, `tools`, `lab` and `integration`
(see docs/architecture.md). The trajectory standard's documents (SPEC.md, its JSON Schemas, the
conformance vectors) ship with the package: `spec_path()`, `spec_names()`, `spec_document()`.
Optional dependencies (torch, matplotlib, ray, ...) are imported only by what needs them
(`sae_core.extras`).
"""

from . import registry
from .api import compute_advantages, compute_advantages_from_lambdas, compute_advantages_ragged, estimator_params
from .segments import segment_counts, segment_stats
from .spec import spec_document, spec_json, spec_names, spec_path
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
    "spec_document",
    "spec_json",
    "spec_names",
    "spec_path",
]

