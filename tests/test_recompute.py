"""`sae recompute` and sae_core.tools.recompute: streamed, atomic, resumable, the same on every engine.

Expected outputs come from `trajectory.compute` on the whole table in memory (itself checked
against compute_advantages_ragged and the conformance vectors), never from the job under test.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sae_core import trajectory as tj
from sae_core.tools import recompute as rc
from sae_core.tools.cli import main


def rollouts(n=20, seed=0, max_len=40, prefix="r"):
    """n responses of 0..max_len tokens with logprobs, values, a mask with gaps, a scalar reward."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    return tj.from_ragged(offsets, {
        "response_ids": rng.integers(0, 50, size=total),
        "response_mask": rng.random(total) < 0.9,
        "logprobs": -rng.exponential(1.0, size=total),
        "values": rng.normal(size=total)},
        {"trajectory_id": [f"{prefix}{i}" for i in range(n)], "group_id": [f"g{i // 4}" for i in range(n)],
         "reward": rng.integers(0, 2, size=n).astype(np.float32)})


def expected(table, runs):
    for run in runs:
        table = tj.compute(table, estimator=run.estimator, suffix=run.suffix, backend="reference", **run.params)
    return table


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def assert_same_outputs(got, want):
    assert got.schema.names == want.schema.names
    for name in want.schema.names:
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        if name.startswith(("advantages", "returns")):
            np.testing.assert_allclose(np.concatenate([np.asarray(x, dtype=float) for x in a] or [[]]),
                                       np.concatenate([np.asarray(x, dtype=float) for x in b] or [[]]),
                                       rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            assert a == b, name
    assert tj.read_info(got.schema).estimators == tj.read_info(want.schema).estimators


# ----------------------------------------------------------------------------------------------
# estimator runs


def test_plan_runs_suffixes_and_job_wide_options():
    runs = rc.plan_runs(["gae", "sae", "sae:threshold=0.05", "vapo"], {"lam": 0.9, "threshold": 0.3, "alpha": 0.1})
    assert [r.suffix for r in runs] == ["_gae", "_sae", "_sae_threshold0.05", "_vapo"]
    assert runs[0].params == {"lam": 0.9}  # gae takes no threshold or alpha
    assert runs[1].params == {"lam": 0.9, "threshold": 0.3}
    assert runs[2].params == {"lam": 0.9, "threshold": 0.05}  # its own override wins
    assert runs[3].params == {"alpha": 0.1}  # vapo's lambda comes from the length
    assert rc.plan_runs(["sae"], {})[0].suffix == ""  # one run: unsuffixed columns
    assert rc.plan_runs(["sae:delimiter_ids=[13, 14]"])[0].params == {"delimiter_ids": [13, 14]}


@pytest.mark.parametrize("specs, common, match", [
    ([], {}, "no estimator"),
    (["ppo"], {}, "must be one of"),
    (["sae:threshold"], {}, "expected NAME:key=value"),
    (["gae"], {"lam": 2.0}, "lam"),
    (["sae:threshold=0"], {}, "threshold"),
    (["gae:alpha=0.1"], {}, "alpha"),
    (["sae", "sae:threshold=0.2"], {"threshold": 0.2}, None),
    (["gae", "gae"], {}, "both write advantages_gae"),
])
def test_plan_runs_rejects(specs, common, match):
    if match is None:  # same name twice, told apart by the override: fine
        assert len(rc.plan_runs(specs, common)) == 2
        return
    with pytest.raises(ValueError, match=match):
        rc.plan_runs(specs, common)


def test_a_run_choosing_a_rule_drops_the_job_wide_rule_options():
    runs = rc.plan_runs(["sae", "sae:segment_length=8", "gae"], {"threshold": 0.1, "lam": 0.9})
    assert runs[0].params == {"threshold": 0.1, "lam": 0.9}
    assert runs[1].params == {"segment_length": 8, "lam": 0.9}  # the fixed rule, not a conflict
    assert runs[1].recorded()["boundary"] == "fixed"
    assert runs[2].params == {"lam": 0.9}
    with pytest.raises(ValueError, match="--estimator 'sae': .*select different boundary rules"):
        rc.plan_runs(["sae"], {"threshold": 0.1, "segment_length": 8})
    with pytest.raises(ValueError, match="--estimator 'mc:lam=0.5': estimator 'mc' takes no options"):
        rc.plan_runs(["mc:lam=0.5"])


def test_sae_given_reads_the_boundaries_column(tmp_path):
    """`sae:boundary=given` takes its boundaries from the file: an earlier sae run's give its numbers."""
    table = tj.compute(rollouts(12), estimator="sae", backend="reference")
    src = tj.write_table(table, tmp_path / "in.parquet")
    runs = rc.plan_runs(["sae:boundary=given"])
    assert runs[0].params == {"boundary": "given"}
    assert rc.recompute(src, tmp_path / "out.parquet", runs).ok
    got = tj.read_table(tmp_path / "out.parquet")
    for name in ("advantages", "returns"):
        np.testing.assert_allclose(np.concatenate(got.column(name).to_pylist()),
                                   np.concatenate(table.column(name).to_pylist()), rtol=1e-6, atol=1e-6)
    assert got.column("boundaries").to_pylist() == table.column("boundaries").to_pylist()
    assert tj.read_info(got.schema).estimators["advantages"]["boundary"] == "given"


# ----------------------------------------------------------------------------------------------
# one file


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_one_file_keeps_every_column_and_adds_each_run(tmp_path, suffix):
    src = tj.write_table(rollouts(30), tmp_path / f"in{suffix}")
    before = digest(src)
    runs = rc.plan_runs(["gae", "sae", "sae:threshold=0.5"], {"lam": 0.9})
    result = rc.recompute(src, tmp_path / f"out{suffix}", runs, batch_size=7)
    assert result.ok and [f.status for f in result.files] == ["written"]
    assert result.files[0].rows == 30
    got = tj.read_table(tmp_path / f"out{suffix}")
    assert_same_outputs(got, expected(rollouts(30), runs))
    assert got.schema.names[:7] == rollouts(30).schema.names  # inputs first, as they were
    assert digest(src) == before  # the input is only read


def test_zero_row_file(tmp_path):
    src = tj.write_table(rollouts(0), tmp_path / "in.parquet")
    result = rc.recompute(src, tmp_path / "out.parquet", rc.plan_runs(["sae"]))
    assert result.ok
    got = tj.read_table(tmp_path / "out.parquet")
    assert got.num_rows == 0 and "advantages" in got.schema.names


def test_a_single_file_output_is_refused_when_it_exists(tmp_path):
    src = tj.write_table(rollouts(5), tmp_path / "in.parquet")
    dst = tmp_path / "out.parquet"
    dst.write_bytes(b"precious")
    result = rc.recompute(src, dst, rc.plan_runs(["gae"]))
    assert not result.ok and "--overwrite" in result.files[0].error
    assert dst.read_bytes() == b"precious"
    assert rc.recompute(src, dst, rc.plan_runs(["gae"]), overwrite=True).ok
    assert tj.read_table(dst).num_rows == 5


def test_an_interrupted_file_leaves_no_output(tmp_path, monkeypatch):
    src = tj.write_table(rollouts(40), tmp_path / "in.parquet")
    calls = []
    real = tj.compute

    def interrupted(batch, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch, **kw)

    monkeypatch.setattr(tj, "compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rc.recompute(src, tmp_path / "out" / "o.parquet", rc.plan_runs(["gae"]), batch_size=5)
    assert len(calls) == 3  # two batches were written before the interruption
    assert not (tmp_path / "out" / "o.parquet").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary file either


def test_the_output_may_not_be_the_input(tmp_path):
    src = tj.write_table(rollouts(3), tmp_path / "in.parquet")
    with pytest.raises(ValueError, match="is the input"):
        rc.recompute(src, src, rc.plan_runs(["gae"]))
    with pytest.raises(ValueError, match="inside the input directory"):
        rc.recompute(tmp_path, tmp_path / "out", rc.plan_runs(["gae"]))


# ----------------------------------------------------------------------------------------------
# many shards


def shards(root, n=3):
    names = ["a.parquet", "b.arrow", "sub/c.parquet"][:n]
    for i, name in enumerate(names):
        tj.write_table(rollouts(10 + i, seed=i, prefix=f"s{i}-"), root / name)
    return names


def test_directory_job_mirrors_the_tree(tmp_path):
    names = shards(tmp_path / "in")
    runs = rc.plan_runs(["gae", "sae"])
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs, batch_size=4)
    assert result.ok and [f.status for f in result.files] == ["written"] * 3
    for i, name in enumerate(names):
        assert_same_outputs(tj.read_table(tmp_path / "out" / name),
                            expected(rollouts(10 + i, seed=i, prefix=f"s{i}-"), runs))


def test_glob_job(tmp_path):
    shards(tmp_path / "in")
    result = rc.recompute(str(tmp_path / "in" / "*.parquet"), tmp_path / "out", rc.plan_runs(["mc"]))
    assert [Path(f.dst).relative_to(tmp_path / "out").as_posix() for f in result.files] == ["a.parquet"]
    result = rc.recompute(str(tmp_path / "in" / "**" / "*.parquet"), tmp_path / "out2", rc.plan_runs(["mc"]))
    assert sorted(Path(f.dst).relative_to(tmp_path / "out2").as_posix() for f in result.files) == [
        "a.parquet", "sub/c.parquet"]
    with pytest.raises(ValueError, match="no file matches"):
        rc.recompute(str(tmp_path / "in" / "*.nothing"), tmp_path / "out3", rc.plan_runs(["mc"]))


def test_a_directory_job_resumes(tmp_path):
    names = shards(tmp_path / "in")
    runs = rc.plan_runs(["sae"])
    rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    kept = digest(tmp_path / "out" / names[0])
    (tmp_path / "out" / names[1]).unlink()  # as if the job had stopped before this shard
    (tmp_path / "out" / f".{names[1]}.tmp-1-2").write_bytes(b"half")  # a killed writer's leftover
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    assert [f.status for f in result.files] == ["skipped", "written", "skipped"]
    assert digest(tmp_path / "out" / names[0]) == kept
    # other parameters: the complete outputs are not theirs, and are not replaced without overwrite
    other = rc.plan_runs(["sae:threshold=0.5"])
    result = rc.recompute(tmp_path / "in", tmp_path / "out", other)
    assert [f.status for f in result.files] == ["failed"] * 3 and not result.ok
    assert digest(tmp_path / "out" / names[0]) == kept
    assert rc.recompute(tmp_path / "in", tmp_path / "out", other, overwrite=True).ok


def test_a_bad_shard_is_named_and_the_others_are_written(tmp_path):
    shards(tmp_path / "in")
    bad = rollouts(4).to_pydict()
    bad["values"][2] = [float("nan")] * len(bad["values"][2]) if bad["values"][2] else [float("nan")]
    bad["response_ids"][2] = bad["response_ids"][2] or [1]
    bad["logprobs"][2] = bad["logprobs"][2] or [-1.0]
    bad["response_mask"][2] = [True] * len(bad["response_ids"][2])
    pa_bad = pa.table(bad, schema=rollouts(4).schema)
    import pyarrow.parquet as pq

    pq.write_table(pa_bad, tmp_path / "in" / "bad.parquet")
    result = rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]))
    status = {Path(f.src).name: f for f in result.files}
    assert status["bad.parquet"].status == "failed"
    assert "column 'values', row 2" in status["bad.parquet"].error
    assert all(f.status == "written" for name, f in status.items() if name != "bad.parquet")
    assert not (tmp_path / "out" / "bad.parquet").exists()


