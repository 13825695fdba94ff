"""Scan backends, and the choice among them (`select`). Each backend module exposes
`run(spec, rows, compute_dtype) -> (advantages [N], returns [N], boundaries [N] bool, problems
[B, len(PROBLEM_COLUMNS)] int64)` over `types.Rows`, computing what `sae_core.schedules` states:

- `reference`: a plain float64 loop per row over `sae_core.schedules`, the executable spec;
- `numba_scan`: the CPU kernel, parallel over rows, fused boundary detection and checks;
- `torch_scan`: the scan as torch tensor ops on the tensors' device (CPU or CUDA), with
  `torch_schedule` (mask checks, boundaries, lambdas) shared with
- `triton_scan`: a Triton kernel for CUDA tensors (its interpreter runs it on CPU tensors in tests).

Backend modules are imported only when selected: numba and triton take seconds to import.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ..arrays import ResultForm
from ..registry import BACKENDS
from ..types import GIVEN_LAMBDAS, EstimatorSpec

Run = Callable[..., Any]


def select(name: str, form: ResultForm, spec: EstimatorSpec | None = None) -> tuple[Run, bool]:
    """(run function, whether it takes torch tensors) for the backend `name` and the caller's
    arrays (`form`), for the estimator `spec` when given.

    "auto" picks numba for numpy arrays and CPU tensors; for CUDA tensors triton when it imports,
    else torch, and torch for the caller's own lambdas (GIVEN_LAMBDAS), which triton does not
    support. Raises ValueError for an unknown name, a torch backend without torch, backend="triton"
    where it cannot run or with GIVEN_LAMBDAS. Warns (UserWarning) when a CPU backend ("numba",
    "reference") is asked for with CUDA tensors: they round-trip through host memory.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    on_gpu = form.torch and form.device.type != "cpu"
    given_lambdas = spec is not None and spec.estimator == GIVEN_LAMBDAS
    if name == "auto":
        name = "numba"
        if on_gpu:
            name = "torch"
            if not given_lambdas:
                from . import triton_scan

                name = "triton" if triton_scan.available(form.device) else "torch"
    if name in ("reference", "numba"):
        if on_gpu:
            warnings.warn(f"backend={name!r} computes on the CPU: the {form.device.type} tensors go to host "
                          "memory and the results come back; backend='auto' keeps them on the device",
                          UserWarning, stacklevel=4)  # the caller of the public API (via api._compute)
        if name == "reference":
            from . import reference

            return reference.run, False
        from . import numba_scan

        return numba_scan.run, False
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ValueError(f"backend={name!r} needs torch, which is not installed") from None
    if name == "torch":
        from . import torch_scan

        return torch_scan.run, True
    from . import triton_scan

    if given_lambdas:
        raise ValueError(triton_scan.UNSUPPORTED_LAMBDAS)
    device = form.device if form.torch else None
    if not triton_scan.available(device):
        raise ValueError(triton_scan.unavailable_reason(device))
    return triton_scan.run, True


__all__ = ["BACKENDS", "select"]
