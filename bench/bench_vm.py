"""The three-site mean on VMs (Vagrant, libvirt) next to local and SSH sites, in one session.

What a VM site costs, for issue 13's closing note, in one run: the box build (with
--build-box; otherwise only the check that Vagrant has it), ``fedsim vm up`` for three VMs
(and again, when they run), provisioning cold (the first run on fresh VMs) and warm (the
later runs, which find every environment there): each site's ``provisioning_s`` from the
run's summary, the slowest site per run, since sites provision at once. Then the mean on
VMs, local sites and SSH sites (the tests' sshd hosts), taken alternately so that load
weighs on all alike; every run's means are checked against the pooled data's (relative
tolerance 1e-12). The VMs run under the tests' libvirtd (``tests/libvirt_world.py``),
software-emulated (``driver = "qemu"``) unless --driver kvm.

Run as root: .venv/bin/python bench/bench_vm.py [--repeat N] [--build-box] [--driver qemu]
Writes bench/results/vm.json. Only loopback and the script's own namespaces are used (the
box build fetches Debian's packages from the machine's mirror first, outside them).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsim.appenv import cache_root, ensure_app_env  # noqa: E402
from fedsim.sites.wheelhouse import agent_wheelhouse, app_wheelhouse  # noqa: E402
from tests.libvirt_world import libvirt_world  # noqa: E402
from tests.ssh_configs import make_home, ssh_site, write_config  # noqa: E402
from tests.sshd_hosts import ssh_network  # noqa: E402
from tests.test_ssh_sites import assert_pooled_means  # noqa: E402

DATA = ROOT / "examples" / "mean" / "data"
SITES = ("site-a", "site-b", "site-c")


def call(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds ``argv`` took and what it printed; a failure ends the bench with its stderr."""
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} failed:\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def mean_run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One ``fedsim run``: its seconds, checked against the pooled means, and its slowest
    site's provisioning (0 for local sites)."""
    seconds, stdout = call(argv, env)
    run_dir = Path(stdout.strip().splitlines()[-1])
    assert_pooled_means(run_dir, list(SITES))
    summary = json.loads((run_dir / "summary.json").read_text())
    placements = [summary["sites"][s]["placement"] for s in SITES]
    return seconds, max(p.get("provisioning_s", 0.0) for p in placements)


