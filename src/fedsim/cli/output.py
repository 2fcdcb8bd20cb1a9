"""All terminal output of the CLI: results on stdout, messages on stderr."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

UNWRAPPED_WIDTH = 10_000
"""Rich's width when the output is not a terminal: its default there is 80 columns, which
breaks run directory paths and table rows of piped output (logs, scripts, CI) in two."""


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = UNWRAPPED_WIDTH
    return console


stderr = _console(stderr=True)
stdout = _console(stderr=False)


def abort(message: str, code: int) -> NoReturn:
    """The message is escaped: it quotes the user's keys and paths, and ``[/]`` or ``[bold]``
    in them is text, not Rich markup (a stray closing tag would crash the error report)."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def debug_tracebacks() -> bool:
    """Tracebacks are for developers: shown only when FEDSIM_DEBUG is set."""
    return bool(os.environ.get("FEDSIM_DEBUG"))