@pytest.mark.slow
def test_ray_engine_matches_the_local_engine(tmp_path):
    if os.environ.get("SAE_REQUIRE_FRAMEWORKS"):  # ./dev test installs ray: a missing one fails here
        import ray.data  # noqa: F401
    else:
        pytest.importorskip("ray.data")
    names = shards(tmp_path / "in")
    runs = rc.plan_runs(["gae", "sae"], {"lam": 0.9})
    local = rc.recompute(tmp_path / "in", tmp_path / "local", runs, batch_size=4)
    on_ray = rc.recompute(tmp_path / "in", tmp_path / "ray", runs, batch_size=4, engine="ray")
    assert local.ok and on_ray.ok
    assert [(f.status, f.rows, f.tokens) for f in on_ray.files] == [(f.status, f.rows, f.tokens) for f in local.files]
    for name in names:
        a, b = tj.read_table(tmp_path / "local" / name), tj.read_table(tmp_path / "ray" / name)
        assert a.equals(b) and a.schema.metadata == b.schema.metadata
    # a resumed Ray job skips what the local one wrote
    again = rc.recompute(tmp_path / "in", tmp_path / "local", runs, engine="ray")
    assert [f.status for f in again.files] == ["skipped"] * 3


# ----------------------------------------------------------------------------------------------
# the command line


