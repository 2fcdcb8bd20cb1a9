"""``fedsim doctor CONFIG``: one row per site, and a non-zero exit when one is not ready."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def doctor(
    config: Annotated[Path, typer.Argument(help="The run config (fedsim.toml).", readable=False)],
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per site, for scripts.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to connect to each SSH host or Dask scheduler.", min=0.1)
    ] = 15.0,
    ssh_config: Annotated[
        list[Path] | None,
        typer.Option(help="OpenSSH client config to read instead of ~/.ssh/config."),
    ] = None,
) -> None:
    """Check that every site is ready: reachable, Python, disk, agent, sandbox, clock.

    Exits 9 when a site is not ready; the table (or --json) says why."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from fedsim.cli.output import stdout
    from fedsim.config import load_config
    from fedsim.doctor import check_sites
    from fedsim.errors import ExitCode

    cfg = load_config(config)
    rows = check_sites(cfg, timeout=timeout, ssh_config=ssh_config or None)
    if json_output:
        stdout.print_json(json.dumps({"sites": [row.as_json() for row in rows]}))
    else:
        table = Table(
            "site", "location", "reachable", "python", "disk free", "agent", "sandbox",
            "clock offset", "ready",
        )  # fmt: skip
        for row in rows:
            offset = "-" if row.clock_offset is None else f"{row.clock_offset * 1000:+.0f} ms"
            verdict = (
                "[green]yes[/]" if row.ready else "[red]no[/]: " + escape("; ".join(row.problems))
            )
            if row.notes:
                verdict += " (" + escape("; ".join(row.notes)) + ")"
            table.add_row(
                escape(row.site),
                escape(row.location),
                "yes" if row.reachable else "no",
                escape(row.python or "-"),
                _size(row.disk_free),
                escape(row.agent or "-"),
                "-" if row.sandbox is None else ("yes" if row.sandbox else "no"),
                offset,
                verdict,
            )
        stdout.print(table)
    if not all(row.ready for row in rows):
        raise typer.Exit(int(ExitCode.NOT_READY))


COMMANDS = {"doctor": doctor}
