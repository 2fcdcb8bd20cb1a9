"""``fedsim provision`` for Dask sites: every worker of the cluster given the apps' environments.

A run provisions the workers it uses as its sites open (``DaskPlacement.prepare``); doing it
beforehand takes that time out of the run and tells, per worker, what was installed. Which
worker will hold which site is decided at run time, so every worker of the cluster gets every
step's app environment: the same wheelhouses and the same worker-side code
(``dask_task.provision_env``) as a run, asked first without the wheels so that they travel
only to the workers that lack the environment. A cluster the run starts itself
(``cluster = ...``) exists only during the run, which provisions it then.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fedsim.config import DASK_LOCATION
from fedsim.errors import EnvironmentBuildError, SiteUnreachable
from fedsim.sites.dask_task import provision_env
from fedsim.sites.provision import Provisioned, SiteProvisioning, app_wheelhouses
from fedsim.sites.tarball import pack

if TYPE_CHECKING:
    from fedsim.config import RunConfig

WORKER_ROW = "(dask worker)"
"""The site column of a worker's row: workers are not sites until the run places them."""


def provision_workers(config: RunConfig) -> list[SiteProvisioning]:
    """One row per worker of the config's running cluster (none without Dask sites)."""
    if not any(site.location == DASK_LOCATION for site in config.sites):
        return []
    assert config.dask is not None  # the config requires the table for dask sites
    address = config.dask.scheduler
    if address is None:
        return []
    from distributed import Client

    wheelhouses = app_wheelhouses(config)
    start = time.monotonic()
    try:
        client = Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        reason = f"the scheduler does not answer: {exc}"
        raise SiteUnreachable("dask sites", address, reason) from exc
    done: dict[str, dict[str, Provisioned]] = {}
    try:
        for wheels in wheelhouses:
            asked = client.run(provision_env, wheels.key, wheels.python, None)
            missing = sorted(w for w, answer in asked.items() if answer.get("env") is None)
            data, made = b"", {}
            if missing:
                data = pack(wheels.path)
                made = client.run(provision_env, wheels.key, wheels.python, data, workers=missing)
            for worker, answer in {**asked, **made}.items():
                if "error" in answer:
                    raise EnvironmentBuildError(f"dask worker {worker}: {answer['error']}")
                sent = len(data) if worker in made else 0
                done.setdefault(worker, {})[wheels.key] = Provisioned(
                    str(answer["env"]), bool(answer.get("installed")), sent
                )
    finally:
        client.close()
    seconds = time.monotonic() - start
    return [SiteProvisioning(WORKER_ROW, w, envs, seconds) for w, envs in sorted(done.items())]