def cli(capsys, *argv):
    """The exit status, stdout and stderr of `sae recompute ARGV` (argparse's usage errors included)."""
    try:
        code = main(["recompute", *map(str, argv)])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_and_reports(tmp_path, capsys):
    src = tj.write_table(rollouts(12), tmp_path / "in.parquet")
    code, out, err = cli(capsys, src, tmp_path / "out.parquet", "--estimator", "gae", "--estimator", "sae",
                         "--lam", "0.9", "--threshold", "0.1", "--batch-size", "5", "--progress")
    assert code == 0, err
    assert "12 rows" in out and "1 written, 0 skipped, 0 failed" in out
    assert "tokens/s" in err  # the progress bar
    runs = rc.plan_runs(["gae", "sae"], {"lam": 0.9, "threshold": 0.1})
    assert_same_outputs(tj.read_table(tmp_path / "out.parquet"), expected(rollouts(12), runs))
    code, out, err = cli(capsys, src, tmp_path / "out.parquet", "--estimator", "gae")
    assert code == 1 and "exists" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, match", [
    (["--estimator", "ppo"], "must be one of"),
    (["--lam", "1.5"], "lam"),
    (["--batch-size", "0"], "batch-size"),
])
def test_cli_usage_errors_exit_2(tmp_path, capsys, argv, match):
    src = tj.write_table(rollouts(3), tmp_path / "in.parquet")
    code, out, err = cli(capsys, src, tmp_path / "out.parquet", *argv)
    assert code == 2 and match in err
    assert not (tmp_path / "out.parquet").exists()


