"""Paths as URIs (`sae_core.trajectory.paths`): `file://` and fsspec's in-memory filesystem through
`sae validate`, `inspect`, `recompute` (a file, a directory of shards, a glob), `annotate` and the
Python readers and writers; an unknown scheme is one line; a failed write leaves nothing behind.

memory:// lives in this process only, so the command line runs in-process (`main([...])`)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core import trajectory as tj
from sae_core.tools.cli import main
from sae_core.tools.recompute import plan_runs, recompute, recompute_file
from sae_core.trajectory import paths

from helpers import rollouts

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def mem():
    """A fresh directory URI on fsspec's memory filesystem, removed afterwards, and the filesystem."""
    fs = fsspec.filesystem("memory")
    root = f"t{uuid.uuid4().hex[:8]}"
    yield f"memory://{root}", fs, f"/{root}"
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def files_under(fs, root: str) -> list[str]:
    """Every file below `root` on the memory filesystem, its path relative to `root`."""
    return sorted(p[len(root) + 1:] for p in fs.find(root)) if fs.exists(root) else []


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------
# the module


def test_plain_paths_are_handed_back_untouched(tmp_path):
    p = str(tmp_path / "a.parquet")
    assert paths.local(p) is p  # the same object: the local code path, unchanged
    assert paths.local(tmp_path) is tmp_path
    assert paths.local("file:///tmp/a%20b.parquet") == "/tmp/a b.parquet"
    assert paths.local("file://localhost/tmp/x") == "/tmp/x"
    assert paths.local("memory://x/y") is None
    assert paths.scheme("C://x") is None  # one letter: a drive, not a scheme
    assert paths.scheme("S3://b/k") == "s3"


def test_a_file_uri_on_another_host_is_refused():
    with pytest.raises(paths.UnsupportedPath, match="host 'elsewhere'"):
        paths.local("file://elsewhere/tmp/x")


@pytest.mark.parametrize("pattern, yes, no", [
    ("*.parquet", ["a.parquet"], ["d/a.parquet", ".h.parquet", "a.arrow"]),
    ("**/*.parquet", ["a.parquet", "d/a.parquet", "d/e/b.parquet"], [".d/a.parquet", "d/.a.parquet"]),
    ("d/?.pq", ["d/a.pq"], ["d/ab.pq", "a.pq"]),
    ("[ab].arrow", ["a.arrow", "b.arrow"], ["c.arrow"]),
    ("[!ab].arrow", ["c.arrow"], ["a.arrow"]),
    (".h*", [".h.parquet"], ["h.parquet"]),
])
def test_glob_patterns(pattern, yes, no):
    import re

    regex = re.compile(paths.translate_glob(pattern))
    assert [n for n in yes if not regex.fullmatch(n)] == []
    assert [n for n in no if regex.fullmatch(n)] == []


def test_listing_and_globs_on_memory(mem):
    uri, fs, root = mem
    for name in ("a.parquet", "sub/b.arrow", ".hidden.parquet", "sub/c.txt"):
        fs.pipe(f"{root}/{name}", b"x")
    assert paths.list_files(uri) == [f"{uri}/.hidden.parquet", f"{uri}/a.parquet", f"{uri}/sub/b.arrow",
                                     f"{uri}/sub/c.txt"]
    assert paths.glob_files(f"{uri}/**/*.arrow") == [f"{uri}/sub/b.arrow"]
    assert paths.glob_files(f"{uri}/*.parquet") == [f"{uri}/a.parquet"]
    assert paths.glob_files(f"{uri}/nothing/*.parquet") == []
    assert paths.exists(f"{uri}/a.parquet") and not paths.exists(f"{uri}/b.parquet")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        paths.list_files(f"{uri}/nothing")


