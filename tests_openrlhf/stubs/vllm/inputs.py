from . import _CudaOnly as TokensPrompt  # noqa: F401
