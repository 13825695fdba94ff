"""Files with other column names: `--column STANDARD=THEIRS` and the recognition of veRL's and
OpenRLHF's names (`sae_core.trajectory.mapping`), on validate, inspect, report and recompute.

The same rollouts are written twice: once with the standard's names, once with a framework's. Every
command must give the same results on both (the mapped file read under the standard's names), say
what it read as what, leave the input's bytes alone, and refuse clashes with a message naming the flag.
"""

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core import trajectory as tj
from sae_core.tools.cli import main
from sae_core.tools.recompute import _RayTask, plan_runs, recompute

pytestmark = pytest.mark.filterwarnings("ignore::sae_core.trajectory.TrajectoryWarning")  # said by the CLI

# (standard name, veRL's name) in file order; values, response_mask keep their names in veRL
VERL = {"trajectory_id": "trajectory_id", "response_ids": "responses", "response_mask": "response_mask",
        "logprobs": "old_log_probs", "values": "values", "rewards": "token_level_rewards", "group_id": "uid"}
FLAGS = ["--column", "response_ids=responses", "--column", "logprobs=old_log_probs",
         "--column", "rewards=token_level_rewards", "--column", "group_id=uid"]
LISTS = {"response_ids": pa.large_list(pa.int32()), "response_mask": pa.large_list(pa.int64()),
         "logprobs": pa.large_list(pa.float32()), "values": pa.large_list(pa.float32()),
         "rewards": pa.large_list(pa.float32())}


def rollouts(n=6, seed=0):
    """{standard name: column} of n responses of different lengths, some masked tokens."""
    rng = np.random.default_rng(seed)
    lengths = [3 + (i * 5) % 7 for i in range(n)]
    cols = {"trajectory_id": [f"r{i}" for i in range(n)], "response_ids": [], "response_mask": [],
            "logprobs": [], "values": [], "rewards": [], "group_id": [f"p{i // 2}" for i in range(n)]}
    for L in lengths:
        mask = (rng.random(L) < 0.8).astype(int)
        mask[0] = 1
        cols["response_ids"].append(rng.integers(0, 50, L).tolist())
        cols["response_mask"].append(mask.tolist())
        cols["logprobs"].append((-rng.exponential(1.0, L) - 1e-3).tolist())
        cols["values"].append(rng.uniform(-1, 1, L).tolist())
        r = np.zeros(L)
        r[np.flatnonzero(mask)[-1]] = float(rng.integers(0, 2))
        cols["rewards"].append(r.tolist())
    return cols


def as_table(cols, names=None):
    names = names or {}
    return pa.table({names.get(k, k): pa.array(v, LISTS.get(k)) for k, v in cols.items()})


