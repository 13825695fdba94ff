"""Segments: the one definition, for the adapters' training logs, `sae inspect`, the lab and examples.

A segment starts at a boundary, or at a row's first valid token when that is not a boundary, and
runs over valid tokens to the next start. Estimators without segments (gae, mc, vapo) have no
boundaries: one segment per row with a valid token, so the mean segment length is then the mean
response length.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import is_tensor


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


def segment_lengths(offsets: Any, boundaries: Any, valid: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Segments of a ragged batch, in the same definition.

    Args:
        offsets: [B + 1] int64 from 0: row i is tokens [offsets[i], offsets[i + 1]).
        boundaries: [N] bool, True where token t starts a segment; only valid tokens count.
        valid: [N] bool, the mask (None: every token is valid).

    Returns:
        (lengths [S] int32, each segment's number of valid tokens, in row order;
         row_boundaries [B] int32, each row's number of boundaries on valid tokens).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = int(offsets[-1])
    v = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    b = np.asarray(boundaries, dtype=bool) & v
    cum_b = np.concatenate([[0], np.cumsum(b, dtype=np.int64)])
    row_boundaries = (cum_b[offsets[1:]] - cum_b[offsets[:-1]]).astype(np.int32)
    starts = before_valid(offsets, v)[segment_starts(offsets, b, v)]
    # Segments tile the valid tokens of all rows in order, and every row with a valid token opens
    # with a segment start, so each segment ends where the next one (in any row) starts.
    lengths = np.diff(np.append(starts, v.sum(dtype=np.int64))).astype(np.int32)
    return lengths, row_boundaries


def before_valid(offsets: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[N] int64: how many valid tokens of the whole batch come before each token."""
    return np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])[:-1]


def segment_starts(offsets: Any, boundaries: Any, valid: Any = None) -> np.ndarray:
    """[N] bool: the valid tokens that start a segment, i.e. the boundaries on valid tokens plus
    each row's first valid token (offsets, boundaries and valid as in `segment_lengths`)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = int(offsets[-1])
    v = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    before = before_valid(offsets, v)
    cum_v = np.append(before, before[-1] + v[-1] if n else 0)
    first = v & (before == np.repeat(cum_v[offsets[:-1]], np.diff(offsets)))
    return (np.asarray(boundaries, dtype=bool) & v) | first


def segment_ids(offsets: Any, boundaries: Any, valid: Any = None) -> np.ndarray:
    """[N] int64: the segment of each token, numbered from 0 across the batch; a masked token
    belongs to the segment of the valid token before it (-1 before a row's first valid token)."""
    starts = segment_starts(offsets, boundaries, valid)
    ids = np.cumsum(starts, dtype=np.int64) - 1
    offsets = np.asarray(offsets, dtype=np.int64)
    if ids.size:  # tokens before their row's first start get -1, not the previous row's segment
        row_first = np.repeat(np.concatenate([[0], np.cumsum(starts, dtype=np.int64)])[offsets[:-1]],
                              np.diff(offsets))
        ids = np.where(ids + 1 > row_first, ids, -1)
    return ids
