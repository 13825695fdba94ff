"""The trajectory standard (sae_core.trajectory): files, layouts, validation and `compute`.

Expected values are written by hand or built from plain Python lists, never by the code under test.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyarrow import ipc

from sae_core import compute_advantages_ragged
from sae_core import trajectory as tj

FORMATS = {"parquet": ".parquet", "ipc": ".arrow"}


def meta(spec_version="1.0", **estimators):
    return {b"sae_rl": json.dumps({"spec_version": spec_version, "estimators": estimators}).encode()}


def small(n=3, **extra):
    """Rows: 2 tokens, 3 tokens (token 1 masked), 0 tokens, then more rows of 1 token."""
    lengths = [2, 3, 0] + [1] * (n - 3)
    cols = {
        "trajectory_id": [f"t{i}" for i in range(n)],
        "group_id": ["g0", "g0", "g1"] + ["g2"] * (n - 3),
        "response_ids": pa.array([list(range(10 * i, 10 * i + k)) for i, k in enumerate(lengths)],
                                 pa.large_list(pa.int32())),
        "response_mask": pa.array([[1, 1], [1, 0, 1], []] + [[1]] * (n - 3), pa.large_list(pa.int8())),
        "values": pa.array([[0.5, 0.25], [1.0, 2.0, -1.0], []] + [[0.125]] * (n - 3), pa.large_list(pa.float32())),
        "logprobs": pa.array([[-0.1, -3.0], [-2.5, -0.5, -0.25], []] + [[-1.0]] * (n - 3),
                             pa.large_list(pa.float32())),
        "reward": pa.array([1.0, 0.0, 2.0] + [0.5] * (n - 3), pa.float32()),
    }
    cols.update(extra)
    return pa.table(cols).replace_schema_metadata(meta())


def same(a, b):
    """Equal columns and equal schema metadata. (Not Table.equals(check_metadata=True): that also
    compares list child names, which Parquet writes as "element" where Arrow says "item".)"""
    return a.equals(b) and a.schema.metadata == b.schema.metadata


def flat(table, name, dtype=np.float64):
    return np.array([x for row in table.column(name).to_pylist() for x in row], dtype=dtype)


def offsets_of(table):
    return np.concatenate([[0], np.cumsum([len(r) for r in table.column("response_ids").to_pylist()])])


# ----------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_round_trip_keeps_table_and_metadata(tmp_path, fmt):
    t = small(5, finish_reason=["stop", "length", "stop", "abort", "stop"])
    t = t.replace_schema_metadata(meta(advantages_gae={"estimator": "gae", "gamma": 0.9, "lam": 1.0}))
    path = tj.write_table(t, tmp_path / f"x{FORMATS[fmt]}", row_group_rows=2)
    back = tj.read_table(path)
    assert same(back, t)
    assert tj.read_info(back.schema).estimators == {"advantages_gae": {"estimator": "gae", "gamma": 0.9, "lam": 1.0}}
    summary = tj.validate_file(path, batch_size=2)
    assert (summary.rows, summary.tokens) == (5, 2 + 3 + 0 + 1 + 1)
    assert pa.Table.from_batches(list(tj.iter_batches(path, batch_size=2))).equals(t)


def test_reads_an_ipc_stream_file(tmp_path):
    """HF datasets caches Arrow IPC *streams* under .arrow names."""
    t = small(4)
    with open(tmp_path / "cache.arrow", "wb") as fh, ipc.new_stream(fh, t.schema) as w:
        for b in t.to_batches(max_chunksize=3):
            w.write_batch(b)
    assert same(tj.read_table(tmp_path / "cache.arrow"), t)
    assert [b.num_rows for b in tj.iter_batches(tmp_path / "cache.arrow", batch_size=2)] == [2, 1, 1]
    assert tj.validate_file(tmp_path / "cache.arrow").rows == 4


# ----------------------------------------------------------------------------------------------
# slices and zero copy


@pytest.mark.parametrize("how", ["table", "batch"])
def test_to_ragged_of_a_slice(how):
    t = small(5)
    part = t.slice(1, 3) if how == "table" else t.to_batches()[0].slice(1, 3)
    r = tj.to_ragged(part)
    assert r.offsets.tolist() == [0, 3, 3, 4]
    assert r.tokens["values"].tolist() == [1.0, 2.0, -1.0, 0.125]
    assert r.tokens["response_ids"].tolist() == [10, 11, 12, 30]
    assert r.tokens["response_mask"].tolist() == [1, 0, 1, 1]
    assert r.rows["trajectory_id"].tolist() == ["t1", "t2", "t3"]
    assert r.lengths.tolist() == [3, 0, 1]
    padded = tj.to_padded(part, ["values"])
    assert padded["values"].tolist() == [[1.0, 2.0, -1.0], [0, 0, 0], [0.125, 0, 0]]
    assert padded["response_mask"].tolist() == [[True, False, True], [False] * 3, [True, False, False]]


def test_float32_columns_are_views_of_the_arrow_buffer():
    batch = small(5).to_batches()[0].slice(1, 3)
    r = tj.to_ragged(batch, ["values", "response_ids"])
    for name, itemsize in (("values", 4), ("response_ids", 4)):
        child = batch.column(name).values  # the whole child, not just this slice's tokens
        buf = child.buffers()[1]
        start = child.offset + 2  # the slice starts at row 1, after row 0's 2 tokens
        assert r.tokens[name].ctypes.data == buf.address + start * itemsize
        assert np.shares_memory(r.tokens[name], np.frombuffer(buf, dtype=r.tokens[name].dtype))


# ----------------------------------------------------------------------------------------------
# empty responses, empty tables, empty files


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [0, 3])
def test_empty_tables_and_rows(tmp_path, fmt, rows):
    t = small(3).slice(0, rows)
    if rows:  # only empty responses
        t = t.set_column(2, "response_ids", pa.array([[]] * 3, pa.large_list(pa.int32())))
        t = t.drop_columns(["response_mask", "values", "logprobs"]).append_column(
            "values", pa.array([[]] * 3, pa.large_list(pa.float32())))
    path = tj.write_table(t, tmp_path / f"e{FORMATS[fmt]}")
    back = tj.read_table(path)
    assert back.num_rows == rows and same(back, t)
    assert tj.validate_file(path).tokens == 0
    assert sum(b.num_rows for b in tj.iter_batches(path)) == rows
    tj.validate(back)
    r = tj.to_ragged(back)
    assert r.offsets.tolist() == [0] * (rows + 1) and r.tokens["values"].shape == (0,)
    p = tj.to_padded(back)
    assert p["values"].shape == (rows, 0) and p["response_mask"].shape == (rows, 0)
    out = tj.compute(back, estimator="gae", backend="reference")
    assert out.num_rows == rows and out.column("advantages").to_pylist() == [[]] * rows
    assert tj.from_padded({"values": p["values"], "response_ids": p["response_ids"]}, p["response_mask"],
                          {"trajectory_id": [f"t{i}" for i in range(rows)], "reward": [0.0] * rows},
                          ).column("values").to_pylist() == [[]] * rows


def test_from_padded_default_lengths_keep_interior_gaps_and_drop_trailing_masked_tokens():
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    vals = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = np.arange(100, 112).reshape(3, 4)
    t = tj.from_padded({"values": vals, "response_ids": ids}, mask,
                       {"trajectory_id": ["a", "b", "c"], "reward": [1.0, 2.0, 3.0]})
    assert t.column("response_ids").to_pylist() == [[100, 101, 102], [], [108, 109, 110, 111]]
    assert t.column("values").to_pylist() == [[0.0, 1.0, 2.0], [], [8.0, 9.0, 10.0, 11.0]]
    assert t.column("response_mask").to_pylist() == [[True, False, True], [], [True] * 4]


def test_padded_torch_tensors_and_back():
    torch = pytest.importorskip("torch")
    t = small(4)
    p = tj.to_padded(t, ["values", "response_ids"], tensors=True)
    assert isinstance(p["values"], torch.Tensor) and p["values"].dtype == torch.float32
    assert p["response_ids"].dtype == torch.int32 and p["response_mask"].dtype == torch.bool
    assert p["values"].tolist() == [[0.5, 0.25, 0.0], [1.0, 2.0, -1.0], [0.0] * 3, [0.125, 0.0, 0.0]]
    assert p["response_mask"].tolist() == [[True, True, False], [True, False, True], [False] * 3,
                                           [True, False, False]]
    back = tj.from_padded({"values": p["values"], "response_ids": p["response_ids"]}, p["response_mask"],
                          {"trajectory_id": t.column("trajectory_id").to_pylist(),
                           "reward": t.column("reward").to_pylist()}, lengths=[2, 3, 0, 1])
    assert back.column("values").to_pylist() == t.column("values").to_pylist()
    assert back.column("response_mask").to_pylist() == [[True, True], [True, False, True], [], [True]]


# ----------------------------------------------------------------------------------------------
# hypothesis: random tables through files and layouts

OPTIONAL = ("group_id", "step", "prompt_ids", "logprobs", "values", "rewards", "reward", "entropy",
            "finish_reason", "advantages")


@st.composite
def tables(draw):
    B = draw(st.integers(0, 5))
    lengths = draw(st.lists(st.integers(0, 4), min_size=B, max_size=B))
    lst = draw(st.sampled_from([pa.list_, pa.large_list]))
    ft = draw(st.sampled_from([pa.float32(), pa.float64()]))
    it = draw(st.sampled_from([pa.int32(), pa.int64()]))
    mask_t = draw(st.sampled_from([None, pa.bool_(), pa.int8(), pa.int64()]))
    present = draw(st.sets(st.sampled_from(OPTIONAL)))
    if "rewards" not in present:
        present.add("reward")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def tok(lo, hi):  # multiples of 1/8: exact in float32
        return [(rng.integers(lo * 8, hi * 8, size=k) / 8).tolist() for k in lengths]

    int_ids = draw(st.booleans())
    cols = {"trajectory_id": pa.array(list(range(100, 100 + B)), pa.int64()) if int_ids
            else pa.array([f"r{i}" for i in range(B)], pa.string()),
            "response_ids": pa.array([rng.integers(0, 50, size=k).tolist() for k in lengths], lst(it))}
    if mask_t is not None:
        cols["response_mask"] = pa.array([rng.integers(0, 2, size=k).astype(mask_t.to_pandas_dtype()).tolist()
                                          for k in lengths], lst(mask_t))
    for name in ("values", "rewards", "entropy", "advantages"):
        if name in present:
            cols[name] = pa.array(tok(-4, 4) if name != "entropy" else tok(0, 4), lst(ft))
    if "logprobs" in present:
        cols["logprobs"] = pa.array(tok(-6, -1), lst(ft))
    if "reward" in present:
        cols["reward"] = pa.array((rng.integers(-8, 8, size=B) / 4).tolist(), ft)
    if "group_id" in present:
        cols["group_id"] = pa.array([f"g{i // 2}" for i in range(B)], pa.string())
    if "step" in present:
        cols["step"] = pa.array(rng.integers(0, 9, size=B).tolist(), pa.int64())
    if "prompt_ids" in present:
        cols["prompt_ids"] = pa.array([rng.integers(0, 50, size=3).tolist() for _ in range(B)], lst(it))
    if "finish_reason" in present:
        cols["finish_reason"] = pa.array(rng.choice(["stop", "length"], size=B).tolist(), pa.string())
    t = pa.table(cols)
    est = {"advantages": {"estimator": "gae", "gamma": 1.0, "lam": 0.5}} if "advantages" in present else {}
    return t.replace_schema_metadata(meta(**est))


def pylists(table):
    return {name: table.column(name).to_pylist() for name in table.schema.names}


@given(tables(), st.sampled_from(list(FORMATS)))
@settings(max_examples=40)
def test_random_tables_round_trip_through_files(t, fmt):
    with tempfile.TemporaryDirectory() as d:
        path = tj.write_table(t, Path(d) / f"t{FORMATS[fmt]}", row_group_rows=2)
        assert same(tj.read_table(path), t)
        assert tj.validate_file(path, batch_size=2).rows == t.num_rows
        assert sum(b.num_rows for b in tj.iter_batches(path, batch_size=3)) == t.num_rows


@given(tables())
def test_random_tables_round_trip_through_layouts(t):
    info = tj.validate(t)
    r = tj.to_ragged(t)
    back = tj.from_ragged(r.offsets, r.tokens, r.rows, estimators=info.estimators)
    assert pylists(back) == pylists(t)  # 1 == True: an int mask compares equal to its bool cast
    for f in back.schema:  # canonical types; integer trajectory ids stay integers
        if not (f.name == "trajectory_id" and pa.types.is_integer(t.schema.field(f.name).type)):
            assert f.type == tj.COLUMN[f.name].canonical, f.name
    assert tj.read_info(back.schema).estimators == info.estimators

    padded = tj.to_padded(t)
    lengths = [len(x) for x in t.column("response_ids").to_pylist()]
    assert padded["response_ids"].shape == (t.num_rows, max(lengths, default=0))
    tokens = {k: v for k, v in padded.items() if k != "response_mask" or "response_mask" in t.schema.names}
    rows = {n: t.column(n).to_pylist() for n in t.schema.names if n not in padded}
    back = tj.from_padded(tokens, padded["response_mask"], rows, lengths=lengths)
    assert pylists(back) == pylists(t)


# ----------------------------------------------------------------------------------------------
# files from other tools


def check_foreign(path):
    with pytest.warns(tj.TrajectoryWarning, match="no 'sae_rl' metadata"):
        t = tj.read_table(path)
    out = tj.compute(t, estimator="gae", gamma=1.0, lam=1.0, backend="reference")
    # values 0, gamma = lam = 1: advantages are the reward-to-go, reward on the last token
    assert out.column("advantages").to_pylist() == [[1.0, 1.0], [0.0], []]
    return t


def foreign_columns():
    return {"trajectory_id": ["a", "b", "c"], "response_ids": [[1, 2], [3], []],
            "values": [[0.0, 0.0], [0.0], []], "reward": [1.0, 0.0, 5.0]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_pyarrow_files(tmp_path, fmt):
    t = pa.table(foreign_columns())
    assert t.schema.field("values").type == pa.list_(pa.float64())
    assert t.schema.field("response_ids").type == pa.list_(pa.int64())
    path = tmp_path / f"plain{FORMATS[fmt]}"
    if fmt == "parquet":
        pq.write_table(t, path)
    else:
        with ipc.new_file(path, t.schema) as w:
            w.write_table(t)
    assert check_foreign(path).equals(t)
    with pytest.warns(tj.TrajectoryWarning):
        assert tj.validate_file(path).rows == 3


def test_pandas_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    c = foreign_columns()
    df = pd.DataFrame({**c, "response_ids": [np.array(x, dtype=np.int64) for x in c["response_ids"]],
                       "values": [np.array(x) for x in c["values"]],
                       "response_mask": [np.ones(len(x), bool) for x in c["response_ids"]]})
    df.to_parquet(tmp_path / "pd.parquet")
    check_foreign(tmp_path / "pd.parquet")


def test_hf_datasets_parquet_and_cache(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(foreign_columns())
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    check_foreign(tmp_path / "hf.parquet")
    ds.save_to_disk(str(tmp_path / "saved"))
    (cache,) = (tmp_path / "saved").glob("*.arrow")  # an IPC stream
    check_foreign(cache)


# ----------------------------------------------------------------------------------------------
# versions


def write_raw(path, t, metadata):
    pq.write_table(t.replace_schema_metadata(metadata), path)
    return path


@pytest.mark.parametrize("metadata, match", [
    (meta("2.0"), r"version 2\.0 is not readable.*reads versions 1\.x"),
    ({b"sae_rl": b'{"spec_version": "2.0", "estimators": ["a new layout"]}'}, r"version 2\.0 is not readable"),
    ({b"sae_rl": b"{not json"}, "'sae_rl' schema metadata is not valid"),
    ({b"sae_rl": b'{"estimators": {}}'}, "'sae_rl' schema metadata is not valid"),
    ({b"sae_rl": b'{"spec_version": "1.0", "estimators": {"advantages": 3}}'}, "estimators must map"),
])
def test_unreadable_metadata(tmp_path, metadata, match):
    path = write_raw(tmp_path / "v.parquet", small(3), metadata)
    for fn in (tj.read_table, tj.validate_file, lambda p: list(tj.iter_batches(p))):
        with pytest.raises(tj.TrajectoryError, match=match) as exc:
            fn(path)
        assert str(path) in str(exc.value)
    with pytest.raises(tj.TrajectoryError, match=match):
        tj.validate(small(3).replace_schema_metadata(metadata))


def test_newer_minor_version_reads_with_a_warning(tmp_path):
    path = write_raw(tmp_path / "v.parquet", small(3), meta("1.7"))
    with pytest.warns(tj.TrajectoryWarning, match="1.7, newer than 1.0"):
        t = tj.read_table(path)
    assert t.num_rows == 3 and json.loads(t.schema.metadata[b"sae_rl"])["spec_version"] == "1.7"


# ----------------------------------------------------------------------------------------------
# validation: the column and the first bad row


def lists(rows, t=None):
    return pa.array(rows, pa.large_list(t or pa.float32()))


@pytest.mark.parametrize("change, column, row, match", [
    ({"values": lists([[0.5, 0.25], [1.0, 2.0, -1.0], [], [0.1, 0.2], [0.3]])}, "values", 3,
     "2 tokens, but response_ids has 1"),
    ({"values": lists([[0.5, 0.25], [1.0, 2.0, -1.0], [], [0.1], [float("nan")]])}, "values", 4, "token 0 is nan"),
    ({"logprobs": lists([[-0.1, -3.0], [-2.5, -0.5, float("inf")], [], [-1.0], [-1.0]])}, "logprobs", 1,
     "token 2 is inf"),
    ({"rewards": lists([[0.0, 0.0], [0.0, 0.0, 0.0], [], [0.0], [-np.inf]])}, "rewards", 4, "token 0 is -inf"),
    ({"advantages": lists([[0.0, 0.0], [0.0, 0.0, np.nan], [], [0.0], [0.0]])}, "advantages", 1, "token 2 is nan"),
    ({"reward": pa.array([1.0, 0.0, 2.0, np.inf, 0.5], pa.float32())}, "reward", 3, "inf is not finite"),
    ({"response_mask": pa.array([[1, 1], [1, 0, 1], [], [2], [1]], pa.large_list(pa.int8()))}, "response_mask", 3,
     "holds 2"),
    ({"values": lists([[0.5, 0.25], None, [], [0.1], [0.2]])}, "values", 1, "null"),
    ({"response_ids": pa.array([[0, 1], [10, 11, None], [], [30], [40]], pa.large_list(pa.int32()))},
     "response_ids", 1, "null token entry"),
    ({"trajectory_id": ["a", None, "c", "d", "e"]}, "trajectory_id", 1, "null"),
    ({"reward": pa.array([1.0, 0.0, 2.0, None, 0.5], pa.float32())}, "reward", 3, "null"),
    ({"trajectory_id": ["a", "b", "b", "a", "c"]}, "trajectory_id", 2, r"duplicate of row 1 \('b'\)"),
    ({"trajectory_id": pa.array([7, 8, 9, 8, 7], pa.int32())}, "trajectory_id", 3, r"duplicate of row 1 \(8\)$"),
    ({"values": pa.array([["x"] * 2, ["y"] * 3, [], ["z"], ["w"]], pa.list_(pa.string()))}, "values", None,
     "has type list<string>"),
])
def test_validation_names_column_and_first_bad_row(change, column, row, match):
    t = small(5)
    for name, col in change.items():
        col = pa.array(col) if isinstance(col, list) else col
        t = t.set_column(t.schema.get_field_index(name), name, col) if name in t.schema.names else t.append_column(
            name, col)
    with pytest.raises(tj.TrajectoryError, match=match) as exc:
        tj.validate(t)
    (p,) = exc.value.problems
    assert (p.column, p.row) == (column, row)
    assert f"column {column!r}" in str(exc.value) and (row is None or f"row {row}:" in str(exc.value))


def test_non_finite_on_a_masked_token_is_not_an_error():
    t = small(5)  # row 1 token 1 is masked
    for name in ("values", "logprobs", "rewards", "entropy", "advantages"):
        col = lists([[0.5, 0.25], [1.0, np.nan, -1.0], [], [0.1], [0.2]])
        if name == "logprobs":  # issue 16: a log-probability above 0 is refused now
            col = lists([[-0.5, -0.25], [-1.0, np.nan, -1.0], [], [-0.1], [-0.2]])
        u = t.drop_columns([name]) if name in t.schema.names else t
        tj.validate(u.append_column(name, col))


def test_reward_may_be_null_where_rewards_takes_precedence():
    t = small(3).set_column(6, "reward", pa.array([1.0, None, np.nan], pa.float32()))
    tj.validate(t.append_column("rewards", lists([[0, 1], [0, 0, 1], []])))


@pytest.mark.parametrize("drop, kwargs, column", [
    ("response_ids", {}, "response_ids"),
    ("trajectory_id", {}, "trajectory_id"),
    ("logprobs", {"estimator": "sae"}, "logprobs"),
    ("values", {"estimator": "gae"}, "values"),
    (None, {"estimator": "sae", "boundary": "entropy"}, "entropy"),
])
def test_missing_columns(drop, kwargs, column):
    t = small(3).drop_columns([drop]) if drop else small(3)
    with pytest.raises(tj.TrajectoryError, match=f"column '{column}': missing") as exc:
        tj.validate(t, **kwargs)
    assert [p.row for p in exc.value.problems] == [None]


def test_sae_fixed_needs_only_values():
    tj.validate(small(3).drop_columns(["logprobs"]), estimator="sae", boundary="fixed")


def bad_file(path, bad_row, n=20, kind="nan"):
    """n rows of 1 token in row groups / batches of 4; `bad_row` has NaN in values or repeats row 0's id."""
    ids = [f"t{i}" for i in range(n)]
    vals = [[float(i)] for i in range(n)]
    if kind == "nan":
        vals[bad_row] = [float("nan")]
    else:
        ids[bad_row] = "t0"
    t = pa.table({"trajectory_id": ids, "response_ids": lists([[i] for i in range(n)], pa.int32()),
                  "values": lists(vals), "reward": pa.array([1.0] * n, pa.float32())}).replace_schema_metadata(meta())
    with tj.TrajectoryWriter(path, t.schema, row_group_rows=4) as w:  # writers do not validate
        for b in t.to_batches(max_chunksize=4):
            w.write(b)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind, column, message", [("nan", "values", "token 0 is nan"),
                                                   ("dup", "trajectory_id", "duplicate of row 0")])