def write(path, cols, names=None):
    """A file as a framework's dump would be: plain pyarrow, no sae_rl metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(as_table(cols, names), path)
    return path


@pytest.fixture
def files(tmp_path):
    cols = rollouts()
    return write(tmp_path / "std" / "roll.parquet", cols), write(tmp_path / "verl" / "roll.parquet", cols, VERL)


def same(column, rows):
    """Whether a list column holds `rows` (float32-rounded)."""
    flat = np.array([x for r in rows for x in r], np.float32)
    return column.to_pylist() == [list(map(float, np.array(r, np.float32))) for r in rows] and flat.size > 0


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sae(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


# ----------------------------------------------------------------------------------------------
# the error and its hint


def test_the_missing_column_error_names_the_alias_and_the_flag(files, capsys):
    _, verl = files
    code, out, err = sae(capsys, "validate", verl, "--estimator", "sae", "--no-column-aliases")
    assert code == 1 and out == ""
    assert (f"{verl}: column 'logprobs': missing: the estimator needs it; the file has 'old_log_probs' "
            "(veRL: the actor's log-probs, recomputed before the update): pass --column logprobs=old_log_probs"
            ) in err
    line = next(e for e in err if "column 'rewards'" in e)
    assert line.endswith("pass --column rewards=token_level_rewards")
    line = next(e for e in err if "column 'response_ids'" in e)
    assert line.endswith("pass --column response_ids=responses")
    # the library's readers give the same hint (they recognise nothing unless asked)
    with pytest.raises(tj.TrajectoryError, match="pass --column logprobs=old_log_probs"):
        tj.validate_file(verl, estimator="sae")


def test_a_missing_column_without_an_alias_gets_the_generic_flag(tmp_path, capsys):
    cols = rollouts()
    del cols["logprobs"]
    path = write(tmp_path / "x.parquet", cols)
    code, _, err = sae(capsys, "validate", path, "--estimator", "sae")
    assert code == 1
    assert any(e.endswith("column 'logprobs': missing: the estimator needs it; if the file names it "
                          "otherwise, pass --column logprobs=THEIRS") for e in err), err


def test_hints_for_names_that_are_not_aliases(tmp_path, capsys):
    """token_level_scores is never read as rewards unasked; veRL's uid is no trajectory id."""
    cols = rollouts()
    del cols["trajectory_id"]
    path = write(tmp_path / "s.parquet", cols, {**VERL, "rewards": "token_level_scores"})
    code, _, err = sae(capsys, "validate", path)
    assert code == 1
    assert any("column 'rewards': missing" in e and "pass --column rewards=token_level_scores" in e for e in err)
    assert any("column 'trajectory_id': missing" in e and "veRL's 'uid' names the prompt" in e for e in err)
    # asked for, they are read: uid repeats within a group, and the problem names the file's column
    code, _, err = sae(capsys, "validate", path, "--column", "rewards=token_level_scores",
                       "--column", "trajectory_id=uid")
    assert code == 1
    assert f"{path}: column 'uid' (read as trajectory_id), row 1: duplicate of row 0 ('p0')" in err, err


def test_problems_name_the_files_column(files, capsys):
    _, verl = files
    cols = rollouts()
    cols["logprobs"][2][0] = 0.5
    bad = write(verl.parent / "bad.parquet", cols, VERL)
    code, _, err = sae(capsys, "validate", bad)
    assert code == 1
    assert f"{bad}: column 'old_log_probs' (read as logprobs), row 2: token 0 is 0.5 (a valid token); " \
           "a log-probability is at most 0" in err


# ----------------------------------------------------------------------------------------------
# validate


@pytest.mark.parametrize("how", ["flags", "recognised"])
def test_validate(files, capsys, how):
    std, verl = files
    before = digest(verl)
    code, out, err = sae(capsys, "validate", std, "--estimator", "sae")
    assert code == 0
    expected = out.strip().replace(str(std), str(verl))
    extra = FLAGS + ["--no-column-aliases"] if how == "flags" else []
    code, out, err = sae(capsys, "validate", verl, "--estimator", "sae", *extra)
    assert code == 0
    assert out.strip() == (expected + "; columns read as response_ids=responses, logprobs=old_log_probs, "
                           "rewards=token_level_rewards, group_id=uid")
    said = [e for e in err if "column names as the standard's" in e]
    if how == "flags":
        assert said == []
    else:
        assert said == ["warning: reading veRL column names as the standard's, as --column response_ids=responses "
                        "--column logprobs=old_log_probs --column rewards=token_level_rewards --column group_id=uid "
                        "would; --no-column-aliases reads the file's own names only"]
    code, out, _ = sae(capsys, "validate", verl, "--json")
    assert code == 0 and json.loads(out)[0]["columns_read_as"] == {
        "response_ids": "responses", "logprobs": "old_log_probs", "rewards": "token_level_rewards", "group_id": "uid"}
    assert digest(verl) == before


# ----------------------------------------------------------------------------------------------
# inspect and report


@pytest.mark.parametrize("how", ["flags", "recognised"])
def test_inspect_equals_the_standard_file(files, capsys, how):
    std, verl = files
    before = digest(verl)
    code, out, _ = sae(capsys, "inspect", std, "--json")
    assert code == 0
    want = json.loads(out)
    extra = FLAGS + ["--no-column-aliases"] if how == "flags" else []
    code, out, _ = sae(capsys, "inspect", verl, "--json", *extra)
    assert code == 0
    got = json.loads(out)
    assert got.pop("columns_read_as") == {"response_ids": "responses", "logprobs": "old_log_probs",
                                 "rewards": "token_level_rewards", "group_id": "uid"}
    assert want.pop("columns_read_as") == {}
    assert got.pop("path") == str(verl) and want.pop("path") == str(std)
    assert got == want and got["has_logprobs"] and got["thresholds"]  # logprob boundaries were counted
    code, out, _ = sae(capsys, "inspect", verl, *extra)
    assert "  columns read as response_ids=responses, logprobs=old_log_probs, rewards=token_level_rewards, " \
           "group_id=uid" in out.splitlines()
    assert digest(verl) == before


