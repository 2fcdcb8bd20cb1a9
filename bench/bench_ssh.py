"""The three-site mean on SSH sites against the same run on local sites, measured together.

What an SSH site costs over a local one (the connection, the site host, uploads, the relay's
TLS through a forward, downloads), as a ratio of medians of runs taken alternately in one
session, so load and caches weigh on both alike; and what provisioning costs, cold (a fresh
host) and warm (the same host again). The hosts are the tests' real sshd hosts in network
namespaces of this script's own (``tests/sshd_hosts.py``); fedsim runs from their hub.

Run as root: .venv/bin/python bench/bench_ssh.py [--repeat N]
Writes bench/results/ssh.json. Only loopback and the script's own namespaces are used (the
wheelhouses and the app environment are built first, outside the namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.appenv import cache_root, ensure_app_env  # noqa: E402
from fedsim.sites.wheelhouse import agent_wheelhouse, app_wheelhouse  # noqa: E402
from tests.ssh_configs import make_home, ssh_site, write_config  # noqa: E402
from tests.sshd_hosts import ssh_network  # noqa: E402

DATA = ROOT / "examples" / "mean" / "data"
SITES = ("site-a", "site-b", "site-c")


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    app_wheelhouse(ensure_app_env(ROOT / "apps" / "mean"))
    agent_wheelhouse()
    with ssh_network() as network, tempfile.TemporaryDirectory() as tmp:
        hosts = network(3)
        work = Path(tmp)
        home = make_home(work, network.known_hosts)
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env.update(HOME=str(home), FEDSIM_CACHE_DIR=str(cache_root()))
        head = f'shorten_waits = true\noutput_dir = "{work}/runs"'
        local = write_config(
            work, [{"name": s, "inputs": [str(DATA / s)]} for s in SITES], head, "local.toml"
        )
        remote = write_config(
            work,
            [
                {**ssh_site(s, h), "inputs": [str(DATA / s)]}
                for s, h in zip(SITES, hosts, strict=True)
            ],
            head,
            "ssh.toml",
        )
        fedsim = [sys.executable, "-m", "fedsim"]
        cold = timed(network.in_hub([*fedsim, "provision", str(remote)]), env)
        warm = timed(network.in_hub([*fedsim, "provision", str(remote)]), env)
        times: dict[str, list[float]] = {"local": [], "ssh": []}
        for _ in range(args.repeat):
            times["local"].append(timed(network.in_hub([*fedsim, "run", str(local)]), env))
            times["ssh"].append(timed(network.in_hub([*fedsim, "run", str(remote)]), env))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "provision_cold_s": round(cold, 2),
        "provision_warm_s": round(warm, 2),
        "run_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "median_s": {k: round(v, 2) for k, v in medians.items()},
        "ssh_over_local": round(medians["ssh"] / medians["local"], 2),
    }
    out = ROOT / "bench" / "results" / "ssh.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
