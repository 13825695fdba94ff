"""A stand-in for flash-attn, which OpenRLHF 0.11.2 imports at module level but which builds only
against CUDA (no CPU wheel, no CPU build). Only the names OpenRLHF imports exist; calling any of
them raises: the code paths these tests run (advantage computation) never do."""

__version__ = "2.8.3"


def _cuda_only(name):
    def stub(*args, **kwargs):
        raise RuntimeError(f"flash_attn.{name} is a test stub: flash-attn needs CUDA")

    stub.__name__ = name
    return stub
