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

from helpers import rollouts
from sae_core import trajectory as tj
from sae_core.tools import recompute as rc
from sae_core.tools.cli import main


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
    """`sae:boundary=given` takes its boundaries from the file: an earlier sae run's give its numbers.
    It reads `boundaries`, so even alone it writes suffixed outputs (issue 16: a recompute never
    replaces a column it reads; before, it wrote unsuffixed ones over its own input)."""
    table = tj.compute(rollouts(12), estimator="sae", backend="reference")
    src = tj.write_table(table, tmp_path / "in.parquet")
    runs = rc.plan_runs(["sae:boundary=given"])
    assert runs[0].params == {"boundary": "given"}
    assert runs[0].suffix == "_sae" and "reads boundaries" in runs[0].note
    result = rc.recompute(src, tmp_path / "out.parquet", runs)
    assert result.ok and "reads boundaries" in result.summary()
    got = tj.read_table(tmp_path / "out.parquet")
    for name in ("advantages", "returns"):
        np.testing.assert_allclose(np.concatenate(got.column(f"{name}_sae").to_pylist()),
                                   np.concatenate(table.column(name).to_pylist()), rtol=1e-6, atol=1e-6)
    assert got.column("boundaries").to_pylist() == table.column("boundaries").to_pylist()  # the input, kept
    assert got.column("boundaries_sae").to_pylist() == table.column("boundaries").to_pylist()
    recorded = tj.read_info(got.schema).estimators
    assert recorded["advantages_sae"]["boundary"] == "given"
    assert recorded["advantages"]["boundary"] == "logprob"  # the input's output set, as it was


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


# ----------------------------------------------------------------------------------------------
# resume that cannot be stale (issue 16)


def dead_pid():
    """The PID of a process that has ended (and was collected)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_regenerated_shard_is_recomputed_and_said_so(tmp_path):
    """The issue's case: a shard regenerated with the same number of rows is no longer "complete"."""
    names = shards(tmp_path / "in")
    runs = rc.plan_runs(["gae"])
    assert rc.recompute(tmp_path / "in", tmp_path / "out", runs).ok
    fresh = rollouts(10, seed=99, prefix="s0-")  # same rows and ids, other values
    tj.write_table(fresh, tmp_path / "in" / names[0], overwrite=True)
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    assert [f.status for f in result.files] == ["written", "skipped", "skipped"] and result.ok
    assert "replaced a stale output: the input changed" in result.files[0].line()
    assert_same_outputs(tj.read_table(tmp_path / "out" / names[0]), expected(fresh, runs))
    # a touch alone (same bytes, a new mtime) is a change too: cheap to detect, and never wrong
    os.utime(tmp_path / "in" / names[1], ns=(1, 1))
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    assert [f.status for f in result.files] == ["skipped", "written", "skipped"]
    assert "(mtime)" in result.files[1].note


def test_the_output_records_its_input_fingerprint(tmp_path):
    from sae_core.tools import jobs

    src = tj.write_table(rollouts(6), tmp_path / "in.arrow")
    assert rc.recompute(src, tmp_path / "out.arrow", rc.plan_runs(["mc"])).ok
    recorded = jobs.read_fingerprint(tj.read_schema(tmp_path / "out.arrow").metadata)
    assert recorded == jobs.fingerprint(src) and recorded["size"] == src.stat().st_size
    # the footer hash sees what size and mtime do not: the same bytes count, other data
    pq_src = tj.write_table(rollouts(6), tmp_path / "a.parquet")
    other = tj.write_table(rollouts(6, seed=5), tmp_path / "b.parquet")
    assert jobs.fingerprint(pq_src)["footer_sha256"] != jobs.fingerprint(other)["footer_sha256"]
    # a stream file (no footer), and a file of no known format, still get one
    stream = tj.write_table(rollouts(3), tmp_path / "s.arrows")
    assert len(jobs.fingerprint(stream)["footer_sha256"]) == 64
    (tmp_path / "junk.parquet").write_bytes(b"PAR1")
    assert jobs.fingerprint(tmp_path / "junk.parquet")["size"] == 4


