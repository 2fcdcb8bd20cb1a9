"""``fedsim init``: a config that validates and runs as written, with what it names.

A template naming an app and data that do not exist fails its own ``fedsim validate``, and a
new user's first command ends in an error. So the config comes with a small FeatureCloud app
(``column-stats``, federated column statistics, written the way docs/writing-an-app.md
explains), its config.yml and three sites' data, next to it; the user replaces them.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from fedsim.errors import ConfigError

STARTER = Path(__file__).resolve().parent
APP_DIR = "column-stats"
APP_CONFIG = "config.yml"
SITES = {"site-a": 40, "site-b": 25, "site-c": 60}
"""Sites and their rows: sizes that differ, as real institutions' do."""

TEMPLATE = """\
# fedsim run config, written by `fedsim init`. Paths are relative to this file's folder.
# Check it with `fedsim validate fedsim.toml`, run it with `fedsim run fedsim.toml`,
# compare it with the centralised run with `fedsim compare fedsim.toml`.

# A FeatureCloud app directory (main.py, requirements.txt, states). column-stats is a small
# example next to this file; docs/writing-an-app.md explains it. Put your own app here.
app = "column-stats"
# name = "my-study"          # optional label, part of the run id (letters, digits, -)
# output_dir = "runs"        # where runs/<run-id>/ is written (relative to this file);
#                            # default: runs/ in the directory fedsim is started from;
#                            # never inside an app or an input
timeout = 600                # seconds; the run is stopped and marked failed after this
stall_timeout = 60           # seconds with no state change and no message: ended as stalled
shorten_waits = true         # shrink the FeatureCloud engine's fixed sleeps
#                            # (timing only, never results); false: the engine's real waits
# seed = 42                  # makes randomness in fedsim reproducible
# python = "3.10"            # the app's Python (a version or a path); default fedsim's
# requirements = "reqs.txt"  # replaces the app's requirements.txt (old pins, say)
# capture_payloads = false   # keep every payload that crosses the relay, for inspection
# poll_interval = 0.02       # seconds between the agent's polls of the app
# network = "wan"            # every site's link to the relay: "lan", "wan", "hospital-vpn"
#                            # or { latency_ms = 80, up_mbit = 10, ... } (see README)
# platform = "embedded"      # or "featurecloud": featurecloud.ai, each site's env_file
#                            # holding its own user's login (see README)
# project_id = 123           # featurecloud: reuse this project instead of creating one

# What each site may use (a site may override any of them in its own [sites.limits]).
# [limits]
# memory = "4GiB"            # the app's memory; over it, the site fails saying so
# processes = 512            # processes and threads of the app
# cpu = 1.0                  # cores
# tmp = "1GiB"               # the app's /tmp
# output = "10GiB"           # what the app may write to /mnt/output

# A workflow instead of one app: each step sees the previous step's output of the site.
# [[steps]]
# app = "column-stats"
# [[steps]]
# app = "my-next-app"        # reads column-stats' stats.csv from /mnt/input
# inputs = ["next.yml"]      # extra files for every site in this step

[[sites]]
name = "site-a"
coordinator = true           # exactly one site coordinates
inputs = ["data/site-a", "config.yml"]  # files or folders copied into its /mnt/input
# env_file = "secrets/site-a.env"  # this site's secrets (mode 0600), seen only by its app
# location = "ssh://user@host:22"  # a site on another machine (HOST may be a ~/.ssh/config
#                            # alias); left out: a sandbox here. `fedsim provision`
#                            # prepares it, `fedsim doctor` checks it
# ssh_key = "~/.ssh/id_ed25519"  # the login key (mode 0600); default: as ssh would choose
# workdir = "~/.fedsim"      # the folder fedsim uses on that host
# ssh_accept_new = false     # true: trust an unknown host key once and add it to known_hosts

[[sites]]
name = "site-b"
inputs = ["data/site-b", "config.yml"]

[[sites]]
name = "site-c"
inputs = ["data/site-c", "config.yml"]
"""


def _site_data(rows: int, rng: random.Random) -> str:
    lines = ["id,height,weight,group"]
    for i in range(rows):
        height = rng.gauss(170, 9)
        weight = 0.9 * height - 85 + rng.gauss(0, 8)
        lines.append(f"{i},{height:.1f},{weight:.1f},{rng.choice('ab')}")
    return "\n".join(lines) + "\n"


def write_starter(config: Path, force: bool = False) -> list[Path]:
    """Write ``config`` and, beside it, the example app, its config.yml and the sites' data.
    Nothing is overwritten without ``force``; the paths written are returned."""
    folder = config.parent
    targets = [config, folder / APP_DIR, folder / APP_CONFIG, folder / "data"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} exist(s); use --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(STARTER / APP_DIR, folder / APP_DIR, dirs_exist_ok=True)
    shutil.copy(STARTER / APP_CONFIG, folder / APP_CONFIG)
    rng = random.Random(0)
    for site, rows in SITES.items():
        (folder / "data" / site).mkdir(parents=True, exist_ok=True)
        (folder / "data" / site / "data.csv").write_text(_site_data(rows, rng), encoding="utf-8")
    config.write_text(TEMPLATE, encoding="utf-8")
    return targets
