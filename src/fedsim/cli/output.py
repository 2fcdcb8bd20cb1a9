"""All terminal output of the CLI: results on stdout, messages on stderr."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def abort(message: str, code: int) -> NoReturn:
    """The message is escaped: it quotes the user's keys and paths, and ``[/]`` or ``[bold]``
    in them is text, not Rich markup (a stray closing tag would crash the error report)."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def debug_tracebacks() -> bool:
    """Tracebacks are for developers: shown only when FEDSIM_DEBUG is set."""
    return bool(os.environ.get("FEDSIM_DEBUG"))