@pytest.mark.parametrize("damage", ["no fingerprint", "rows"])
def test_an_output_of_these_runs_without_a_matching_fingerprint_is_stale(tmp_path, damage):
    names = shards(tmp_path / "in", 1)
    runs = rc.plan_runs(["gae"])
    rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    out = tmp_path / "out" / names[0]
    table = tj.read_table(out)
    if damage == "no fingerprint":  # as an earlier sae-rl wrote it
        meta = {k: v for k, v in table.schema.metadata.items() if k != b"sae_rl.recompute"}
        table = table.replace_schema_metadata(meta)
    else:  # as if the input had had fewer rows: what the metadata says is not what is there
        table = table.slice(0, 3)
    tj.write_table(table, out, overwrite=True)
    assert rc.output_state(tmp_path / "in" / names[0], out, runs)[0] == "stale"
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    assert [f.status for f in result.files] == ["written"] and "stale" in result.files[0].note
    assert_same_outputs(tj.read_table(out), expected(rollouts(10, seed=0, prefix="s0-"), runs))


def test_a_stale_output_whose_new_input_is_bad_is_removed(tmp_path):
    names = shards(tmp_path / "in", 2)
    runs = rc.plan_runs(["gae"])
    rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    bad = rollouts(10, seed=0, prefix="s0-").to_pydict()
    bad["trajectory_id"][3] = bad["trajectory_id"][1]
    import pyarrow.parquet as pq

    pq.write_table(pa.table(bad, schema=rollouts(1).schema), tmp_path / "in" / names[0])
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    assert [f.status for f in result.files] == ["failed", "skipped"]
    assert "duplicate of row 1" in result.files[0].error and "stale output was removed" in result.files[0].error
    assert not (tmp_path / "out" / names[0]).exists()


def test_an_input_that_changes_while_read_gives_no_output(tmp_path, monkeypatch):
    from sae_core.tools import jobs

    src = tj.write_table(rollouts(8), tmp_path / "in.parquet")
    calls = []

    def moving(path):
        calls.append(path)
        fp = jobs.fingerprint(path)
        return {**fp, "mtime_ns": fp["mtime_ns"] + len(calls)}  # a new mtime at every look

    monkeypatch.setattr(rc, "fingerprint", moving)
    result = rc.recompute(src, tmp_path / "out" / "o.parquet", rc.plan_runs(["gae"]))
    assert not result.ok and "changed while it was read (mtime)" in result.files[0].error
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_temporaries_of_dead_jobs_are_removed_and_no_others(tmp_path):
    from sae_core import atomic
    from sae_core.tools import jobs

    names = shards(tmp_path / "in", 2)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    assert jobs.TEMPORARY.match(atomic.temporary_path(out / names[0]).name)  # our naming, as atomic makes it
    dead, alive = dead_pid(), os.getpid()
    stale = out / f".{names[0]}.tmp-{dead}-0123abcd"
    kept = [out / f".{names[0]}.tmp-{alive}-0123abcd",  # a live process's (ours)
            out / f".other.parquet.tmp-{dead}-0123abcd",  # not an output of this job
            out / f".{names[0]}.tmp-{dead}-xyz",  # not our naming
            out / f"{names[0]}.tmp-{dead}-0123abcd"]  # not hidden: not ours
    for p in [stale, *kept]:
        p.write_bytes(b"half")
    result = rc.recompute(tmp_path / "in", out, rc.plan_runs(["gae"]))
    assert result.ok and result.removed == [str(stale)] and "removed 1 temporary file" in result.summary()
    assert not stale.exists() and all(p.exists() for p in kept)


def test_pid_alive():
    from sae_core.tools import jobs

    assert jobs.pid_alive(os.getpid()) and not jobs.pid_alive(dead_pid()) and not jobs.pid_alive(0)


