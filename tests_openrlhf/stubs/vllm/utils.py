def random_uuid() -> str:
    raise RuntimeError("vllm is a test stub: vLLM needs CUDA")