def test_errors_in_later_batches_count_rows_from_the_start_of_the_file(tmp_path, fmt, kind, column, message):
    path = bad_file(tmp_path / f"bad{FORMATS[fmt]}", 13, kind=kind)
    with pytest.raises(tj.TrajectoryError, match=f"bad.*: column '{column}', row 13: {message}"):
        tj.validate_file(path, batch_size=3)
    with pytest.raises(tj.TrajectoryError, match=f"row 13: {message}"):
        tj.read_table(path)
    # iter_batches checks each batch before yielding it, ids across batches too (issue 16: it used to
    # check ids only within a batch, so a repeat in a later batch passed)
    seen = 0
    with pytest.raises(tj.TrajectoryError, match=f"column '{column}', row 13: {message}"):
        for b in tj.iter_batches(path, batch_size=3):
            seen += b.num_rows
    assert seen == 12


# ----------------------------------------------------------------------------------------------
# unreadable files


def corrupt(tmp_path, how, fmt):
    path = tmp_path / f"{how}{FORMATS[fmt]}"
    good = tj.write_table(small(5), tmp_path / f"good{FORMATS[fmt]}").read_bytes()
    data = {"truncated": good[: len(good) // 2], "tail_cut": good[:-5], "garbage": bytes(range(256)) * 3,
            "empty": b""}.get(how)
    if data is not None:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("how", ["truncated", "tail_cut", "garbage", "empty", "missing"])
def test_unreadable_files_are_trajectory_errors_naming_the_path(tmp_path, fmt, how):
    path = corrupt(tmp_path, how, fmt)
    for fn in (tj.read_table, tj.validate_file, lambda p: list(tj.iter_batches(p))):
        with pytest.raises(tj.TrajectoryError) as exc:
            fn(path)
        assert str(exc.value).startswith(f"{path}: ")


def test_truncated_ipc_stream(tmp_path):
    t = small(5)
    with open(tmp_path / "s.arrow", "wb") as fh, ipc.new_stream(fh, t.schema) as w:
        for b in t.to_batches(max_chunksize=1):
            w.write_batch(b)
    data = (tmp_path / "s.arrow").read_bytes()
    (tmp_path / "cut.arrow").write_bytes(data[: len(data) - 40])
    with pytest.raises(tj.TrajectoryError, match="cut.arrow: not a readable Arrow IPC file"):
        tj.read_table(tmp_path / "cut.arrow")


def test_truncated_ipc_file_says_the_footer_is_missing(tmp_path):
    """A cut IPC file (the ARROW1 format) is reported as such, not re-read as a stream."""
    tj.write_table(small(5), tmp_path / "f.arrow")
    data = (tmp_path / "f.arrow").read_bytes()
    (tmp_path / "cut.arrow").write_bytes(data[: len(data) - 40])
    with pytest.raises(tj.TrajectoryError) as exc:
        tj.read_table(tmp_path / "cut.arrow")
    assert "not a readable Arrow IPC file" in str(exc.value)
    assert "metadata bytes" not in str(exc.value)  # the stream reader's confusing complaint


def test_arrows_suffix_writes_the_stream_format(tmp_path):
    t = small(4)
    tj.write_table(t, tmp_path / "s.arrows")
    with open(tmp_path / "s.arrows", "rb") as fh:
        assert ipc.open_stream(fh).read_all().equals(t)  # a stream reader reads it
    assert same(tj.read_table(tmp_path / "s.arrows"), t)


def test_write_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "r.parquet"
    tj.write_table(small(3), path)
    assert same(tj.read_table(path), small(3))


# ----------------------------------------------------------------------------------------------
# writes: atomic, never clobbering; reads never modify


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_refuses_an_existing_path(tmp_path, fmt):
    path = tj.write_table(small(3), tmp_path / f"x{FORMATS[fmt]}")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tj.write_table(small(5), path)
    assert path.read_bytes() == before
    tj.write_table(small(5), path, overwrite=True)
    assert tj.read_table(path).num_rows == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_exception_inside_the_writer_leaves_nothing(tmp_path, fmt):
    t = small(5)
    x, y = tmp_path / f"x{FORMATS[fmt]}", tmp_path / f"y{FORMATS[fmt]}"
    with pytest.raises(RuntimeError, match="boom"), tj.TrajectoryWriter(x, t.schema) as w:
        w.write(t.to_batches()[0])
        raise RuntimeError("boom")
    with pytest.raises((ValueError, pa.ArrowInvalid)), tj.TrajectoryWriter(y, t.schema) as w:
        w.write(t.drop_columns(["values"]))  # the wrong schema
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_path_that_appears_while_writing_is_not_clobbered(tmp_path, fmt):
    path = tmp_path / f"x{FORMATS[fmt]}"
    t = small(5)
    w = tj.TrajectoryWriter(path, t.schema)
    w.write(t)
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        w.close()
    assert path.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_reading_never_modifies_the_input(tmp_path, fmt):
    path = tj.write_table(small(5), tmp_path / f"x{FORMATS[fmt]}")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    t = tj.read_table(path)
    tj.validate_file(path, batch_size=2)
    list(tj.iter_batches(path, batch_size=2))
    tj.compute(t, estimator="sae", backend="reference")
    tj.to_ragged(t)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ----------------------------------------------------------------------------------------------
# compute


def two_chunks():
    a, b = small(5), small(4)
    b = b.set_column(0, "trajectory_id", pa.array([f"u{i}" for i in range(4)]))
    t = pa.concat_tables([a, b])
    t = t.append_column("entropy", pa.chunked_array([lists([[0.5, 2.0], [3.0, 0.1, 2.5], [], [0.0], [1.9]]),
                                                     lists([[2.2, 0.1], [0.3, 0.4, 0.5], [], [4.0]])]))
    assert t.column("values").num_chunks == 2
    return t


@pytest.mark.parametrize("estimator, opts, extra", [
    ("gae", {"gamma": 0.9, "lam": 0.8}, {}),
    ("mc", {"gamma": 0.5, "mask_mode": "zero"}, {}),
    ("vapo", {"alpha": 0.5, "critic_lam": 1.0}, {}),
    ("sae", {"threshold": 0.2}, {"logprobs": "logprobs"}),
    ("sae", {"segment_length": 2}, {}),
    ("sae", {"quantile": 0.5}, {"logprobs": "logprobs"}),
    ("sae", {"entropy_threshold": 1.0}, {"entropy": "entropy"}),
    ("sae", {"delimiter_ids": [11, 30]}, {"response_ids": "response_ids"}),
])
def test_compute_agrees_with_compute_advantages_ragged(estimator, opts, extra):
    t = two_chunks()
    out = tj.compute(t, estimator=estimator, suffix="_x", backend="reference", **opts)
    # by hand: reward on each row's last token with mask 1 (row 1: token 2; row 2: empty)
    rewards = np.array([0, 1, 0, 0, 0, 0.5, 0.5] + [0, 1, 0, 0, 0, 0.5], dtype=np.float64)
    flat_mask = flat(t, "response_mask").astype(bool)
    offsets = np.concatenate([offsets_of(t.slice(0, 5)), 7 + offsets_of(t.slice(5, 4))[1:]])
    assert offsets.tolist() == [0, 2, 5, 5, 6, 7, 9, 12, 12, 13]
    data = {k: flat(t, col, np.int64 if k == "response_ids" else np.float64) for k, col in extra.items()}
    want = compute_advantages_ragged(rewards, flat(t, "values"), offsets, response_mask=flat_mask,
                                     estimator=estimator, backend="reference", **opts, **data)
    for name, expected in zip(("advantages_x", "returns_x", "boundaries_x"), want):
        assert out.schema.field(name).type == pa.large_list(pa.bool_() if name == "boundaries_x" else pa.float32())
        got = out.column(name).to_pylist()
        assert [len(r) for r in got] == np.diff(offsets).tolist()
        np.testing.assert_allclose(np.concatenate([np.asarray(r, float) for r in got]), expected, rtol=1e-6, atol=1e-6)
    for name in t.schema.names:
        assert out.column(name).equals(t.column(name))
    params = tj.read_info(out.schema).estimators["advantages_x"]
    assert params["estimator"] == estimator and params["mask_mode"] == opts.get("mask_mode", "skip")
    assert all(params[k] == v for k, v in opts.items() if k != "delimiter_ids")


def test_reward_goes_on_the_last_valid_token():
    t = pa.table({"trajectory_id": ["a", "b", "c", "d"],
                  "response_ids": lists([[1, 2, 3, 4], [5, 6], [], [7]], pa.int64()),
                  "response_mask": lists([[True, False, True, False], [False, False], [], [True]], pa.bool_()),
                  "values": lists([[0, 0, 0, 0], [0, 0], [], [0]]),
                  "reward": [2.0, 7.0, 9.0, -1.0]}).replace_schema_metadata(meta())
    assert tj.to_ragged(t, ["rewards"]).tokens["rewards"].tolist() == [0, 0, 2, 0, 0, 0, -1]
    assert tj.to_padded(t, ["rewards"])["rewards"].tolist() == [[0, 0, 2, 0], [0] * 4, [0] * 4, [-1, 0, 0, 0]]
    out = tj.compute(t, estimator="gae", gamma=1.0, lam=1.0, backend="reference")
    # values 0, gamma = lam = 1, skip mode: A_t is the reward still to come; masked tokens 0
    assert out.column("advantages").to_pylist() == [[2, 0, 2, 0], [0, 0], [], [-1]]
    explicit = t.append_column("rewards", lists([[0, 0, 2, 0], [0, 0], [], [-1]]))
    assert tj.compute(explicit, estimator="gae", gamma=1.0, lam=1.0).column("advantages").equals(
        out.column("advantages"))


@pytest.mark.parametrize("mask_mode", ["skip", "zero"])
@pytest.mark.parametrize("estimator", ["gae", "sae"])
def test_compute_ignores_what_masked_tokens_hold(mask_mode, estimator):
    t = small(5).append_column("rewards", lists([[0, 1], [0, 0, 1], [], [0], [1]]))

    def masked_token_holds(x):  # row 1, token 1 has mask 0
        u = t
        for name, row in (("values", [1.0, x, -1.0]), ("logprobs", [-2.5, x, -0.25]), ("rewards", [0, x, 1])):
            col = t.column(name).to_pylist()
            col[1] = row
            u = u.set_column(u.schema.get_field_index(name), name, lists(col))
        return tj.compute(u, estimator=estimator, mask_mode=mask_mode, backend="reference")

    a, b = masked_token_holds(float("nan")), masked_token_holds(0.0)
    assert a.column("advantages").equals(b.column("advantages")) and a.column("returns").equals(b.column("returns"))


def test_compute_replaces_its_outputs_and_keeps_other_sets():
    t = tj.compute(small(5), estimator="gae", suffix="_gae", backend="reference")
    t = tj.compute(t, estimator="sae", threshold=0.1, backend="reference")
    again = tj.compute(t, estimator="mc", suffix="_gae", backend="reference")
    assert again.schema.names == t.schema.names
    est = tj.read_info(again.schema).estimators
    assert (est["advantages_gae"]["estimator"], est["advantages"]["estimator"]) == ("mc", "sae")
    assert again.column("advantages").equals(t.column("advantages"))


def test_compute_reports_missing_columns():
    with pytest.raises(tj.TrajectoryError, match="column 'logprobs': missing: the estimator needs it"):
        tj.compute(small(3).drop_columns(["logprobs"]), estimator="sae")
    with pytest.raises(tj.TrajectoryError, match="column 'entropy': missing"):
        tj.compute(small(3), estimator="sae", entropy_threshold=1.0)


@pytest.mark.parametrize("estimator, opts", [
    ("gae", {"gamma": 0.99, "lam": 0.95, "critic_lam": 1.0}),
    ("vapo", {"alpha": 0.3, "mask_mode": "zero"}),
    ("sae", {"threshold": 0.05}),
    ("sae", {"segment_length": 2, "lam": 0.5}),
    ("sae", {"delimiter_ids": [11]}),
    ("sae", {"quantile": 0.25}),
    ("sae", {"entropy_threshold": 1.5}),
])
def test_recorded_params_reproduce_the_outputs(tmp_path, estimator, opts):
    out = tj.compute(two_chunks(), estimator=estimator, suffix="_x", **opts)
    path = tj.write_table(out, tmp_path / "o.parquet")
    back = tj.read_table(path)
    params = tj.read_info(back.schema).estimators["advantages_x"]
    again = tj.compute(back, suffix="_y", **tj.estimator_kwargs(params))
    for name in ("advantages", "returns", "boundaries"):
        assert again.column(f"{name}_y").equals(again.column(f"{name}_x"))
    assert tj.read_info(again.schema).estimators["advantages_y"] == params


def test_to_ragged_checks_the_lengths_of_columns_the_standard_does_not_name():
    t = small(4).append_column("kl", pa.array([[0.1, 0.2], [0.3], [], [0.4]], pa.large_list(pa.float32())))
    with pytest.raises(tj.TrajectoryError, match="column 'kl', row 1: 1 tokens, but the row has 3"):
        tj.to_ragged(t, ["values", "kl"])
    good = small(4).append_column("kl", pa.array([[0.1, 0.2], [0.3, 0, 0], [], [0.4]], pa.large_list(pa.float32())))
    assert tj.to_ragged(good, ["values", "kl"]).tokens["kl"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0, 0, 0.4])


