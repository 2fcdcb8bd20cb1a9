"""The log level of an app's output line.

An app writes plain text to stdout and stderr; fedsim files each line under the ``app``
component. Filed all at INFO, an engine's ``[Level: error]`` line or a Python traceback
looks like any progress line and is easy to miss in a long log. The FeatureCloud engine
marks its own lines (``[Time: ...] [Level: error] ...``), and a traceback has a fixed
shape, so both can be given their real level without the app's help.
"""

from __future__ import annotations

import logging
import re

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
