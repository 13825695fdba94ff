"""Checks of the caller's arrays, and the errors that name the argument, row and token at fault.

Per-token arrays are checked against the shape of `rewards` and given the dtype the kernels read
(`token_array`); the kernels report bad tokens in a problem table (`types.PROBLEM_COLUMNS`), which
`raise_for_problems` turns into a ValueError naming the first bad row and token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import ResultForm, as_numpy, as_tensor, astype, flat, is_tensor, kind, number
from .registry import DATA, score_data
from .types import PROBLEM_COLUMNS, Advantages, EstimatorSpec, Rows


def token_array(name: str, x: Any, form: ResultForm, shape: tuple | None, tensors: bool,
                half_bits: bool = False) -> Any:
    """`x` as numpy (or, for the torch backends, a tensor on the caller's device), checked against
    the shape of rewards and given the dtype the kernels read.

    The CPU backends read float32 and float64 rewards and values as they are (float64 rewards with
    float32 values cost no conversion pass), and a float16 mask as its bits; with `half_bits` (a
    backend that decodes half precision itself: numba), float16 and bfloat16 log-probs or entropy
    come as they are (bfloat16 as `arrays.BFLOAT16_BITS`). The torch backends get rewards and
    values in the result's dtype.
    """
    cast = form.compute_dtype if name in ("rewards", "values") else None
    if tensors:
        arr = as_tensor(x, name, form, dtype=cast)
    else:
        score = half_bits and name in DATA and DATA[name].kind == "float"
        arr = as_numpy(x, name, form, keep_float16=score or name == "response_mask", keep_bfloat16=score)
        if cast is not None and arr.dtype not in (np.float32, np.float64):  # ints, bools
            arr = arr.astype(cast)
    if shape is not None and tuple(arr.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(arr.shape)} but rewards has shape {shape}")
    k = kind(arr)
    if name == "response_mask" and k not in "biuf":
        raise ValueError(f"response_mask must be bool, int or float 0/1; got dtype {arr.dtype}")
    expected = DATA[name].kind if name in DATA else "float" if name == "lambdas" else None
    if expected == "float":
        if k not in "iuf":
            raise ValueError(f"{name} must be a float array; got dtype {arr.dtype}")
        if k != "f" or name == "lambdas":
            arr = astype(arr, np.float64)
    elif expected == "int":
        if k not in "iu":
            raise ValueError(f"{name} must hold integer token ids; got dtype {arr.dtype}")
        arr = astype(arr, np.int64)
    elif expected == "bool":
        if k not in "biu":
            raise ValueError(f"{name} must be bool (or 0/1 int); got dtype {arr.dtype}")
        if k != "b":
            bad = astype((arr != 0) & (arr != 1), np.uint8).reshape(-1)
            if bad.any():
                i = int(bad.argmax())  # the first bad position
                raise ValueError(f"{name} must hold 0/1; flat position {i} holds {arr.reshape(-1)[i].item()}")
            arr = astype(arr, np.bool_)
    return arr


def check_offsets(offsets: Any, n: int) -> np.ndarray:
    """[B + 1] int64 row offsets, checked: 1-D, integer, from 0, non-decreasing, ending at n."""
    offs = as_numpy(offsets, "offsets")
    if offs.ndim != 1 or offs.shape[0] < 1:
        raise ValueError(f"offsets must be 1-D [B + 1] with at least one entry; got shape {offs.shape}")
    if offs.dtype.kind not in "iu":
        raise ValueError(f"offsets must be integers (int64); got dtype {offs.dtype}")
    offs = offs.astype(np.int64, copy=False)
    if offs[0] != 0:
        raise ValueError(f"offsets[0] must be 0; got {offs[0]}")
    steps = np.diff(offs)
    bad = np.flatnonzero(steps < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"offsets decrease at row {i}: offsets[{i}] = {offs[i]} > offsets[{i + 1}] = {offs[i + 1]}"
        )
    if offs[-1] != n:
        raise ValueError(f"offsets[-1] must equal the number of tokens in rewards ({n}); got {offs[-1]}")
    return offs


def columns(arrays: dict[str, Any], form: ResultForm, shape: tuple, tensors: bool,
            half_bits: bool = False) -> dict[str, Any]:
    """Each given ([B, T] or [N]) per-token array, by name, as a checked, contiguous, flat [N] column
    (a view where possible): numpy for the CPU backends, tensors on the caller's device for the
    torch backends."""
    return {name: flat(token_array(name, x, form, shape, tensors, half_bits))
            for name, x in arrays.items() if x is not None}


def rows(cols: dict[str, Any], starts: np.ndarray, lengths: np.ndarray) -> Rows:
    """The backends' flat layout from named [N] columns and [B] int64 row starts and lengths."""
    columns = cols
    return Rows(
        rewards=columns["rewards"],
        values=columns["values"],
        mask=columns.get("response_mask"),
        starts=starts,
        lengths=lengths,
        logprobs=columns.get("logprobs"),
        response_ids=columns.get("response_ids"),
        entropy=columns.get("entropy"),
        given=columns.get("given_boundaries"),
        lambdas=columns.get("lambdas"),
    )




def check_half_precision(out: Advantages, form: ResultForm) -> None:
    """float16 results can overflow where the float64 scan did not (beyond 65504): say so."""
    if not (repr(form.out_dtype) == "torch.float16" if form.torch else form.out_dtype == np.float16):
        return
    for name, x in (("advantages", out.advantages), ("returns", out.returns)):
        finite = x.isfinite() if is_tensor(x) else np.isfinite(x)
        if not bool(finite.all()):
            raise ValueError(f"{name} overflow float16 (beyond 65504); pass float32 inputs to get them")




def raise_for_problems(problems: np.ndarray, spec: EstimatorSpec, rows: Rows) -> None:
    """Raise for the first argument (in PROBLEM_COLUMNS order) that has a bad token."""
    if not problems.size or problems.max() < 0:
        return
    for col, name in enumerate(PROBLEM_COLUMNS):
        bad_rows = np.flatnonzero(problems[:, col] >= 0)
        if not bad_rows.size:
            continue
        i = int(bad_rows[0])
        t = int(problems[i, col])
        more = f"; {bad_rows.size - 1} more row(s) have one too" if bad_rows.size > 1 else ""
        if name == "response_mask":
            value = number(rows.mask, rows.starts[i] + t)
            raise ValueError(f"response_mask must hold only 0 and 1; row {i}, token {t} holds {value}{more}")
        if name == "overflow":
            raise ValueError(
                f"advantages overflow to a non-finite value in row {i}: every input is finite, but their "
                f"magnitude is too large for the scan{more}"
            )
        if name == "score":
            name = score_data(spec)
            arr = rows.score
        else:
            arr = getattr(rows, name)
        value = number(arr, rows.starts[i] + t)
        raise ValueError(
            f"{name} has a non-finite value ({value}) at row {i}, token {t}, a valid token "
            f"(response_mask is 1 there){more}"
        )
