"""A stand-in for vLLM, which OpenRLHF 0.11.2's PPO command imports at module level (its rollout
engine) but whose wheels are built for CUDA and would replace this machine's CPU torch. Only the
names imported at module level exist; using any of them raises: these tests never generate."""

__version__ = "0.29.0"


class _CudaOnly:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("vllm is a test stub: vLLM needs CUDA")

    @classmethod
    def from_engine_args(cls, *args, **kwargs):
        raise RuntimeError("vllm is a test stub: vLLM needs CUDA")


AsyncEngineArgs = AsyncLLMEngine = LLM = SamplingParams = _CudaOnly
