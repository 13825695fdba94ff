"""Scan backends, and the choice among them (`select`). Each backend module exposes
`run(spec, rows, compute_dtype) -> (advantages [N], returns [N], boundaries [N] bool, problems
[B, len(PROBLEM_COLUMNS)] int64)` over `types.Rows`, computing what `sae_core.schedules` states:

- `reference`: a plain float64 loop per row over `sae_core.schedules`, the executable spec;
- `numba_scan`: the CPU kernel, parallel over rows, fused boundary detection and checks;
- `torch_scan`: the scan as torch tensor ops on the tensors' device (CPU or CUDA), with
  `torch_schedule` (mask checks, boundaries, lambdas) shared with
- `triton_scan`: a Triton kernel for CUDA tensors (its interpreter runs it on CPU tensors in tests).

Backend modules are imported only when selected: numba and triton take seconds to import. `warmup`
compiles the numba kernels ahead of their first use.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import registry
from ..arrays import BFLOAT16_BITS, ResultForm
from ..registry import BACKENDS
from ..types import GIVEN_LAMBDAS, EstimatorSpec, Rows

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


def warmup(estimator: str = "sae", *, dtype: Any = "float32", mask_dtype: Any = "int64", data_dtype: Any = None,
           mask_mode: str = "skip", critic_lam: float | None = None, gamma: float = 1.0, **options: Any) -> float:
    """Compile the numba kernels that `compute_advantages(..., backend="numba" or "auto")` runs on
    CPU arrays of these dtypes, or load them from numba's disk cache; returns the seconds spent.

    Call it before the first training step (or run `sae warmup` once after installing) so that the
    first real call does not stop for the compilation (seconds, once per machine and dtype
    combination; then a fraction of a second per new process, loading the cache). Each call covers
    one combination; call it again for others. Nothing is computed that lasts.

    Args:
        estimator: "gae", "mc", "sae" or "vapo", with its `**options` (e.g. boundary="entropy" or
            threshold=0.1) as `compute_advantages` takes them: the boundary rule decides which
            kernels run. The option values themselves do not matter, only which rule.
        dtype: the dtype of rewards and values ([B, T] each): float32 (also for float16 and
            bfloat16) or float64. numpy dtypes, their names and torch dtypes all work. The kernels
            read each in its own dtype, so float64 rewards with float32 values are a combination of
            their own, compiled on first use.
        mask_dtype: the dtype of response_mask ([B, T]): bool, uint8, int8/16/32/64, float16/32/64
            (bfloat16 masks arrive as float32), or None for no mask.
        data_dtype: the dtype of the float data the rule reads (logprobs or entropy, [B, T]):
            float16, bfloat16 (each read as its bits: a kernel of its own), float32 or float64;
            default `dtype`. Integer ids and given boundaries have one dtype each.
        mask_mode, critic_lam, gamma: as in `compute_advantages` (skip or zero mode, and a
            decoupled critic, compile different kernels; gamma does not).

    Raises ValueError for an unknown estimator, option or dtype, as `compute_advantages` would.
    """
    from . import numba_scan

    spec = registry.make_spec(estimator, gamma=gamma, mask_mode=mask_mode, critic_lam=critic_lam, **options)
    values_dtype = np.dtype(np.float64) if _numpy_dtype(dtype, "dtype") == np.float64 else np.dtype(np.float32)
    n, lengths = 16, np.array([8, 8], dtype=np.int64)
    half = _half(data_dtype)
    if half == "bfloat16":  # bfloat16 bits (of 0.0), as `arrays.as_numpy(keep_bfloat16=True)` passes them
        float_data = np.zeros(n, dtype=np.int16).view(BFLOAT16_BITS)
    else:
        float_data = np.full(n, -1.0, dtype=np.float16 if half else
                             values_dtype if data_dtype is None else _numpy_dtype(data_dtype, "data_dtype"))
    data = {"float": float_data, "int": np.zeros(n, dtype=np.int64), "bool": np.zeros(n, dtype=np.bool_)}
    columns = {name: data[registry.DATA[name].kind] for name in registry.needed_data(spec)}
    if "given_boundaries" in columns:
        columns["given"] = columns.pop("given_boundaries")
    mask = None
    if mask_dtype is not None:
        mask = np.ones(n, dtype=np.float16 if _half(mask_dtype) == "float16" else _numpy_dtype(mask_dtype, "mask_dtype"))
        mask[12:] = 0  # a right-padded row: the kernels' paths are compiled together anyway
    started = time.perf_counter()
    for bad in (False, True):  # the second run has a non-finite reward: compiles the search for it
        rewards = np.zeros(n, dtype=values_dtype)
        rewards[3] = np.nan if bad else 0.0
        rows = Rows(rewards=rewards, values=np.zeros(n, dtype=values_dtype), mask=mask,
                    starts=np.array([0, 8], dtype=np.int64), lengths=lengths, **columns)
        numba_scan.run(spec, rows, values_dtype)
    return time.perf_counter() - started


def _half(dtype: Any) -> str | None:
    """"float16" or "bfloat16" for those dtypes (numpy, torch or a name), else None."""
    return {"float16": "float16", "half": "float16", "bfloat16": "bfloat16"}.get(str(dtype).removeprefix("torch."))


def _numpy_dtype(dtype: Any, name: str) -> np.dtype:
    """A numpy dtype from a numpy dtype, its name or a torch dtype, half precision as float32 (as
    `arrays.as_numpy` passes it to the numba backend)."""
    text = str(dtype).removeprefix("torch.")
    if text in ("float16", "bfloat16", "half"):
        return np.dtype(np.float32)
    try:
        out = np.dtype(text if isinstance(dtype, str) or text != str(dtype) else dtype)
    except TypeError:
        raise ValueError(f"{name} must be a numpy or torch dtype or its name; got {dtype!r}") from None
    if out.kind not in "biuf":
        raise ValueError(f"{name} must be a bool, integer or float dtype; got {out}")
    return np.dtype(np.float32) if out == np.float16 else out


__all__ = ["BACKENDS", "select", "warmup"]
