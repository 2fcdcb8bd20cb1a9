"""Starting one bubblewrap sandbox of a local site, reading its lines, killing it whole.

The pieces ``local_step.py`` puts together for a site's app and agent: the bwrap process
with its seccomp filter and data files handed over as descriptors (never argv, never bwrap's
own environment), the sandbox's pid 1 learnt from ``--info-fd``, and a thread that turns
its output into log lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from fedsim.processes import spawn_line_reader
from fedsim.sites.applines import AppLevels, StatusPolls
from fedsim.sites.base import LineSink
from fedsim.sites.sandbox import SandboxSpec, build_command

MAX_LINE = 16_384
"""Longer app lines are cut into pieces: an app printing a gigabyte without a newline must
not make fedsim hold it in memory."""


def write_private(path: Path, text: str, owner: int | None = None) -> None:
    """A file only its owner reads (``owner``: the site uid that must read it, as root)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if owner is not None:
        os.chown(path, owner, owner)


def chown_tree(path: Path, uid: int) -> None:
    """Give a tree to ``uid`` without following any link in it."""
    os.lchown(path, uid, uid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)


def data_fd(data: bytes) -> int:
    """A readable fd holding ``data`` (bwrap copies it into the sandbox)."""
    read, write = os.pipe()
    if len(data) > 60_000:
        os.close(read)
        os.close(write)
        raise ValueError("data for a sandbox file is too large for a pipe")
    os.write(write, data)
    os.close(write)
    return read


def _read_info(fd: int) -> int | None:
    with os.fdopen(fd, encoding="utf-8") as info:
        text = info.read()  # written by bwrap right after it made the namespaces
    return json.loads(text)["child-pid"] if text.strip() else None


class SiteProcess(Protocol):
    """What a step holds of its app or agent: a sandbox, or an app a fork-server forked."""

    init_pid: int | None
    """The pid 1 of the process's pid namespace, as this machine sees it."""

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


@dataclass
class SandboxProcess:
    """One bwrap process tree: its outer process and the pid 1 inside."""

    process: subprocess.Popen[str]
    init_pid: int | None
    reader: threading.Thread

    def kill(self) -> None:
        # Killing the sandbox's pid 1 kills every process in its pid namespace; bwrap
        # outside then exits. (Killing bwrap first would orphan pid 1 to an init that may
        # never reap it.) --die-with-parent covers a crash of fedsim.
        if self.process.poll() is None and self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)  # it closes the pipe: a run of many steps keeps none

    def poll(self) -> int | None:
        return self.process.poll()


def start_sandbox(
    prefix: list[str],
    spec: SandboxSpec,
    argv: list[str],
    *,
    seccomp_filter: Path,
    on_line: LineSink,
    tag: str | None,
    fds: Sequence[int],
    thread_name: str,
) -> SandboxProcess:
    """Start one sandbox; ``fds`` (its data files) are handed over and closed here.

    ``tag``: None for a child that writes fedsim's own line format (the agent), else the
    component its raw lines are filed under (the app's, cut at ``MAX_LINE``)."""
    info_read, info_write = os.pipe()
    seccomp = os.open(seccomp_filter, os.O_RDONLY)
    try:
        spec.seccomp_fd = seccomp
        process = spawn_line_reader(
            [*prefix, *build_command(spec, argv, info_fd=info_write)],
            pass_fds=(info_write, seccomp, *fds),
            env={},  # bwrap's own environment is readable at /proc/1/environ
            start_new_session=True,  # Ctrl-C reaches the orchestrator only
        )
    finally:
        for fd in (info_write, seccomp, *fds):
            os.close(fd)
    init_pid = _read_info(info_read)
    assert process.stdout is not None
    reader = start_reader(process.stdout, on_line, tag, thread_name)
    return SandboxProcess(process, init_pid, reader)


def start_reader(
    stream: IO[str], on_line: LineSink, tag: str | None, name: str
) -> threading.Thread:
    """A thread handing each line a process prints on ``stream`` to ``on_line`` (see
    ``start_sandbox`` for ``tag``), for as long as it prints; it closes the stream at the end."""
    reader = threading.Thread(target=_pump, args=(stream, on_line, tag), name=name, daemon=True)
    reader.start()
    return reader


def _pump(stream: IO[str], on_line: LineSink, tag: str | None) -> None:
    with stream:
        _read_lines(stream, on_line, tag)


def _read_lines(stream: IO[str], on_line: LineSink, tag: str | None) -> None:
    if tag is None:
        for line in stream:
            on_line(line)
        return
    levels, polls = AppLevels(), StatusPolls()
    for piece in iter(lambda: stream.readline(MAX_LINE), ""):
        text = polls.cut(piece.rstrip("\n"))
        if text.strip():
            on_line(f"{tag}\t{logging.getLevelName(levels.level(text))}\t{text}")
    left_out = polls.summary()
    if left_out is not None:
        on_line(f"{tag}\tINFO\t{left_out}")
