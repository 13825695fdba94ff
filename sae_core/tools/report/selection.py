"""Which responses the report's token view shows, and their per-token data.

`pick_responses` chooses rows deterministically from the summary alone (lengths, boundary counts);
`fetch_responses` reads just those rows in a second streaming pass over the file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ... import registry
from ... import trajectory as tj
from ..summary import Inspection, OutputSet, Segments


@dataclass
class Response:
    """One row picked for the token view. Token arrays are [L] numpy (None when the file lacks the
    column); advantages and boundaries are {set name: [L]}."""

    row: int
    why: str
    ids: np.ndarray
    valid: np.ndarray
    logprobs: np.ndarray | None
    values: np.ndarray | None
    advantages: dict[str, np.ndarray]
    boundaries: dict[str, np.ndarray]


def primary_set(ins: Inspection) -> OutputSet | None:
    """The set whose advantages colour the tokens: the first segmental one, else the first."""
    for s in ins.sets:
        if s.segmental:
            return s
    return ins.sets[0] if ins.sets else None


@dataclass(frozen=True)
class Marks:
    """The boundaries the token view marks: `key` names them in Response.boundaries (a set's
    advantages column, or "" for the logprob rule at `threshold`)."""

    label: str
    key: str
    segments: Segments
    threshold: float | None = None


def boundary_marks(ins: Inspection) -> Marks | None:
    """The coloured set's own boundaries, else the logprob rule at the threshold nearest the
    paper's (`registry.PAPER_THRESHOLD`), else none."""
    s = primary_set(ins)
    if s is not None and s.segments is not None and s.segmental:
        return Marks("boundaries" + s.suffix, s.name, s.segments)
    if ins.thresholds:
        paper = registry.PAPER_THRESHOLD
        t = min(ins.thresholds, key=lambda t: (abs(math.log(t.threshold / paper)), t.threshold))
        return Marks(f"logprobs < log {t.threshold:g}", "", t.segments, t.threshold)
    return None


def pick_responses(ins: Inspection, n: int, row_boundaries: np.ndarray | None = None
                   ) -> list[tuple[int, str]]:
    """Up to `n` (row, reasons) pairs, deterministic, among the responses with a valid token (with
    any token if none has one): the shortest, the median and the longest, the one with the most
    boundaries (`row_boundaries`, [rows] int), the one with the most masked tokens (first on ties),
    then responses at evenly spaced length ranks. A row picked twice keeps both reasons."""
    lengths = ins.row_lengths
    cand = np.flatnonzero(ins.row_valid > 0)
    if cand.size == 0:
        cand = np.flatnonzero(lengths > 0)
    if cand.size == 0 or n <= 0:
        return []
    order = cand[np.argsort(lengths[cand], kind="stable")]
    picks: dict[int, list[str]] = {}

    def add(i: int, why: str) -> None:
        if int(i) in picks:
            picks[int(i)].append(why)
        elif len(picks) < n:
            picks[int(i)] = [why]

    add(order[0], "shortest")
    add(order[(order.size - 1) // 2], "median length")
    add(order[-1], "longest")
    if row_boundaries is not None and row_boundaries.size and row_boundaries[cand].max() > 0:
        add(cand[int(np.argmax(row_boundaries[cand]))], "most boundaries")
    masked = (lengths - ins.row_valid)[cand]
    if masked.max() > 0:
        add(cand[int(np.argmax(masked))], "most masked tokens")
    rest = [i for i in order if int(i) not in picks]
    need = n - len(picks)
    if need > 0 and rest:
        for k in np.unique(np.linspace(0, len(rest) - 1, min(need, len(rest))).round().astype(int)):
            add(rest[k], "by length rank")
    return [(i, ", ".join(why)) for i, why in picks.items()]


def fetch_responses(path, ins: Inspection, picks: list[tuple[int, str]], batch_size: int,
           threshold: float | None) -> list[Response]:
    """The picked rows' per-token data, in a second streaming pass that stops after the last one.
    The first pass (`inspect_file`) validated the file: this one only reads, and its warnings
    (no metadata, a newer minor version) were given by the first. Columns read under other names
    in the first pass (`Inspection.mapped`) are read so again."""
    if not picks:
        return []
    names = set(ins.columns)
    cols = ["response_ids"] + [c for c in ("response_mask", "logprobs", "values") if c in names]
    for s in ins.sets:
        cols.append(s.name)
        if "boundaries" + s.suffix in names:
            cols.append("boundaries" + s.suffix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        batches = tj.iter_batches(path, batch_size=batch_size, columns=cols, validate=False,
                                  column_map=dict(ins.mapped) or None)
        found = _fetch(batches, ins, dict(picks), cols, threshold)
    return [found[r] for r, _ in picks if r in found]


def _fetch(batches, ins: Inspection, wanted: dict[int, str], cols: list[str], threshold: float | None
           ) -> dict[int, Response]:
    found: dict[int, Response] = {}
    first = 0
    for batch in batches:
        for row in sorted(r for r in wanted if first <= r < first + batch.num_rows):
            t = tj.to_ragged(batch.slice(row - first, 1), cols).tokens
            valid = (np.asarray(t["response_mask"]) != 0) if "response_mask" in t else np.ones(
                t["response_ids"].shape[0], dtype=bool)
            lp = None if "logprobs" not in t else np.asarray(t["logprobs"], dtype=np.float64)
            bnd = {s.name: (np.asarray(t["boundaries" + s.suffix]) != 0) & valid
                   for s in ins.sets if "boundaries" + s.suffix in t}
            if threshold is not None and lp is not None:  # no set has boundaries: the logprob rule's
                bnd[""] = valid & (lp < math.log(threshold))
            found[row] = Response(row, wanted[row], np.asarray(t["response_ids"]), valid, lp,
                                  None if "values" not in t else np.asarray(t["values"], dtype=np.float64),
                                  {s.name: np.asarray(t[s.name], dtype=np.float64) for s in ins.sets}, bnd)
        first += batch.num_rows
        if len(found) == len(wanted):
            break
    return found


__all__ = ["Marks", "Response", "boundary_marks", "fetch_responses", "pick_responses", "primary_set"]