# ----------------------------------------------------------------------------------------------
# issue 16: one validation everywhere, ids across files, corruption, odd files, metadata kept


def write_in_groups(table, path, rows=2):
    """`table` as written by a producer that does not validate, in row groups / batches of `rows`."""
    with tj.TrajectoryWriter(path, table.schema, row_group_rows=rows) as w:
        for b in table.to_batches(max_chunksize=rows):
            w.write(b)
    return path


def verdicts(path):
    """(column, row) of the first problem each reader reports, or None when it passes."""
    def first(fn):
        try:
            fn()
        except tj.TrajectoryError as exc:
            return exc.problems[0].column, exc.problems[0].row
        return None
    return {"validate_file": first(lambda: tj.validate_file(path, batch_size=2)),
            "read_table": first(lambda: tj.read_table(path)),
            "iter_batches": first(lambda: list(tj.iter_batches(path, batch_size=2))),
            "iter_batches(values)": first(lambda: list(tj.iter_batches(path, batch_size=3, columns=["values"]))),
            "read_table(values)": first(lambda: tj.read_table(path, columns=["values"]))}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change, column, row", [
    ({}, None, None),
    ({"trajectory_id": ["a", "b", "c", "d", "b"]}, "trajectory_id", 4),  # across batches
    ({"trajectory_id": ["a", "b", "c", None, "e"]}, "trajectory_id", 3),
    ({"trajectory_id": pa.array([1, 2, 3, 4, 1], pa.int64())}, "trajectory_id", 4),
    ({"logprobs": lists([[-0.1, -3.0], [-2.5, -0.5, -0.25], [], [-1.0], [0.5]])}, "logprobs", 4),
    ({"logprobs": lists([[-0.1, -3.0], [-2.5, -0.5, -0.25], [], [-1.0], [np.nan]])}, "logprobs", 4),
    ({"rewards": lists([[0.0, 0.0], [0.0, 0.0, 0.0], [], [0.0], [np.inf]])}, "rewards", 4),
    ({"reward": pa.array([1.0, 0.0, 2.0, 1.0, None], pa.float32())}, "reward", 4),
])
def test_every_reader_gives_the_verdict_of_validate_file(tmp_path, fmt, change, column, row):
    t = small(5)
    for name, col in change.items():
        col = pa.array(col) if isinstance(col, list) else col
        t = (t.set_column(t.schema.get_field_index(name), name, col) if name in t.schema.names
             else t.append_column(name, col))
    path = write_in_groups(t, tmp_path / f"x{FORMATS[fmt]}")
    want = None if column is None else (column, row)
    assert verdicts(path) == dict.fromkeys(verdicts(path), want)
    try:
        tj.validate(t)
        assert want is None
    except tj.TrajectoryError as exc:
        assert (exc.problems[0].column, exc.problems[0].row) == want


