"""Faults injected into `sae recompute` jobs (issue 16), none needing root: a job killed with SIGKILL
and resumed, a full disk, read-only directories, a flipped bit in a data page, two jobs at once.

File-system faults go through a patched writer or a patched `os` (a root user's chmod would not
stop anyone): `full_disk` gives the Parquet and IPC writers a sink that raises ENOSPC after N bytes,
`read_only` makes creating anything under a directory raise EROFS or EACCES as the kernel would.
Each test checks what the issue asks of every case: a clear one-line message, the documented exit
status, nothing stale or partial left behind, inputs byte-identical.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import rollouts as shared_rollouts
from sae_core import trajectory as tj
from sae_core.tools import jobs
from sae_core.tools import recompute as rc
from sae_core.tools.cli import main


def rollouts(n, seed, prefix):
    """The shared rollouts with responses of 1 to 40 tokens, as these tests were written with."""
    return shared_rollouts(n, seed=seed, prefix=prefix, min_len=1)


def make_shards(root: Path, n: int, rows: int = 40) -> list[str]:
    """n shards (Parquet, with one Arrow IPC file and a subdirectory among them); their names."""
    names = [f"sub/s{i:02d}.parquet" if i % 7 == 6 else f"s{i:02d}.{'arrow' if i % 5 == 4 else 'parquet'}"
             for i in range(n)]
    for i, name in enumerate(names):
        tj.write_table(rollouts(rows, seed=i, prefix=f"s{i}-"), root / name)
    return names


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temporary and lock files under root: none may remain after a job."""
    return [p.name for p in root.rglob(".*") if jobs.TEMPORARY.match(p.name) or p.name.endswith(".lock")]


def assert_same_files(got: Path, want: Path, names):
    for name in names:
        a, b = tj.read_table(got / name), tj.read_table(want / name)
        assert a.schema == b.schema and a.schema.metadata == b.schema.metadata, name
        for col in b.schema.names:  # column for column, bit for bit
            assert a.column(col).equals(b.column(col)), f"{name}: column {col}"


def cli(capsys, *argv):
    try:
        code = main(["recompute", *map(str, argv)])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


RUNS = ["gae", "sae:threshold=0.5"]


# ----------------------------------------------------------------------------------------------
# SIGKILL at a random moment, then resume


