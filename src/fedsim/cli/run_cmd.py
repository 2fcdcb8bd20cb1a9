"""``fedsim run CONFIG [--compare]`` and ``fedsim compare CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also show every site's log lines.")]


def _compare(config_path: Path, federated_run: Path | None) -> Path:
    from fedsim.compare import compare
    from fedsim.config import load_config
    from fedsim.errors import ComparisonFailed
    from fedsim.run import run as run_config

    config = load_config(config_path)
    if federated_run is None:
        federated_run = run_config(config).run_dir
    comparison = compare(config, federated_run, config.compare.tolerances)
    if comparison.problem is not None:
        raise ComparisonFailed(
            f"{comparison.problem} (see {federated_run / 'comparison.json'})", str(federated_run)
        )
    return federated_run


def run(
    config: Annotated[Path, typer.Argument(help="The run config (fedsim.toml).", readable=False)],
    compare: Annotated[
        bool, typer.Option("--compare", help="Also run centralised and compare.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Run the app across the config's sites; print the run directory last."""
    from fedsim.cli.output import stdout
    from fedsim.config import load_config
    from fedsim.logs import configure_console
    from fedsim.run import run as run_config

    configure_console(verbose)
    if compare:
        stdout.print(str(_compare(config, None)))
        return
    stdout.print(str(run_config(load_config(config)).run_dir))


def compare(
    config: Annotated[Path, typer.Argument(help="The run config (fedsim.toml).", readable=False)],
    federated: Annotated[
        Path | None,
        typer.Option(help="Compare this finished federated run instead of running one."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run federated and centralised, compare; write comparison.json and plots."""
    from fedsim.logs import configure_console

    configure_console(verbose)
    from fedsim.cli.output import stdout

    stdout.print(str(_compare(config, federated)))


COMMANDS = {"run": run, "compare": compare}