def test_validate_false_reads_only_the_columns_asked_for(tmp_path):
    path = write_in_groups(small(5, trajectory_id=["a", "b", "c", "d", "a"]), tmp_path / "x.parquet")
    got = list(tj.iter_batches(path, batch_size=2, columns=["values"], validate=False))
    assert [b.schema.names for b in got] == [["values"]] * 3
    assert tj.read_table(path, columns=["values"], validate=False).num_rows == 5
    with pytest.raises(tj.TrajectoryError, match="column 'kl': missing: it was asked for"):
        list(tj.iter_batches(path, columns=["kl"]))
    with pytest.raises(tj.TrajectoryError, match="column 'kl': missing: it was asked for"):
        tj.read_table(path, columns=["values", "kl"], validate=False)


def test_logprobs_above_zero_only_on_valid_tokens():
    t = small(5)
    ok = t.set_column(t.schema.get_field_index("logprobs"), "logprobs",
                      lists([[0.0, -3.0], [-2.5, 7.0, -0.25], [], [-1.0], [-0.0]]))  # row 1 token 1 is masked
    tj.validate(ok)
    bad = t.set_column(t.schema.get_field_index("logprobs"), "logprobs",
                       lists([[-0.1, -3.0], [-2.5, -0.5, 1e-6], [], [-1.0], [-1.0]]))
    with pytest.raises(tj.TrajectoryError, match=r"column 'logprobs', row 1: token 2 is 1e-06 .*at most 0"):
        tj.validate(bad)