def table(result: dict[str, Any]) -> str:
    """The figures as the closing note's Markdown table."""
    median, prov = result["median_s"], result["provisioning_s"]
    rows = [
        (result["box"], result["box_s"]),
        ("`fedsim vm up`, 3 VMs from nothing", result["vm_up_3_s"]),
        ("`fedsim vm up` again (running, nothing changes)", result["vm_up_again_s"]),
        ("provisioning cold, 3 VMs at once (slowest site)", prov["vm_cold"]),
        ("provisioning warm, VMs (median of the runs' slowest site)", prov["vm_warm"]),
        ("provisioning cold, 3 SSH hosts (`fedsim provision`)", prov["ssh_cold"]),
        ("provisioning warm, SSH (median of the runs' slowest site)", prov["ssh_warm"]),
        ("mean on 3 VMs, first run (cold provisioning)", result["vm_first_run_s"]),
        (f"mean on 3 VMs, warm (median of {result['repeat']})", median["vm"]),
        (f"mean on 3 SSH sites (median of {result['repeat']})", median["ssh"]),
        (f"mean on 3 local sites (median of {result['repeat']})", median["local"]),
        ("`fedsim vm destroy`, 3 VMs", result["vm_destroy_s"]),
    ]
    lines = ["| step | seconds |", "|---|---|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--build-box", action="store_true", help="build the box even if cached")
    parser.add_argument("--driver", default="qemu", choices=("qemu", "kvm"))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(FEDSIM_CACHE_DIR=str(cache_root()), VAGRANT_HOME=str(cache_root() / "vagrant-home"))
    fedsim = [sys.executable, "-m", "fedsim"]
    build = [*fedsim, "vm", "build-box", *(["--force"] if args.build_box else [])]
    box_s, box_out = call(build, env)
    built = "already in Vagrant" not in box_out
    result: dict[str, Any] = {
        "driver": args.driver,
        "repeat": args.repeat,
        "box": "`fedsim vm build-box`" if built else "box already in Vagrant (check only)",
        "box_s": round(box_s, 1),
        "load_average_at_start": os.getloadavg(),
    }
    app_wheelhouse(ensure_app_env(ROOT / "apps" / "mean"))
    agent_wheelhouse()
    times: dict[str, list[float]] = {"local": [], "ssh": [], "vm": []}
    warm: dict[str, list[float]] = {"ssh": [], "vm": []}
    with libvirt_world() as world, ssh_network() as network, tempfile.TemporaryDirectory() as tmp:
        hosts = network(3)
        work = Path(tmp)
        home = make_home(work, network.known_hosts)
        head = f'shorten_waits = true\ntimeout = 1800\noutput_dir = "{work}/runs"'
        inputs = {s: {"inputs": [str(DATA / s)]} for s in SITES}
        local = write_config(work, [{"name": s, **inputs[s]} for s in SITES], head, "local.toml")
        ssh = write_config(
            work,
            [{**ssh_site(s, h), **inputs[s]} for s, h in zip(SITES, hosts, strict=True)],
            head,
            "ssh.toml",
        )
        vm_head = (
            f'{head}\n[vagrant]\ndriver = "{args.driver}"\nnetwork = "10.78.0.0/24"\n'
            "cpus = 1\nmemory = 1024"
        )
        vm = write_config(
            work,
            [{"name": s, "location": "vagrant", **inputs[s]} for s in SITES],
            vm_head,
            "vm.toml",
        )
        ssh_env = {**env, "HOME": str(home)}
        try:
            result["vm_up_3_s"] = round(
                call(world.inside([*fedsim, "vm", "up", str(vm)]), env)[0], 1
            )
            result["vm_up_again_s"] = round(
                call(world.inside([*fedsim, "vm", "up", str(vm)]), env)[0], 1
            )
            first, vm_cold = mean_run(world.inside([*fedsim, "run", str(vm)]), env)
            result["vm_first_run_s"] = round(first, 1)
            ssh_cold = call(network.in_hub([*fedsim, "provision", str(ssh)]), ssh_env)[0]
            for _ in range(args.repeat):
                times["local"].append(mean_run([*fedsim, "run", str(local)], env)[0])
                seconds, provisioning = mean_run(
                    network.in_hub([*fedsim, "run", str(ssh)]), ssh_env
                )
                times["ssh"].append(seconds)
                warm["ssh"].append(provisioning)
                seconds, provisioning = mean_run(world.inside([*fedsim, "run", str(vm)]), env)
                times["vm"].append(seconds)
                warm["vm"].append(provisioning)
        finally:
            start = time.monotonic()
            subprocess.run(world.inside([*fedsim, "vm", "destroy", str(vm)]), env=env, check=False)
            result["vm_destroy_s"] = round(time.monotonic() - start, 1)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result["provisioning_s"] = {
        "vm_cold": round(vm_cold, 1),
        "vm_warm": round(statistics.median(warm["vm"]), 1),
        "ssh_cold": round(ssh_cold, 1),
        "ssh_warm": round(statistics.median(warm["ssh"]), 1),
    }
    result["run_s"] = {k: [round(t, 2) for t in v] for k, v in times.items()}
    result["median_s"] = {k: round(v, 2) for k, v in medians.items()}
    result["vm_over_local"] = round(medians["vm"] / medians["local"], 2)
    result["vm_over_ssh"] = round(medians["vm"] / medians["ssh"], 2)
    result["load_average_at_end"] = os.getloadavg()
    out = ROOT / "bench" / "results" / "vm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
