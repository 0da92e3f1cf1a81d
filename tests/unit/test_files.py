from __future__ import annotations

import os
import stat

import pytest

from riverdelta.storage import files

pytestmark = pytest.mark.unit


def test_write_atomic_replaces_whole_with_the_mode_from_creation(tmp_path):
    target = tmp_path / "sub" / "state.json"
    files.write_atomic(target, "old")
    files.write_atomic(target, b"new", mode=0o600)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]  # no temporary left


def test_write_atomic_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "pointer"
    link.symlink_to(victim)
    files.write_atomic(link, "mine")
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == "mine"


def test_write_atomic_leaves_the_old_file_and_no_temporary_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        files.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
