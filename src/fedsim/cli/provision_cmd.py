"""``fedsim provision CONFIG``: make every SSH site and Dask worker ready to run, once; again
changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def provision(
    config: Annotated[Path, typer.Argument(help="The run config (fedsim.toml).", readable=False)],
) -> None:
    """Install fedsim's agent and each app's environment at every SSH site, and each app's
    environment at every worker of a Dask cluster, from wheels built here (nothing is
    downloaded there). With platform = "featurecloud": the agent, the featurecloud CLI in
    its own environment and Docker at every SSH site, once it reaches the website and the
    registry. `fedsim run` does the same for what is missing."""
    from rich.markup import escape
    from rich.table import Table

    from fedsim.cli.output import stdout
    from fedsim.config import load_config
    from fedsim.featurecloud.site_provision import provision_featurecloud_sites
    from fedsim.sites.dask_provision import provision_workers
    from fedsim.sites.provision import provision_sites

    cfg = load_config(config)
    if cfg.platform == "featurecloud":
        rows = provision_featurecloud_sites(cfg)
    else:
        rows = provision_sites(cfg)
    workers = provision_workers(cfg)
    if not rows and not workers:
        stdout.print("no SSH sites or running Dask cluster in this config: nothing to provision")
        return
    table = Table("site", "location", "environment", "done", "uploaded", "seconds")
    for row in rows + workers:
        for key, env in row.environments.items():
            done = "installed" if env.installed else "already there"
            sent = f"{env.uploaded_bytes / 2**20:.1f} MiB" if env.uploaded_bytes else "-"
            table.add_row(
                escape(row.site), escape(row.location), key, done, sent, f"{row.seconds:.1f}"
            )
        if row.docker is not None:
            done = "already there" if row.docker == "present" else row.docker
            table.add_row(escape(row.site), escape(row.location), "docker", done, "-", "")
    stdout.print(table)
    if rows:
        changed = sum(row.changed for row in rows)
        stdout.print(f"{changed} of {len(rows)} SSH sites changed")
    if workers:
        changed = sum(row.changed for row in workers)
        stdout.print(f"{changed} of {len(workers)} Dask workers changed")


COMMANDS = {"provision": provision}
