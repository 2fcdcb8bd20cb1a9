"""Child processes whose output fedsim reads line by line (a site's agent, an agent's app)."""

from __future__ import annotations

import subprocess
from typing import Any


def spawn_line_reader(argv: list[str], **options: Any) -> subprocess.Popen[str]:
    """stdout and stderr merged into one text stream, line-buffered, never failing to decode:
    a site's log must keep flowing whatever bytes an app prints."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        **options,
    )
