"""Folders as bytes, for placements whose only path to a site is a message queue.

A Dask site gets its app, inputs and env file, and gives back its outputs, inside the
messages that drive it (``dask.py``); a tar in memory is that folder's shape. Packing takes
regular files and folders only (what ``safefiles`` would copy); unpacking uses tarfile's
``data`` filter, so an archive cannot write outside its destination, make links that lead
elsewhere, devices, or set-uid files, whoever made it.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path


def pack(folder: Path) -> bytes:
    """``folder``'s regular files and folders, relative to it; anything else is left out
    (the placement prunes and reports it before packing)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if folder.is_dir():
            for root, dirs, files in os.walk(folder):
                dirs.sort()
                for name in (*dirs, *sorted(files)):
                    path = Path(root) / name
                    mode = path.lstat().st_mode
                    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                        tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Into ``dest`` (made, private to this user, if missing)."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
