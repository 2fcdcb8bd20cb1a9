"""Host uids for the sites of a run started as root: one for each site's app, one for its agent.

A site's processes must not be root as the host sees them (a user namespace alone leaves
uid 0 outside), and no two sites may share a uid: process limits count per uid, and files a
site writes carry its uid. Blocks of uids are taken under a lock file that the run holds
until it ends, so concurrent runs never hand out the same uid; a block is never one that a
local account or a running process uses.
"""

from __future__ import annotations

import fcntl
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fedsim.errors import SandboxError

FIRST_UID = 2_100_000_000
"""Far above the uids of accounts and of the ranges ``/etc/subuid`` usually hands out."""
BLOCK_SIZE = 4096
BLOCKS = 4096
LOCK_DIR = Path("/run/fedsim/uid-blocks")
"""One place for every run on this machine, whatever its TMPDIR (uids are used as root only)."""


@dataclass(frozen=True)
class SiteUids:
    app: int
    agent: int


def _uids_in_use() -> set[int]:
    used = {entry.pw_uid for entry in pwd.getpwall()}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                used.add(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                continue
    return used


class UidBlock:
    """Holds one block of uids for as long as the run lasts (``close`` gives it back)."""

    def __init__(self, sites: int) -> None:
        if 2 * sites >= BLOCK_SIZE:
            raise SandboxError(
                f"at most {(BLOCK_SIZE - 1) // 2} sites per run when running as root"
            )
        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        used = _uids_in_use()
        for block in range(BLOCKS):
            start = FIRST_UID + block * BLOCK_SIZE
            if any(start <= uid < start + BLOCK_SIZE for uid in used):
                continue
            handle: IO[str] = open(LOCK_DIR / f"{block}.lock", "w")  # noqa: SIM115 - held
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._handle: IO[str] | None = handle
            self.start = start
            return
        raise SandboxError("no free block of uids for the sites (all held by other runs)")

    def site(self, index: int) -> SiteUids:
        return SiteUids(app=self.start + 2 * index, agent=self.start + 2 * index + 1)

    @property
    def server(self) -> int:
        """The uid of the run's fork-servers (``forkserver.py``): the block's last, no site's."""
        return self.start + BLOCK_SIZE - 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
