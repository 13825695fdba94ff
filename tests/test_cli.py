"""`sae validate FILE...`: one summary line per good file, one line per problem of a bad one, exit
status 1 if any file is bad, and never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core import trajectory as tj
from sae_core.tools.cli import build_parser, main


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
# flags from the registry
