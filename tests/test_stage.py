"""The stage protocol's atomic writes: a file written through `atomic_path` ends with the
mode the umask gives a new file, whatever mode its writer created it with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kohaku.stage import atomic_path, atomic_write_text, new_file_mode


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_a_file_written_0600_ends_with_the_umask_mode(tmp_path: Path, umask_022):
    out = tmp_path / "model.safetensors"
    with atomic_path(out) as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors' save_file does
        os.write(fd, b"x")
        os.close(fd)
    assert new_file_mode() == 0o644
    assert out.stat().st_mode & 0o777 == 0o644
    atomic_write_text(tmp_path / "manifest.json", "{}")
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_the_mode_follows_the_umask(tmp_path: Path, umask_022):
    os.umask(0o077)
    assert new_file_mode() == 0o600
    atomic_write_text(tmp_path / "private.txt", "x")
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
