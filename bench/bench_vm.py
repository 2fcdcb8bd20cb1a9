"""The three-site mean on VMs (Vagrant, libvirt) next to local and SSH sites, in one session.

What a VM site costs: the box build (only when the box is missing, or with --build-box),
``fedsim vm up`` for three VMs (and again, when they run), provisioning cold (the first run on
fresh VMs minus the median of the later runs, which provision nothing: warm provisioning is
their check that every environment is there), and the mean on VMs, local sites and SSH sites
(the tests' sshd hosts), taken alternately so that load weighs on all alike. The VMs run
under the tests' libvirtd (``tests/libvirt_world.py``), software-emulated (``driver =
"qemu"``) unless --driver kvm.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_ssh import timed  # noqa: E402
from fedsim.appenv import cache_root, ensure_app_env  # noqa: E402
from fedsim.sites.wheelhouse import agent_wheelhouse, app_wheelhouse  # noqa: E402
from tests.libvirt_world import libvirt_world  # noqa: E402
from tests.ssh_configs import make_home, ssh_site, write_config  # noqa: E402
from tests.sshd_hosts import ssh_network  # noqa: E402

DATA = ROOT / "examples" / "mean" / "data"
SITES = ("site-a", "site-b", "site-c")


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
    box_s = timed(build, env)
    app_wheelhouse(ensure_app_env(ROOT / "apps" / "mean"))
    agent_wheelhouse()
    result: dict[str, object] = {"box_build_or_check_s": round(box_s, 1), "driver": args.driver}
    with libvirt_world() as world, ssh_network() as network, tempfile.TemporaryDirectory() as tmp:
        hosts = network(3)
        work = Path(tmp)
        home = make_home(work, network.known_hosts)
        head = f'shorten_waits = true\noutput_dir = "{work}/runs"'
        inputs = {s: {"inputs": [str(DATA / s)]} for s in SITES}
        local = write_config(work, [{"name": s, **inputs[s]} for s in SITES], head, "local.toml")
        ssh = write_config(
            work,
            [{**ssh_site(s, h), **inputs[s]} for s, h in zip(SITES, hosts, strict=True)],
            head,
            "ssh.toml",
        )
        vm_head = f'{head}\n[vagrant]\ndriver = "{args.driver}"\nnetwork = "10.78.0.0/24"'
        vm = write_config(
            work,
            [{"name": s, "location": "vagrant", **inputs[s]} for s in SITES],
            vm_head,
            "vm.toml",
        )
        ssh_env = {**env, "HOME": str(home)}
        try:
            result["vm_up_3_s"] = round(timed(world.inside([*fedsim, "vm", "up", str(vm)]), env), 1)
            result["vm_up_again_s"] = round(
                timed(world.inside([*fedsim, "vm", "up", str(vm)]), env), 1
            )
            result["vm_first_run_with_provisioning_s"] = round(
                timed(world.inside([*fedsim, "run", str(vm)]), env), 1
            )
            ssh_cold = timed(network.in_hub([*fedsim, "provision", str(ssh)]), ssh_env)
            result["ssh_provision_cold_s"] = round(ssh_cold, 1)
            times: dict[str, list[float]] = {"local": [], "ssh": [], "vm": []}
            for _ in range(args.repeat):
                times["local"].append(timed([*fedsim, "run", str(local)], env))
                times["ssh"].append(timed(network.in_hub([*fedsim, "run", str(ssh)]), ssh_env))
                times["vm"].append(timed(world.inside([*fedsim, "run", str(vm)]), env))
        finally:
            start = time.monotonic()
            subprocess.run(world.inside([*fedsim, "vm", "destroy", str(vm)]), env=env, check=False)
            result["vm_destroy_s"] = round(time.monotonic() - start, 1)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result["vm_provision_cold_s"] = round(
        float(result["vm_first_run_with_provisioning_s"]) - medians["vm"],
        1,  # type: ignore[arg-type]
    )
    result["run_s"] = {k: [round(t, 2) for t in v] for k, v in times.items()}
    result["median_s"] = {k: round(v, 2) for k, v in medians.items()}
    result["vm_over_local"] = round(medians["vm"] / medians["local"], 2)
    result["vm_over_ssh"] = round(medians["vm"] / medians["ssh"], 2)
    out = ROOT / "bench" / "results" / "vm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
