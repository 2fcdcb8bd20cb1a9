"""``fedsim run CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def run(
    config: Annotated[Path, typer.Argument(help="The run config (fedsim.toml).")],
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show every site's log lines.")
    ] = False,
) -> None:
    """Run the app across the config's sites; print the run directory last."""
    from fedsim.cli.output import stdout
    from fedsim.config import load_config
    from fedsim.logs import configure_console
    from fedsim.run import run as run_config

    configure_console(verbose)
    result = run_config(load_config(config))
    stdout.print(str(result.run_dir))


COMMANDS = {"run": run}
