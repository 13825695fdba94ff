"""`annotate`: the `sae_rl` metadata put back on a file another tool (pandas here) rewrote, never on
other data; and output sets named `advantages_*` recognised in a file without metadata."""

import json
import os
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core import trajectory as tj
from sae_core.tools.annotate import annotate
from sae_core.tools.cli import main
from sae_core.tools.recompute import output_state, plan_runs, recompute
from sae_core.tools.summary import inspect_file

pd = pytest.importorskip("pandas")

N = 7


def rollouts(n=N):
    return pa.table({"trajectory_id": [f"t{i}" for i in range(n)],
                     "response_ids": pa.array([[1, 2, 3]] * n, pa.large_list(pa.int32())),
                     "response_mask": pa.array([[True, True, False]] * n, pa.large_list(pa.bool_())),
                     "values": pa.array([[0.5, 0.25 + i / 10, 0.0] for i in range(n)], pa.large_list(pa.float32())),
                     "logprobs": pa.array([[-0.5, -2.0, 0.0]] * n, pa.large_list(pa.float32())),
                     "reward": pa.array([float(i % 2) for i in range(n)], pa.float32())})


RUNS = ["gae", "sae"]


@pytest.fixture
def files(tmp_path):
    """(rollouts, the recomputed original, the original rewritten by pandas)."""
    src = tj.write_table(rollouts(), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    recompute(str(src), str(out), plan_runs(RUNS, {}))
    rewritten = tmp_path / "pandas.parquet"
    pd.read_parquet(out).to_parquet(rewritten)
    return src, out, rewritten


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tj.TrajectoryWarning)
        return fn(*args, **kwargs)


def estimators(path):
    return quiet(tj.read_info, tj.read_schema(path)).estimators


def leftovers(directory):
    return [p for p in os.listdir(directory) if ".tmp-" in p]


def test_a_pandas_round_trip_drops_the_metadata_and_the_sets_are_recognised(files):
    _, out, rewritten = files
    assert set(estimators(out)) == {"advantages_gae", "advantages_sae"}
    sch = tj.read_schema(rewritten)
    assert b"sae_rl" not in (sch.metadata or {})  # what pandas does: the reason for annotate
    with pytest.warns(tj.TrajectoryWarning, match="no 'sae_rl' metadata") as caught:
        info = tj.read_info(sch, str(rewritten))
    message = str(caught[0].message)
    assert "advantages_gae, advantages_sae have unknown parameters" in message and "sae annotate" in message
    assert "\n" not in message
    assert info.unknown == ("advantages_gae", "advantages_sae") and info.estimators == {} and not info.has_metadata
    assert [s.estimator for s in quiet(inspect_file, rewritten).sets] == ["?", "?"]