def test_a_second_job_on_the_same_output_touches_nothing(tmp_path, capsys):
    from sae_core.tools import jobs

    names = shards(tmp_path / "in")
    out = tmp_path / "out"
    before = {n: digest(tmp_path / "in" / n) for n in names}
    with jobs.JobLock(jobs.lock_path(out, True), out):  # another job: flock is per open file, so this counts
        with pytest.raises(rc.JobError, match=rf"another job \(PID {os.getpid()}\) is writing here"):
            rc.recompute(tmp_path / "in", out, rc.plan_runs(["gae"]))
        assert [p.name for p in out.iterdir()] == [".sae-recompute.lock"]
        code, _stdout, err = cli(capsys, tmp_path / "in", out, "--estimator", "gae")
        assert code == 1 and "another job" in err and "Traceback" not in err
        assert [p.name for p in out.iterdir()] == [".sae-recompute.lock"]
        # a single-file job locks its file, not the directory: another output there is free
        assert rc.recompute(tmp_path / "in" / names[0], out / "single.parquet", rc.plan_runs(["gae"])).ok
    assert {n: digest(tmp_path / "in" / n) for n in names} == before
    assert rc.recompute(tmp_path / "in", out, rc.plan_runs(["gae"])).ok
    assert not (out / ".sae-recompute.lock").exists()  # released and removed


@pytest.mark.parametrize("flock", [True, False])
def test_a_dead_jobs_lock_is_taken_over(tmp_path, monkeypatch, flock):
    import socket

    from sae_core.tools import jobs

    if not flock:  # as on Windows: the file itself is the lock, and its PID says whether it is stale
        monkeypatch.setattr(jobs, "fcntl", None)
    shards(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".sae-recompute.lock"
    lock.write_text(f'{{"pid": {dead_pid()}, "host": "{socket.gethostname()}"}}')
    assert rc.recompute(tmp_path / "in", out, rc.plan_runs(["gae"])).ok
    assert not lock.exists()
    if not flock:  # a live holder is respected
        lock.write_text(f'{{"pid": {os.getpid()}, "host": "{socket.gethostname()}"}}')
        with pytest.raises(rc.JobError, match="another job"):
            rc.recompute(tmp_path / "in", out, rc.plan_runs(["gae"]))


def test_an_unwritable_output_is_one_clear_error(tmp_path, monkeypatch):
    from sae_core.tools import jobs

    shards(tmp_path / "in", 1)
    real = os.open

    def refuse(path, flags, *a, **kw):
        if str(path).startswith(str(tmp_path / "out")) and flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", str(path))
        return real(path, flags, *a, **kw)

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(jobs.os, "open", refuse)
    with pytest.raises(rc.JobError, match="cannot create the lock file .*: Read-only file system"):
        rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]))
    assert list((tmp_path / "out").iterdir()) == []


def test_a_glob_job_whose_output_is_under_its_root_resumes(tmp_path):
    names = shards(tmp_path / "data")
    pattern = str(tmp_path / "data" / "**" / "*.parquet")
    runs = rc.plan_runs(["gae"])
    first = rc.recompute(pattern, tmp_path / "data" / "out", runs)
    assert first.ok and [f.status for f in first.files] == ["written", "written"]
    again = rc.recompute(pattern, tmp_path / "data" / "out", runs)
    assert again.ok and [f.status for f in again.files] == ["skipped", "skipped"]
    assert sorted(Path(f.src).name for f in again.files) == sorted(n.split("/")[-1] for n in names if "parquet" in n)


def test_a_fifo_never_blocks(tmp_path):
    shards(tmp_path / "in", 1)
    os.mkfifo(tmp_path / "in" / "pipe.parquet")
    result = rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]))
    status = {Path(f.src).name: f for f in result.files}
    assert status["a.parquet"].status == "written" and status["pipe.parquet"].status == "failed"
    assert "not a regular file" in status["pipe.parquet"].error
    with pytest.raises(tj.TrajectoryError, match="not a regular file"):
        rc.recompute(tmp_path / "in" / "pipe.parquet", tmp_path / "o.parquet", rc.plan_runs(["gae"]))