def test_ids_across_the_files_of_a_job(tmp_path):
    a = write_in_groups(small(5), tmp_path / "a.parquet")
    b = write_in_groups(small(5, trajectory_id=["u0", "u1", "u2", "t3", "u4"]), tmp_path / "b.arrow")
    c = write_in_groups(small(3, trajectory_id=["v0", "u1", "v2"]), tmp_path / "c.parquet")
    seen = tj.SeenIds()
    assert tj.validate_file(a, seen=seen).rows == 5 and len(seen) == 5
    for fn in (lambda p: tj.validate_file(p, seen=seen), lambda p: tj.read_table(p, seen=seen),
               lambda p: list(tj.iter_batches(p, batch_size=2, seen=seen)),
               lambda p: list(tj.iter_batches(p, columns=["values"], seen=seen))):
        with pytest.raises(tj.TrajectoryError, match=rf"{b}: column 'trajectory_id', row 3: duplicate of row 3 "
                                                     rf"of {a} \('t3'\)$"):
            fn(b)
    assert len(seen) == 5  # a refused file adds nothing: c's u1 is new
    tj.validate_file(c, seen=seen)
    assert len(seen) == 8
    with pytest.raises(tj.TrajectoryError, match=rf"row 0: duplicate of row 0 of {a}"):
        list(tj.iter_batches(a, seen=seen))  # the same file twice in one job
    resumed = tj.SeenIds()  # a resumed job adds the ids of the shards it skips
    resumed.add_file(c)
    with pytest.raises(tj.TrajectoryError, match=rf"{b}: column 'trajectory_id', row 1: duplicate of row 1 of {c}"):
        resumed.add_file(b)
    assert len(resumed) == 3
    without = tj.SeenIds()  # a file read through without problems but not to its end adds nothing
    next(iter(tj.iter_batches(a, batch_size=2, seen=without)))
    assert len(without) == 0
    ints = write_in_groups(small(3, trajectory_id=pa.array([7, 8, 9])), tmp_path / "i.parquet")
    strs = write_in_groups(small(3, trajectory_id=["7", "8", "9"]), tmp_path / "s.parquet")
    mixed = tj.SeenIds()
    tj.validate_file(ints, seen=mixed)
    tj.validate_file(strs, seen=mixed)  # the integer 7 and the string "7" are different ids


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f", "é", ""])),
                         max_size=6), max_size=5), st.booleans())