def test_only_suffixed_sets_are_recognised():
    sch = tj.schema(["trajectory_id", "response_ids", "rewards", "values", "advantages", "boundaries",
                     "advantages_x", "returns_x"]).with_metadata({})
    with pytest.warns(tj.TrajectoryWarning):
        assert tj.read_info(sch).unknown == ("advantages_x",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tj.read_info(tj.schema(["trajectory_id", "advantages_x"])).unknown == ()  # metadata: none unknown


def test_annotate_puts_the_metadata_back(files, tmp_path):
    src, out, rewritten = files
    before = {p: p.read_bytes() for p in (out, rewritten)}
    fixed = tmp_path / "fixed.parquet"
    done = annotate(rewritten, out, fixed)
    assert {p: p.read_bytes() for p in (out, rewritten)} == before  # the inputs are never modified
    assert done.path == str(fixed) and done.rows == N and done.compared and not done.dropped and not done.unknown
    assert estimators(fixed) == estimators(out) == done.estimators
    meta = tj.read_schema(fixed).metadata
    assert b"pandas" in meta and b"sae_rl.recompute" not in meta  # FILE's own keys kept; the fingerprint is not ours
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no metadata" warning any more
        assert tj.read_table(fixed).equals(quiet(tj.read_table, rewritten).replace_schema_metadata(meta))
    assert [s.params for s in inspect_file(fixed).sets] == [s.params for s in inspect_file(out).sets]
    assert "advantages_gae=gae, advantages_sae=sae" in done.lines()[0]


def test_recompute_recognises_the_annotated_file(files, tmp_path):
    src, out, rewritten = files
    fixed = annotate(rewritten, out, tmp_path / "fixed.parquet").path
    runs = plan_runs(RUNS, {})
    # as an output of the same runs: recognised (stale: no fingerprint copied, so computed again
    # without --overwrite); the pandas file is "other", which only --overwrite replaces
    assert output_state(src, fixed, runs)[0] == "stale"
    assert quiet(output_state, src, rewritten, runs)[0] == "other"
    # as an input: its output sets are sets again, which a run of the same suffix may replace
    again = plan_runs(["gae:lam=0.9", "sae"], {})
    assert recompute(fixed, str(tmp_path / "again.parquet"), again).ok
    assert estimators(tmp_path / "again.parquet")["advantages_gae"]["lam"] == 0.9
    refused = quiet(recompute, str(rewritten), str(tmp_path / "refused.parquet"), again)
    assert not refused.ok and "is input data here" in refused.files[0].error


def test_in_place_only_with_overwrite_and_an_existing_output_is_refused(files, tmp_path):
    _, out, rewritten = files
    data = rewritten.read_bytes()
    with pytest.raises(FileExistsError, match="--out.*--overwrite"):
        annotate(rewritten, out)
    with pytest.raises(FileExistsError, match="exists"):
        annotate(rewritten, out, out)
    assert rewritten.read_bytes() == data
    done = annotate(rewritten, out, overwrite=True)
    assert done.path == str(rewritten) and estimators(rewritten) == estimators(out)
    assert leftovers(tmp_path) == []


def rewrite(tmp_path, out, change, name="changed.parquet"):
    df = pd.read_parquet(out)
    df = change(df)
    path = tmp_path / name
    df.to_parquet(path)
    return path


@pytest.mark.parametrize("change, match", [
    (lambda df: df.assign(advantages_gae=df.advantages_gae * 2), r"column 'advantages_gae', row 0: token 0 is .* here"),
    (lambda df: df.assign(values=[v + 1 for v in df["values"]]), r"column 'values', row 0"),
    (lambda df: df.assign(reward=1 - df.reward), r"column 'reward', row 0"),
    (lambda df: df.assign(advantages_gae=[a * 2 if i == 5 else a for i, a in enumerate(df.advantages_gae)]),
     r"column 'advantages_gae', row 5"),  # after rows were written: the temporary file goes
    (lambda df: df.iloc[::-1], r"column 'trajectory_id', row 0: 't6' here, 't0' in .*same order"),
    (lambda df: df.iloc[:-2], r"has 5 rows, .* more"),
    (lambda df: pd.concat([df, df.assign(trajectory_id=df.trajectory_id + "x")]), r"has more rows than"),
])
def test_other_data_is_refused_and_nothing_written(files, tmp_path, change, match):
    _, out, _ = files
    changed = rewrite(tmp_path, out, change)
    data = changed.read_bytes()
    with pytest.raises(tj.TrajectoryError, match=match):
        annotate(changed, out, tmp_path / "fixed.parquet", batch_size=2)
    assert not (tmp_path / "fixed.parquet").exists() and leftovers(tmp_path) == []
    assert changed.read_bytes() == data


def test_a_change_on_masked_tokens_only_is_not_a_difference(files, tmp_path):
    _, out, _ = files
    changed = rewrite(tmp_path, out, lambda df: df.assign(values=[[v[0], v[1], 9.0] for v in df["values"]]))
    assert annotate(changed, out, tmp_path / "fixed.parquet").compared


def test_a_set_dropped_by_the_other_tool_is_left_out(files, tmp_path):
    _, out, _ = files
    changed = rewrite(tmp_path, out, lambda df: df.drop(columns=["advantages_sae", "returns_sae", "boundaries_sae"]))
    done = annotate(changed, out, tmp_path / "fixed.arrow")  # to Arrow IPC: the format from the suffix
    assert done.dropped == ("advantages_sae",) and set(estimators(tmp_path / "fixed.arrow")) == {"advantages_gae"}
    assert any("left out" in line for line in done.lines())


def test_from_a_json_document(files, tmp_path, capsys):
    _, out, rewritten = files
    doc = tj.read_schema(out).metadata[b"sae_rl"].decode()
    sources = {"meta.json": doc, "wrapped.json": json.dumps({"sae_rl": json.loads(doc)})}
    assert main(["validate", "--json", str(out)]) == 0
    sources["validate.json"] = capsys.readouterr().out
    assert main(["inspect", "--json", str(out)]) == 0
    sources["inspect.json"] = capsys.readouterr().out
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
        done = annotate(rewritten, tmp_path / name, tmp_path / f"{name}.parquet")
        assert not done.compared and "data not compared" in done.lines()[0]
        assert estimators(tmp_path / f"{name}.parquet") == estimators(out), name


def test_metadata_that_cannot_be_right_is_refused(files, tmp_path):
    _, out, rewritten = files
    bad = json.loads(tj.read_schema(out).metadata[b"sae_rl"])
    bad["estimators"]["advantages_sae"]["threshold"] = -1.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(tj.TrajectoryError, match="'advantages_sae'.*not valid"):
        annotate(rewritten, tmp_path / "bad.json", tmp_path / "x.parquet")
    (tmp_path / "v2.json").write_text(json.dumps({**bad, "spec_version": "2.0"}))
    with pytest.raises(tj.TrajectoryError, match="not readable"):
        annotate(rewritten, tmp_path / "v2.json", tmp_path / "x.parquet")
    with pytest.raises(tj.TrajectoryError, match="no 'sae_rl' metadata either"):
        annotate(rewritten, rewritten, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_recorded_parameters_are_not_replaced(files, tmp_path):
    _, out, _ = files
    table = pq.read_table(out)
    other = dict(estimators(out))
    other["advantages_gae"] = {**other["advantages_gae"], "lam": 0.5}
    pq.write_table(table.replace_schema_metadata(tj.metadata.metadata_bytes(other)), tmp_path / "own.parquet")
    with pytest.raises(tj.TrajectoryError, match="'advantages_gae'.*does not replace recorded parameters"):
        annotate(tmp_path / "own.parquet", out, tmp_path / "x.parquet")
