"""``platform = "featurecloud"``: the whole order across three local sites against the
stand-ins (tests/fc_standin.py), each site's commands in its own process with its own env
file, each site's controller started by the ``featurecloud`` CLI stand-in, recorded in the
embedded platform's run directory layout."""

from __future__ import annotations

import json
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.config import load_config
from fedsim.errors import ExitCode, RunTimeout
from fedsim.featurecloud.credentials import CONTROLLER_URL, PASSWORD, USERNAME, WEBSITE_URL
from fedsim.featurecloud.platform import Polling, run_featurecloud
from tests.conftest import MEAN_APP, ROOT
from tests.fc_standin import (
    STANDIN_BIN,
    StandInWorld,
    kill_standin_controllers,
    serve,
    standin_cli_requirements,
    website_app,
)

USERS = {"site-a": "pw-a-secret", "site-b": "pw-b-secret", "site-c": "pw-c-secret"}
DATA = ROOT / "examples" / "mean" / "data"
FAST = Polling(status_interval=0.02, min_interval=0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def world_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[StandInWorld, Path]]:
    """Three local sites, each with its own env file and its own controller, started by the
    ``featurecloud`` CLI stand-in (installed in the CLI's own environment, as the real one
    is; the ``docker`` stand-in found on the PATH)."""
    world = StandInWorld(users=dict(USERS))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    only_docker = tmp_path / "bin"  # no featurecloud on the PATH: the run brings its own
    only_docker.mkdir()
    (only_docker / "docker").symlink_to(STANDIN_BIN / "docker")
    monkeypatch.setenv("PATH", f"{only_docker}{os.pathsep}{os.environ['PATH']}")
    with (
        standin_cli_requirements(tmp_path / "cli") as cli,
        serve(website_app(world)) as website,
    ):
        sites = ""
        for i, user in enumerate(USERS):
            env = tmp_path / f"{user}.env"
            env.write_text(
                f"{USERNAME}={user}\n{PASSWORD}={USERS[user]}\n{WEBSITE_URL}={website}\n"
                f"{CONTROLLER_URL}=http://127.0.0.1:{free_port()}\n"
            )
            env.chmod(0o600)
            coordinator = "true" if i == 0 else "false"
            sites += (
                f'\n[[sites]]\nname = "{user}"\ncoordinator = {coordinator}\n'
                f'inputs = ["{DATA / user}"]\nenv_file = "{user}.env"\n'
            )
        config = tmp_path / "fedsim.toml"
        config.write_text(
            f'app = "{MEAN_APP}"\nname = "fc"\noutput_dir = "runs"\nplatform = "featurecloud"\n'
            f'timeout = 30\n[featurecloud]\ncli_requirements = "{cli}"\n{sites}'
        )
        try:
            yield world, config
        finally:
            kill_standin_controllers(home)
    assert not list((home / ".featurecloud-standin").glob("*.pid"))  # every one stopped


def test_the_whole_order_across_three_sites_then_a_reused_project_that_never_finishes(
    world_and_config: tuple[StandInWorld, Path],
) -> None:
    world, config_path = world_and_config
    run_dir = run_featurecloud(load_config(config_path), FAST)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["project_id"] == 1
    assert set(summary["sites"]) == set(USERS)
    for user in USERS:
        site = run_dir / "sites" / user
        result = (site / "output" / "result.txt").read_text()
        assert result.startswith(f"{user} step 0: ['data.csv:")  # its own upload only
        with zipfile.ZipFile(site / "results.zip") as zf:
            assert zf.namelist() == ["result.txt"]
        assert f"stand-in log of {user}, run 1, step 0" in (site / "site.log").read_text()
        assert "logged in to http://127.0.0.1" in (site / "site.log").read_text()
        assert (
            "FeatureCloud controller started at http://127.0.0.1:"
            in (site / "site.log").read_text()
        )
        uploaded = (DATA / user / "data.csv").stat().st_size
        moved = summary["sites"][user]["controller"]
        assert moved["uploaded_bytes"] == uploaded and moved["downloaded_bytes"] > 0
    assert world.projects[1].members == set(USERS)
    shown = CliRunner().invoke(app, ["status", str(run_dir)])
    assert shown.exit_code == 0, shown.output
    assert "finished" in shown.stdout and "site-c" in shown.stdout
    everything = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())
    assert not any(password in everything for password in USERS.values())

    world.finish_after = None  # the next run never finishes; it reuses project 1
    config_path.write_text(
        config_path.read_text().replace("timeout = 30", "timeout = 0.5\nproject_id = 1")
    )
    with pytest.raises(RunTimeout) as caught:
        run_featurecloud(load_config(config_path), FAST)
    assert caught.value.exit_code == ExitCode.TIMEOUT and caught.value.run_dir
    assert "site site-a: fedsim fc monitor failed (exit 5)" in str(caught.value)
    assert len(world.projects) == 1 and world.projects[1].status == "stopped"
    failed = json.loads((Path(caught.value.run_dir) / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["project_id"] == 1