def test_id_index_finds_the_first_repeat_exactly_even_when_hashes_collide(batches, collide):
    from sae_core.trajectory import ids as ids_module
    saved = ids_module._string_key
    if collide:  # every string gets one of two keys: matches must be confirmed on the values
        ids_module._string_key = lambda s: len(s) % 2
    try:
        index = ids_module.IdIndex()
        history = []
        for batch in batches:
            got = index.first_repeat(pa.array(batch, pa.string()))
            want = None
            for i, v in enumerate(batch):
                if v is None:
                    continue
                earlier = [k for k, h in enumerate(history) if h == v]
                inside = [k for k in range(i) if batch[k] == v]
                if earlier or inside:
                    want = (i, (None, earlier[0]) if earlier else ("batch", inside[0]))
                    break
            if want is None:
                assert got is None
            else:
                row, hit = got
                assert row == want[0] and hit.value == batch[row]
                assert (hit.source, hit.row) == ((None, want[1][1]) if want[1][0] == "batch" else ("x", want[1][1]))
            index.add(pa.array(batch, pa.string()), source="x", first_row=len(history))
            history += batch
    finally:
        ids_module._string_key = saved


@pytest.mark.parametrize("fmt", FORMATS)
def test_repeated_column_names_are_trajectory_errors_everywhere(tmp_path, fmt):
    t = small(3)
    dup = pa.Table.from_arrays([*t.columns, t.column("values")], names=[*t.schema.names, "values"],
                               metadata=t.schema.metadata)
    path = tmp_path / f"dup{FORMATS[fmt]}"
    if fmt == "parquet":
        pq.write_table(dup, path)
    else:
        with ipc.new_file(path, dup.schema) as w:
            w.write_table(dup)
    readers = (tj.read_schema, tj.count_rows, tj.validate_file, tj.read_table, lambda p: list(tj.iter_batches(p)),
               lambda p: list(tj.iter_batches(p, columns=["values"], validate=False)), tj.SeenIds().add_file)
    for fn in readers:
        with pytest.raises(tj.TrajectoryError, match=rf"^{path}: column 'values': appears 2 times"):
            fn(path)
    for fn in (tj.validate, lambda x: tj.compute(x, estimator="gae")):
        with pytest.raises(tj.TrajectoryError, match="column 'values': appears 2 times"):
            fn(dup)


