"""Segment statistics of a batch's boundaries, for the training logs of the adapters and examples.

A segment starts at a boundary, or at a row's first valid token when that is not a boundary, and
runs over valid tokens to the next start. Estimators without segments (gae, mc, vapo) have no
boundaries: one segment per row with a valid token, so the mean segment length is then the mean
response length.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import is_tensor


def segment_counts(boundaries: Any, mask: Any = None) -> tuple[Any, Any, Any]:
    """Per row: valid tokens, boundaries on valid tokens, and segments.

    Args:
        boundaries: [B, T] bool (or 0/1), the `boundaries` output of `compute_advantages`; time
            index t as there. numpy array or torch tensor.
        mask: [B, T] 0/1 (bool, int or float), 1 at valid tokens; None: every token is valid. Rows
            may be padded on either side and have interior gaps.

    Returns:
        (n_valid, n_boundaries, n_segments), each [B] int64, in the array type (and device) of
        `boundaries`.
    """
    if is_tensor(boundaries):
        import torch

        b = boundaries.bool()
        valid = torch.ones_like(b) if mask is None else mask.to(b.device).bool()
        b = b & valid
        first = valid.to(torch.int64).argmax(dim=-1, keepdim=True)  # 0 for a row without valid tokens
        plain_start = valid.any(dim=-1) & ~b.gather(-1, first).squeeze(-1)
        n_b = b.sum(dim=-1)
        return valid.sum(dim=-1), n_b, n_b + plain_start.to(torch.int64)
    b = np.asarray(boundaries).astype(bool)
    valid = np.ones_like(b) if mask is None else np.asarray(mask).astype(bool)
    b = b & valid
    first = valid.argmax(axis=-1)[..., None]
    plain_start = valid.any(axis=-1) & ~np.take_along_axis(b, first, axis=-1)[..., 0]
    n_b = b.sum(axis=-1, dtype=np.int64)
    return valid.sum(axis=-1, dtype=np.int64), n_b, n_b + plain_start.astype(np.int64)


def segment_stats(boundaries: Any, mask: Any = None) -> tuple[float, float]:
    """(boundary fraction, mean segment length) over a whole [B, T] batch: boundaries per valid
    token, and valid tokens per segment (see `segment_counts` for the arguments). NaN where the
    batch has no valid token."""
    n_valid, n_boundaries, n_segments = (int(x.sum()) for x in segment_counts(boundaries, mask))
    return (n_boundaries / n_valid if n_valid else math.nan,
            n_valid / n_segments if n_segments else math.nan)
