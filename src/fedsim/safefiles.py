"""Reading folders that a hostile app wrote, without ever following a link.

fedsim runs as root and reads folders an app wrote (a site's output is bind-mounted writable
into its sandbox; a workflow's next step reads the previous step's output). Following a link
there would let an app point ``/mnt/output/x`` at a host file, or at another site's input
(host paths show in ``/proc/self/mountinfo``), and get it into its ``results.zip`` or into
the next step's input. So every walk here:

- goes from directory file descriptor to directory file descriptor, opening each name
  relative to its parent's descriptor with ``O_NOFOLLOW``, so that swapping a folder for a
  link mid-walk cannot redirect it;
- takes an entry only when ``fstat`` of the *opened* descriptor says regular file or folder
  (``lstat`` first, so that no device or FIFO is ever opened; ``O_NONBLOCK`` in case one is
  swapped in between, so a FIFO cannot block us);
- lists everything else (links, FIFOs, sockets, devices, unreadable or too deeply nested
  entries) as :class:`Skipped`, for the site's log and summary.

Hard links are regular files and are taken: a site can only hard-link files inside its own
writable mount, so they hold nothing it could not have written itself.

An optional byte limit (a site's output limit) stops a copy or zip with
:class:`~fedsim.errors.OutputTooLarge` instead of filling the disk (a sparse file of a
terabyte costs the app nothing).
"""

from __future__ import annotations

import errno
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from fedsim.errors import ConfigError, OutputTooLarge
from fedsim.logs import get_logger

log = get_logger("files")

MAX_DEPTH = 64
"""Folders nested deeper are skipped: each level holds a descriptor open while it is walked."""
CHUNK = 1 << 20
LINK_TARGET_SHOWN = 200
"""Characters of a link's target kept in its reason (the target is the app's choice)."""

_BASE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
FILE_FLAGS = _BASE
DIR_FLAGS = _BASE | os.O_DIRECTORY