def test_compute_refuses_outputs_that_overflow_float32():
    t = pa.table({"trajectory_id": ["a", "b", "c"], "response_ids": lists([[1], [2, 3], [4, 5]], pa.int32()),
                  "response_mask": lists([[1], [1, 1], [0, 1]], pa.int8()),
                  "values": lists([[0.0], [0.0, 0.0], [0.0, 0.0]]),
                  "rewards": lists([[1.0], [3e38, 3e38], [0.0, 1.0]])}).replace_schema_metadata(meta())
    tj.validate(t)  # the inputs are finite
    with pytest.raises(tj.TrajectoryError, match=r"column 'advantages_gae', row 41: token 0 is inf .*float32"):
        tj.compute(t, estimator="gae", gamma=1.0, lam=1.0, suffix="_gae", first_row=40)
    with pytest.raises(tj.TrajectoryError, match=r"column 'advantages', row 1: token 0 is inf"):
        tj.compute(t, estimator="mc")
    # a masked token may overflow (zero mode makes it a step with r = 0, skip mode ignores it)
    masked = t.set_column(4, "rewards", lists([[1.0], [1.0, 2.0], [3e38, 1.0]]))
    for mode in ("skip", "zero"):
        tj.compute(masked, estimator="mc", mask_mode=mode)


