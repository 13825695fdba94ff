"""Running an estimator on a table of the standard: outputs appended, parameters recorded.

The estimator reads `rewards` (or `reward`, placed on each row's last valid token), `values`, the
mask and its boundary rule's per-token data from the table's columns (`registry.DATA[name].column`
for each name in `registry.needed_data`), in the ragged layout, through
`sae_core.api.compute_advantages_ragged`. Token t of row i is the same t as in the API: values[t]
is the critic's value of the prefix before token t.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from .. import registry
from ..api import compute_advantages_ragged
from .columns import needed_columns
from .errors import TrajectoryError
from .layouts import to_ragged
from .metadata import with_estimators
from .validation import schema_problems, token_float_problem


def boundary_rule(estimator: str, params: Mapping[str, Any]) -> str | None:
    """The boundary rule that `compute(estimator=..., **params)` applies: None for estimators
    without segments, else `registry.boundary_rule`'s choice, which raises ValueError on options
    that conflict. The rule's per-token data is not in `params`: it comes from the table's columns."""
    return registry.boundary_rule(estimator, params)


def compute(batch: pa.RecordBatch | pa.Table, *, estimator: str, suffix: str = "", backend: str = "auto",
            first_row: int = 0, **params: Any) -> pa.RecordBatch | pa.Table:
    """Run an estimator on a batch and append (or replace) its outputs.

    Adds `advantages{suffix}`, `returns{suffix}` (large_list<float32>) and `boundaries{suffix}`
    (large_list<bool>), each entry the row's response length, and records the estimator's
    parameters (`registry.estimator_params`) in the schema metadata under the advantages column's
    name. Every other column is kept as it is. estimator: a name in `registry.ESTIMATORS`.
    params: the scalar keyword arguments of `compute_advantages` (gamma, mask_mode, critic_lam and
    the estimator's options); per-token rule data (`logprobs`, `entropy`, `response_ids`, the given
    `boundaries`) comes from the table's columns, and passing it here is a TypeError.

    Outputs that are not finite on a valid token (inputs near float32's limit overflow it) raise
    TrajectoryError naming the output column and the row, numbered from `first_row` (the batch's
    first row in its file), and nothing is returned.
    """
    data_given = sorted(set(params) & set(registry.DATA))
    if data_given:
        raise TypeError("compute reads per-token data from the table's columns; got "
                        + ", ".join(f"{name}=" for name in data_given))
    if isinstance(batch, pa.Table):
        out, row = [], first_row
        for b in batch.to_batches():
            out.append(compute(b, estimator=estimator, suffix=suffix, backend=backend, first_row=row, **params))
            row += b.num_rows
        if not out:
            empty = compute(pa.RecordBatch.from_pylist([], schema=batch.schema), estimator=estimator,
                            suffix=suffix, backend=backend, **params)
            return pa.Table.from_batches([], schema=empty.schema)
        return pa.Table.from_batches(out)
    recorded = registry.estimator_params(estimator, **params)  # options checked before any data is read
    rule = boundary_rule(estimator, params)
    needs = needed_columns(estimator, rule)
    problems = schema_problems(batch.schema, needs)
    if problems:
        raise TrajectoryError(problems)
    mask_name = ["response_mask"] if "response_mask" in batch.schema.names else []
    ragged = to_ragged(batch, dict.fromkeys(["rewards", *needs, *mask_name]))
    t = ragged.tokens
    data = {name: t[registry.DATA[name].column] for name in registry.needed_data(estimator, rule)}
    result = compute_advantages_ragged(t["rewards"], t["values"], ragged.offsets, estimator=estimator,
                                       response_mask=t.get("response_mask"), backend=backend,
                                       **params, **data)
    offsets = pa.array(ragged.offsets, type=pa.int64())

    def as_list(x: Any, dtype: type) -> pa.LargeListArray:
        return pa.LargeListArray.from_arrays(offsets, pa.array(np.asarray(x, dtype=dtype)))

    new = {f"advantages{suffix}": as_list(result.advantages, np.float32),
           f"returns{suffix}": as_list(result.returns, np.float32),
           f"boundaries{suffix}": as_list(result.boundaries, bool)}
    valid = None if t.get("response_mask") is None else np.asarray(t["response_mask"]) != 0
    problems = [p for name in (f"advantages{suffix}", f"returns{suffix}")
                if (p := token_float_problem(name, new[name], valid, first_row)) is not None]
    if problems:  # as written: float32, whatever precision the estimator ran in
        raise TrajectoryError([type(p)(p.column, p.row, p.message + ": the output is not finite in float32 "
                                       "(inputs near its limit, about 3.4e38?)") for p in problems])
    # other columns keep their fields (nullability, field metadata); replaced outputs keep their place
    fields = [pa.field(f.name, new[f.name].type) if f.name in new else f for f in batch.schema]
    fields += [pa.field(n, a.type) for n, a in new.items() if n not in batch.schema.names]
    arrays = [new[f.name] if f.name in new else batch.column(f.name) for f in fields]
    sch = with_estimators(pa.schema(fields, metadata=batch.schema.metadata),
                          {f"advantages{suffix}": recorded})
    return pa.RecordBatch.from_arrays(arrays, schema=sch)


def estimator_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `compute` / `compute_advantages` that reproduce recorded parameters
    (the metadata's entry for an output set: `registry.recorded_params`), estimator included."""
    return {k: v for k, v in params.items() if v is not None}


__all__ = ["boundary_rule", "compute", "estimator_kwargs"]