@dataclass(frozen=True)
class Skipped:
    """An entry that was not taken: its path relative to the walked folder, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Entry:
    """One step of a walk: entering a folder, a regular file, or leaving a folder.

    ``fd`` is an open descriptor of the folder or file (-1 on leave), valid only until the
    walk moves on; ``stat`` is its ``fstat``.
    """

    kind: Literal["enter", "file", "leave"]
    path: PurePosixPath
    fd: int
    stat: os.stat_result | None


class _Budget:
    """Bytes left under an optional limit, charged as they are read (not as files claim)."""

    def __init__(self, limit: int | None, what: str) -> None:
        self.limit, self.what, self.used = limit, what, 0

    def check(self, more: int) -> None:
        if self.limit is not None and self.used + more > self.limit:
            raise OutputTooLarge(
                f"{self.what} is larger than its limit of {self.limit} bytes; stopped copying"
            )

    def charge(self, n: int) -> None:
        self.check(n)
        self.used += n


def kind_name(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words a user reads in an error or a log."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return f"special file (mode {mode:o})"


def _reason(mode: int, name: str, dir_fd: int) -> str:
    reason = kind_name(mode)
    if stat.S_ISLNK(mode):
        with suppress(OSError):
            target = os.readlink(name, dir_fd=dir_fd)
            reason += f" to {target[:LINK_TARGET_SHOWN]!r}"
    return reason


def walk(root: Path, skipped: list[Skipped], *, prune: bool = False) -> Iterator[Entry]:
    """Regular files and folders under ``root`` in name order; everything else into ``skipped``.

    ``root`` itself must be a folder and not a link. With ``prune``, skipped links, FIFOs,
    sockets and devices are also removed (unlinking a link removes the link, not its target),
    so that a folder kept in the record holds regular files and folders only.
    """
    fd = os.open(root, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{root} is not a folder")
        yield from _walk_dir(fd, st, PurePosixPath(), 0, skipped, prune)
    finally:
        os.close(fd)


def _walk_dir(
    fd: int,
    st: os.stat_result,
    rel: PurePosixPath,
    depth: int,
    skipped: list[Skipped],
    prune: bool,
) -> Iterator[Entry]:
    yield Entry("enter", rel, fd, st)
    for name in sorted(os.listdir(fd)):
        child = rel / name
        try:
            lst = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            skipped.append(Skipped(str(child), f"unreadable ({exc.strerror})"))
            continue
        if stat.S_ISDIR(lst.st_mode):
            if depth + 1 > MAX_DEPTH:
                skipped.append(Skipped(str(child), f"nested deeper than {MAX_DEPTH} folders"))
                continue
            yield from _open_child(fd, name, child, stat.S_ISDIR, depth, skipped, prune)
        elif stat.S_ISREG(lst.st_mode):
            yield from _open_child(fd, name, child, stat.S_ISREG, depth, skipped, prune)
        else:
            reason = _reason(lst.st_mode, name, fd)
            if prune:
                try:
                    os.unlink(name, dir_fd=fd)
                    reason += ", removed"
                except OSError as exc:
                    reason += f", not removed ({exc.strerror})"
            skipped.append(Skipped(str(child), reason))
    yield Entry("leave", rel, -1, None)


def _open_child(
    parent: int,
    name: str,
    child: PurePosixPath,
    expected: Callable[[int], bool],
    depth: int,
    skipped: list[Skipped],
    prune: bool,
) -> Iterator[Entry]:
    """Open ``name`` without following it, and take it only if the open descriptor is what
    ``lstat`` said: whatever was swapped in between is skipped, never followed."""
    flags = DIR_FLAGS if expected is stat.S_ISDIR else FILE_FLAGS
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            skipped.append(Skipped(str(child), "changed to a link while read"))
        else:
            skipped.append(Skipped(str(child), f"unreadable ({exc.strerror})"))
        return
    try:
        st = os.fstat(fd)
        if not expected(st.st_mode):
            skipped.append(Skipped(str(child), f"changed while read ({kind_name(st.st_mode)})"))
        elif stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(fd, st, child, depth + 1, skipped, prune)
        else:
            yield Entry("file", child, fd, st)
    finally:
        os.close(fd)


def _chunks(fd: int, budget: _Budget, size: int) -> Iterator[bytes]:
    budget.check(size)  # a huge (sparse) file fails before anything is read
    while data := os.read(fd, CHUNK):
        budget.charge(len(data))
        yield data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_file(src: int, st: os.stat_result, dest_dir: int, name: str, budget: _Budget) -> None:
    """Into ``dest_dir``, replacing a file of that name; mode without set-id bits (we are
    root: a set-uid file copied as is would be a set-uid root file), times kept."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(name, flags, 0o600, dir_fd=dest_dir)
    try:
        for data in _chunks(src, budget, st.st_size):
            _write_all(out, data)
        os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(out)


def _open_dest_dir(parent: int, name: str) -> int:
    with suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


