"""Atomic writes: every file and directory textvae writes appears whole or not at all.

A file is written to a hidden temporary sibling (same directory, so the rename never crosses a
file system) and renamed over its target only once complete; on any error the temporary is
removed and the target is left as it was. A directory is written the same way, the old one moved
aside first and deleted only after the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling of `path` to write (or symlink) in the block; renamed onto `path` when
    the block ends normally, removed otherwise. `suffix` keeps an extension that writers such as
    `numpy.save` or `savefig` would otherwise add or read."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        if os.path.lexists(tmp):
            tmp.unlink()
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_dir(directory: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_dir)`, then move the result to `directory`, replacing it only when done."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; give the usual permissions
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if directory.exists():
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
            os.replace(directory, old / directory.name)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
