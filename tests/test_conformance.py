"""The conformance vectors in sae_core/schemas/conformance/ (package data): current with the code, and
reproduced by every backend from the parameters their metadata records (the check their README
asks of other implementations); the JSON Schemas beside them current with the code."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import backends
from sae_core import trajectory as tj

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = ROOT / "sae_core" / "schemas"
FILES = sorted((PACKAGE_DATA / "conformance").glob("*.parquet"))


def load_generator():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "schemas" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_case_has_a_file():
    assert {p.stem for p in FILES} == set(load_generator().CASES)


def test_json_schemas_are_current():
    """The shipped JSON Schemas are what the code gives (regenerate with schemas/generate.py)."""
    row = json.loads((PACKAGE_DATA / f"trajectory-{tj.SPEC_VERSION}.schema.json").read_text())
    assert row == tj.row_schema()
    assert list(row["properties"]) == [c.name for c in tj.COLUMNS]
    meta = json.loads((PACKAGE_DATA / f"metadata-{tj.SPEC_VERSION}.schema.json").read_text())
    assert meta == tj.metadata_schema()
    assert not [p for p, _ in load_generator().JSON_SCHEMAS.items() if p.parent != PACKAGE_DATA]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vectors_are_current(path):
    """The files are what the reference backend gives today (regenerate with schemas/generate.py)."""
    assert tj.read_table(path).equals(load_generator().case_table(path.stem))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vectors_reproduce(path, backend):
    table = tj.read_table(path)
    info = tj.read_info(table.schema)
    params = info.estimators["advantages"]
    assert params["estimator"] in path.stem
    inputs = table.drop_columns(["advantages", "returns", "boundaries"])
    out = tj.compute(inputs, backend=backend, **tj.estimator_kwargs(params))
    for name in ("advantages", "returns"):
        got = tj.to_ragged(out, [name]).tokens[name]
        want = tj.to_ragged(table, [name]).tokens[name]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{path.stem} {name} ({backend})")
    got_b = tj.to_ragged(out, ["boundaries"]).tokens["boundaries"]
    want_b = tj.to_ragged(table, ["boundaries"]).tokens["boundaries"]
    np.testing.assert_array_equal(got_b, want_b)
    assert tj.read_info(out.schema).estimators["advantages"] == params


def test_vectors_cover_what_the_readme_promises():
    """Several sae thresholds with different boundary counts, both mask modes, every estimator."""
    stems = {p.stem for p in FILES}
    fractions = {}
    for stem in ("sae_p0.05_skip", "sae_p0.2_skip", "sae_p0.5_skip"):
        b = tj.to_ragged(tj.read_table(PACKAGE_DATA / "conformance" / f"{stem}.parquet"), ["boundaries"])
        fractions[stem] = b.tokens["boundaries"].mean()
    assert 0 < fractions["sae_p0.05_skip"] < fractions["sae_p0.2_skip"] < fractions["sae_p0.5_skip"] < 1
    modes = {tj.read_info(tj.read_table(p).schema).estimators["advantages"]["mask_mode"] for p in FILES}
    assert modes == {"skip", "zero"}
    assert {s.split("_")[0] for s in stems} == {"gae", "mc", "sae", "vapo"}
