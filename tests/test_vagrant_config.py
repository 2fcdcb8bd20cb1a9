"""The ``[vagrant]`` table and ``location = "vagrant"``: checked before anything starts, and
turned into one VM per site, each on a /30 of its own (no VM is booted here: see
``test_vagrant_sites.py``)."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import load_config
from fedsim.sites.factory import site_kind
from fedsim.vagrant.control import parse_ssh_config
from fedsim.vagrant.machines import vagrantfile, vm_set
from tests.test_config import validate, write

VM_SITES = """
[[sites]]
name = "site-a"
coordinator = true
inputs = ["a"]
location = "vagrant"

[[sites]]
name = "site-b"
inputs = ["b"]
location = "vagrant"

[[sites]]
name = "here"
inputs = ["a"]
"""


def test_vm_sites_get_a_30_each_and_their_own_isolated_network(tmp_path: Path) -> None:
    path = write(tmp_path, '[vagrant]\ndriver = "qemu"\nnetwork = "10.9.8.0/28"\n' + VM_SITES)
    config = load_config(path)
    assert [site_kind(s) for s in config.sites] == ["vagrant", "vagrant", "local"]
    vms = vm_set(config)
    assert vms is not None
    assert [(m.name, str(m.address), str(m.host_address)) for m in vms.machines] == [
        ("site-a", "10.9.8.2", "10.9.8.1"),
        ("site-b", "10.9.8.6", "10.9.8.5"),
    ]
    text = vagrantfile(vms)
    assert 'config.vm.box = "fedsim/debian12"' in text
    assert 'libvirt.management_network_mode = "none"' in text  # isolated: no forwarding
    assert 'libvirt.management_network_name = "fedsim-10-9-8-0-28-site-b"' in text
    assert 'libvirt.management_network_address = "10.9.8.4/30"' in text
    assert 'libvirt.driver = "qemu"' in text and 'libvirt.cpu_model = "Nehalem"' in text
    assert 'vm.vm.hostname = "site-a"' in text
    assert "/vagrant" in text and "disabled: true" in text  # no synced folder


def test_a_box_name_cannot_break_out_of_the_vagrantfile(tmp_path: Path) -> None:
    path = write(tmp_path, '[vagrant]\nbox = "x\\" #{`id`}"\n' + VM_SITES)
    vms = vm_set(load_config(path))
    assert vms is not None
    assert 'config.vm.box = "x\\" \\#{`id`}"' in vagrantfile(vms)


def test_bad_vagrant_settings_name_the_field_and_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[vagrant]\ndriver = "vmware"\nnetwork = "8.8.8.0/24"\nafter_run = "never"\n'
        "memory = 16\n" + VM_SITES,
    )
    code, output = validate(path)
    assert code == 2, output
    for field in ("vagrant.driver", "vagrant.network", "vagrant.after_run", "vagrant.memory"):
        assert f"{path}: {field}:" in output, (field, output)
    assert "private range" in output


def test_a_range_too_small_for_the_vms_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[vagrant]\nnetwork = "10.1.1.0/30"\n' + VM_SITES)
    code, output = validate(path)
    assert code == 2 and "holds 1 VM" in output and "has 2" in output, output


def test_a_vagrant_table_without_vm_sites_is_refused(tmp_path: Path) -> None:
    body = VM_SITES.replace('location = "vagrant"\n', "")
    code, output = validate(write(tmp_path, "[vagrant]\ncpus = 2\n" + body))
    assert code == 2 and 'vagrant: only with sites whose location = "vagrant"' in output, output


def test_ssh_keys_belong_to_ssh_sites_not_to_vms(tmp_path: Path) -> None:
    body = VM_SITES.replace('location = "vagrant"\n', 'location = "vagrant"\nworkdir = "/x"\n', 1)
    code, output = validate(write(tmp_path, body))
    assert code == 2 and "sites[0].workdir: only for a site on an SSH host" in output, output


def test_vagrant_ssh_config_is_read_per_host() -> None:
    text = (
        "Host site-a\n  HostName 10.77.0.2\n  User vagrant\n  Port 22\n"
        '  IdentityFile "/v/boxes/k"\n  StrictHostKeyChecking no\n\n'
        "Host site-b\n  HostName 10.77.0.6\n"
    )
    hosts = parse_ssh_config(text)
    assert hosts["site-a"]["hostname"] == "10.77.0.2"
    assert hosts["site-a"]["identityfile"] == '"/v/boxes/k"'
    assert hosts["site-b"] == {"hostname": "10.77.0.6"}