def copy_tree(
    source: Path,
    dest: Path,
    *,
    limit: int | None = None,
    claim: Callable[[PurePosixPath], None] | None = None,
) -> list[Skipped]:
    """Copy the regular files and folders under ``source`` into ``dest`` (created, merged).

    ``claim(relative path)`` is called before each file is written and may raise to refuse
    it (input clashes). Returns what was skipped; raises ``OutputTooLarge`` past ``limit``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    skipped: list[Skipped] = []
    budget = _Budget(limit, str(source))
    stack = [os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    # closing: an error (a clash, the limit) closes the walk's descriptors at once
    try:
        with closing(walk(source, skipped)) as entries:
            for entry in entries:
                if entry.kind == "enter" and entry.path.parts:
                    stack.append(_open_dest_dir(stack[-1], entry.path.name))
                elif entry.kind == "leave" and entry.path.parts:
                    os.close(stack.pop())
                elif entry.kind == "file":
                    assert entry.stat is not None
                    if claim is not None:
                        claim(entry.path)
                    _copy_file(entry.fd, entry.stat, stack[-1], entry.path.name, budget)
    finally:
        for fd in stack:
            os.close(fd)
    return skipped


def prune_tree(root: Path) -> list[Skipped]:
    """Remove every link, FIFO, socket and device under ``root``, so that the folder, as
    kept in the run directory, holds nothing that leads elsewhere. Returns what it found."""
    skipped: list[Skipped] = []
    for _ in walk(root, skipped, prune=True):
        pass
    return skipped


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """Zip can only say 1980..2107; an app may set any time."""
    t = time.gmtime(min(max(mtime, 315532800), 4354819199))
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def zip_tree(source: Path, target: Path, *, limit: int | None = None) -> list[Skipped]:
    """Zip the regular files under ``source`` into ``target``, atomically.

    Written to ``<target>.partial`` and renamed when complete, so that a zip that was
    interrupted (an error, the limit, a crash) never looks complete; on failure an older
    ``target`` is removed too, since it no longer matches ``source``.
    """
    skipped: list[Skipped] = []
    budget = _Budget(limit, str(source))
    partial = target.with_name(target.name + ".partial")
    try:
        with (
            zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive,
            closing(walk(source, skipped)) as entries,
        ):
            for entry in entries:
                if entry.kind != "file":
                    continue
                assert entry.stat is not None
                info = zipfile.ZipInfo(str(entry.path), _zip_time(entry.stat.st_mtime))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | (entry.stat.st_mode & 0o777)) << 16
                big = entry.stat.st_size > zipfile.ZIP64_LIMIT // 2
                with archive.open(info, "w", force_zip64=big) as out:
                    for data in _chunks(entry.fd, budget, entry.stat.st_size):
                        out.write(data)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise
    return skipped


def _copy_input_file(source: Path, dest: Path, name: str) -> None:
    fd = os.open(source, FILE_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"input {source} is a {kind_name(st.st_mode)}, not a file")
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _copy_file(fd, st, dest_fd, name, _Budget(None, str(source)))
        finally:
            os.close(dest_fd)
    finally:
        os.close(fd)


class _Claims:
    """Which input provided each file, so that two inputs cannot silently provide the same."""

    def __init__(self) -> None:
        self.seen: dict[PurePosixPath, Path] = {}

    def take(self, rel: PurePosixPath, path: Path, override: bool) -> None:
        if rel in self.seen and not override:
            raise ConfigError(f"inputs {self.seen[rel]} and {path} both provide {rel}")
        self.seen[rel] = path


def copy_inputs(
    inputs: Sequence[Path], dest: Path, overrides: Sequence[Path] = ()
) -> list[Skipped]:
    """Folders are merged into ``dest``, files land under their own name; clashes are errors,
    except that ``overrides`` (copied last) replace what they name.

    A path the config names is followed if it is a link (the user chose it); nothing below
    it is. In a workflow the inputs are the previous step's output, which the app wrote.
    Returns what was skipped (also logged).
    """
    dest.mkdir(parents=True, exist_ok=True)
    claims = _Claims()
    skipped: list[Skipped] = []
    for source in [*inputs, *overrides]:
        override = source in overrides
        real = source.resolve()
        try:
            if real.is_dir():
                found = copy_tree(
                    real,
                    dest,
                    claim=lambda rel, s=source, o=override: claims.take(rel, s / rel, o),
                )
                skipped += [Skipped(str(source / s.path), s.reason) for s in found]
            else:
                claims.take(PurePosixPath(source.name), source, override)
                _copy_input_file(real, dest, source.name)
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise ConfigError(f"input {source} clashes with another input: {exc}") from exc
    for item in skipped:
        log.warning("input %r skipped: %s", item.path, item.reason)
    return skipped
