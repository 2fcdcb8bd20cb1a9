"""The one logging set-up of fedsim.

Every record carries ``site`` (``orchestrator`` outside a site) and ``component``
(run, relay, agent, app, ...). The orchestrator writes all records, its own and those
that arrive from every site, to one file, ``fedsim.log``, in arrival order, so the run's
story reads top to bottom. Inside a sandbox the agent writes its records to stdout as
``component<TAB>level<TAB>message`` lines, which the orchestrator parses back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

LOGGER_NAME = "fedsim"
SITE_LOGGER_NAME = "fedsim.site"
"""Lines that come from inside a site: kept in the file, shown on the console only when verbose."""

SHOWN_LIVE = "shown_live"
"""Mark of records that a live display shows on the terminal (``extra={SHOWN_LIVE: True}``):
they go to fedsim.log, and to the console only while no live display is drawn."""

LINE_FORMAT = "%(asctime)s %(site)-14s %(component)-6s %(levelname)-7s %(message)s"
LOG_SITE_FIELD = 1
"""Index of the site in a whitespace-split line of fedsim.log (``fedsim logs --site``)."""


class _ContextDefaults(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "site"):
            record.site = "orchestrator"
        if not hasattr(record, "component"):
            record.component = record.name.rsplit(".", 1)[-1] if "." in record.name else "run"
        return True


class _UTCFormatter(logging.Formatter):
    """UTC stamps; a message of several lines gets the full header on every line, so that
    each line of fedsim.log can be filtered by site on its own."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" not in text:
            return text
        first, *rest = text.split("\n")
        header = first[: len(first) - len(record.getMessage().split("\n")[0])]
        return "\n".join([first, *(header + line for line in rest)])

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def counted(n: int, noun: str) -> str:
    """``1 site``, ``3 sites``: a run of one site is common (the centralised run of a
    comparison), and "1 sites" in its log reads as a bug."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{component}")


def site_logger() -> logging.Logger:
    return logging.getLogger(SITE_LOGGER_NAME)


class _NotSiteLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(SITE_LOGGER_NAME)


class _NotShownLive(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, SHOWN_LIVE, False)


_terminal: tuple[logging.Handler, Console] | None = None
"""The console handler and its Rich console, when the console is a terminal."""


def configure_console(verbose: bool = False) -> None:
    """Human-facing output on stderr; stdout is kept for results (the run directory).

    Rich's layout on a terminal; one unwrapped line a record otherwise."""
    from rich.console import Console
    from rich.logging import RichHandler

    global _terminal
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if getattr(handler, "_fedsim_console", False):
            root.removeHandler(handler)
    console = Console(stderr=True)
    handler: logging.Handler
    _terminal = None
    if console.is_terminal:
        handler = RichHandler(
            console=console,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
            log_time_format="[%X]",
        )
        handler.setFormatter(logging.Formatter("%(site)s: %(message)s"))
        _terminal = (handler, console)
    else:
        # Rich lays a record out in an 80-column table when stderr is a pipe or a file,
        # breaking paths and long lines in two; piped output gets one plain line a record
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)-8s %(site)s: %(message)s", "%X")
        )
    handler._fedsim_console = True  # type: ignore[attr-defined]
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.addFilter(_ContextDefaults())
    if not verbose:
        handler.addFilter(_NotSiteLines())
    root.addHandler(handler)


@contextmanager
def live_console() -> Iterator[Console | None]:
    """The terminal the console log is shown on, for a live display drawn under its lines
    (it must be the log's own console, or the two would overwrite each other); None when
    the console is not a terminal. While held, records marked SHOWN_LIVE stay off it."""
    if _terminal is None:
        yield None
        return
    handler, console = _terminal
    hidden = _NotShownLive()
    handler.addFilter(hidden)
    try:
        yield console
    finally:
        handler.removeFilter(hidden)


class _MergedLogHandler(logging.FileHandler):
    """Stamps each record as it is written, under the handler's lock.

    Records come from many threads (one per site); stamping at write time makes the file
    strictly time-ordered, which a record's creation time would not guarantee.
    """

    def emit(self, record: logging.LogRecord) -> None:
        record.created = time.time()
        record.msecs = (record.created % 1) * 1000
        super().emit(record)


@contextmanager
def run_log_file(path: Path) -> Iterator[None]:
    """Send every fedsim record to the run's merged log for as long as the run lasts."""
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(logging.DEBUG)
    handler = _MergedLogHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_ContextDefaults())
    handler.setFormatter(_UTCFormatter(LINE_FORMAT))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


# --- inside a site -------------------------------------------------------------------------

FIELD_SEPARATOR = "\t"


def configure_agent_stdout() -> None:
    """The agent's records go to stdout as tab-separated lines the orchestrator parses."""
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_ContextDefaults())
    handler.setFormatter(logging.Formatter("%(component)s\t%(levelname)s\t%(message)s"))
    root.addHandler(handler)


def parse_site_line(line: str) -> tuple[str, int, str]:
    """Split one line of a site's stream into (component, level, message).

    Anything that does not have the agent's shape (a crash of the interpreter before logging
    was set up, say) is kept whole as an agent line rather than dropped.
    """
    parts = line.rstrip("\n").split(FIELD_SEPARATOR, 2)
    if len(parts) == 3 and parts[1] in logging.getLevelNamesMapping():
        return parts[0], logging.getLevelNamesMapping()[parts[1]], parts[2]
    return "agent", logging.INFO, line.rstrip("\n")