def test_cli_a_bad_shard_exits_1_naming_it(tmp_path, capsys):
    shards(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.parquet").write_bytes(b"PAR1 not really")
    code, out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--estimator", "gae")
    assert code == 1
    assert "broken.parquet" in err and "not a readable Parquet file" in err and "Traceback" not in err
    assert (tmp_path / "out" / "a.parquet").exists()


def test_cli_rule_flags(tmp_path, capsys):
    src = tj.write_table(rollouts(8), tmp_path / "in.parquet")
    code, out, err = cli(capsys, src, tmp_path / "out.parquet", "--estimator", "sae", "--estimator",
                         "sae:segment_length=4", "--delimiter-ids", "3,5", "--mask-mode", "zero")
    assert code == 0, err
    info = tj.read_info(tj.read_table(tmp_path / "out.parquet").schema).estimators
    assert info["advantages_sae"]["boundary"] == "delimiter"
    assert info["advantages_sae"]["delimiter_ids"] == [3, 5]
    assert info["advantages_sae_segment_length4"]["boundary"] == "fixed"
    assert {p["mask_mode"] for p in info.values()} == {"zero"}
    code, out, err = cli(capsys, src, tmp_path / "x.parquet", "--segment-length", "0")
    assert code == 2 and "segment_length" in err and "Traceback" not in err
