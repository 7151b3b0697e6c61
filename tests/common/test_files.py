"""common/files.py: atomic replacement leaves the old or the new file, never a temporary one."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.files import atomic_replace, atomic_write_bytes, atomic_write_text, temp_path_for


def test_atomic_writes_replace_the_content_and_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "latest"
    atomic_write_bytes(path, b"old")
    atomic_write_text(path, "new ü\n")
    assert path.read_bytes() == "new ü\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_atomic_replace_gives_the_writer_a_temporary_path_with_the_same_suffix(tmp_path: Path) -> None:
    path = tmp_path / "episode.mp4"
    with atomic_replace(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp.name.startswith(".") and not tmp.exists()
        tmp.write_bytes(b"frames")
        assert not path.exists()  # nothing visible before the block ends
    assert path.read_bytes() == b"frames"
    assert [p.name for p in tmp_path.iterdir()] == ["episode.mp4"]
    assert temp_path_for(path) != temp_path_for(path)  # unique per call


def test_a_failing_writer_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("step\n1\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_replace(path) as tmp:
        tmp.write_text("step\n")
        raise RuntimeError("disk full")
    assert path.read_text() == "step\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.csv"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    path.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="did not create"), atomic_replace(path):
        pass
    assert path.read_bytes() == b"old"
