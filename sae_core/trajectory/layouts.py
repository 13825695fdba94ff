"""A batch of the standard in the layouts estimators and trainers use, and back.

Ragged: flat [N] per-token columns plus [B + 1] offsets (row i is tokens offsets[i] to
offsets[i + 1] - 1), zero-copy views of the Arrow buffers for float and integer columns; the
layout of packed sequences (cu_seqlens). Padded: [B, T] arrays (numpy or torch), right-padded to
the longest response, with a [B, T] bool response mask. Token t of row i is the same token t in
both (t = 0..L_i - 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .columns import column_for
from .errors import Problem, TrajectoryError, TrajectoryWarning
from .lists import flat_child, is_list, mask_numpy
from .metadata import metadata_bytes
from .validation import validate


@dataclass
class Ragged:
    """A batch in the ragged layout.

    offsets: [B + 1] int64 from 0; row i's tokens are [offsets[i], offsets[i + 1]).
    tokens:  per-token columns, each a flat [N] numpy array (float32/float64, int32/int64, or bool
             for masks and boundaries); views of the Arrow buffers where Arrow allows (numbers
             without nulls), copies otherwise (bit-packed bools).
    rows:    per-row columns, each a [B] numpy array.
    """

    offsets: np.ndarray
    tokens: dict[str, np.ndarray]
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        """[B] int64 response lengths."""
        return np.diff(self.offsets)


def to_ragged(batch: pa.RecordBatch | pa.Table, columns: Iterable[str] | None = None) -> Ragged:
    """The columns of a batch in the ragged layout (see `Ragged`).

    columns: names to convert (default: every column). Asking for "rewards" of a table that has
    only `reward` gives the token-level rewards the standard defines: zeros, with `reward` on each
    row's last valid token. A Table with several chunks is combined first (a copy).
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist(
            [], schema=batch.schema)
    names = list(batch.schema.names if columns is None else columns)
    if "response_ids" in batch.schema.names:
        offsets, _ = flat_child(batch.column("response_ids"))
    else:
        offsets = None
    tokens, rows = {}, {}
    for name in names:
        if name == "rewards" and name not in batch.schema.names and "reward" in batch.schema.names:
            if offsets is None:
                raise TrajectoryError([Problem("response_ids", None, "missing: it gives the rows' lengths")])
            tokens["rewards"] = place_reward(batch, offsets)
            continue
        if name not in batch.schema.names:
            raise TrajectoryError([Problem(name, None, "missing")])
        arr = batch.column(name)
        col = column_for(name)
        if is_list(arr.type) and (col is None or col.level == "token"):
            offs, child = flat_child(arr)
            if offsets is None:
                offsets = offs
            elif not np.array_equal(offs, offsets):  # a column the validation does not know
                row = int(np.flatnonzero(np.diff(offs) != np.diff(offsets))[0])
                raise TrajectoryError([Problem(name, row, f"{int(offs[row + 1] - offs[row])} tokens, but the row "
                                                          f"has {int(offsets[row + 1] - offsets[row])}")])
            if pa.types.is_boolean(child.type):
                tokens[name] = child.to_numpy(zero_copy_only=False)
            else:
                tokens[name] = child.to_numpy(zero_copy_only=child.null_count == 0)
        else:
            rows[name] = arr.to_numpy(zero_copy_only=False)
    if offsets is None:
        offsets = np.zeros(batch.num_rows + 1, dtype=np.int64)
    return Ragged(offsets, tokens, rows)


def place_reward(batch: pa.RecordBatch, offsets: np.ndarray) -> np.ndarray:
    """[N] float32 token-level rewards from the per-row `reward`: zeros, with reward[i] on row i's last
    valid token (the last with response_mask 1; rows without a valid token get nothing)."""
    reward = batch.column("reward").to_numpy(zero_copy_only=False).astype(np.float32)
    n = int(offsets[-1])
    out = np.zeros(n, dtype=np.float32)
    if "response_mask" in batch.schema.names:
        valid = mask_numpy(flat_child(batch.column("response_mask"))[1])
        last_valid = np.maximum.accumulate(np.where(valid, np.arange(n), -1)) if n else np.empty(0, np.int64)
        ends = offsets[1:] - 1
        nonempty = offsets[1:] > offsets[:-1]
        last = np.full(len(reward), -1, dtype=np.int64)
        last[nonempty] = last_valid[ends[nonempty]]
        has = nonempty & (last >= offsets[:-1])
    else:
        has = offsets[1:] > offsets[:-1]
        last = offsets[1:] - 1
    out[last[has]] = reward[has]
    return out