def test_unknown_scheme_is_one_line_naming_the_path(tmp_path, capsys):
    with pytest.raises(paths.UnsupportedPath) as caught:
        paths.resolve("nosuch://bucket/a.parquet")
    line = str(caught.value)
    assert "\n" not in line and line.startswith("nosuch://bucket/a.parquet: unknown scheme nosuch://")
    for argv in (["validate", "nosuch://b/a.parquet"], ["inspect", "nosuch://b/a.parquet"],
                 ["recompute", "nosuch://b/a.parquet", tmp_path / "o.parquet"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == ""
        assert len(err.splitlines()) == 1 and "nosuch://b/a.parquet" in err and "unknown scheme" in err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_fsspec_says_what_to_install(monkeypatch):
    def missing():
        raise ImportError("No module named 'fsspec'")

    monkeypatch.setattr(paths, "_fsspec_core", missing)
    with pytest.raises(paths.UnsupportedPath, match="pip install fsspec huggingface_hub"):
        paths.resolve("hf://datasets/someone/data/a.parquet")


def test_a_filesystem_s_own_errors_are_oserrors(mem, monkeypatch):
    uri, fs, root = mem

    def broken(self, path, **kwargs):
        raise RuntimeError("connection reset")

    monkeypatch.setattr(type(fs), "info", broken)
    with pytest.raises(OSError, match=f"{uri}/a.parquet: RuntimeError: connection reset"):
        paths.file_type(f"{uri}/a.parquet")
    with pytest.raises(tj.TrajectoryError, match="cannot read: RuntimeError: connection reset"):
        tj.read_table(f"{uri}/a.parquet")


# ----------------------------------------------------------------------------------------------
# the Python API


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".arrows"])
def test_write_and_read_on_memory(mem, tmp_path, suffix):
    uri, fs, root = mem
    table = rollouts(12, seed=3)
    target = f"{uri}/sub/a{suffix}"
    assert tj.write_table(table, target, row_group_rows=5) == target
    assert files_under(fs, root) == [f"sub/a{suffix}"]  # no temporary left
    assert tj.read_table(target).select(table.column_names).equals(table)
    assert sum(b.num_rows for b in tj.iter_batches(target, batch_size=4)) == 12
    assert tj.count_rows(target) == 12
    summary = tj.validate_file(target)
    assert (summary.path, summary.rows) == (target, 12)
    with pytest.raises(FileExistsError, match="exists"):
        tj.write_table(table, target)
    tj.write_table(table.slice(0, 3), target, overwrite=True)
    assert tj.count_rows(target) == 3


def test_parquet_on_memory_keeps_metadata_and_page_checksums(mem):
    uri, fs, root = mem
    table = rollouts(6)
    tj.write_table(table, f"{uri}/a.parquet")
    with fs.open(f"{root}/a.parquet", "rb") as fh:
        meta = pq.ParquetFile(fh).schema_arrow.metadata
    assert json.loads(meta[b"sae_rl"])["spec_version"] == tj.SPEC_VERSION
    # a flipped byte inside a data page is found by the checksum, as on the local disk
    data = bytearray(fs.cat(f"{root}/a.parquet"))
    data[60] ^= 0xFF
    fs.pipe(f"{root}/bad.parquet", bytes(data))
    with pytest.raises(tj.TrajectoryError, match=r"memory://.*/bad\.parquet"):
        tj.read_table(f"{uri}/bad.parquet")


def test_file_uri_reads_and_writes_the_local_file(tmp_path):
    table = rollouts(5)
    uri = (tmp_path / "x y.parquet").as_uri()  # percent-escaped space
    written = tj.write_table(table, uri)
    assert written == tmp_path / "x y.parquet" and written.is_file()
    assert tj.read_table(uri).select(table.column_names).equals(table)
    assert tj.validate_file(uri).rows == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x y.parquet"]


def test_reading_missing_or_a_directory_on_memory(mem):
    uri, fs, root = mem
    fs.pipe(f"{root}/d/a.parquet", b"x")
    with pytest.raises(tj.TrajectoryError, match="no such file"):
        tj.read_table(f"{uri}/none.parquet")
    with pytest.raises(tj.TrajectoryError, match="is a directory"):
        tj.read_table(f"{uri}/d")
    with pytest.raises(tj.TrajectoryError, match="not a readable Parquet file"):
        tj.read_table(f"{uri}/d/a.parquet")


# ----------------------------------------------------------------------------------------------
# atomic writes off the local disk


def test_a_write_failing_mid_way_leaves_nothing(mem):
    uri, fs, root = mem
    table = rollouts(8)
    with pytest.raises(RuntimeError, match="injected"):
        with tj.TrajectoryWriter(f"{uri}/a.parquet", table.schema, row_group_rows=2) as writer:
            writer.write(table.slice(0, 4))
            raise RuntimeError("injected")
    assert files_under(fs, root) == []


