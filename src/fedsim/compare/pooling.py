"""The centralised counterpart of a federated config: one site holding everyone's data.

Each CSV that sites hold under the same name is pooled by appending the sites' rows in the
config's site order; every other file (a shared config.yml) comes from the coordinator, or
from the first site that has it. Pooling in a known order is what lets the comparison line
up a site's row k with row ``offset[site] + k`` of the centralised run.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedsim.config import RunConfig, SiteConfig
from fedsim.errors import ConfigError

CENTRAL_SITE = "central"


@dataclass(frozen=True)
class PooledInputs:
    folder: Path
    offsets: dict[str, dict[str, int]]
    """CSV name -> site -> index of the site's first row in the pooled file."""
    totals: dict[str, int]
    """CSV name -> rows in the pooled file (where the last site's share ends)."""


def _site_files(site: SiteConfig) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for source in site.inputs:
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                files[path.relative_to(source).as_posix()] = path
        else:
            files[source.name] = source
    return files


def _records(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.reader(handle) if row]


def pool_inputs(config: RunConfig, dest: Path) -> PooledInputs:
    dest.mkdir(parents=True, exist_ok=True)
    ordered = sorted(config.sites, key=lambda s: not s.coordinator)  # coordinator's files first
    per_site = {site.name: _site_files(site) for site in config.sites}
    names = sorted({name for files in per_site.values() for name in files})
    offsets: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not name.endswith(".csv"):
            source = next(per_site[s.name][name] for s in ordered if name in per_site[s.name])
            shutil.copy2(source, target)
            continue
        header: list[str] | None = None
        rows: list[list[str]] = []
        offsets[name] = {}
        for site in config.sites:
            if name not in per_site[site.name]:
                continue
            records = _records(per_site[site.name][name])
            if not records:
                continue
            if header is None:
                header = records[0]
            elif records[0] != header:
                raise ConfigError(
                    f"cannot pool {name}: site {site.name} has other columns than the "
                    f"first site ({records[0]} vs {header})"
                )
            offsets[name][site.name] = len(rows)
            rows.extend(records[1:])
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if header is not None:
                writer.writerow(header)
            writer.writerows(rows)
        totals[name] = len(rows)
    return PooledInputs(dest, offsets, totals)


CENTRAL_TIMEOUT_FACTOR = 10
CENTRAL_TIMEOUT_MIN = 300.0
"""The centralised run's timeout: ten times the federated run's duration, at least five
minutes, at most the config's own. One site computes on all the data, so it may take longer
than each federated site, but an hour (the default timeout) of waiting for a run that the
federated one did in seconds explains nothing; the stall detection covers the usual hang."""


def centralised_timeout(config: RunConfig, federated_duration: float | None) -> float:
    if federated_duration is None:
        return float(config.timeout)
    wanted = max(CENTRAL_TIMEOUT_MIN, CENTRAL_TIMEOUT_FACTOR * federated_duration)
    return float(min(config.timeout, wanted))


def centralised_config(
    config: RunConfig, pooled: PooledInputs, output_dir: Path, timeout: float
) -> RunConfig:
    """The same app (or workflow) and settings, on one site that holds the pooled data, run
    by fedsim's own controller whatever platform ran the federated side."""
    coordinator = config.coordinator
    site = SiteConfig.model_construct(
        name=CENTRAL_SITE, coordinator=True, inputs=[pooled.folder], env_file=coordinator.env_file
    )
    return config.model_copy(
        update={
            "sites": [site],
            "platform": "embedded",
            "project_id": None,
            "faults": [],  # the reference run is the undisturbed computation
            "network": None,
            "output_dir": output_dir,
            "timeout": timeout,
            "name": f"{config.name}-centralised" if config.name else "centralised",
        }
    )
