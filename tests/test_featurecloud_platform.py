"""``platform = "featurecloud"``: the whole order across three local sites against the
stand-ins (tests/fc_standin.py), each site's commands in its own process with its own env
file, recorded in the embedded platform's run directory layout."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.config import load_config
from fedsim.errors import ExitCode, RunTimeout
from fedsim.featurecloud.credentials import CONTROLLER_URL, PASSWORD, USERNAME, WEBSITE_URL
from fedsim.featurecloud.platform import Polling, run_featurecloud
from tests.conftest import MEAN_APP
from tests.fc_standin import StandInWorld, controller_app, serve, website_app

USERS = {"site-a": "pw-a-secret", "site-b": "pw-b-secret", "site-c": "pw-c-secret"}
FAST = Polling(status_interval=0.02, min_interval=0.0)


@pytest.fixture
def world_and_config(tmp_path: Path) -> Iterator[tuple[StandInWorld, Path]]:
    world = StandInWorld(users=dict(USERS))
    with ExitStack() as stack:
        website = stack.enter_context(serve(website_app(world)))
        sites = ""
        for i, user in enumerate(USERS):
            controller = stack.enter_context(serve(controller_app(world, user)))
            env = tmp_path / f"{user}.env"
            env.write_text(
                f"{USERNAME}={user}\n{PASSWORD}={USERS[user]}\n"
                f"{WEBSITE_URL}={website}\n{CONTROLLER_URL}={controller}\n"
            )
            env.chmod(0o600)
            data = tmp_path / "data" / user
            data.mkdir(parents=True)
            (data / "data.csv").write_text(f"x\n{i}\n")
            coordinator = "true" if i == 0 else "false"
            sites += (
                f'\n[[sites]]\nname = "{user}"\ncoordinator = {coordinator}\n'
                f'inputs = ["data/{user}"]\nenv_file = "{user}.env"\n'
            )
        config = tmp_path / "fedsim.toml"
        config.write_text(
            f'app = "{MEAN_APP}"\nname = "fc"\noutput_dir = "runs"\nplatform = "featurecloud"\n'
            f"timeout = 30\n{sites}"
        )
        yield world, config


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