def test_a_filesystem_failing_mid_way_leaves_nothing(mem, monkeypatch):
    """The memory filesystem's file refuses its second write (a full store): no output, no
    temporary, and the error says so."""
    uri, fs, root = mem
    from fsspec.implementations.memory import MemoryFile

    calls = []
    real = MemoryFile.write

    def failing(self, data):
        calls.append(len(data))
        if len(calls) >= 2:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(MemoryFile, "write", failing)
    with pytest.raises(OSError, match="No space left"):
        tj.write_table(rollouts(50, max_len=200), f"{uri}/a.parquet", row_group_rows=5)
    monkeypatch.undo()
    assert len(calls) >= 2  # the failure came mid-way, after a first write went through
    assert files_under(fs, root) == []


def test_a_recompute_failing_mid_way_leaves_nothing_and_keeps_the_input(mem, monkeypatch):
    uri, fs, root = mem
    tj.write_table(rollouts(30, seed=4), f"{uri}/in.parquet")
    before = fs.cat(f"{root}/in.parquet")
    import sae_core.tools.recompute as rc

    real, seen = tj.compute, []

    def failing(batch, **kw):
        seen.append(batch.num_rows)
        if len(seen) == 3:
            raise ValueError("injected overflow")
        return real(batch, **kw)

    monkeypatch.setattr(rc.tj, "compute", failing)
    with pytest.raises(tj.TrajectoryError, match="injected overflow"):
        recompute_file(f"{uri}/in.parquet", f"{uri}/out.parquet", plan_runs(["gae"], {}), batch_size=8)
    assert files_under(fs, root) == ["in.parquet"]
    assert fs.cat(f"{root}/in.parquet") == before


def test_without_a_move_the_object_is_copied_whole(mem, monkeypatch):
    uri, fs, root = mem

    def no_move(self, src, dest):
        raise NotImplementedError

    monkeypatch.setattr(paths._Handler, "move", no_move)
    paths.write_bytes(f"{uri}/a.bin", b"abc")
    assert files_under(fs, root) == ["a.bin"] and fs.cat(f"{root}/a.bin") == b"abc"
    with pytest.raises(FileExistsError):
        paths.write_bytes(f"{uri}/a.bin", b"new")
    assert fs.cat(f"{root}/a.bin") == b"abc"


# ----------------------------------------------------------------------------------------------
# the command line


def local_reference(tmp_path, table, *argv) -> pa.Table:
    """The same recompute on the local disk (the code path the rest of the suite checks)."""
    src = tmp_path / "ref" / "in.parquet"
    tj.write_table(table, src)
    out = tmp_path / "ref" / "out.parquet"
    assert main(["recompute", str(src), str(out), *argv]) == 0
    return tj.read_table(out)


