"""The columns of the trajectory standard (sae_core/schemas/SPEC.md): names, levels, types, roles.

A table holds per-row columns (`trajectory_id`, `group_id`, `step`, `reward`, ...) and per-token
columns, Arrow lists whose i-th entry has row i's response length L_i (`response_ids`,
`logprobs`, `values`, `rewards`, `response_mask`, `entropy`, and the outputs `advantages`,
`returns`, `boundaries`). Per-token entry t of row i is token t of response i (t = 0..L_i - 1):
values[t] is the critic's value of the prefix before token t.

The columns an estimator reads come from the registry (`sae_core.registry`): every estimator reads
`values` and `rewards` (or `reward`), and sae's boundary rule its per-token data, whose column is
`registry.DATA[name].column`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import registry
from .lists import is_list
from .metadata import metadata_bytes

_CANONICAL = {
    "id": pa.string(),
    "int": pa.int64(),
    "float": pa.float32(),
    "string": pa.string(),
    "int_list": pa.large_list(pa.int32()),
    "token_int": pa.large_list(pa.int32()),
    "token_float": pa.large_list(pa.float32()),
    "token_mask": pa.large_list(pa.bool_()),
}

_ACCEPTED = {
    "id": "string or large_string (integers are accepted too)",
    "int": "any integer type",
    "float": "float32 or float64 (integers are accepted too)",
    "string": "string, large_string or dictionary<string>",
    "int_list": "list or large_list of int32 or int64",
    "token_int": "list or large_list of int32 or int64",
    "token_float": "list or large_list of float32 or float64",
    "token_mask": "list or large_list of bool or of integers holding 0 and 1",
}


@dataclass(frozen=True)
class Column:
    """One column of the standard.

    level: "row" (one value per response) or "token" (a list with the response's length).
    kind: which Arrow types are accepted (see `accepts`); `canonical` is the type written.
    """

    name: str
    level: str
    kind: str
    required: bool
    role: str  # "input" or "output"
    description: str

    @property
    def canonical(self) -> pa.DataType:
        return _CANONICAL[self.kind]

    @property
    def accepts(self) -> str:
        """The Arrow types this column accepts, in words."""
        return _ACCEPTED[self.kind]

    def accepts_type(self, t: pa.DataType) -> bool:
        """Whether a column of type `t` is readable as this column."""
        kind = self.kind
        if kind == "id":
            return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
        if kind == "int":
            return pa.types.is_integer(t)
        if kind == "float":
            return t in (pa.float32(), pa.float64()) or pa.types.is_integer(t)
        if kind == "string":
            return (pa.types.is_string(t) or pa.types.is_large_string(t)
                    or (pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type)
                                                       or pa.types.is_large_string(t.value_type))))
        if not is_list(t):
            return False
        v = t.value_type
        if kind in ("int_list", "token_int"):
            return v in (pa.int32(), pa.int64())
        if kind == "token_float":
            return v in (pa.float32(), pa.float64())
        if kind == "token_mask":
            return pa.types.is_boolean(v) or pa.types.is_integer(v)
        raise AssertionError(kind)


COLUMNS: tuple[Column, ...] = (
    Column("trajectory_id", "row", "id", True, "input",
           "Identifies the response; unique within a file."),
    Column("group_id", "row", "id", False, "input",
           "The prompt's uid: responses to the same prompt share it (group baselines such as GRPO)."),
    Column("step", "row", "int", False, "input",
           "The training step (policy version) that sampled the response."),
    Column("prompt_ids", "row", "int_list", False, "input", "The prompt's token ids."),
    Column("response_ids", "token", "token_int", True, "input",
           "The response's token ids; its length L is the row's response length, which every per-token "
           "column has."),
    Column("response_mask", "token", "token_mask", False, "input",
           "1 = a token the policy generated, 0 = a token it did not (tool output in multi-turn rollouts). "
           "Absent: every token is valid."),
    Column("logprobs", "token", "token_float", False, "input",
           "Natural-log probability of the sampled token under the behaviour policy (the policy that "
           "sampled it)."),
    Column("values", "token", "token_float", False, "input",
           "values[t]: the critic's value of the prefix before token t (prompt plus tokens 0..t-1)."),
    Column("rewards", "token", "token_float", False, "input",
           "Token-level reward r_t (outcome reward on the last valid token, plus any per-token terms "
           "such as a KL penalty). Takes precedence over `reward`."),
    Column("reward", "row", "float", False, "input",
           "Scalar outcome reward; when `rewards` is absent it is placed on the row's last valid token."),
    Column("entropy", "token", "token_float", False, "input",
           "The policy's entropy (nats) at token t, over the whole vocabulary."),
    Column("finish_reason", "row", "string", False, "input",
           "Why generation stopped: 'stop', 'length', 'abort', 'tool_calls', or another producer's word."),
    Column("advantages", "token", "token_float", False, "output", "A_t for the actor, from the estimator "
           "recorded in the metadata."),
    Column("returns", "token", "token_float", False, "output", "R_t, the critic's target."),
    Column("boundaries", "token", "token_mask", False, "output",
           "True where token t starts a new segment (segmental estimators); all False otherwise."),
)
COLUMN = {c.name: c for c in COLUMNS}
OUTPUT_NAMES = ("advantages", "returns", "boundaries")


def column_for(name: str) -> Column | None:
    """The standard's column for `name`, including suffixed outputs such as advantages_gae; None
    for a column the standard does not name."""
    if name in COLUMN:
        return COLUMN[name]
    for out in OUTPUT_NAMES:
        if name.startswith(out + "_"):
            return COLUMN[out]
    return None


def type_name(t: pa.DataType) -> str:
    """An Arrow type as the standard writes it: float32, large_list<int32>, ..."""
    if is_list(t):
        outer = "large_list" if pa.types.is_large_list(t) else "list"
        return f"{outer}<{type_name(t.value_type)}>"
    return {"float": "float32", "double": "float64", "bool": "bool"}.get(str(t), str(t))


def needed_columns(estimator: str, boundary: str | None = None) -> tuple[str, ...]:
    """The columns `estimator` (with its boundary rule, default the registry's) reads, besides
    `rewards`, which may be replaced by `reward`. Raises ValueError for an unknown estimator or rule."""
    if boundary is not None and boundary not in registry.RULES:
        raise ValueError(f"boundary must be one of {tuple(registry.RULES)}; got {boundary!r}")
    data = registry.needed_data(estimator, boundary)
    return tuple(dict.fromkeys(["values", *(registry.DATA[name].column for name in data)]))


def schema(names: Iterable[str] | None = None, *, estimators: Mapping[str, Mapping[str, Any]] | None = None
           ) -> pa.Schema:
    """The canonical Arrow schema of the given columns (default: all of them), with metadata.

    estimators: {advantages column name: estimator parameters} for the output sets the table holds.
    """
    names = [c.name for c in COLUMNS] if names is None else list(names)
    fields = []
    for name in names:
        col = column_for(name)
        if col is None:
            raise ValueError(f"{name!r} is not a column of the trajectory standard")
        fields.append(pa.field(name, col.canonical, nullable=not col.required))
    return pa.schema(fields, metadata=metadata_bytes(estimators or {}))


__all__ = ["COLUMN", "COLUMNS", "Column", "OUTPUT_NAMES", "column_for", "needed_columns", "schema", "type_name"]