def flip_in_page(path, column, row_group=1):
    """Flip 16 bytes in the middle of `column`'s data in a row group; returns the bytes before."""
    md = pq.ParquetFile(path).metadata
    (k,) = [k for k in range(md.num_columns) if md.row_group(row_group).column(k).path_in_schema.split(".")[0]
            == column]
    cc = md.row_group(row_group).column(k)
    start = cc.dictionary_page_offset or cc.data_page_offset
    data = bytearray(path.read_bytes())
    mid = start + cc.total_compressed_size // 2
    for i in range(16):
        data[mid + i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("column", ["logprobs", "values", "response_ids", "trajectory_id"])
def test_a_flipped_page_is_an_error_naming_file_and_column(tmp_path, column):
    rng = np.random.default_rng(0)
    n = 400
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 40, n))])
    t = tj.from_ragged(offsets, {"response_ids": rng.integers(0, 1000, offsets[-1], dtype=np.int32),
                                 "values": rng.random(offsets[-1]).astype(np.float32),
                                 "logprobs": -rng.random(offsets[-1]).astype(np.float32)},
                       {"trajectory_id": [f"id{i}" for i in range(n)], "reward": np.ones(n, np.float32)})
    path = tj.write_table(t, tmp_path / "x.parquet", row_group_rows=100)
    flip_in_page(path, column, row_group=2)
    before = path.read_bytes()
    for fn in (tj.validate_file, tj.read_table, lambda p: list(tj.iter_batches(p, batch_size=64)),
               lambda p: list(tj.iter_batches(p, columns=[column], validate=False)),
               lambda p: tj.compute(tj.read_table(p), estimator="sae")):
        with pytest.raises(tj.TrajectoryError, match=rf"^{path}: column '{column}': page checksum mismatch in row "
                                                     r"group 2 \(rows 200 to 299\)") as exc:
            fn(path)
        assert exc.value.problems[0].column == column
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_file_that_is_not_regular_is_refused_without_blocking(tmp_path, kind):
    import threading
    path = tmp_path / "x.parquet"
    unknown = tmp_path / "x.data"  # no suffix to go by: file_format must not open it either
    for p in (path, unknown):
        os.mkfifo(p) if kind == "fifo" else p.mkdir()
    errors = []

    def read():
        for p in (path, unknown):
            for fn in (tj.read_schema, tj.validate_file, lambda q: list(tj.iter_batches(q)), tj.read_table):
                try:
                    fn(p)
                except tj.TrajectoryError as exc:
                    errors.append(str(exc))
        assert tj.file_format(unknown) == "parquet"

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive() and kind == "fifo":  # unblock the reader before failing
        for p in (path, unknown):
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert not worker.is_alive(), "a reader blocked"
    word = "a FIFO (named pipe)" if kind == "fifo" else "a directory"
    assert len(errors) == 8 and all(e.endswith(f"is {word}, not a regular file: a trajectory file is a Parquet "
                                               "or Arrow IPC file") for e in errors)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["open", "write", "close", "close and cleanup"])
def test_a_writer_that_fails_anywhere_leaves_no_temporary(tmp_path, monkeypatch, fmt, where):
    import errno
    t = small(5)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fmt == "parquet":
        real = pq.ParquetWriter

        class Failing(real):
            def __init__(self, where_, *args, **kwargs):
                super().__init__(where_, *args, **kwargs)  # the file exists now
                if where == "open":
                    full()

            def write_table(self, *args, **kwargs):
                if where == "write":
                    full()
                super().write_table(*args, **kwargs)

            def close(self):
                super().close()
                if where.startswith("close"):
                    full()
        monkeypatch.setattr(pq, "ParquetWriter", Failing)
    else:
        real_new, real_file = ipc.new_file, pa.OSFile

        class Sink:  # pa.OSFile whose close fails after closing
            def __init__(self, path, mode):
                self.f = real_file(path, mode)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def close(self):
                self.f.close()
                if where.startswith("close") or where == "open":
                    full()

        def new_file(sink, schema):
            if where == "open":
                full()
            w = real_new(sink.f, schema)
            if where == "write":
                w.write = full
            return w
        monkeypatch.setattr(pa, "OSFile", Sink)
        monkeypatch.setattr(ipc, "new_file", new_file)
    with pytest.raises(OSError, match="No space left"):
        with tj.TrajectoryWriter(tmp_path / f"x{FORMATS[fmt]}", t.schema) as w:
            w.write(t)
            if where == "close and cleanup":
                w.close()
    assert list(tmp_path.iterdir()) == []


def test_a_newer_minor_version_keeps_its_version_and_unknown_keys(tmp_path):
    doc = {"spec_version": "1.5", "producer": "sae-rl 9", "estimators": {}, "future": {"k": [1, 2]}, "note": "x"}
    t = small(5).replace_schema_metadata({b"sae_rl": json.dumps(doc).encode(), b"other": b"kept"})
    with pytest.warns(tj.TrajectoryWarning, match="1.5, newer"):
        out = tj.compute(t, estimator="gae", suffix="_gae")
        path = tj.write_table(out, tmp_path / "x.parquet")
        tj.write_table(tj.compute(tj.read_table(path), estimator="mc"), tmp_path / "y.arrow")
        back = tj.read_schema(tmp_path / "y.arrow")
    got = json.loads(back.metadata[b"sae_rl"])
    assert (got["spec_version"], got["future"], got["note"]) == ("1.5", {"k": [1, 2]}, "x")
    assert set(got["estimators"]) == {"advantages_gae", "advantages"} and back.metadata[b"other"] == b"kept"
    ours = json.loads(tj.compute(small(3), estimator="gae").schema.metadata[b"sae_rl"])
    assert ours["spec_version"] == tj.SPEC_VERSION


@pytest.mark.parametrize("params, why", [
    ({"estimator": "sae", "boundary": "logprob", "threshold": 0.0}, r"threshold is a probability in \(0, 1\]"),
    ({"estimator": "sae", "boundary": "logprob", "threshold": -1}, "threshold"),
    ({"estimator": "gae", "lam": 1.5}, "lam"),
    ({"estimator": "sae", "boundary": "fixed", "segment_length": 0}, "segment_length"),
])
def test_invalid_recorded_parameters_are_reported_and_ignored(tmp_path, params, why):
    t = small(3).replace_schema_metadata(meta(advantages=params, advantages_gae={"estimator": "gae", "lam": 0.9}))
    path = tj.write_table(t, tmp_path / "x.parquet")
    with pytest.warns(tj.TrajectoryWarning, match=rf"{path}: .*invalid parameters for 'advantages' \({why}"):
        summary = tj.validate_file(path)  # the data is fine: the file passes, that entry is left out
    assert set(summary.info.estimators) == {"advantages_gae"} and list(summary.info.invalid) == ["advantages"]
    assert summary.line().endswith("outputs advantages_gae=gae, advantages=? (invalid parameters recorded)")


def test_parameters_this_version_does_not_know_are_not_judged():
    future = {"estimator": "sae", "boundary": "a_new_rule", "mask_mode": "new_mode", "new_option": -5}
    info = tj.read_info(small(3).schema.with_metadata(meta(advantages=future)))
    assert info.estimators == {"advantages": future} and info.invalid == {}


def test_null_and_repeated_ids_are_both_listed(tmp_path):
    path = write_in_groups(small(5, trajectory_id=["a", None, "c", "d", "a"]), tmp_path / "x.parquet")
    with pytest.raises(tj.TrajectoryError) as exc:
        tj.validate_file(path, batch_size=2)
    assert [(p.column, p.row, p.message) for p in exc.value.problems] == [
        ("trajectory_id", 1, "null"), ("trajectory_id", 4, "duplicate of row 0 ('a')")]
