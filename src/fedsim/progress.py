"""What a running step shows the person who started it, and the timeline it leaves behind.

The watch loop ticks the display 20 times a second. Every tick reads each site's row
(its status, its app's last report, its messages and bytes so far) and:

- logs one plain line when a site's app message or progress changes, which is all a pipe,
  a file or CI shows, and what ``fedsim.log`` keeps either way;
- on a terminal, also redraws a Rich live table of the rows on stderr, in place and under
  the log lines, while those per-site lines are kept off the terminal (the table shows
  them);
- records each change of a row in the run's timeline, written to ``states.csv``, which
  ``fedsim report`` draws.

The table is redrawn only when a row changed, four times a second at most, from the watch
loop's own thread (no refresh thread), so the display costs the run nothing it would
notice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from fedsim.logs import SHOWN_LIVE, get_logger, live_console
from fedsim.relay.state import SiteTraffic

log = get_logger("run")
STATUS_TEXT_LIMIT = 200
"""An app's status text is the app's to choose: one line of this many characters at most
reaches the console (rendering is costly in the length of a line)."""
LIVE_REDRAW_INTERVAL = 0.25
"""Seconds between two redraws of the live table, at most; it is redrawn only when a row
changed (and whenever a log line is printed above it)."""


def console_text(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= STATUS_TEXT_LIMIT else text[: STATUS_TEXT_LIMIT - 1] + "…"


def progress_text(status: dict[str, Any]) -> str | None:
    """One site's progress line: its message, else its state, and the progress if any.

    None when there is nothing to say: an app that reports neither a message nor a state
    (engines without messages do) would otherwise log "None" at every change.
    """
    text = status.get("message") or status.get("state")
    progress = status.get("progress")
    parts = [] if text is None else [console_text(text)]
    if progress is not None:
        parts.append(f"({progress:.0%})")
    return " ".join(parts) or None


@dataclass(frozen=True)
class SiteRow:
    """One site at one moment, as the display shows it."""

    name: str
    coordinator: bool
    status: str
    """The site's own fate: pending, running, finished, failed, stopped."""
    app: dict[str, Any]
    """The app's last status report (state, message, progress, and when it arrived)."""
    traffic: SiteTraffic

    @property
    def state(self) -> tuple[str, Any, Any, Any]:
        app = self.app
        return (self.status, app.get("state"), app.get("message"), app.get("progress"))


@dataclass(frozen=True)
class StateChange:
    """A row of ``states.csv``: a site's status or app state changed at ``time``."""

    time: float
    step: int
    site: str
    status: str
    state: str | None
    message: str | None
    progress: float | None


@dataclass
class Timeline:
    """Every change of every site's state, in the order the display saw them.

    A change is seen at the next tick (50 ms at most after it); an app that passes through
    two states within one tick is recorded in the second only. An app's own change is
    stamped with the time its report reached the relay, a site's fate with the tick's time.
    """

    changes: list[StateChange] = field(default_factory=list)
    _last: dict[tuple[int, str], tuple[str, Any, Any, Any]] = field(default_factory=dict)

    def observe(self, step: int, rows: list[SiteRow], now: float) -> None:
        for row in rows:
            last = self._last.get((step, row.name))
            if last == row.state:
                continue
            self._last[(step, row.name)] = row.state
            app_changed = last is None or last[1:] != row.state[1:]
            status, state, message, progress = row.state
            when = float(row.app.get("time", now)) if app_changed else now
            self.changes.append(StateChange(when, step, row.name, status, state, message, progress))


def site_table(rows: list[SiteRow], title: str | None) -> Any:
    """The live display's table: a row per site, the app's own text never read as markup."""
    from rich.filesize import decimal
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    for column in ("site", "status", "app state"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=60)
    table.add_column("progress", no_wrap=True)
    for column in ("sent", "received"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        progress = row.app.get("progress")
        t = row.traffic
        table.add_row(
            f"{row.name} (coordinator)" if row.coordinator else row.name,
            row.status,
            # the app chooses its text: Text, so "[/]" or "[bold]" in it is not Rich markup
            Text(console_text(row.app.get("message") or row.app.get("state") or "")),
            "" if progress is None else _bar(progress),
            f"{t.sent} msg / {decimal(t.bytes_sent)}",
            f"{t.received} msg / {decimal(t.bytes_received)}",
        )
    return table


def _bar(progress: float) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    cell = Table.grid(padding=(0, 1))
    cell.add_row(ProgressBar(total=1.0, completed=progress, width=20), f"{progress:4.0%}")
    return cell


class ProgressDisplay:
    """One step's display, from before its sites start until they are stopped and collected.

    ``rows`` reads the sites' rows; ``tick`` is called by the watch loop; leaving the
    ``with`` ticks once more, so the table and the timeline end with every site's fate.
    """

    def __init__(
        self,
        rows: Callable[[], list[SiteRow]],
        step: int,
        timeline: Timeline,
        title: str | None,
    ) -> None:
        self._rows = rows
        self._step = step
        self._timeline = timeline
        self._title = title
        self._logged: dict[str, tuple[Any, Any]] = {}
        self._drawn: list[tuple[Any, ...]] | None = None
        self._redrawn = 0.0
        self._stale = False
        self._live: Any = None
        self._stack = ExitStack()

    def __enter__(self) -> ProgressDisplay:
        console = self._stack.enter_context(live_console())
        if console is not None:
            from rich.live import Live

            # taller than the terminal, the table is cut while it runs (a redraw in place
            # cannot reach lines scrolled away) and shown whole when the step ends
            self._live = self._stack.enter_context(Live(console=console, auto_refresh=False))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.tick()
        finally:
            self._stack.close()

    def tick(self) -> None:
        rows = self._rows()
        self._timeline.observe(self._step, rows, time.time())
        self._log_changes(rows)
        if self._live is not None:
            drawn = [(*r.state, r.coordinator, r.traffic) for r in rows]
            if drawn != self._drawn:
                self._drawn, self._stale = drawn, True
                self._live.update(site_table(rows, self._title) if rows else "")
            now = time.monotonic()
            if self._stale and now - self._redrawn >= LIVE_REDRAW_INTERVAL:
                self._live.refresh()
                self._redrawn, self._stale = now, False

    def _log_changes(self, rows: list[SiteRow]) -> None:
        """A line when a site's app message or progress changes, so long runs show where
        they are in any log; kept off a terminal that shows the live table instead."""
        for row in rows:
            view = (row.app.get("message"), row.app.get("progress"))
            if not row.app or self._logged.get(row.name) == view:
                continue
            self._logged[row.name] = view
            line = progress_text(row.app)
            if line is not None:
                log.info("site %s: %s", row.name, line, extra={SHOWN_LIVE: True})


__all__ = [
    "ProgressDisplay",
    "SiteRow",
    "StateChange",
    "Timeline",
    "console_text",
    "progress_text",
    "site_table",
]
