"""The schema metadata of the standard: one JSON document under the key `sae_rl`.

It records the standard's version, the producer and, for each output set, the parameters of the
estimator that produced it ({advantages column name: registry.recorded_params}).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..version import __version__

from .errors import TrajectoryError, TrajectoryWarning

SPEC_VERSION = "1.0"
METADATA_KEY = "sae_rl"
READABLE_MAJOR = 1


@dataclass
class Info:
    """What the schema metadata says: the spec version and each output set's estimator."""

    spec_version: str
    estimators: dict[str, dict[str, Any]] = field(default_factory=dict)
    producer: str | None = None
    has_metadata: bool = True


def metadata_bytes(estimators: Mapping[str, Mapping[str, Any]]) -> dict[bytes, bytes]:
    """The schema metadata entry recording `estimators` ({advantages column: parameters})."""
    doc = {"spec_version": SPEC_VERSION, "producer": f"sae-rl {__version__}",
           "estimators": {k: dict(v) for k, v in estimators.items()}}
    return {METADATA_KEY.encode(): json.dumps(doc, sort_keys=True).encode()}


def read_info(sch: pa.Schema, source: str | None = None) -> Info:
    """Parse and check the `sae_rl` metadata of a schema.

    No metadata (a file written by pandas, HF datasets or plain pyarrow): the current version, with
    a warning. A major version other than 1: TrajectoryError naming the readable versions. A newer
    minor version: read, with a warning.
    """
    raw = (sch.metadata or {}).get(METADATA_KEY.encode())
    where = f"{source}: " if source else ""
    if raw is None:
        warnings.warn(f"{where}no {METADATA_KEY!r} metadata (written by another tool?); read as trajectory "
                      f"spec {SPEC_VERSION}", TrajectoryWarning, stacklevel=3)
        return Info(SPEC_VERSION, has_metadata=False)
    try:
        doc = json.loads(raw)
        version = str(doc["spec_version"])
        major, minor = (int(x) for x in version.split("."))
    except (ValueError, KeyError, TypeError) as exc:
        raise TrajectoryError(f"the {METADATA_KEY!r} schema metadata is not valid: {exc}", source) from None
    if major != READABLE_MAJOR:  # before the rest: another major version may lay it out differently
        raise TrajectoryError(f"trajectory spec version {version} is not readable by this sae-rl, which reads "
                              f"versions {READABLE_MAJOR}.x (up to {SPEC_VERSION})", source)
    estimators = doc.get("estimators") or {}
    if not isinstance(estimators, dict) or not all(isinstance(v, dict) for v in estimators.values()):
        raise TrajectoryError(f"the {METADATA_KEY!r} schema metadata is not valid: estimators must map column "
                              "names to parameter objects", source)
    current_minor = int(SPEC_VERSION.split(".")[1])
    if minor > current_minor:
        warnings.warn(f"{where}written with trajectory spec {version}, newer than {SPEC_VERSION}; columns this "
                      "version does not know are kept as they are", TrajectoryWarning, stacklevel=3)
    return Info(version, estimators, doc.get("producer"))


def with_estimators(sch: pa.Schema, estimators: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """`sch` with its metadata recording `estimators` (merged over what it records already)."""
    meta = dict(sch.metadata or {})
    old: dict[str, Any] = {}
    raw = meta.get(METADATA_KEY.encode())
    if raw is not None:
        try:
            old = json.loads(raw).get("estimators") or {}
        except (ValueError, AttributeError):
            old = {}
    meta.update(metadata_bytes({**old, **estimators}))
    return sch.with_metadata(meta)


__all__ = ["Info", "METADATA_KEY", "READABLE_MAJOR", "SPEC_VERSION", "metadata_bytes", "read_info",
           "with_estimators"]
