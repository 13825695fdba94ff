"""Arrow list-array helpers shared by validation, layouts and IO.

A per-token column is an Arrow list array: [B + 1] offsets into one flat child of N values. A
sliced list array keeps the offsets (and the child) of the whole array, so these helpers cut the
child to the slice's own range and report rows relative to the slice.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def is_list(t: pa.DataType) -> bool:
    """A list or large_list type."""
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def offsets(arr: pa.Array) -> np.ndarray:
    """[B + 1] the list offsets of `arr` as stored (not rebased: a slice starts where it starts)."""
    return arr.offsets.to_numpy()


def lengths(arr: pa.Array) -> np.ndarray:
    """[B] int64 the length of each list."""
    return np.diff(offsets(arr)).astype(np.int64, copy=False)


def flat_child(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(offsets [B + 1] int64 from 0, the child values of exactly these rows). A sliced list array's
    `.values` is the child of the whole array, so the child is cut to this slice's range."""
    offs = offsets(arr)
    lo, hi = int(offs[0]), int(offs[-1])
    return (offs - lo).astype(np.int64, copy=False), arr.values.slice(lo, hi - lo)


def row_of(offs: np.ndarray, flat_index: int) -> int:
    """The row whose tokens contain `flat_index` (an index into the rebased child)."""
    rebased = offs - offs[0]
    return int(np.searchsorted(rebased, flat_index, side="right") - 1)


def null_rows(arr: pa.Array) -> np.ndarray:
    """[k] int64 the rows of `arr` that are null."""
    if arr.null_count == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))


def mask_numpy(child: pa.Array) -> np.ndarray:
    """[N] bool from a flat mask child (bool, or integers holding 0 and 1)."""
    if pa.types.is_boolean(child.type):
        return child.to_numpy(zero_copy_only=False)
    return child.to_numpy() != 0
