"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every replacement follows the same steps: write a temporary file in the target's directory (same file
system, so the rename is atomic), flush and fsync it, ``os.replace`` it onto the target, then fsync the
directory so the rename itself survives a crash. On an error the temporary file is removed and the
target is left untouched.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: content already in memory.
* :func:`atomic_replace`: a context manager yielding a temporary path for writers that open the file
  themselves (h5py, imageio, matplotlib, ``csv``); the temporary name keeps the target's suffix, so
  writers that pick the format from the extension still do.
* :func:`write_bytes_durable` + :func:`fsync_dir`: the building blocks, e.g. for a directory written in
  full under a temporary name and then renamed into place (checkpoints).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, making the creation, rename or removal of its entries durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file written (and closed) by someone else, e.g. an h5py or imageio writer."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durable(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated) and fsync it before returning. Not atomic by itself."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def temp_path_for(path: str | os.PathLike) -> Path:
    """A hidden, unique name next to ``path`` that keeps its suffix: ``dir/.name.mp4.tmp-<pid>-<hex>.mp4``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_replace(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for a writer; on a clean exit fsync it, rename it onto ``path``, fsync the dir.

    The writer must have closed the file when the ``with`` block ends. If the block raises, the
    temporary file is deleted and ``path`` is not touched. The parent directory must exist.

    Example::

        with atomic_replace(run_dir / "episode.mp4") as tmp:
            with imageio.get_writer(tmp, fps=30) as w:
                ...
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not create {tmp} (to replace {path})")
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    with atomic_replace(path) as tmp:
        write_bytes_durable(tmp, data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding`` (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))