def test_report_equals_the_standard_files(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    std, verl = files
    before = digest(verl)
    pages = []
    for path, extra in ((std, []), (verl, FLAGS), (verl, [])):
        out = tmp_path / f"page{len(pages)}.html"
        code, _, err = sae(capsys, "report", path, "--out", out, *extra)
        assert code == 0, err
        pages.append(out.read_text().replace(str(path), "FILE"))
    said = "  columns read as response_ids=responses, logprobs=old_log_probs, rewards=token_level_rewards, " \
           "group_id=uid\n"
    assert said in pages[1] and said in pages[2] and "columns read as" not in pages[0]
    assert pages[1].replace(said, "") == pages[0] and pages[2] == pages[1]
    assert digest(verl) == before


# ----------------------------------------------------------------------------------------------
# recompute


def outputs(path):
    t = pq.read_table(path)
    return t.replace_schema_metadata(None), json.loads(t.schema.metadata[b"sae_rl"])["estimators"]


@pytest.mark.parametrize("how", ["flags", "recognised"])
def test_recompute_writes_the_standard_file_that_the_standard_input_gives(files, tmp_path, capsys, how):
    std, verl = files
    before = digest(verl)
    args = ["--estimator", "sae:threshold=0.3", "--estimator", "gae", "--backend", "reference"]
    code, _, err = sae(capsys, "recompute", std, tmp_path / "a.parquet", *args)
    assert code == 0, err
    extra = FLAGS + ["--no-column-aliases"] if how == "flags" else []
    code, out, err = sae(capsys, "recompute", verl, tmp_path / "b.parquet", *args, *extra)
    assert code == 0, err
    a, a_sets = outputs(tmp_path / "a.parquet")
    b, b_sets = outputs(tmp_path / "b.parquet")
    assert b.schema.names == a.schema.names  # the standard's names, in the input's order, outputs after
    assert "old_log_probs" not in b.schema.names and "logprobs" in b.schema.names
    assert b.equals(a) and b_sets == a_sets
    assert digest(verl) == before
    code, out, _ = sae(capsys, "validate", tmp_path / "b.parquet", "--no-column-aliases")  # a standard file
    assert code == 0 and "outputs advantages_gae=gae, advantages_sae=sae" in out


def test_recompute_without_the_mapping_fails_with_the_hint(files, tmp_path, capsys):
    _, verl = files
    code, out, err = sae(capsys, "recompute", verl, tmp_path / "b.parquet", "--no-column-aliases")
    assert code == 1 and not (tmp_path / "b.parquet").exists()
    assert "pass --column logprobs=old_log_probs" in out + "\n".join(err)


def test_a_resumed_job_reads_the_skipped_shards_ids_through_the_mapping(tmp_path, capsys):
    """A skipped shard's ids are read again (for duplicates across shards): under the same map."""
    cols = rollouts()
    names = {**VERL, "trajectory_id": "request_id"}
    write(tmp_path / "in" / "a.parquet", cols, names)
    flags = ["--column", "trajectory_id=request_id", "--backend", "reference", "--estimator", "gae"]
    code, _, err = sae(capsys, "recompute", tmp_path / "in", tmp_path / "out", *flags)
    assert code == 0, err
    write(tmp_path / "in" / "b.parquet", rollouts(seed=1), names)  # the same ids r0..r5
    code, out, err = sae(capsys, "recompute", tmp_path / "in", tmp_path / "out", *flags)
    assert code == 1
    assert "a.parquet -> " in out and "skipped" in out
    assert any("b.parquet: FAILED: column 'request_id' (read as trajectory_id), row 0: duplicate of row 0 of"
               in e for e in err), err


def test_a_resumed_job_computes_again_what_it_read_under_other_columns(tmp_path, capsys):
    """The output records the columns read under other names: another choice is a stale output."""
    cols = rollouts()
    other = [[x - 1.0 for x in row] for row in cols["logprobs"]]
    t = as_table(cols, {**VERL, "logprobs": "rollout_log_probs"}).append_column(
        "old_log_probs", pa.array(other, LISTS["logprobs"]))
    (tmp_path / "in").mkdir()
    pq.write_table(t, tmp_path / "in" / "a.parquet")
    flags = ["--backend", "reference", "--estimator", "sae:threshold=0.3"]
    out = tmp_path / "out" / "a.parquet"
    code, _, err = sae(capsys, "recompute", tmp_path / "in", tmp_path / "out", *flags)
    assert code == 0, err
    first = pq.read_table(out)
    assert same(first.column("logprobs"), cols["logprobs"])  # rollout_log_probs, recognised
    code, text, _ = sae(capsys, "recompute", tmp_path / "in", tmp_path / "out", *flags)
    assert code == 0 and "skipped, complete output found" in text
    code, text, err = sae(capsys, "recompute", tmp_path / "in", tmp_path / "out", *flags,
                          "--column", "logprobs=old_log_probs")
    assert code == 0, err
    assert ("replaced a stale output: it was written reading other columns: logprobs=rollout_log_probs then; "
            "logprobs=old_log_probs now") in text
    second = pq.read_table(out)
    assert same(second.column("logprobs"), other) and "rollout_log_probs" in second.column_names
    assert not second.column("advantages").equals(first.column("advantages"))


def test_the_ray_task_carries_the_mapping(files, tmp_path):
    """The Ray engine's per-shard function (pickled to the workers) reads with the job's map."""
    std, verl = files
    runs = plan_runs(["gae"])
    task = pickle.loads(pickle.dumps(_RayTask(runs, 1024, False, tj.ColumnMap.parse(FLAGS[1::2], aliases=False))))
    item = {"index": 0, "src": str(verl), "dst": str(tmp_path / "b.parquet"), "replace": False, "note": ""}
    row = task(item)
    assert row["status"] == "written", row
    recompute(std, tmp_path / "a.parquet", runs, backend="numba")
    assert outputs(tmp_path / "b.parquet")[0].equals(outputs(tmp_path / "a.parquet")[0])


# ----------------------------------------------------------------------------------------------
# clashes and bad flags


@pytest.mark.parametrize("command", ["validate", "inspect", "report", "recompute"])
def test_a_mapped_column_the_file_lacks(files, tmp_path, capsys, command):
    _, verl = files
    tail = {"report": ["--out", tmp_path / "r.html"], "recompute": [tmp_path / "o.parquet"]}.get(command, [])
    code, out, err = sae(capsys, command, verl, *tail, "--column", "logprobs=old_logprobs")
    assert code == 1
    text = out + "\n".join(err)
    assert "--column logprobs=old_logprobs: the file has no column 'old_logprobs' (its columns: trajectory_id, " \
           "responses, response_mask, old_log_probs," in text
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "r.html").exists()


