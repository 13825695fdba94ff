"""Masked whitening, as veRL applies it to advantages after GAE."""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import is_tensor

_EPS = 1e-8


def masked_whiten(values: Any, mask: Any, shift_mean: bool = True) -> Any:
    """Normalise `values` by the mean and unbiased variance of its masked entries.

    Matches veRL 0.9.1's `verl.utils.torch_functional.masked_whiten` op for op on torch tensors:
    mean = sum(v*m) / (sum(m) + 1e-8); var = the same mean of (v - mean)^2 times the Bessel factor
    n / (n - 1) with n = sum(m); result = (v - mean) * rsqrt(var + 1e-8), plus mean again when
    `shift_mean` is False. Entries where the mask is 0 are excluded from the statistics even when
    they are NaN, and are transformed like the rest.

    Args:
        values: [B, T] (any shape) float, numpy array or torch tensor.
        mask: the same shape, bool or 0/1 numbers; the statistics are taken over the whole batch.
        shift_mean: False keeps the original mean (scales only).

    Returns:
        The same shape and array type as `values`. numpy results keep `values`' dtype (statistics
        are taken in float64); torch results follow torch's promotion, as in veRL.

    Raises:
        ValueError when the shapes differ or fewer than two entries are masked in (the unbiased
        variance needs two).
    """
    if not is_tensor(values):
        values, mask = np.asarray(values), np.asarray(mask)
    if tuple(values.shape) != tuple(mask.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but values has shape {tuple(values.shape)}")
    if is_tensor(values):
        import torch

        mask = torch.as_tensor(np.asarray(mask) if isinstance(mask, (list, tuple)) else mask, device=values.device)
        keep = mask.bool()

        def masked_mean(x):
            return (torch.where(keep, x, 0.0) * mask).sum() / (mask.sum() + _EPS)

        n = mask.sum()
        _check_count(float(n))
        mean = masked_mean(values)
        var = masked_mean((values - mean) ** 2) * (n / (n - 1))
        whitened = (values - mean) * torch.rsqrt(var + _EPS)
        return whitened if shift_mean else whitened + mean

    v = np.asarray(values)
    m = np.asarray(mask)
    keep = m.astype(bool)
    n = float(m.sum(dtype=np.float64))
    _check_count(n)

    def masked_mean_np(x):
        return float((np.where(keep, x, 0.0) * m).sum(dtype=np.float64) / (n + _EPS))

    v64 = v.astype(np.float64)
    mean = masked_mean_np(v64)
    var = masked_mean_np((v64 - mean) ** 2) * (n / (n - 1))
    whitened = (v64 - mean) / np.sqrt(var + _EPS)
    if not shift_mean:
        whitened += mean
    return whitened.astype(v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64)


def _check_count(n: float) -> None:
    if n == 0:
        raise ValueError("masked_whiten needs at least two masked-in entries; the mask is all zero")
    if n == 1:
        raise ValueError("masked_whiten needs at least two masked-in entries for an unbiased variance; the mask has one")
