"""`sae validate FILE...`: one summary line per good file, one line per problem of a bad one, exit
status 1 if any file is bad, and never a traceback."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core import trajectory as tj
from sae_core.tools.cli import main


def table(n=3, nan_row=None):
    vals = [[0.5, 0.25]] * n
    if nan_row is not None:
        vals[nan_row] = [0.5, float("nan")]
    return pa.table({"trajectory_id": [f"t{i}" for i in range(n)],
                     "response_ids": pa.array([[1, 2]] * n, pa.large_list(pa.int32())),
                     "values": pa.array(vals, pa.large_list(pa.float32())),
                     "logprobs": pa.array([[-0.5, -2.0]] * n, pa.large_list(pa.float32())),
                     "reward": pa.array([1.0] * n, pa.float32())})


def good(path, n=3):
    return str(tj.write_table(table(n), path))


def run(capsys, *argv):
    code = main(["validate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_a_good_file(tmp_path, capsys):
    path = good(tmp_path / "a.parquet", 4)
    code, out, err = run(capsys, path)
    assert code == 0 and err == []
    assert out == [f"{path}: ok, 4 trajectories, 8 tokens, spec 1.0, no outputs"]


def test_outputs_are_listed(tmp_path, capsys):
    path = tj.write_table(tj.compute(table(), estimator="gae", suffix="_gae", backend="reference"),
                          tmp_path / "o.arrow")
    code, out, _ = run(capsys, path, "--estimator", "sae", "--boundary", "fixed")
    assert code == 0 and out[0].endswith("outputs advantages_gae=gae")


def test_a_file_from_another_tool_is_good_with_a_warning(tmp_path, capsys):
    pq.write_table(pa.table({"trajectory_id": ["a"], "response_ids": [[1, 2]], "rewards": [[0.0, 1.0]]}),
                   tmp_path / "plain.parquet")
    code, out, err = run(capsys, tmp_path / "plain.parquet")
    assert code == 0 and "(no metadata: assumed)" in out[0]
    assert len(err) == 1 and err[0].startswith("warning: ") and "no 'sae_rl' metadata" in err[0]


def broken(tmp_path, how):
    path = tmp_path / f"{how}.{'arrow' if 'ipc' in how else 'parquet'}"
    data = Path(good(tmp_path / f"src-{how}.{path.suffix[1:]}", 50)).read_bytes()
    if how in ("truncated", "truncated_ipc"):
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(500))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "nan":
        pq.write_table(table(5, nan_row=3).replace_schema_metadata(
            {b"sae_rl": json.dumps({"spec_version": "1.0"}).encode()}), path)
    elif how == "version":
        pq.write_table(table().replace_schema_metadata({b"sae_rl": b'{"spec_version": "2.0"}'}), path)
    return str(path)


BROKEN = {"truncated": "not a readable Parquet file", "truncated_ipc": "not a readable Arrow IPC file",
          "garbage": "not a readable Parquet file", "empty": "not a readable Parquet file", "missing": "no such file",
          "nan": "column 'values', row 3: token 1 is nan", "version": "version 2.0 is not readable"}


@pytest.mark.parametrize("how", BROKEN)
def test_a_bad_file_is_one_line_and_exit_1(tmp_path, capsys, how):
    path = broken(tmp_path, how)
    code, out, err = run(capsys, path)
    assert code == 1 and out == []
    assert len(err) == 1 and err[0].startswith(f"{path}: ") and BROKEN[how] in err[0]


def test_several_files(tmp_path, capsys):
    a, b = good(tmp_path / "a.parquet"), good(tmp_path / "b.arrow", 2)
    bad = broken(tmp_path, "truncated")
    code, out, err = run(capsys, a, bad, b)
    assert code == 1
    assert [line.split(":")[0] for line in out] == [a, b]
    assert len(err) == 1 and err[0].startswith(bad)
    assert run(capsys, a, b)[0] == 0


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2


def patched(tmp_path, name, old, new):
    """A good file with bytes replaced: what a bad disk or a partial copy leaves."""
    data = tj.write_table(table().append_column("zzzzzz", pa.array([1, 2, 3])), tmp_path / f"src-{name}").read_bytes()
    assert old in data
    (tmp_path / name).write_bytes(data.replace(old, new))
    return str(tmp_path / name)


@pytest.mark.parametrize("command", [[str(Path(sys.executable).parent / "sae")],
                                     [sys.executable, "-m", "sae_core.tools.cli"]])
def test_as_a_program_no_traceback_and_no_crash(tmp_path, command):
    """In a subprocess: before the checks, a corrupted IPC offset crashed Arrow (segfault)."""
    a = good(tmp_path / "a.parquet")
    bad = {broken(tmp_path, "truncated_ipc"): "not a readable Arrow IPC file",
           # string offsets [0, 2, 4, 6] of trajectory_id: the third points far past the data
           patched(tmp_path, "offsets.arrow", np.array([0, 2, 4, 6], np.int32).tobytes(),
                   np.array([0, 2, 1 << 30, 6], np.int32).tobytes()): "offset for slot 2 out of bounds",
           patched(tmp_path, "name.arrow", b"zzzzzz", b"\xff\xfe\xfd\xfc\xfb\xfa"): "can't decode",
           patched(tmp_path, "name.parquet", b"zzzzzz", b"\xff\xfe\xfd\xfc\xfb\xfa"): "can't decode"}
    done = subprocess.run([*command, "validate", a, *bad], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{a}: ok, 3 trajectories, 6 tokens, spec 1.0, no outputs"]
    assert "Traceback" not in done.stderr
    err = done.stderr.splitlines()
    assert len(err) == len(bad)
    for line, (path, message) in zip(err, bad.items()):
        assert line.startswith(f"{path}: ") and message in line


# ----------------------------------------------------------------------------------------------
# sae inspect, sae report


def recomputed(tmp_path):
    src = good(tmp_path / "in.parquet", 5)
    assert main(["recompute", src, str(tmp_path / "out.parquet"), "--estimator", "gae", "--estimator", "sae"]) == 0
    return str(tmp_path / "out.parquet")


def test_inspect_prints_a_table_or_json(tmp_path, capsys):
    path = recomputed(tmp_path)
    capsys.readouterr()
    assert main(["inspect", path, "--threshold", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "advantages_gae" in out and "advantages_sae" in out
    assert main(["inspect", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 5 and doc["tokens"] == 10


def test_inspect_and_report_errors(tmp_path, capsys):
    path = recomputed(tmp_path)
    (tmp_path / "bad.parquet").write_bytes(b"nothing")
    assert main(["inspect", str(tmp_path / "bad.parquet")]) == 1
    assert "bad.parquet" in capsys.readouterr().err
    assert main(["inspect", path, "--threshold", "2"]) == 2
    assert main(["inspect", path, "--batch-size", "0"]) == 2
    assert main(["report", path, "--out", str(tmp_path / "r.html"), "--tokenizer", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "sae report:" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_report_writes_a_page(tmp_path, capsys):
    path = recomputed(tmp_path)
    assert main(["report", path, "--out", str(tmp_path / "r.html"), "--responses", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype html>")


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    """`sae inspect FILE | head`: the reader is gone before the table is printed (here its end of
    the pipe is closed at once, so the write surely fails): no BrokenPipeError traceback."""
    path = recomputed(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "sae_core.tools.cli", "inspect", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


# ----------------------------------------------------------------------------------------------
# no traceback for a data or file-system problem (issue 16): one line naming the file, exit 1


def problems(err):
    """The stderr lines that are not warnings."""
    return [line for line in err if not line.startswith("warning: ")]


def one_command(capsys, command, path, tmp_path):
    argv = [command, str(path)] + (["--out", str(tmp_path / "page.html")] if command == "report" else [])
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out.splitlines(), problems(err.splitlines())


def duplicate_column(tmp_path):
    t = table()
    both = pa.Table.from_arrays([*t.columns, t.column("values")], names=[*t.column_names, "values"])
    pq.write_table(both.replace_schema_metadata({b"sae_rl": b'{"spec_version": "1.0"}'}), tmp_path / "dup.parquet")
    return str(tmp_path / "dup.parquet")


def ids_file(tmp_path, name, ids):
    """Rows in row groups of 2, so that a repeat or a null lies in another batch than its first."""
    t = table(len(ids)).set_column(0, "trajectory_id", pa.array(ids, pa.string()))
    pq.write_table(t.replace_schema_metadata({b"sae_rl": b'{"spec_version": "1.0"}'}), tmp_path / name,
                   row_group_size=2)
    return str(tmp_path / name)


def flipped_page(tmp_path, column="logprobs"):
    """A file with 16 bytes flipped inside `column`'s data in its second row group (a bad disk)."""
    path = tmp_path / "flipped.parquet"
    t = table(300)
    t = t.set_column(2, "values", pa.array(np.random.default_rng(0).random((300, 2)).tolist(),
                                           pa.large_list(pa.float32())))
    tj.write_table(t, path, row_group_rows=100)
    md = pq.ParquetFile(path).metadata
    (k,) = [k for k in range(md.num_columns) if md.row_group(1).column(k).path_in_schema.split(".")[0] == column]
    cc = md.row_group(1).column(k)
    data = bytearray(path.read_bytes())
    mid = (cc.dictionary_page_offset or cc.data_page_offset) + cc.total_compressed_size // 2
    for i in range(16):
        data[mid + i] ^= 0x5A
    path.write_bytes(bytes(data))
    return str(path)


