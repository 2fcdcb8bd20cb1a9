"""How an app's output line enters the log: whether at all, and at which level.

An app writes plain text to stdout and stderr; fedsim files each line under the ``app``
component. Filed all at INFO, an engine's ``[Level: error]`` line or a Python traceback
looks like any progress line and is easy to miss in a long log. The FeatureCloud engine
marks its own lines (``[Time: ...] [Level: error] ...``), and a traceback has a fixed
shape, so both can be given their real level without the app's help.

Status polls are the other way round: the agent polls ``/api/status`` many times a second,
and Bottle logs every request (and apps of the older template print ``[CTRL] GET /status``
for each), so they would drown the log (1,523 of 1,705 lines in one run). They are cut out
and counted; the count is logged once, when the app's output ends.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

ENGINE_LEVEL = re.compile(r"\[Level: (?P<level>[A-Za-z]+)\]")
"""The FeatureCloud engine's marker; its ``LogLevel.DEBUG`` is written as ``info``."""

ENGINE_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.ERROR,
    "critical": logging.ERROR,
}

STATUS_ACCESS_LINE = re.compile(
    r"(?:(?:\d{1,3}\.){3}\d{1,3}|::1) - - \[[^\]]*\] "
    r'"GET /api/status HTTP/1\.[01]" \d+ \S+'
)
"""Bottle's record of one status request. Only that record is cut out: another thread's
output may share its line (print writes the text and the newline separately)."""
OLD_TEMPLATE_POLL = re.compile(r"^\s*\[CTRL\] GET /status\s*$")
"""The older template's own line for each status request."""

APP_FRAME = re.compile(r'^(\s*File ")/app/')
"""A traceback frame in the app's code: the app runs from its copy at ``/app``."""

TRACEBACK_START = "Traceback (most recent call last):"
CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


class AppLevels:
    """Assigns levels to one app's lines in order; remembers whether a traceback is open.

    A traceback runs from a line ending in ``Traceback (most recent call last):`` over its
    indented frame lines to the first unindented line, the exception itself; all of it is
    ERROR, so that a search of the log by level shows the whole traceback, not its first line.
    """

    def __init__(self) -> None:
        self._in_traceback = False

    def level(self, line: str) -> int:
        """The level of ``line`` (without its newline), given the lines before it."""
        # the engine logs a caught traceback as one message: behind its [Time] [Level] prefix
        if line.rstrip().endswith(TRACEBACK_START) or line.strip() in CHAINED:
            self._in_traceback = True
            return logging.ERROR
        if self._in_traceback:
            if not line[:1].isspace():
                self._in_traceback = False  # the exception line closes the traceback
            return logging.ERROR
        match = ENGINE_LEVEL.search(line)
        if match is not None:
            return ENGINE_LEVELS.get(match["level"].lower(), logging.INFO)
        return logging.INFO


def app_line_levels(lines: list[str]) -> list[int]:
    """The levels of a sequence of lines from one app (for tests and one-off use)."""
    levels = AppLevels()
    return [levels.level(line) for line in lines]


def with_host_path(line: str, app_dir: Path) -> str:
    """``line`` with a traceback frame's ``/app/...`` made the app's folder on this machine,
    so that the file named is one the user can open (``/app`` exists only in the sandbox)."""
    return APP_FRAME.sub(lambda m: f"{m[1]}{app_dir}/", line)


class StatusPolls:
    """Cuts status-poll records out of one app's lines and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def cut(self, text: str) -> str:
        """``text`` without its status-poll records (empty when it held nothing else)."""
        text, n = STATUS_ACCESS_LINE.subn("", text)
        self.count += n
        if OLD_TEMPLATE_POLL.match(text):
            self.count += 1
            return ""
        return text

    def summary(self) -> str | None:
        """The line that stands for the polls left out, or None when there were none."""
        if not self.count:
            return None
        polls = "status poll" if self.count == 1 else "status polls"
        return f"{self.count} {polls} of the agent left out of the log"
