"""Caller arrays (numpy arrays or torch tensors) in, the same form out.

The CPU backends compute on numpy views of the caller's memory; the torch and Triton backends on
torch tensors where the caller's tensors live. This module remembers what the caller passed (array
type, device, dtype) so results go back in the same form. torch is imported only when a tensor is
passed or a torch backend is asked for, so sae_core works without torch installed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


def is_tensor(x: Any) -> bool:
    """True for a torch.Tensor (or subclass), decided without importing torch."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):  # the common cases, quickly
        return False
    return type(x).__module__.partition(".")[0] == "torch" and hasattr(x, "detach")


@dataclass(frozen=True)
class ResultForm:
    """How results go back to the caller.

    `compute_dtype` is the numpy float dtype the kernels write (float32 or float64; every kernel
    computes in float64 inside); `out_dtype` is what the caller gets (a numpy dtype or a torch
    dtype), which differs from `compute_dtype` only for half precision (float16 / bfloat16 results
    are written in float32, then cast).
    `device` is the caller's torch device (None for numpy inputs).
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
    if type(rewards) is np.ndarray and type(values) is np.ndarray:  # the common case, worked out once per dtype pair
        form = _NUMPY_FORMS.get((rewards.dtype, values.dtype))
        if form is not None:
            return form
    for name, x in (("rewards", rewards), ("values", values)):
        if x is None:
            raise ValueError(f"{name} is required; got None")
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
        if dtype.is_complex:
            raise ValueError(f"rewards and values must be real numbers; got dtype {dtype}")
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        compute = np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)
        return ResultForm(torch=True, compute_dtype=compute, out_dtype=dtype, device=rewards.device)
    dtype = np.result_type(np.asarray(rewards).dtype, np.asarray(values).dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"rewards and values must be real numbers; got dtype {dtype}")
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    compute = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    if dtype.itemsize > 8:  # longdouble: computed in float64, returned as float64
        dtype = compute = np.dtype(np.float64)
    form = ResultForm(torch=False, compute_dtype=compute, out_dtype=dtype)
    if type(rewards) is np.ndarray and type(values) is np.ndarray:
        _NUMPY_FORMS[(rewards.dtype, values.dtype)] = form
    return form


_NUMPY_FORMS: dict[tuple[np.dtype, np.dtype], ResultForm] = {}  # result_form of numpy arrays, by their dtypes


def torch_dtype(dtype: Any):
    """The torch dtype of a numpy dtype."""
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64,
            np.dtype(np.bool_): torch.bool, np.dtype(np.uint8): torch.uint8}[np.dtype(dtype)]


# bfloat16 data as numpy carries it for the numba backend: the tensor's bits, marked by this dtype
# (numpy has no bfloat16; `as_numpy(keep_bfloat16=True)`); `number` reads one entry back as a float
BFLOAT16_BITS = np.dtype([("bfloat16", "<i2")])


def number(x: Any, i: int) -> Any:
    """Entry i of a flat numpy array or tensor as a Python number (bfloat16 bits decoded)."""
    if isinstance(x, np.ndarray) and x.dtype == BFLOAT16_BITS:
        return float(np.array([int(x.view(np.int16)[i]) << 16], dtype=np.int32).view(np.float32)[0])
    return x[i].item()


def kind(x: Any) -> str:
    """numpy's dtype kind letter ('b', 'i', 'u', 'f', 'c', ...) for an array or a tensor
    ('f' for bfloat16 bits, `BFLOAT16_BITS`)."""
    if is_tensor(x):
        import torch

        if x.dtype == torch.bool:
            return "b"
        if x.dtype.is_complex:
            return "c"
        if x.dtype.is_floating_point:
            return "f"
        return "u" if x.dtype == torch.uint8 else "i"
    return "f" if x.dtype == BFLOAT16_BITS else x.dtype.kind


def as_numpy(x: Any, name: str, form: ResultForm | None = None, dtype: Any = None, keep_float16: bool = False,
             keep_bfloat16: bool = False) -> np.ndarray:
    """A numpy view of `x` (a copy only where unavoidable: another device, half precision, a cast).

    `form` checks that a tensor sits on the caller's device; `dtype` casts when given. Half
    precision becomes float32, except float16 with `keep_float16` and bfloat16 tensors with
    `keep_bfloat16`, which come as their bits in `BFLOAT16_BITS` (for the numba kernels, which
    read both as bits).
    """
    if is_tensor(x):
        import torch

        if form is not None and form.torch and x.device != form.device:
            raise ValueError(f"{name} is on {x.device} but rewards is on {form.device}; put them on one device")
        x = x.detach()
        if x.dtype == torch.bfloat16 and keep_bfloat16:
            return x.cpu().view(torch.int16).numpy().view(BFLOAT16_BITS)
        if x.dtype == torch.bfloat16 or (x.dtype == torch.float16 and not keep_float16):
            x = x.float()
        x = x.cpu().numpy()
    else:
        x = np.asarray(x)
        if x.dtype == np.float16 and not keep_float16:  # as for tensors: half precision is read as float32
            x = x.astype(np.float32)
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    return x


def as_tensor(x: Any, name: str, form: ResultForm, dtype: Any = None):
    """`x` as a torch tensor on the caller's device (the CPU for numpy callers), without autograd.

    Half precision becomes float32; `dtype` (a numpy dtype) casts when given.
    """
    import torch

    device = form.device if form.torch else torch.device("cpu")
    if is_tensor(x):
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but rewards is on {device}; put them on one device")
        t = x.detach()
    else:
        x = np.ascontiguousarray(x)
        if not x.flags.writeable:  # e.g. a view of an Arrow buffer; the backends never write to inputs
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                t = torch.from_numpy(x).to(device)
        else:
            t = torch.from_numpy(x).to(device)
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if dtype is not None and t.dtype != torch_dtype(dtype):
        t = t.to(torch_dtype(dtype))
    return t


def astype(x: Any, dtype: Any) -> Any:
    """Cast an array or a tensor to a numpy dtype (no copy when it already has it)."""
    if is_tensor(x):
        target = torch_dtype(dtype)
        return x if x.dtype == target else x.to(target)
    return x.astype(dtype, copy=False)


def flat(x: Any) -> Any:
    """A contiguous 1-D view (a copy only when `x` is not contiguous)."""
    if is_tensor(x):
        return x.contiguous().reshape(-1)
    return np.ascontiguousarray(x).reshape(-1)


def to_caller(x: Any, form: ResultForm, *, is_float: bool = True) -> Any:
    """Return `x` (a numpy array or a tensor) in the caller's array type, dtype and device."""
    if form.torch:
        import torch

        t = x if is_tensor(x) else torch.from_numpy(x)
        if is_float and t.dtype != form.out_dtype:
            t = t.to(form.out_dtype)
        if t.device != form.device:
            t = t.to(form.device)
        return t
    if is_tensor(x):
        x = x.cpu().numpy()
    if is_float and x.dtype != form.out_dtype:
        with np.errstate(over="ignore"):  # float16 overflow is raised on by the caller
            x = x.astype(form.out_dtype)
    return x