def test_a_mapped_column_the_file_also_has(tmp_path, capsys):
    cols = rollouts()
    t = as_table(cols).append_column("old_log_probs", pa.array(cols["logprobs"], LISTS["logprobs"]))
    pq.write_table(t, tmp_path / "both.parquet")
    code, _, err = sae(capsys, "validate", tmp_path / "both.parquet", "--column", "logprobs=old_log_probs")
    assert code == 1
    assert (f"{tmp_path / 'both.parquet'}: --column logprobs=old_log_probs: the file has a column "
                       "'logprobs' too, and two columns cannot both be read as logprobs; drop this --column to "
                       "read the file's own logprobs") in err
    # recognition never reads an alias over the file's own column
    code, out, err = sae(capsys, "validate", tmp_path / "both.parquet")
    assert code == 0 and "columns read as" not in out and not any("column names" in e for e in err)


@pytest.mark.parametrize("flags, message", [
    (["logprobs=x", "values=x"], "--column logprobs=x and --column values=x: the file's column 'x' would be read "
                                 "as two standard columns"),
    (["logprobs=x", "logprobs=y"], "--column logprobs=x: logprobs is mapped twice"),
    (["log_probs=x"], "--column log_probs=x: 'log_probs' is not a column of the trajectory standard"),
    (["logprobs"], "--column logprobs: expected STANDARD=THEIRS"),
    (["logprobs="], "--column logprobs=: give the file's name for logprobs"),
])
@pytest.mark.parametrize("command", ["validate", "inspect", "report", "recompute"])
def test_bad_flags_are_usage_errors(files, tmp_path, capsys, command, flags, message):
    _, verl = files
    tail = {"report": ["--out", tmp_path / "r.html"], "recompute": [tmp_path / "o.parquet"]}.get(command, [])
    argv = [a for f in flags for a in ("--column", f)]
    code, out, err = sae(capsys, command, verl, *tail, *argv)
    assert code == 2 and out == ""
    assert err[0].startswith(f"sae {command}: {message}"), err


