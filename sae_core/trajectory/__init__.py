"""The trajectory standard (sae_core/schemas/SPEC.md, `sae_core.spec_path()`): Arrow tables of LLM rollouts, one row per response.

A table holds per-row columns (`trajectory_id`, `group_id`, `step`, `reward`, ...) and per-token
columns, Arrow lists whose i-th entry has row i's response length (`response_ids`, `logprobs`,
`values`, `rewards`, `response_mask`, `entropy`, and the outputs `advantages`, `returns`,
`boundaries`). The standard's version and the parameters of the estimators that produced the
outputs live in the schema metadata under the one key `sae_rl`.

Time index: per-token entry t of row i is token t of response i (t = 0..L_i - 1), the same t as in
`sae_core.api`: values[t] is the critic's value of the prefix before token t.

The modules, lowest first (each imports only those before it):
    errors      Problem, TrajectoryError, TrajectoryWarning
    lists       Arrow list-array helpers (offsets, lengths, the child of a slice)
    metadata    SPEC_VERSION, METADATA_KEY, Info, read_info, with_estimators
    columns     Column, COLUMNS, column_for, schema, needed_columns
    json_schema row_schema, metadata_schema (the standard as JSON Schema 2020-12)
    ids         IdIndex: trajectory ids seen so far (exact, compact)
    validation  schema_problems, batch_problems, FileCheck (the one validation), validate
    layouts     Ragged, to_ragged / from_ragged, to_padded / from_padded, place_reward
    mapping     ColumnMap (`--column STANDARD=THEIRS`, veRL's and OpenRLHF's names: ALIASES), resolve
    paths       paths and URIs (file://, s3://, gs://, hf://, memory://): resolve to a pyarrow filesystem,
                list, glob, UnsupportedPath; RemoteTarget (atomic writes off the local disk)
    reader      file_format, Reader (regular files only; Parquet page checksums verified; columns renamed
                as read)
    io          read_table, iter_batches, read_schema, count_rows, validate_file, SeenIds, file_columns
                (each reader takes column_map=)
    writers     write_table, TrajectoryWriter (atomic, via sae_core.atomic; Parquet page checksums)
    estimate    compute, boundary_rule, estimator_kwargs
"""

from .columns import COLUMN, COLUMNS, OUTPUT_NAMES, Column, column_for, needed_columns, schema
from .estimate import boundary_rule, compute, estimator_kwargs
from .errors import Problem, TrajectoryError, TrajectoryWarning
from .json_schema import metadata_schema, row_schema
from .io import (SeenIds, Summary, count_rows, file_columns, iter_batches, read_schema, read_table,
                 validate_file)
from .layouts import Ragged, from_padded, from_ragged, place_reward, to_padded, to_ragged
from .mapping import ALIASES, Alias, ColumnMap, FileColumns
from .metadata import METADATA_KEY, READABLE_MAJOR, SPEC_VERSION, Info, read_info, with_estimators
from .paths import UnsupportedPath
from .reader import file_format
from .validation import batch_problems, schema_problems, validate
from .writers import TrajectoryWriter, write_table

__all__ = [
    "ALIASES", "Alias", "COLUMN", "COLUMNS", "Column", "ColumnMap", "FileColumns", "file_columns", "Info",
    "METADATA_KEY", "OUTPUT_NAMES", "Problem", "READABLE_MAJOR",
    "Ragged", "SPEC_VERSION", "SeenIds", "Summary", "TrajectoryError", "TrajectoryWarning", "TrajectoryWriter",
    "UnsupportedPath", "batch_problems",
    "boundary_rule", "column_for", "compute", "count_rows", "estimator_kwargs", "file_format", "from_padded",
    "from_ragged", "iter_batches", "metadata_schema", "needed_columns", "place_reward", "read_info", "read_schema",
    "read_table", "row_schema", "schema", "schema_problems", "to_padded", "to_ragged", "validate", "validate_file",
    "with_estimators", "write_table",
]