@pytest.fixture(params=["memory", "file"])
def where(request, mem, tmp_path):
    """A directory URI, and how to list the files under it (relative names)."""
    if request.param == "memory":
        uri, fs, root = mem
        return uri, lambda: files_under(fs, root)
    base = tmp_path / "uri"
    base.mkdir()
    return base.as_uri(), lambda: sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def test_validate_inspect_recompute_annotate(where, tmp_path, capsys):
    uri, listing = where
    table = rollouts(20, seed=7)
    tj.write_table(table, f"{uri}/in.parquet")

    code, out, err = run(capsys, "validate", f"{uri}/in.parquet")
    assert code == 0 and "ok, 20 trajectories" in out and err == ""
    code, out, _ = run(capsys, "inspect", f"{uri}/in.parquet", "--json")
    assert code == 0 and json.loads(out)["rows"] == 20

    code, out, err = run(capsys, "recompute", f"{uri}/in.parquet", f"{uri}/out/in.parquet", "--estimator", "gae")
    assert code == 0, err
    got = tj.read_table(f"{uri}/out/in.parquet")
    want = local_reference(tmp_path, table, "--estimator", "gae")
    assert got.num_rows == 20
    for name in ("advantages", "returns"):
        np.testing.assert_array_equal(got.column(name).combine_chunks().values.to_numpy(),
                                      want.column(name).combine_chunks().values.to_numpy())
    code, _, err = run(capsys, "recompute", f"{uri}/in.parquet", f"{uri}/out/in.parquet")
    assert code == 1 and "exists" in err

    # annotate: the data as another tool rewrites it (no metadata), the metadata put back
    stripped = got.replace_schema_metadata(None)
    tj.paths.write_bytes(f"{uri}/stripped.parquet", _parquet_bytes(stripped))
    code, out, err = run(capsys, "annotate", f"{uri}/stripped.parquet", "--from", f"{uri}/out/in.parquet",
                         "--out", f"{uri}/annotated.parquet")
    assert code == 0, err
    assert tj.read_schema(f"{uri}/annotated.parquet").metadata[b"sae_rl"] == \
        tj.read_schema(f"{uri}/out/in.parquet").metadata[b"sae_rl"]
    assert listing() == ["annotated.parquet", "in.parquet", "out/in.parquet", "stripped.parquet"]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_recompute_a_directory_of_shards_resumes(where, capsys):
    uri, listing = where
    tj.write_table(rollouts(10, seed=1, prefix="a"), f"{uri}/in/a.parquet")
    tj.write_table(rollouts(10, seed=2, prefix="b"), f"{uri}/in/sub/b.arrow")
    code, out, err = run(capsys, "recompute", f"{uri}/in", f"{uri}/out")
    assert code == 0, err
    assert "2 written, 0 skipped" in out
    code, out, err = run(capsys, "recompute", f"{uri}/in", f"{uri}/out")
    assert code == 0 and "0 written, 2 skipped" in out
    code, out, err = run(capsys, "validate", f"{uri}/out")
    assert code == 0 and out.count("outputs advantages=sae") == 2
    code, out, err = run(capsys, "recompute", f"{uri}/in/**/*.arrow", f"{uri}/globbed")
    assert code == 0 and "1 written" in out
    assert listing() == ["globbed/sub/b.arrow", "in/a.parquet", "in/sub/b.arrow", "out/a.parquet",
                         "out/sub/b.arrow"]


def test_recompute_between_the_local_disk_and_memory(mem, tmp_path):
    uri, fs, root = mem
    tj.write_table(rollouts(10, seed=1, prefix="a"), tmp_path / "in" / "a.parquet")
    tj.write_table(rollouts(10, seed=2, prefix="b"), tmp_path / "in" / "b.parquet")
    result = recompute(tmp_path / "in", f"{uri}/out", plan_runs(["sae"], {}), progress=False)
    assert result.ok and [f.dst for f in result.files] == [f"{uri}/out/a.parquet", f"{uri}/out/b.parquet"]
    back = recompute(f"{uri}/out", tmp_path / "back", plan_runs(["gae"], {}), progress=False)
    assert back.ok and sorted(p.name for p in (tmp_path / "back").iterdir()) == ["a.parquet", "b.parquet"]
    assert not list((tmp_path / "back").glob(".*"))  # no lock or temporary left


def test_an_output_inside_the_input_directory_is_refused(mem):
    uri, fs, root = mem
    tj.write_table(rollouts(4), f"{uri}/in/a.parquet")
    with pytest.raises(ValueError, match="inside the input directory"):
        recompute(f"{uri}/in", f"{uri}/in/out", plan_runs(["sae"], {}))
    with pytest.raises(ValueError, match="is the input"):
        recompute(f"{uri}/in/a.parquet", f"{uri}/in/a.parquet", plan_runs(["sae"], {}))
    assert files_under(fs, root) == ["in/a.parquet"]


def test_report_page_to_a_memory_uri(mem, tmp_path, capsys):
    """`sae report FILE --out memory://...`: the page lands on the other filesystem, whole (no temporary
    left); an existing page is refused without --overwrite."""
    pytest.importorskip("matplotlib")
    uri, fs, root = mem
    src = tmp_path / "r.parquet"
    tj.write_table(rollouts(6, seed=1), src)
    code, _, err = run(capsys, "report", src, "--out", f"{uri}/page.html")
    assert code == 0, err
    assert files_under(fs, root) == ["page.html"]
    assert "<html" in fs.cat_file(f"{root}/page.html").decode()[:300].lower()
    code, _, err = run(capsys, "report", src, "--out", f"{uri}/page.html")
    assert code == 2 and "exists; pass --overwrite" in err
    assert run(capsys, "report", src, "--out", f"{uri}/page.html", "--overwrite")[0] == 0
