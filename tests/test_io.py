"""Atomic writes (mert_fast._io): whole files or none, the umask's mode for a new file, the old mode kept."""

from __future__ import annotations

import os

import pytest

from mert_fast._io import atomic_path, default_file_mode, write_json, write_text


@pytest.fixture
def umask():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o7777


def test_a_new_file_gets_the_mode_a_plain_open_gives(tmp_path, umask):
    assert default_file_mode() == 0o666 & ~umask
    write_text(tmp_path / "sub" / "new.txt", "x")
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    assert _mode(tmp_path / "sub" / "new.txt") == _mode(tmp_path / "plain") == 0o640


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o664, 0o755, 0o444])
def test_rewriting_a_file_keeps_its_permission_bits(tmp_path, umask, mode):
    path = tmp_path / "kept.json"
    path.write_text("{}")
    os.chmod(path, mode)
    write_json(path, {"a": 1})
    assert _mode(path) == mode
    assert path.read_text() == '{\n  "a": 1\n}\n'
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)  # whatever the writer does to the temporary file
        tmp.write_bytes(b"z")
    assert _mode(path) == mode and path.read_bytes() == b"z"


def test_rewriting_through_a_link_keeps_the_target_mode(tmp_path, umask):
    target = tmp_path / "target"
    target.write_text("old")
    os.chmod(target, 0o604)
    os.symlink(target, tmp_path / "link")
    write_text(tmp_path / "link", "new")
    assert _mode(tmp_path / "link") == 0o604 and (tmp_path / "link").read_text() == "new"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, umask):
    path = tmp_path / "f.txt"
    path.write_text("old")
    os.chmod(path, 0o600)
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old" and _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
