"""Caller arrays (numpy arrays or torch tensors) to numpy and back.

The estimators compute on numpy views of the caller's memory. This module remembers what the
caller passed (array type, device, dtype) so results go back in the same form. torch is imported
only when the caller actually passes a tensor, so sae_core works without torch installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def is_tensor(x: Any) -> bool:
    """True for a torch.Tensor (or subclass), decided without importing torch."""
    return type(x).__module__.partition(".")[0] == "torch" and hasattr(x, "detach")


@dataclass(frozen=True)
class ResultForm:
    """How results go back to the caller.

    `compute_dtype` is the numpy float dtype the kernels write (float32 or float64);
    `out_dtype` is what the caller gets (a numpy dtype or a torch dtype), which differs from
    `compute_dtype` only for half precision inputs (float16 / bfloat16 are computed in float32).
    """

    torch: bool
    compute_dtype: np.dtype
    out_dtype: Any
    device: Any = None


def result_form(rewards: Any, values: Any) -> ResultForm:
    """The result form for `rewards` and `values`: the array type of `rewards`, their promoted dtype.

    Non-float inputs (int or bool rewards) promote to float64 for numpy and to torch's default float
    dtype for tensors.
    """
    if is_tensor(rewards) != is_tensor(values):
        raise ValueError(
            "rewards and values must both be numpy arrays or both torch tensors, got "
            f"{type(rewards).__name__} and {type(values).__name__}"
        )
    if is_tensor(rewards):
        import torch

        if rewards.device != values.device:
            raise ValueError(
                f"values is on {values.device} but rewards is on {rewards.device}; put them on one device"
            )
        dtype = torch.promote_types(rewards.dtype, values.dtype)
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        compute = np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)
        return ResultForm(torch=True, compute_dtype=compute, out_dtype=dtype, device=rewards.device)
    dtype = np.result_type(np.asarray(rewards).dtype, np.asarray(values).dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    compute = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    if dtype.itemsize > 8:  # longdouble: computed in float64, returned as float64
        dtype = compute = np.dtype(np.float64)
    return ResultForm(torch=False, compute_dtype=compute, out_dtype=dtype)


def as_numpy(x: Any, name: str, form: ResultForm | None = None, dtype: Any = None) -> np.ndarray:
    """A numpy view of `x` (a copy only where unavoidable: another device, half precision, a cast).

    `form` checks that a tensor sits on the caller's device; `dtype` casts when given.
    """
    if is_tensor(x):
        import torch

        if form is not None and form.torch and x.device != form.device:
            raise ValueError(f"{name} is on {x.device} but rewards is on {form.device}; put them on one device")
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.cpu().numpy()
    else:
        x = np.asarray(x)
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    return x


def to_caller(x: np.ndarray, form: ResultForm, *, is_float: bool = True) -> Any:
    """Return `x` in the caller's array type, dtype (for float outputs) and device."""
    if form.torch:
        import torch

        t = torch.from_numpy(x)
        if is_float and t.dtype != form.out_dtype:
            t = t.to(form.out_dtype)
        if form.device is not None and form.device.type != "cpu":
            t = t.to(form.device)
        return t
    if is_float and x.dtype != form.out_dtype:
        x = x.astype(form.out_dtype)
    return x
