"""``fedsim init`` and ``fedsim validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("fedsim.toml"),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented config, with a small example app and three sites' data beside it,
    ready for ``fedsim validate``, ``fedsim run`` and ``fedsim compare``."""
    from fedsim.cli.output import stderr, stdout
    from fedsim.starter import write_starter

    written = write_starter(path, force)
    stderr.print(f"wrote {', '.join(str(p) for p in written[1:])} beside it", markup=False)
    stdout.print(str(path), markup=False)


def validate(
    config: Annotated[Path, typer.Argument(help="The run config to check.", readable=False)],
) -> None:
    """Check a config and every file it names, without starting anything.

    The argument is not checked by Typer (``readable=False``): load_config reports a config
    it cannot read in the same one-line shape as every other fault."""
    from fedsim.cli.output import stdout
    from fedsim.config import load_config
    from fedsim.logs import counted

    cfg = load_config(config)
    sites = ", ".join(f"{s.name}{' (coordinator)' if s.coordinator else ''}" for s in cfg.sites)
    if cfg.app is not None:
        what = f"app {cfg.app.name}"
    else:  # a workflow: its steps in order
        what = f"workflow {' -> '.join(step.app.name for step in cfg.steps)}"
    stdout.print(f"{config}: ok: {what}, {counted(len(cfg.sites), 'site')}: {sites}", markup=False)


COMMANDS = {"init": init, "validate": validate}