def test_a_killed_job_resumes_to_the_files_of_an_uninterrupted_one(tmp_path):
    seed = int(os.environ.get("SAE_FAULT_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    names = make_shards(tmp_path / "in", 20, rows=60)
    before = digests(tmp_path / "in")
    runs = rc.plan_runs(RUNS)
    assert rc.recompute(tmp_path / "in", tmp_path / "ref", runs, batch_size=8).ok  # uninterrupted
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sae_core.tools.cli", "recompute", str(tmp_path / "in"), str(out),
            *(a for r in RUNS for a in ("--estimator", r)), "--batch-size", "8"]
    killed_at = []
    for _ in range(2):  # killed, resumed and killed again, then resumed to the end
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = rng.randrange(len(names))  # wait for this many finished outputs, then a little more
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            done = sum((out / n).exists() for n in names) if out.exists() else 0
            if done >= target:
                time.sleep(rng.uniform(0, 0.05))
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # collected: its PID is dead, not a zombie
        killed_at.append((target, proc.returncode))
        proc.stderr.close()
        # whatever is at an output's path is whole: a killed writer leaves only temporary files
        for n in names:
            if (out / n).exists():
                assert_same_files(out, tmp_path / "ref", [n])
    result = rc.recompute(tmp_path / "in", out, runs, batch_size=8)
    assert result.ok, (seed, killed_at, [f.line() for f in result.files])
    assert_same_files(out, tmp_path / "ref", names)
    assert leftovers(out) == [], (seed, killed_at)
    assert sorted(digests(out)) == sorted(names)
    assert digests(tmp_path / "in") == before
    again = rc.recompute(tmp_path / "in", out, runs, batch_size=8)
    assert [f.status for f in again.files] == ["skipped"] * len(names)


# ----------------------------------------------------------------------------------------------
# a full disk


class FullDisk:
    """A writable file that takes `room` bytes in all, then raises ENOSPC (as write(2) would)."""

    def __init__(self, path, room):
        self._fh = open(path, "xb")  # noqa: SIM115 - closed by close()
        self.room = room
        self.closed = False

    def write(self, data):
        data = bytes(data)
        if len(data) > self.room:
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._fh.write(data)

    def tell(self):
        return self._fh.tell()

    def flush(self):
        self._fh.flush()

    def close(self):
        if not self.closed:
            self.closed = True
            self._fh.close()


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(room, only=NAME): writers of files whose name contains NAME get `room` bytes."""

    def install(room, only):
        real_parquet, real_osfile = pq.ParquetWriter, pa.OSFile

        class Writer(real_parquet):
            def __init__(self, where, schema, **kw):
                self._full = FullDisk(where, room) if only in str(where) else None
                super().__init__(self._full if self._full is not None else where, schema, **kw)

            def close(self):
                try:
                    super().close()
                finally:
                    if self._full is not None:
                        self._full.close()

        def osfile(path, mode="r", *a, **kw):
            return FullDisk(path, room) if only in str(path) and "w" in mode else real_osfile(path, mode, *a, **kw)

        monkeypatch.setattr(pq, "ParquetWriter", Writer)
        monkeypatch.setattr(pa, "OSFile", osfile)

    return install


@pytest.mark.parametrize("shard", ["s01.parquet", "s04.arrow"])
@pytest.mark.parametrize("where", ["at open", "mid-file", "in the footer"])
def test_a_full_disk_fails_that_shard_only(tmp_path, full_disk, capsys, shard, where):
    names = make_shards(tmp_path / "in", 6)
    before = digests(tmp_path / "in")
    runs = rc.plan_runs(RUNS)
    assert rc.recompute(tmp_path / "in", tmp_path / "ref", runs, batch_size=8).ok
    size = (tmp_path / "ref" / shard).stat().st_size
    full_disk({"at open": 0, "mid-file": size // 2, "in the footer": size - 8}[where], only=shard)
    code, out, err = cli(capsys, tmp_path / "in", tmp_path / "out", *("--estimator", "gae"),
                         *("--estimator", "sae:threshold=0.5"), "--batch-size", "8")
    assert code == 1 and "Traceback" not in err
    failed = [ln for ln in err.splitlines() if "FAILED" in ln]
    assert failed == [f"{tmp_path / 'in' / shard}: FAILED: {tmp_path / 'out' / shard}: No space left on device"]
    assert "5 written, 0 skipped, 1 failed" in out
    assert sorted(digests(tmp_path / "out")) == sorted(n for n in names if n != shard)
    assert_same_files(tmp_path / "out", tmp_path / "ref", [n for n in names if n != shard])
    assert leftovers(tmp_path / "out") == [] and digests(tmp_path / "in") == before


# ----------------------------------------------------------------------------------------------
# read-only directories


@pytest.fixture
def read_only(monkeypatch):
    """read_only(directory, code): creating, replacing or removing anything inside `directory`
    raises OSError(code) naming the path, through every way the job writes (os, pathlib, Arrow)."""

    def install(directory, code=errno.EROFS):
        directory = str(directory)

        def inside(path):
            return os.path.abspath(os.fspath(path)).startswith(directory + os.sep)

        def refuse(path):
            raise OSError(code, os.strerror(code), os.fspath(path))

        real = {name: getattr(os, name) for name in ("open", "mkdir", "link", "replace", "rename", "unlink")}

        def os_open(path, flags, *a, **kw):
            if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                refuse(path)
            return real["open"](path, flags, *a, **kw)

        def guard(name, *positions):
            def wrapper(*args, **kw):
                for i in positions:
                    if len(args) > i and inside(args[i]):
                        refuse(args[i])
                return real[name](*args, **kw)
            return wrapper

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "mkdir", guard("mkdir", 0))
        monkeypatch.setattr(os, "link", guard("link", 1))
        monkeypatch.setattr(os, "replace", guard("replace", 1))
        monkeypatch.setattr(os, "rename", guard("rename", 1))
        monkeypatch.setattr(os, "unlink", guard("unlink", 0))
        real_parquet, real_osfile = pq.ParquetWriter, pa.OSFile

        def writer(where, *a, **kw):
            if inside(where):  # as Arrow reports it: errno set, the path in the message
                raise OSError(code, f"Failed to open local file '{where}'. Detail: [errno {code}] "
                                    f"{os.strerror(code)}")
            return real_parquet(where, *a, **kw)

        def osfile(path, mode="r", *a, **kw):
            if inside(path) and "w" in mode:
                raise OSError(code, f"Failed to open local file '{path}'. Detail: [errno {code}] {os.strerror(code)}")
            return real_osfile(path, mode, *a, **kw)

        monkeypatch.setattr(pq, "ParquetWriter", writer)
        monkeypatch.setattr(pa, "OSFile", osfile)

    return install


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_output_directory_is_one_clear_line(tmp_path, read_only, capsys, code):
    make_shards(tmp_path / "in", 3)
    (tmp_path / "out").mkdir()
    before = digests(tmp_path / "in")
    read_only(tmp_path / "out", code)
    code_, _out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--estimator", "gae")
    assert code_ == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "out") in err and os.strerror(code) in err
    assert list((tmp_path / "out").iterdir()) == [] and digests(tmp_path / "in") == before


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_subdirectory_fails_its_shards_only(tmp_path, read_only, capsys, code):
    names = make_shards(tmp_path / "in", 8)  # s06 lies in sub/
    (tmp_path / "out" / "sub").mkdir(parents=True)
    before = digests(tmp_path / "in")
    read_only(tmp_path / "out" / "sub", code)
    code_, _out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--estimator", "gae")
    assert code_ == 1 and "Traceback" not in err
    dst = tmp_path / "out" / "sub" / "s06.parquet"
    assert [ln for ln in err.splitlines() if "FAILED" in ln] == [
        f"{tmp_path / 'in' / 'sub' / 's06.parquet'}: FAILED: {dst}: {os.strerror(code)}"]
    assert sorted(digests(tmp_path / "out")) == sorted(n for n in names if not n.startswith("sub/"))
    assert leftovers(tmp_path / "out") == [] and digests(tmp_path / "in") == before


# ----------------------------------------------------------------------------------------------
# a flipped bit in a data page


def flip_in_a_data_page(path: Path, column: str) -> None:
    """Flip 16 bytes in the middle of the first data page of `column` (past the page header)."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(next(i for i, n in enumerate(names) if n.split(".")[0] == column))
    start = chunk.data_page_offset
    end = (chunk.dictionary_page_offset if chunk.has_dictionary_page else start) + chunk.total_compressed_size
    at = start + max(32, (end - start) // 2)  # one page here (far under 1 MiB): its payload, not a header
    data = bytearray(path.read_bytes())
    data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
    path.write_bytes(bytes(data))


def test_a_flipped_bit_fails_its_shard_naming_file_and_column(tmp_path, capsys):
    names = make_shards(tmp_path / "in", 4, rows=200)
    flip_in_a_data_page(tmp_path / "in" / "s01.parquet", "logprobs")
    before = digests(tmp_path / "in")
    code, out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--estimator", "sae")
    assert code == 1 and "Traceback" not in err
    failed = [ln for ln in err.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and failed[0].startswith(f"{tmp_path / 'in' / 's01.parquet'}: FAILED: ")
    assert "column 'logprobs'" in failed[0] and "checksum" in failed[0]
    assert sorted(digests(tmp_path / "out")) == sorted(n for n in names if n != "s01.parquet")
    assert leftovers(tmp_path / "out") == [] and digests(tmp_path / "in") == before
    code, out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--estimator", "sae")  # resumed: same verdict
    assert code == 1 and "3 skipped, 1 failed" in out


# ----------------------------------------------------------------------------------------------
# two jobs at once


def test_two_jobs_on_one_output(tmp_path, capsys):
    names = make_shards(tmp_path / "in", 20, rows=120)  # the first job runs for a second or so
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sae_core.tools.cli", "recompute", str(tmp_path / "in"), str(out),
            "--estimator", "gae", "--backend", "reference", "--batch-size", "4"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / jobs.LOCK_NAME
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    try:
        assert lock.exists(), "the first job never took the lock"
        code, stdout, err = cli(capsys, tmp_path / "in", out, "--estimator", "gae")
        running = first.poll() is None
    finally:
        stdout1, err1 = first.communicate(timeout=120)
    assert running, "the first job ended before the second started: make it longer"
    assert code == 1 and f"another job (PID {first.pid}) is writing here" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and stdout == ""
    assert first.returncode == 0, err1
    assert f"{len(names)} written, 0 skipped, 0 failed" in stdout1  # the first job never saw the second
    assert leftovers(out) == []


# ----------------------------------------------------------------------------------------------
# shards that used to end the whole job in a traceback


def test_shards_that_raised_tracebacks_are_one_line_each(tmp_path, capsys):
    names = make_shards(tmp_path / "in", 3)
    good = rollouts(5, seed=9, prefix="d")
    pq.write_table(good.append_column("values", good.column("values")), tmp_path / "in" / "dup.parquet")
    huge = rollouts(5, seed=8, prefix="h").to_pydict()
    huge["values"] = [[-3e38] * len(v) for v in huge["values"]]
    huge["reward"] = [3e38] * 5
    pq.write_table(pa.table(huge, schema=good.schema), tmp_path / "in" / "huge.parquet")
    (tmp_path / "in" / "empty.parquet").write_bytes(b"")
    before = digests(tmp_path / "in")
    code, out, err = cli(capsys, tmp_path / "in", tmp_path / "out", "--estimator", "gae")
    assert code == 1 and "Traceback" not in err
    failed = sorted(ln for ln in err.splitlines() if "FAILED" in ln)
    assert [ln.split(": FAILED: ")[0] for ln in failed] == [str(tmp_path / "in" / n) for n in
                                                           ("dup.parquet", "empty.parquet", "huge.parquet")]
    assert "column 'values'" in failed[0] and "column 'advantages'" in failed[2]
    assert "3 written, 0 skipped, 3 failed" in out
    assert sorted(digests(tmp_path / "out")) == sorted(names)
    assert leftovers(tmp_path / "out") == [] and digests(tmp_path / "in") == before