def test_duplicate_ids_across_shards_of_one_job(tmp_path):
    (tmp_path / "in").mkdir()
    tj.write_table(rollouts(5, prefix="x"), tmp_path / "in" / "a.parquet")
    tj.write_table(rollouts(4, seed=1, prefix="y"), tmp_path / "in" / "b.parquet")
    tj.write_table(rollouts(3, seed=2, prefix="x"), tmp_path / "in" / "c.parquet")  # x0..x2 again
    runs = rc.plan_runs(["gae"])
    result = rc.recompute(tmp_path / "in", tmp_path / "out", runs)
    assert [f.status for f in result.files] == ["written", "written", "failed"]
    assert "duplicate" in result.files[2].error and "a.parquet" in result.files[2].error
    assert not (tmp_path / "out" / "c.parquet").exists()
    again = rc.recompute(tmp_path / "in", tmp_path / "out", runs)  # resumed: a's ids still count
    assert [f.status for f in again.files] == ["skipped", "skipped", "failed"]


# ----------------------------------------------------------------------------------------------
# per-shard failures, refusals up front, metadata (issue 16)


def test_bad_shards_fail_one_by_one_and_the_job_goes_on(tmp_path):
    import pyarrow.parquet as pq

    shards(tmp_path / "in", 1)
    good = rollouts(5, prefix="q")
    dup = good.append_column("values", good.column("values"))  # two columns named values
    pq.write_table(dup, tmp_path / "in" / "dup.parquet")
    positive = good.to_pydict()
    positive["logprobs"] = [[abs(x) + 0.5 for x in row] for row in positive["logprobs"]]
    positive["trajectory_id"] = [f"p{i}" for i in range(5)]
    pq.write_table(pa.table(positive, schema=good.schema), tmp_path / "in" / "positive.parquet")
    huge = rollouts(5, prefix="h").to_pydict()
    huge["values"] = [[-3e38] * len(v) for v in huge["values"]]
    huge["rewards"] = [[0.0] * (len(v) - 1) + [3e38] if v else [] for v in huge["values"]]
    huge_schema = rollouts(1).schema.append(pa.field("rewards", pa.large_list(pa.float32())))
    pq.write_table(pa.table(huge, schema=huge_schema), tmp_path / "in" / "huge.parquet")
    result = rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]))
    status = {Path(f.src).name: f for f in result.files}
    assert status["a.parquet"].status == "written" and not result.ok
    assert "column 'values'" in status["dup.parquet"].error and "2 times" in status["dup.parquet"].error
    assert "column 'logprobs'" in status["positive.parquet"].error
    assert "column 'advantages'" in status["huge.parquet"].error and "inf" in status["huge.parquet"].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.parquet"]
    for f in status.values():
        assert "\n" not in f.line()


def test_an_input_column_is_never_replaced(tmp_path):
    """A `boundaries` column no recorded output set produced is the file's data (the `given` rule's
    input): a single gae run, which writes `boundaries`, refuses the shard; recorded outputs are
    replaced as before; several runs write suffixed columns and leave it alone."""
    table = rollouts(6)
    given = pa.array([[bool(i % 3 == 0) for i in range(len(r))] for r in table.column("values").to_pylist()],
                     type=pa.large_list(pa.bool_()))
    src = tj.write_table(table.append_column("boundaries", given), tmp_path / "in.parquet")
    result = rc.recompute(src, tmp_path / "out.parquet", rc.plan_runs(["gae"]))
    assert not result.ok and "column 'boundaries'" in result.files[0].error
    assert "is input data here" in result.files[0].error and not (tmp_path / "out.parquet").exists()
    both = rc.plan_runs(["gae", "sae:boundary=given"])
    assert rc.recompute(src, tmp_path / "out.parquet", both).ok
    got = tj.read_table(tmp_path / "out.parquet")
    assert got.column("boundaries").to_pylist() == given.to_pylist()
    # an earlier run's recorded outputs are replaced, as a recompute always did
    computed = tj.write_table(tj.compute(table, estimator="sae", backend="reference"), tmp_path / "sae.parquet")
    assert rc.recompute(computed, tmp_path / "gae.parquet", rc.plan_runs(["gae"])).ok
    assert tj.read_info(tj.read_schema(tmp_path / "gae.parquet")).estimators["advantages"]["estimator"] == "gae"


