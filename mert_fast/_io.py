"""Atomic file writes shared by every writer of the package (features, sidecars, manifests, teachers, checkpoints).

A file is written under a temporary name in its own folder and renamed over the target, so a reader (or a rerun
after a crash) never sees half a file. The file keeps the permission bits of the file it replaces, as an in-place
rewrite would; a new file gets the mode a plain ``open(path, "w")`` would give (``0o666`` minus the umask, e.g.
``0644`` under umask 022), not ``mkstemp``'s private ``0600``: outputs on a shared machine stay readable by the
group and others exactly as the user's umask (or an earlier ``chmod``) says.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "default_file_mode", "write_json", "write_text"]


def _umask() -> int:
    """The process's umask: from ``/proc/self/status`` where there is one (reading it changes nothing, which
    matters with other threads creating files), else by setting it and putting it back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the process's umask."""
    return 0o666 & ~_umask()


def _target_mode(path: Path) -> int:
    """The permission bits ``path`` has now (links followed), or :func:`default_file_mode` for a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return default_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it replaces ``path`` atomically.

    The parent folder is created. On any exception the temporary file is removed and ``path`` is left as it was.
    Whatever the writer inside the block did to the temporary file's mode, the file ends with the permission bits
    of the file it replaces, or for a new file the mode a plain ``open`` would give it (:func:`default_file_mode`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
