"""``fedsim report [RUN] [--out FILE]``: a run as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsim.cli.inspect_cmds import OutputDirOpt, RunArg, find_or_abort


def report(
    run: RunArg = None,
    runs: OutputDirOpt = Path("runs"),
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write it (default: RUN/report.html)."),
    ] = None,
) -> None:
    """Write an HTML report of a run (timeline, traffic, memory, comparison, config)."""
    from fedsim.cli.output import stdout
    from fedsim.report import write_report

    stdout.print(str(write_report(find_or_abort(run, runs), out)), markup=False)


COMMANDS = {"report": report}
