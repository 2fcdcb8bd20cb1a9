"""Entry point: the command tree and the translation of fedsim errors into exit codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from fedsim.cli import (
    config_cmds,
    doctor_cmd,
    fc_cmd,
    inspect_cmds,
    provision_cmd,
    report_cmd,
    run_cmd,
    split_cmd,
    vm_cmd,
)

app = typer.Typer(
    name="fedsim",
    help="Run FeatureCloud apps across isolated simulated sites.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fedsim.cli.output import abort, debug_tracebacks, stdout
        from fedsim.errors import FedsimError

        try:
            return func(*args, **kwargs)
        except FedsimError as exc:
            if debug_tracebacks():
                raise
            if exc.run_dir:
                import signal

                from rich.markup import escape

                from fedsim.stopping import STOP_SIGNALS

                # the run is over and recorded: a further Ctrl-C (an impatient user's) must
                # not turn its exit code into death by signal while it says so and exits
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_IGN)

                from fedsim.cli.output import stderr

                message = str(exc)
                if exc.logged and "\n" in message:  # the run logged it all: one line here
                    message = f"{message.splitlines()[0]} (details above and in fedsim.log)"
                stderr.print(
                    f"[bold red]run failed:[/] {escape(message)}", markup=True, highlight=False
                )
                stdout.print(
                    exc.run_dir, markup=False
                )  # the run directory stays the last line of stdout
                raise typer.Exit(int(exc.exit_code)) from None
            abort(str(exc), int(exc.exit_code))

    return wrapper  # type: ignore[return-value]


for module in (
    run_cmd,
    config_cmds,
    inspect_cmds,
    report_cmd,
    split_cmd,
    doctor_cmd,
    provision_cmd,
):
    for name, command in module.COMMANDS.items():
        app.command(name)(handles_errors(command))


def _group(name: str, help: str, commands: dict[str, Callable[..., Any]]) -> None:
    """``fedsim NAME COMMAND``: a group of commands under one word."""
    group = typer.Typer(help=help, no_args_is_help=True)
    for command_name, command in commands.items():
        group.command(command_name)(handles_errors(command))
    app.add_typer(group, name=name)


_group("fc", "Drive featurecloud.ai as one user, with that user's own .env.", fc_cmd.COMMANDS)
_group(
    "vm",
    'The VMs of a config\'s location = "vagrant" sites, and the box they boot.',
    vm_cmd.COMMANDS,
)
