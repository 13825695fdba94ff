import os

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:
    HAS_CUDA = False
if not HAS_CUDA:
    # No GPU (CI): Triton kernels run in its interpreter on CPU tensors. Triton reads this when a
    # kernel is defined, so it must be set before sae_core's Triton module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# No deadline: the first example of a new dtype/flag combination includes numba's compilation.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=600)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