def test_a_swap_of_two_standard_names(tmp_path):
    """A file whose per-row reward is named `rewards` and per-token rewards `reward` reads with both pairs."""
    cols = rollouts()
    t = as_table({k: v for k, v in cols.items() if k != "rewards"})
    t = t.append_column("reward", pa.array(cols["rewards"], LISTS["rewards"]))
    t = t.append_column("rewards", pa.array([1.0] * len(cols["trajectory_id"]), pa.float32()))
    pq.write_table(t, tmp_path / "swap.parquet")
    with pytest.raises(tj.TrajectoryError, match="column 'rewards'"):
        tj.validate_file(tmp_path / "swap.parquet")
    got = tj.read_table(tmp_path / "swap.parquet", column_map={"rewards": "reward", "reward": "rewards"})
    assert same(got.column("rewards"), cols["rewards"])
    assert got.column("reward").type == pa.float32()


# ----------------------------------------------------------------------------------------------
# recognition: choices, types, OpenRLHF


def test_the_samplers_log_probs_come_first(tmp_path, capsys):
    """rollout_log_probs (the behaviour policy's own) before old_log_probs, as the adapters' `auto`."""
    cols = rollouts()
    other = [[x - 1.0 for x in row] for row in cols["logprobs"]]
    t = as_table(cols, {"logprobs": "rollout_log_probs"}).append_column(
        "old_log_probs", pa.array(other, LISTS["logprobs"]))
    path = tmp_path / "two.parquet"
    pq.write_table(t, path)
    with pytest.warns(tj.TrajectoryWarning, match="--column logprobs=rollout_log_probs would \\(the file also has "
                                                  "what --column logprobs=old_log_probs would read instead\\)"):
        got = tj.read_table(path, column_map=tj.ColumnMap(aliases=True))
    assert same(got.column("logprobs"), cols["logprobs"])
    assert "old_log_probs" in got.column_names  # the other one stays, under its own name
    got = tj.read_table(path, column_map=tj.ColumnMap.parse(["logprobs=old_log_probs"], aliases=True))
    assert same(got.column("logprobs"), other)
    assert "rollout_log_probs" in got.column_names


def test_an_alias_of_a_type_the_column_does_not_take_is_not_read(tmp_path, capsys):
    """Decoded text named `responses` is not token ids: not recognised, and the hint says why."""
    cols = rollouts()
    t = as_table(cols, VERL).drop(["responses"]).append_column("responses", pa.array(["text"] * 6))
    pq.write_table(t, tmp_path / "text.parquet")
    code, _, err = sae(capsys, "validate", tmp_path / "text.parquet")
    assert code == 1
    assert any("column 'response_ids': missing" in e and "'responses' (veRL: the sampled response token ids, "
               "of type string, which response_ids does not take): pass --column response_ids=responses" in e
               for e in err), err