def test_inspect_and_report_give_the_verdicts_of_validate(tmp_path, capsys):
    """One validation: before, a KeyError traceback for a repeated column name, inspect and report
    accepted the duplicate and null ids that validate refuses, and a flipped page went unnoticed."""
    cases = {duplicate_column(tmp_path): "column 'values': appears 2 times",
             ids_file(tmp_path, "dupid.parquet", ["a", "b", "c", "a"]): "row 3: duplicate of row 0 ('a')",
             ids_file(tmp_path, "nullid.parquet", ["a", "b", None, "d"]): "column 'trajectory_id', row 2: null",
             flipped_page(tmp_path, "values"): "column 'values': page checksum mismatch in row group 1"}
    for path, message in cases.items():
        verdicts = []
        for command in ("validate", "inspect", "report"):
            code, out, err = one_command(capsys, command, path, tmp_path)
            assert code == 1 and out == [], (command, path)
            assert len(err) == 1 and err[0].startswith(f"{path}: ") and message in err[0], (command, err)
            verdicts.append(err)
        assert verdicts[0] == verdicts[1] == verdicts[2]
        assert not (tmp_path / "page.html").exists()


def test_a_fifo_is_refused_at_once(tmp_path):
    """A FIFO named x.parquet blocked `sae validate` forever (and Ctrl-C with it)."""
    fifo = tmp_path / "x.parquet"
    os.mkfifo(fifo)
    for command in ("validate", "inspect"):
        done = subprocess.run([sys.executable, "-m", "sae_core.tools.cli", command, str(fifo)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.splitlines() == [f"{fifo}: is a FIFO (named pipe), not a regular file: a trajectory "
                                            "file is a Parquet or Arrow IPC file"]


def test_report_out_naming_a_directory(tmp_path, capsys):
    """Before: an IsADirectoryError traceback from os.replace, after the whole file was read."""
    src = good(tmp_path / "a.parquet")
    (tmp_path / "pages").mkdir()
    assert main(["report", src, "--out", str(tmp_path / "pages")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sae report: {tmp_path / 'pages'} is a directory: give the path of the page to write, "
                   f"e.g. {tmp_path / 'pages' / 'report.html'}"]
    assert main(["report", src, "--out", str(tmp_path / "a.parquet" / "r.html")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sae report: cannot write {tmp_path / 'a.parquet' / 'r.html'}: {src} is not a directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "pages"]
    assert list((tmp_path / "pages").iterdir()) == []


class FullDisk:
    """What `open` gives the atomic writer on a full disk: the first bytes go, then ENOSPC."""

    def __init__(self, path, mode, **kw):
        self.fh = open(path, mode, **kw)  # noqa: SIM115 -- closed by __exit__

    def write(self, data):
        self.fh.write(data[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def read_only(path, mode, **kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


@pytest.mark.parametrize("fault, reason", [(FullDisk, "No space left on device"),
                                           (read_only, "Read-only file system")])
def test_report_on_a_full_disk_or_a_read_only_directory(tmp_path, capsys, monkeypatch, fault, reason):
    """Simulated through the `open` of the atomic writer (root ignores chmod): before, a traceback
    naming the temporary file. Now one line naming the page, exit 1, and no temporary file left."""
    from sae_core import atomic

    src = good(tmp_path / "a.parquet")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(atomic, "open", fault, raising=False)
    assert main(["report", src, "--out", str(tmp_path / "out" / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == [f"sae report: {tmp_path / 'out' / 'r.html'}: cannot write the report: {reason}"]
    assert list((tmp_path / "out").iterdir()) == []


def test_a_bug_shows_its_traceback_and_asks_for_a_report(tmp_path, capsys, monkeypatch):
    from sae_core.tools import summary

    def broken(*args, **kwargs):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(summary, "inspect_file", broken)
    assert main(["inspect", good(tmp_path / "a.parquet")]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("Traceback") and "RuntimeError: an invariant broke" in err
    assert err[-1].startswith("sae inspect: internal error (a bug in sae-rl ") and "please report it" in err[-1]


def test_interrupted_is_one_line(tmp_path, capsys, monkeypatch):
    from sae_core import trajectory

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trajectory, "validate_file", interrupted)
    assert main(["validate", good(tmp_path / "a.parquet")]) == 130
    assert capsys.readouterr().err.splitlines() == ["sae validate: interrupted"]


def test_a_file_system_error_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError that the readers do not turn into a TrajectoryError (here EIO) goes like a bad file."""
    from sae_core import trajectory

    def eio(path, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(trajectory, "validate_file", eio)
    a = good(tmp_path / "a.parquet")
    assert main(["validate", a, a]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{a}: Input/output error"] * 2
    monkeypatch.setattr(trajectory, "validate_file", lambda path, **kw: eio("elsewhere"))
    assert main(["validate", a]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{a}: elsewhere: Input/output error"]


def test_a_job_level_error_of_recompute_is_one_line(tmp_path, capsys, monkeypatch):
    """recompute's JobError (an OSError: another job's lock, a read-only output) is exit 1 and its
    own one line; plan errors stay usage errors (exit 2)."""
    from sae_core.tools import recompute as rec

    message = f"{tmp_path / 'out'}: another job (PID 12345) is writing here"

    def locked(*args, **kwargs):
        raise rec.JobError(errno.EBUSY, message)

    monkeypatch.setattr(rec, "recompute", locked)
    src = good(tmp_path / "a.parquet")
    assert main(["recompute", src, str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"sae recompute: {message}"]
    assert main(["recompute", src, str(tmp_path / "out"), "--estimator", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae recompute: --estimator 'nope'") and "Traceback" not in err


@pytest.mark.parametrize("order", ["bad first", "bad last", "all good"])
def test_validate_into_a_closed_pipe_keeps_its_verdict(tmp_path, order):
    """`sae validate bad good | head -1` exited 0: the reader left, and the BrokenPipeError was
    taken for success. Now the command goes on with its output discarded: 1 whenever a bad file
    is among them, whether before or after the reader left."""
    a = good(tmp_path / "a.parquet")
    bad = broken(tmp_path, "truncated")
    files = {"bad first": [bad] + [a] * 50, "bad last": [a] * 50 + [bad], "all good": [a] * 51}[order]
    proc = subprocess.Popen([sys.executable, "-m", "sae_core.tools.cli", "validate", *files],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `head -1` does once it has its line (here before: the write surely fails)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == (0 if order == "all good" else 1)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    if order == "all good":
        assert err == ""
    else:
        assert len(err.splitlines()) == 1 and err.startswith(f"{bad}: not a readable Parquet file")


# ----------------------------------------------------------------------------------------------
# flags from the registry


# ----------------------------------------------------------------------------------------------
# conventions: --version, help, -q, --json, directories and globs, overwrite, `sae spec`


def test_version_and_help(capsys):
    from sae_core.trajectory.metadata import SPEC_VERSION
    from sae_core.version import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"sae-rl {__version__} (trajectory standard {SPEC_VERSION})"
    assert main([]) == 2  # `sae` alone: the full help, every command in it
    out = capsys.readouterr().out
    for command in ("validate", "recompute", "inspect", "report", "spec", "warmup", "lab", "demo", "--quiet"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["lab", "--help"])
    assert "95% t-intervals" in capsys.readouterr().out  # not "95%%": argparse's own escape shown


def test_python_m_sae_core_is_sae(tmp_path):
    path = good(tmp_path / "a.parquet")
    proc = subprocess.run([sys.executable, "-m", "sae_core", "validate", path], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"{path}: ok, 3 trajectories")


def test_validate_json_directories_and_globs(tmp_path, capsys):
    a, b = good(tmp_path / "d" / "a.parquet"), good(tmp_path / "d" / "sub" / "b.parquet", 5)
    bad = tmp_path / "d" / "sub" / "c.parquet"
    bad.write_bytes(b"not parquet at all")
    (tmp_path / "d" / "notes.txt").write_text("not a shard")
    code = main(["validate", "--json", str(tmp_path / "d")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(d["file"], d["ok"]) for d in doc] == [(a, True), (b, True), (str(bad), False)]
    assert doc[1]["rows"] == 5 and doc[1]["tokens"] == 10 and doc[1]["problems"] == []
    assert doc[2]["problems"] and "rows" not in doc[2]
    code, out, err = run(capsys, str(tmp_path / "d" / "**" / "[ab].parquet"))
    assert code == 0 and [line.split(":")[0] for line in out] == [a, b]
    code, out, err = run(capsys, str(tmp_path / "nothing-*.parquet"))
    assert code == 1 and out == [] and err == [f"sae validate: no file matches '{tmp_path / 'nothing-*.parquet'}'"]


def test_inspect_takes_a_directory(tmp_path, capsys):
    for name in ("x", "y"):
        tj.write_table(tj.compute(table(), estimator="gae", backend="reference"), tmp_path / "in" / f"{name}.parquet")
    assert main(["inspect", str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    assert f"== {tmp_path / 'in' / 'x.parquet'}" in out and f"== {tmp_path / 'in' / 'y.parquet'}" in out
    assert main(["inspect", "--json", str(tmp_path / "in")]) == 0
    assert [d["file"] for d in json.loads(capsys.readouterr().out)] == [str(tmp_path / "in" / f"{n}.parquet")
                                                                       for n in ("x", "y")]


def test_quiet_silences_warnings_and_each_is_said_once(tmp_path, capsys):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"trajectory_id": ["a"], "response_ids": [[1, 2]], "rewards": [[0.0, 1.0]]}), plain)
    assert main(["inspect", str(plain)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "no 'sae_rl' metadata" in line]) == 1
    assert main(["-q", "inspect", str(plain)]) == 0
    assert capsys.readouterr().err == ""


def test_report_refuses_an_existing_page_unless_overwrite(tmp_path, capsys):
    src = tj.write_table(tj.compute(table(), estimator="gae", backend="reference"), tmp_path / "r.parquet")
    page = tmp_path / "page.html"
    page.write_text("mine")
    assert main(["report", str(src), "--out", str(page)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and page.read_text() == "mine"
    assert main(["report", str(src), "--out", str(page), "--overwrite"]) == 0
    assert page.read_text().startswith("<!DOCTYPE html") or "<html" in page.read_text()


def test_spec_prints_the_shipped_documents(capsys):
    assert main(["spec", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "SPEC.md" in names and any(n.endswith(".schema.json") for n in names)
    assert main(["spec", "--path", "SPEC.md"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_file()
    assert main(["spec"]) == 0
    assert capsys.readouterr().out.strip() == path.read_text().strip()
    assert main(["spec", "no-such.md"]) == 2
    assert "SPEC.md" in capsys.readouterr().err  # the message lists what there is


def test_annotate_puts_the_metadata_back(tmp_path, capsys):
    import pandas as pd

    src = tj.write_table(tj.compute(table(), estimator="sae", threshold=0.3, suffix="_sae", backend="reference"),
                         tmp_path / "orig.parquet")
    pd.read_parquet(src).to_parquet(tmp_path / "pandas.parquet")  # pandas drops the sae_rl metadata
    code, out, err = run(capsys, tmp_path / "pandas.parquet")
    assert code == 0 and out[0].endswith("outputs advantages_sae=? (parameters unknown: no metadata)")
    before = (tmp_path / "pandas.parquet").read_bytes()
    assert main(["annotate", str(tmp_path / "pandas.parquet"), "--from", str(src)]) == 1  # in place needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path / "pandas.parquet"), "--from", str(src), "--out",
                 str(tmp_path / "fixed.parquet")]) == 0
    capsys.readouterr()
    assert (tmp_path / "pandas.parquet").read_bytes() == before
    code, out, _ = run(capsys, tmp_path / "fixed.parquet")
    assert code == 0 and out[0].endswith("outputs advantages_sae=sae")
    params = tj.read_info(tj.read_table(tmp_path / "fixed.parquet").schema).estimators["advantages_sae"]
    assert params["threshold"] == 0.3


def test_report_color_by_names_a_set_or_is_a_usage_error(tmp_path, capsys):
    src = tj.write_table(tj.compute(tj.compute(table(), estimator="gae", suffix="_gae", backend="reference"),
                                    estimator="sae", suffix="_sae", backend="reference"), tmp_path / "two.parquet")
    assert main(["report", str(src), "--out", str(tmp_path / "a.html"), "--color-by", "gae", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", str(src), "--out", str(tmp_path / "b.html"), "--color-by", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "advantages_gae" in err and not (tmp_path / "b.html").exists()


def test_recompute_json(tmp_path, capsys):
    good(tmp_path / "in" / "a.parquet", 3)
    b = table(5)
    tj.write_table(b.set_column(0, "trajectory_id", pa.array([f"b{i}" for i in range(5)])), tmp_path / "in" / "b.parquet")
    (tmp_path / "in" / "bad.parquet").write_bytes(b"not parquet")
    code = main(["recompute", str(tmp_path / "in"), str(tmp_path / "out"), "--estimator", "gae", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["ok"] is False
    by_name = {Path(f["src"]).name: f for f in doc["files"]}
    assert by_name["a.parquet"]["status"] == "written" and by_name["a.parquet"]["rows"] == 3
    assert by_name["bad.parquet"]["status"] == "failed" and by_name["bad.parquet"]["error"]
    assert doc["totals"]["written"] == 2 and doc["totals"]["failed"] == 1 and doc["totals"]["rows"] == 8
    assert doc["totals"]["tokens"] == 16


def test_warmup_json_counts_each_combination(monkeypatch, capsys):
    """`sae warmup --json`: one entry per combination with its seconds and the compilations it caused
    (here a stand-in for kernels.warmup compiles 2 kernels for float32 and loads float64's)."""
    from sae_core import kernels
    from sae_core.kernels import numba_compile

    calls = []

    def fake_warmup(name, *, dtype, mask_dtype, **kw):
        calls.append((name, dtype, mask_dtype, kw["mask_mode"]))
        numba_compile.NOTICE.compiled += 2 if dtype == "float32" else 0
        return 0.25 if dtype == "float32" else 0.5

    monkeypatch.setattr(kernels, "warmup", fake_warmup)
    monkeypatch.setattr(numba_compile.NOTICE, "compiled", 7)  # compilations earlier in the process: not counted
    assert main(["warmup", "--json", "--estimator", "sae:threshold=0.1", "--dtype", "float32", "--dtype", "float64",
                 "--mask-dtype", "none", "--mask-mode", "zero"]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is the JSON document alone
    assert calls == [("sae", "float32", None, "zero"), ("sae", "float64", None, "zero")]
    assert [(c["dtype"], c["mask_dtype"], c["mask_mode"], c["options"], c["seconds"], c["compiled"])
            for c in doc["combinations"]] == [("float32", "none", "zero", {"threshold": 0.1}, 0.25, 2),
                                               ("float64", "none", "zero", {"threshold": 0.1}, 0.5, 0)]
    assert doc["totals"] == {"combinations": 2, "seconds": 0.75, "compiled": 2}
    assert "cache_dir" in doc


def test_report_of_a_directory_or_a_glob_writes_a_page_each_and_an_index(tmp_path, capsys):
    d = tmp_path / "shards"
    a = tj.write_table(tj.compute(table(), estimator="gae", backend="reference"), d / "a.parquet")
    b = tj.write_table(tj.compute(table(4), estimator="sae", suffix="_sae", threshold=0.3, backend="reference"),
                       d / "sub" / "b.parquet")
    (d / "c.parquet").write_bytes(b"not parquet")
    out = tmp_path / "pages"
    assert main(["report", str(d), "--out", str(out), "--no-progress"]) == 1  # c fails, a and b are reported
    std, err = capsys.readouterr()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")) == [
        "a.parquet.html", "index.html", "sub/b.parquet.html"]
    assert std.splitlines() == [f"wrote {out / 'a.parquet.html'}", f"wrote {out / 'sub' / 'b.parquet.html'}",
                                f"wrote {out / 'index.html'} (comparing 2 of 3 files)"]
    assert err.startswith(f"{d / 'c.parquet'}: ") and len(err.splitlines()) == 1
    index = (out / "index.html").read_text()
    assert '<a href="a.parquet.html">' in index and '<a href="sub/b.parquet.html">' in index
    assert "advantages_sae boundary" in index and "not reported" in index and str(d / "c.parquet") in index
    assert "<td>3</td>" in index and "<td>4</td>" in index  # the rows of a and of b
    # again: every page exists, so nothing is written without --overwrite (one line, a usage error)
    before = (out / "index.html").stat().st_mtime_ns
    assert main(["report", str(d), "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sae report: {out / 'a.parquet.html'} exists; pass --overwrite to replace it"]
    assert (out / "index.html").stat().st_mtime_ns == before
    # a glob and a file: the pages are named under the directory that holds them all
    assert main(["report", str(d / "*.parquet"), str(b), "--out", str(tmp_path / "g"), "--no-progress"]) == 1
    assert sorted(p.relative_to(tmp_path / "g").as_posix() for p in (tmp_path / "g").rglob("*.html")) == [
        "a.parquet.html", "index.html", "sub/b.parquet.html"]
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "g"), "--overwrite", "--no-progress"]) == 0
    assert "comparing 2 of 2 files" in capsys.readouterr().out
    assert "not reported" not in (tmp_path / "g" / "index.html").read_text()


def test_report_of_several_files_needs_a_directory(tmp_path, capsys):
    a, b = good(tmp_path / "a.parquet"), good(tmp_path / "b.parquet")
    (tmp_path / "page.html").write_text("mine")
    assert main(["report", a, b, "--out", str(tmp_path / "page.html")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"sae report: {tmp_path / 'page.html'} is a file")
    assert (tmp_path / "page.html").read_text() == "mine"
    assert main(["report", a, a, "--out", str(tmp_path / "one"), "--no-progress"]) == 0  # given twice: one page
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["a.parquet.html", "index.html"]
