"""sae_core.atomic: a file appears whole or not at all, never clobbers unless told, leaves no temporary."""

import os

import pytest

from sae_core import atomic


def test_write_creates_parents_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "a" / "b" / "page.html"
    assert atomic.write_text_atomic(path, "héllo\n") == path
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert atomic.write_bytes_atomic(tmp_path / "x.bin", b"\x00\x01") == tmp_path / "x.bin"
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "x.bin"]
    assert [p.name for p in path.parent.iterdir()] == ["page.html"]


def test_the_file_gets_the_usual_permissions_not_0600(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = atomic.write_bytes_atomic(tmp_path / "x", b"data")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_existing_path_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        atomic.write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    atomic.write_bytes_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_a_failed_write_leaves_the_path_as_it_was_and_no_temporary(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic.write_bytes_atomic(path, "not bytes", overwrite=True)
    with pytest.raises(RuntimeError, match="boom"), atomic.AtomicPath(tmp_path / "y") as target:
        target.tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_path_that_appears_while_writing_is_not_clobbered(tmp_path, monkeypatch, hard_links):
    if not hard_links:
        def no_link(src, dst):
            raise PermissionError("no hard links here")
        monkeypatch.setattr(os, "link", no_link)
    target = atomic.AtomicPath(tmp_path / "x")
    target.tmp.write_bytes(b"mine")
    (tmp_path / "x").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        target.commit()
    assert (tmp_path / "x").read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
    other = atomic.AtomicPath(tmp_path / "y")
    other.tmp.write_bytes(b"mine")
    assert other.commit().read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "y"]


def test_temporary_names_say_whose_they_are(tmp_path):
    tmp = atomic.temporary_path(tmp_path / "shard-003.parquet")
    assert atomic.temporary_owner(tmp) == ("shard-003.parquet", os.getpid())
    assert atomic.temporary_owner(tmp.name) == ("shard-003.parquet", os.getpid())
    for name in ("shard-003.parquet", ".x.tmp-12", ".x.tmp-12-zzzzzzzz", "x.tmp-12-0123abcd", ".x.part-12-0123abcd"):
        assert atomic.temporary_owner(tmp_path / name) is None


def test_a_directory_at_the_path_is_refused_before_writing(tmp_path):
    (tmp_path / "out.html").mkdir()
    for overwrite in (False, True):
        with pytest.raises(IsADirectoryError, match="is a directory"):
            atomic.write_text_atomic(tmp_path / "out.html", "x", overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["out.html"] and not any((tmp_path / "out.html").iterdir())
