"""The schema metadata of the standard: one JSON document under the key `sae_rl`.

It records the standard's version, the producer and, for each output set, the parameters of the
estimator that produced it ({advantages column name: registry.recorded_params}). Adding output sets
(`with_estimators`) keeps the document's other keys and a newer minor version as they are: a file of
a later 1.x keeps what this version does not know.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .. import registry
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
    invalid: dict[str, str] = field(default_factory=dict)  # {advantages column: why its parameters are refused}
    # advantages columns of output sets recognised by name in a file without metadata (`advantages_*`):
    # their parameters are unknown (`sae annotate` puts the metadata back); never in `estimators`
    unknown: tuple[str, ...] = ()


def metadata_bytes(estimators: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any] | None = None
                   ) -> dict[bytes, bytes]:
    """The schema metadata entry recording `estimators` ({advantages column: parameters}).

    base: a metadata document already there; its other keys are kept, and its spec_version when
    that is a newer minor version of the same major (this sae-rl then wrote only what 1.0 defines).
    """
    doc = dict(base or {})
    version = SPEC_VERSION
    old = _version(doc.get("spec_version"))
    if old is not None and old[0] == READABLE_MAJOR and old > _version(SPEC_VERSION):
        version = str(doc["spec_version"])
    doc.update({"spec_version": version, "producer": f"sae-rl {__version__}",
                "estimators": {k: dict(v) for k, v in estimators.items()}})
    return {METADATA_KEY.encode(): json.dumps(doc, sort_keys=True).encode()}


def _version(text: Any) -> tuple[int, int] | None:
    try:
        major, minor = (int(x) for x in str(text).split("."))
    except ValueError:
        return None
    return major, minor


def parameter_problem(params: Mapping[str, Any]) -> str | None:
    """Why recorded parameters cannot be right, or None: a known numeric option out of its range
    (threshold <= 0, lam > 1, ...). Names and choices this version does not know are not judged:
    a later minor version may add them."""
    for name, value in params.items():
        option = registry.OPTIONS.get(name) or registry.COMMON.get(name)
        if option is None or value is None or option.kind not in ("float", "int", "int_list"):
            continue
        try:
            option.check(value)
        except (ValueError, TypeError) as exc:
            return str(exc)
    return None


def read_info(sch: pa.Schema, source: str | None = None) -> Info:
    """Parse and check the `sae_rl` metadata of a schema.

    No metadata (a file written by pandas, HF datasets or plain pyarrow): the current version, with
    a warning; its `advantages_*` columns are output sets of unknown parameters (`Info.unknown`,
    named in the warning). A major version other than 1: TrajectoryError naming the readable
    versions. A newer minor version: read, with a warning.
    """
    raw = (sch.metadata or {}).get(METADATA_KEY.encode())
    where = f"{source}: " if source else ""
    if raw is None:
        unknown = unrecorded_sets(sch.names)
        sets = (f"; output sets {', '.join(unknown)} have unknown parameters (`sae annotate FILE --from "
                "ORIGINAL` puts the metadata back)") if unknown else ""
        warnings.warn(f"{where}no {METADATA_KEY!r} metadata (written by another tool?); read as trajectory "
                      f"spec {SPEC_VERSION}{sets}", TrajectoryWarning, stacklevel=3)
        return Info(SPEC_VERSION, has_metadata=False, unknown=unknown)
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
    invalid = {name: why for name, params in estimators.items() if (why := parameter_problem(params))}
    for name, why in invalid.items():
        warnings.warn(f"{where}the {METADATA_KEY!r} metadata records invalid parameters for {name!r} ({why}); "
                      "that entry is ignored", TrajectoryWarning, stacklevel=3)
    return Info(version, {k: v for k, v in estimators.items() if k not in invalid}, doc.get("producer"),
                invalid=invalid)


def unrecorded_sets(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The output sets a file without metadata holds, by name: each `advantages_<suffix>` column (the
    unsuffixed `advantages` may be another tool's own data, and its `boundaries` input data of the
    `given` rule, so it is not taken for a set). Their parameters are unknown."""
    return tuple(n for n in names if n.startswith("advantages_") and len(n) > len("advantages_"))


def with_estimators(sch: pa.Schema, estimators: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """`sch` with its metadata recording `estimators` (merged over what it records already); the
    document's other keys and a newer minor spec_version are kept."""
    meta = dict(sch.metadata or {})
    doc: dict[str, Any] = {}
    raw = meta.get(METADATA_KEY.encode())
    if raw is not None:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
    old = doc.get("estimators")
    old = old if isinstance(old, dict) else {}
    meta.update(metadata_bytes({**old, **estimators}, base=doc))
    return sch.with_metadata(meta)


__all__ = ["Info", "METADATA_KEY", "READABLE_MAJOR", "SPEC_VERSION", "metadata_bytes", "parameter_problem",
           "read_info", "unrecorded_sets", "with_estimators"]
