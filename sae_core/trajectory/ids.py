"""Trajectory ids seen so far: duplicates across the batches of a file and the files of a job.

An `IdIndex` keeps, for every id added, a 64-bit key (the integer itself, or Python's hash of a
string) in sorted runs, the id's position, and the ids themselves as Arrow arrays, so that a key
match is confirmed on the values: the answer is exact, and memory is about 16 bytes per id plus
the ids' own bytes (an Arrow string array: length + 8). Runs are merged as they grow (sizes halve
from the oldest), so adding n ids costs O(n log n) and a lookup O(log^2 n) per id.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Occurrence:
    """Where an id was first seen: its source (a file's path, or None for the file being read) and
    its row there."""

    source: str | None
    row: int
    value: Any


_string_key = hash  # SipHash, keyed per process: 64 bits, matches confirmed on the values anyway


def _keys(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """([k] int64 keys, [k] int64 row indices) of the non-null ids of `ids`."""
    if ids.null_count:
        rows = np.flatnonzero(~ids.is_null().to_numpy(zero_copy_only=False))
        ids = ids.filter(ids.is_valid())
    else:
        rows = np.arange(len(ids), dtype=np.int64)
    if pa.types.is_integer(ids.type):
        x = ids.to_numpy(zero_copy_only=False)
        keys = x.view(np.int64) if x.dtype == np.uint64 else x.astype(np.int64, copy=False)
    else:  # strings: a 64-bit hash, constant within this process
        keys = np.fromiter(map(_string_key, ids.to_pylist()), dtype=np.int64, count=len(ids))
    return keys, rows


class IdIndex:
    """The ids added so far, each with where it came from; `first_repeat` finds the first row of a
    batch of ids whose id was seen before (in this index or earlier in the batch)."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, their positions)
        self._chunks: list[tuple[int, pa.Array, str | None, int]] = []  # (first position, ids, source, first row)
        self._starts: list[int] = []
        self._size = 0  # positions handed out (null ids included)

    def __len__(self) -> int:
        """The number of ids added (nulls not counted)."""
        return sum(len(k) for k, _ in self._runs)

    # -- adding --------------------------------------------------------------------------------

    def add(self, ids: pa.Array | pa.ChunkedArray, *, source: str | None = None, first_row: int = 0) -> None:
        """Add a batch of ids: row i of `ids` is row `first_row + i` of `source`."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
        if not len(ids):
            return
        keys, rows = _keys(ids)
        self._append_chunk(ids, source, first_row)
        if len(keys):
            order = np.argsort(keys, kind="stable")
            self._push((keys[order], (rows + self._starts[-1])[order]))

    def merge(self, other: IdIndex, *, source: str | None = None) -> None:
        """Move every id of `other` into this index (its chunks' source becomes `source`);
        `other` is left empty. The ids of one source are stored compactly (one Arrow array)."""
        if not other._chunks:
            return
        base = self._size
        arrays = [c[1] for c in other._chunks]
        same = len({a.type for a in arrays}) == 1 and all(
            c[0] - other._chunks[0][0] == c[3] - other._chunks[0][3] for c in other._chunks)
        if same:  # consecutive rows of one file: one array, copied compactly
            self._append_chunk(pa.concat_arrays(arrays), source, other._chunks[0][3])
            self._size = base + other._size
        else:
            for start, arr, _, first_row in other._chunks:
                self._chunks.append((base + start, arr, source, first_row))
                self._starts.append(base + start)
            self._size = base + other._size
        for keys, pos in other._runs:
            self._push((keys, pos + base))
        other.__init__()

    def _append_chunk(self, ids: pa.Array, source: str | None, first_row: int) -> None:
        self._chunks.append((self._size, ids, source, first_row))
        self._starts.append(self._size)
        self._size += len(ids)

    def _push(self, run: tuple[np.ndarray, np.ndarray]) -> None:
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (k1, p1), (k2, p2) = self._runs[-2], self._runs.pop()
            keys, pos = np.concatenate([k1, k2]), np.concatenate([p1, p2])
            # later runs hold later positions: a stable sort keeps equal keys in order of position (the
            # first is the earliest), and merging two sorted runs is linear for numpy's timsort
            order = np.argsort(keys, kind="stable")
            self._runs[-1] = (keys[order], pos[order])

    # -- looking up ----------------------------------------------------------------------------

    def _at(self, position: int) -> Occurrence:
        i = bisect.bisect_right(self._starts, position) - 1
        start, arr, source, first_row = self._chunks[i]
        return Occurrence(source, first_row + position - start, arr[position - start].as_py())

    def _earliest(self, key: int, value: Any) -> Occurrence | None:
        """The earliest position holding `value` (whose key is `key`), if any."""
        best = None
        for keys, pos in self._runs:
            lo, hi = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
            for p in pos[lo:hi]:  # one entry, unless hashes collide or the index holds repeats
                if (best is None or p < best) and _same(self._at(int(p)).value, value):
                    best = int(p)
                    break
        return None if best is None else self._at(best)

    def _candidates(self, keys: np.ndarray) -> np.ndarray:
        """[k] bool: keys that some run holds (a match still to be confirmed on the value)."""
        hit = np.zeros(len(keys), dtype=bool)
        for run, _ in self._runs:
            i = np.searchsorted(run, keys)
            hit |= run[np.minimum(i, len(run) - 1)] == keys
        return hit

    def first_repeat(self, ids: pa.Array | pa.ChunkedArray, *, earlier: tuple[IdIndex, ...] = ()
                     ) -> tuple[int, Occurrence] | None:
        """(row of `ids`, its first occurrence) for the first row whose (non-null) id appeared
        before: in an index of `earlier` (searched first: they hold earlier ids), in this index,
        or in an earlier row of `ids` (then the occurrence's source is None and its row an index
        into `ids`). None when every id is new."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
        keys, rows = _keys(ids)
        if not len(keys):
            return None
        indexes = [*earlier, self]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]  # searched in order: numpy's binary search starts from the last answer
        hit = np.zeros(len(keys), dtype=bool)
        for index in indexes:
            if index._runs:
                hit |= index._candidates(sorted_keys)
        cand = np.zeros(len(keys), dtype=bool)
        cand[order] = hit
        same_key = np.zeros(len(keys), dtype=bool)
        same_key[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]  # a key already in an earlier row
        cand |= same_key
        for j in np.flatnonzero(cand):  # in row order; the first confirmed one is the answer
            value = ids[int(rows[j])].as_py()
            for index in indexes:
                if index._runs:
                    hit = index._earliest(int(keys[j]), value)
                    if hit is not None:
                        return int(rows[j]), hit
            if same_key[j]:
                before = np.flatnonzero(keys[:j] == keys[j])
                for b in before:
                    if _same(ids[int(rows[b])].as_py(), value):
                        return int(rows[j]), Occurrence(None, int(rows[b]), value)
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal ids of the same kind (the string "7" and the integer 7 differ)."""
    return type(a) is type(b) and a == b


__all__ = ["IdIndex", "Occurrence"]