def from_ragged(offsets: Any, tokens: Mapping[str, Any], rows: Mapping[str, Any] | None = None, *,
                estimators: Mapping[str, Mapping[str, Any]] | None = None) -> pa.Table:
    """A table in the standard from the ragged layout (the inverse of `to_ragged`).

    offsets: [B + 1] integer, from 0, non-decreasing. tokens: {name: [N] array} (numpy, or torch
    tensors, moved to the CPU). rows: {name: [B] array or list}. Columns of the standard get their
    canonical types; float64 values are rounded to float32 (the standard's per-token type).
    estimators: recorded in the metadata (see `schema`). Checks the result with `validate`.
    """
    offs = _as_numpy(offsets).astype(np.int64)
    if offs.ndim != 1 or offs.size == 0 or offs[0] != 0 or (np.diff(offs) < 0).any():
        raise ValueError("offsets must be 1-D [B + 1], start at 0 and never decrease")
    n = int(offs[-1])
    arrays = {}
    for name, values in (rows or {}).items():
        col = column_for(name)
        if isinstance(values, pa.Array):
            arrays[name] = values
            continue
        values = values if isinstance(values, list) else _as_numpy(values)
        if len(values) != len(offs) - 1:
            raise ValueError(f"row column {name!r} has {len(values)} entries for {len(offs) - 1} rows")
        typ = col.canonical if col else None
        if col is not None and col.kind == "id" and np.asarray(values).dtype.kind in "iu":
            typ = pa.int64()  # integer ids stay integers (the standard accepts them)
        arrays[name] = pa.array(values, type=typ)
    offsets_pa = pa.array(offs, type=pa.int64())
    for name, values in tokens.items():
        flat = _as_numpy(values)
        if flat.ndim != 1 or flat.shape[0] != n:
            raise ValueError(f"token column {name!r} has shape {flat.shape}; offsets say [{n}]")
        col = column_for(name)
        if col is not None:
            flat = flat.astype(col.canonical.value_type.to_pandas_dtype(), copy=False)
        arrays[name] = pa.LargeListArray.from_arrays(offsets_pa, pa.array(flat))
    table = pa.table(arrays)
    table = table.replace_schema_metadata(metadata_bytes(estimators or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrajectoryWarning)
        validate(table)
    return table


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_padded(batch: pa.RecordBatch | pa.Table, columns: Iterable[str] | None = None, *, tensors: bool = False,
              device: Any = None, length: int | None = None) -> dict[str, Any]:
    """Per-token columns as right-padded [B, T] arrays, T = the longest response (or `length`).

    Returns {name: [B, T]} for the per-token `columns` (default: every per-token column), plus
    "response_mask": [B, T] bool, True at the row's valid tokens (the file's mask where it has one,
    all of the response otherwise) and False in the padding. Padding holds 0 (False for bools).
    Dtypes are the columns' (float32/float64, int32/int64, bool). tensors=True gives torch tensors
    on `device`. "rewards" is synthesised from `reward` as in `to_ragged`.
    """
    names = _token_names(batch, columns)
    if "response_mask" in batch.schema.names and "response_mask" not in names:
        names.append("response_mask")  # the returned mask is the file's, whichever columns are asked for
    ragged = to_ragged(batch, names)
    lengths = ragged.lengths
    T = int(lengths.max()) if lengths.size else 0
    if length is not None:
        if length < T:
            raise ValueError(f"length={length} is shorter than the longest response ({T} tokens)")
        T = length
    B = lengths.shape[0]
    inside = np.arange(T)[None, :] < lengths[:, None]  # [B, T]
    out = {}
    for name, flat in ragged.tokens.items():
        padded = np.zeros((B, T), dtype=flat.dtype)
        padded[inside] = flat
        out[name] = padded
    mask = inside.copy()
    if "response_mask" in out:
        mask &= out["response_mask"].astype(bool)
    out["response_mask"] = mask
    if tensors:
        import torch
        out = {k: torch.from_numpy(v).to(device) if device is not None else torch.from_numpy(v)
               for k, v in out.items()}
    return out


def _token_names(batch, columns) -> list[str]:
    if columns is not None:
        return list(columns)
    return [f.name for f in batch.schema if is_list(f.type)
            and (column_for(f.name) is None or column_for(f.name).level == "token")]


def from_padded(tokens: Mapping[str, Any], response_mask: Any, rows: Mapping[str, Any] | None = None, *,
                lengths: Any = None, estimators: Mapping[str, Mapping[str, Any]] | None = None) -> pa.Table:
    """A table from right-padded [B, T] arrays (the inverse of `to_padded`).

    tokens: {name: [B, T] array or tensor}. response_mask: [B, T] 0/1. lengths: [B] each row's
    response length; default: up to its last valid token (interior masked tokens stay in the row
    with mask 0; trailing ones are padding). The table gets a `response_mask` column unless every
    kept token is valid. rows: per-row columns, as in `from_ragged`.
    """
    mask = _as_numpy(response_mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"response_mask must be [B, T]; got shape {mask.shape}")
    B, T = mask.shape
    if lengths is None:  # up to the last valid token (argmax of an empty [B, 0] row would raise)
        lengths = (np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0) if T
                   else np.zeros(B, np.int64))
    lengths = _as_numpy(lengths).astype(np.int64)
    if lengths.shape != (B,) or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"lengths must be [B] = [{B}] integers in [0, {T}]")
    inside = np.arange(T)[None, :] < lengths[:, None]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = {}
    for name, values in tokens.items():
        x = _as_numpy(values)
        if x.shape != (B, T):
            raise ValueError(f"{name} has shape {x.shape}; response_mask has {(B, T)}")
        flat[name] = x[inside]
    kept_mask = mask[inside]
    if not kept_mask.all() and "response_mask" not in flat:
        flat["response_mask"] = kept_mask
    return from_ragged(offsets, flat, rows, estimators=estimators)


__all__ = ["Ragged", "from_padded", "from_ragged", "place_reward", "to_padded", "to_ragged"]