def test_openrlhf_names(tmp_path, capsys):
    """action_mask, action_log_probs, and a per-response `rewards` (the standard's `reward`)."""
    cols = rollouts()
    del cols["rewards"]
    reward = [float(i % 2) for i in range(6)]
    std = as_table(cols).append_column("reward", pa.array(reward, pa.float32()))
    pq.write_table(std, tmp_path / "std.parquet")
    theirs = as_table(cols, {"response_mask": "action_mask", "logprobs": "action_log_probs"}).append_column(
        "rewards", pa.array(reward, pa.float32()))
    pq.write_table(theirs, tmp_path / "orlhf.parquet")
    before = digest(tmp_path / "orlhf.parquet")
    code, _, err = sae(capsys, "validate", tmp_path / "orlhf.parquet", "--no-column-aliases")
    assert code == 1
    assert any("column 'rewards': has type float32" in e and "OpenRLHF's 'rewards' is one reward per response, "
               "the standard's reward: pass --column reward=rewards" in e for e in err), err
    args = ["--backend", "reference", "--mask-mode", "zero"]
    assert sae(capsys, "recompute", tmp_path / "std.parquet", tmp_path / "a.parquet", *args)[0] == 0
    code, _, err = sae(capsys, "recompute", tmp_path / "orlhf.parquet", tmp_path / "b.parquet", *args)
    assert code == 0, err
    assert any("reading OpenRLHF column names as the standard's, as --column response_mask=action_mask "
               "--column logprobs=action_log_probs --column reward=rewards would" in e for e in err), err
    assert outputs(tmp_path / "b.parquet")[0].equals(outputs(tmp_path / "a.parquet")[0])
    assert digest(tmp_path / "orlhf.parquet") == before


# ----------------------------------------------------------------------------------------------
# the library


def test_renaming_copies_nothing(files):
    _, verl = files
    reader = tj.reader.Reader(verl, tj.ColumnMap(aliases=True))
    assert reader.file_schema.names == list(VERL.values()) and reader.schema.names == list(VERL)
    raw = next(tj.reader.Reader(verl).batches(1024, None))
    got = reader.columns.rename(raw)
    assert got.schema.names == list(VERL)
    for a, b in zip(raw.columns, got.columns):
        assert [x.address if x else None for x in a.buffers()] == [x.address if x else None for x in b.buffers()]
    some = next(reader.batches(1024, ["trajectory_id", "logprobs"]))
    assert some.schema.names == ["trajectory_id", "logprobs"]
    assert some.column("logprobs").equals(raw.column("old_log_probs"))


def test_column_map_values():
    assert tj.ColumnMap.of(None).empty and tj.ColumnMap.of({"logprobs": "x"}).pairs == (("logprobs", "x"),)
    assert tj.ColumnMap.parse([" logprobs = old_log_probs "]).pairs == (("logprobs", "old_log_probs"),)
    assert tj.ColumnMap.parse(None).aliases and not tj.ColumnMap.of({"logprobs": "x"}).aliases
    assert tj.ColumnMap.parse(["advantages_gae=adv"]).pairs == (("advantages_gae", "adv"),)  # outputs too
    with pytest.raises(ValueError, match="not a column of the trajectory standard"):
        tj.ColumnMap.of({"kl": "x"})
    # every alias names a real standard column, each file name once per standard column
    assert all(a.column in tj.COLUMN for a in tj.ALIASES)
    assert len({(a.column, a.name) for a in tj.ALIASES}) == len(tj.ALIASES)


@pytest.mark.parametrize("suffix", [".arrow", ".arrows"])
def test_arrow_ipc_files(tmp_path, suffix):
    """IPC files (file and stream formats) are renamed as they are read, like Parquet."""
    cols = rollouts()
    t = as_table(cols, VERL)
    path = tmp_path / f"roll{suffix}"
    with pa.OSFile(str(path), "wb") as sink:
        with (pa.ipc.new_stream if suffix == ".arrows" else pa.ipc.new_file)(sink, t.schema) as w:
            w.write_table(t, max_chunksize=4)
    got = tj.read_table(path, column_map=tj.ColumnMap.parse(FLAGS[1::2], aliases=False))
    assert got.equals(as_table(cols))
    some = list(tj.iter_batches(path, batch_size=3, columns=["logprobs"], column_map=tj.ColumnMap(aliases=True)))
    assert [b.schema.names for b in some] == [["logprobs"]] * len(some) and sum(b.num_rows for b in some) == 6