def test_a_backend_that_cannot_run_is_refused_before_any_shard(tmp_path, monkeypatch, capsys):
    shards(tmp_path / "in", 1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no GPU here, and no interpreter: triton cannot run
    with pytest.raises(ValueError, match="--backend triton: backend='triton' needs"):
        rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]), backend="triton")
    code, _out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--backend", "triton")
    assert code == 2 and "--backend triton" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_ray_address_fails_fast(tmp_path, capsys):
    import time

    from sae_core.tools.recompute_ray import probe_address

    shards(tmp_path / "in", 1)
    start = time.perf_counter()
    with pytest.raises(rc.JobError, match="--ray-address 127.0.0.1:1: cannot reach the Ray cluster"):
        rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]), engine="ray",
                     ray_address="127.0.0.1:1")
    code, _out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--engine", "ray", "--ray-address",
                         "ray://127.0.0.1:1")
    assert code == 1 and "cannot reach the Ray cluster" in err and "Traceback" not in err
    # unroutable: no answer at all; or (behind a proxy that answers everything) no Ray cluster there
    with pytest.raises(rc.JobError, match="cannot reach|did not finish within 3 s|cannot join"):
        probe_address("10.255.255.1:6379", timeout=0.5, join_timeout=3)
    with pytest.raises(rc.JobError, match="expected HOST:PORT"):
        probe_address("nonsense")
    probe_address("local")  # a new local instance: nothing to check
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "out").exists()


def test_without_an_address_the_one_ray_would_join_is_checked(monkeypatch):
    """`ray.init()` joins $RAY_ADDRESS, else the cluster the last `ray start` recorded (which
    outlives a crashed cluster: ray.init then hangs for minutes)."""
    pytest.importorskip("ray")
    import ray._private.utils

    from sae_core.tools.recompute_ray import probe_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda *a: "127.0.0.1:1")
    with pytest.raises(rc.JobError, match=r"127.0.0.1:1, which the last `ray start` here recorded .*cannot reach"):
        probe_address(None)
    with pytest.raises(rc.JobError, match="last `ray start`"):
        probe_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    with pytest.raises(rc.JobError, match="RAY_ADDRESS=127.0.0.1:2: cannot reach"):
        probe_address(None)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda *a: None)
    probe_address(None)  # nothing recorded: ray.init starts a local instance




def test_a_newer_minor_version_keeps_its_version_and_keys(tmp_path):
    import json

    table = rollouts(4)
    doc = {"spec_version": "1.5", "producer": "future", "estimators": {}, "lineage": {"run": 7}}
    table = table.replace_schema_metadata({b"sae_rl": json.dumps(doc).encode()})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.warns(tj.TrajectoryWarning, match="1.5"):
        assert rc.recompute(tmp_path / "in.parquet", tmp_path / "out.parquet", rc.plan_runs(["gae"])).ok
    got = json.loads(tj.read_schema(tmp_path / "out.parquet").metadata[b"sae_rl"])
    assert got["spec_version"] == "1.5" and got["lineage"] == {"run": 7}
    assert got["estimators"]["advantages"]["estimator"] == "gae"


def test_an_output_of_other_parameters_is_refused_saying_why(tmp_path):
    names = shards(tmp_path / "in", 1)
    rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae"]))
    kept = digest(tmp_path / "out" / names[0])
    result = rc.recompute(tmp_path / "in", tmp_path / "out", rc.plan_runs(["gae:lam=0.5"]))
    assert "exists (an output of other estimator parameters); --overwrite" in result.files[0].error
    assert digest(tmp_path / "out" / names[0]) == kept
