"""Where the trajectory standard's documents are: shipped with the package, found with importlib.

The directory `sae_core/schemas/` (package data, in the wheel and the sdist) holds:
- `SPEC.md`: the standard in prose;
- `trajectory-<version>.schema.json`: the JSON Schema (draft 2020-12) of one row as a JSON object;
- `metadata-<version>.schema.json`: the JSON Schema of the `sae_rl` schema metadata document;
- `conformance/`: Parquet files with inputs and the reference outputs, and their README.

The JSON Schemas are generated from `sae_core.trajectory.json_schema` by `schemas/generate.py` in
a clone. This module sits at the bottom of the layers and imports only the standard library, so
`sae_core.spec_path()` works without torch, matplotlib or the trajectory code.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path, PurePosixPath
from typing import Any

DIRECTORY = "schemas"
SPEC = "SPEC.md"


def spec_path(name: str | None = None) -> Path:
    """The path of one document of the standard, or (name None) of the directory holding them.

    name: a path relative to that directory, with "/" between parts: "SPEC.md",
        "trajectory-1.0.schema.json", "metadata-1.0.schema.json",
        "conformance/sae_p0.2_skip.parquet" (see `spec_names`).
    Raises FileNotFoundError naming the documents there for a name that is not one of them, and
    ValueError for a name that leaves the directory. Needs a package installed as files (a wheel,
    a clone, an editable install), not imported from a zip archive (then RuntimeError).
    """
    root = importlib.resources.files(__package__) / DIRECTORY
    if not isinstance(root, Path):
        raise RuntimeError(f"sae_core is imported from an archive ({root}); install it as files to reach its "
                           "specification documents")
    if name is None:
        return root
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"a document of the standard is named relative to {root}; got {name!r}")
    path = root.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{name!r} is not a document of the trajectory standard; there are: "
                                f"{', '.join(spec_names())}")
    return path


def spec_names() -> tuple[str, ...]:
    """The names of the standard's documents (files relative to `spec_path()`, "/" between parts),
    sorted: "SPEC.md", the JSON Schemas, "conformance/README.md", "conformance/*.parquet"."""
    root = spec_path()
    return tuple(sorted((p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
                        key=lambda n: (n.count("/"), n != SPEC, n)))


def spec_document(name: str = SPEC) -> str:
    """The text of a document of the standard (UTF-8): SPEC.md by default, or a JSON Schema
    ("trajectory-1.0.schema.json", "metadata-1.0.schema.json"); raises as `spec_path`, and
    ValueError for a binary file (a conformance .parquet: open `spec_path(name)` instead)."""
    path = spec_path(name)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name!r} is a binary file; read it from spec_path({name!r})") from None


def spec_json(name: str) -> Any:
    """A JSON document of the standard, parsed: `spec_json("metadata-1.0.schema.json")` is a dict,
    the JSON Schema to validate an `sae_rl` metadata document with (e.g. with `jsonschema`)."""
    return json.loads(spec_document(name))


__all__ = ["spec_document", "spec_json", "spec_names", "spec_path"]
