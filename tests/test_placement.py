"""The placement seam: the agent's launch description, the group that drives every site at
once, and a real workflow whose sites are opened once and reused by both steps."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fedsim.agent.launch import AgentLaunch
from fedsim.appenv import cache_root
from fedsim.config import load_config
from fedsim.errors import ConfigError, SiteFailed
from fedsim.run import agent_launch, run
from fedsim.sites import factory
from fedsim.sites.group import SiteGroup
from fedsim.sites.local_step import launch_bytes
from tests.conftest import MEAN_APP, ROOT
from tests.test_controller import workflow_config

# --- the launch description -----------------------------------------------------------------


def test_the_launch_description_round_trips_through_json() -> None:
    launch = AgentLaunch(site="a", clients=("a", "b"), coordinator="a", poll_interval=0.5, seed=7)
    assert AgentLaunch.from_json(launch.to_json()) == launch
    assert launch.relay_socket() == "/run/fedsim/relay.sock"
    with pytest.raises(ValueError, match="unknown keys"):
        AgentLaunch.from_json(json.dumps({**json.loads(launch.to_json()), "token": "x"}))


@pytest.mark.parametrize(
    "url", ["tcp://relay:443", "unix://host/run/relay.sock", "unix:relative.sock", "/a.sock"]
)
def test_a_relay_url_the_agent_cannot_use_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported relay URL"):
        AgentLaunch(site="a", clients=("a",), coordinator="a", relay_url=url).relay_socket()


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in [*value.keys(), *value.values()] for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_the_serialised_launch_description_holds_no_host_path(tmp_path: Path) -> None:
    config = load_config(ROOT / "examples" / "mean" / "fedsim.toml")
    host_paths = {
        str(ROOT),
        str(config.output_dir.resolve()),
        str(MEAN_APP.resolve()),
        str(cache_root()),
        tempfile.gettempdir(),
        str(Path.home()),
        *(str(p.resolve()) for s in config.sites for p in s.inputs),
    }
    for site in config.sites:
        launch = agent_launch(config, site.name)
        for text in (launch.to_json(), launch_bytes(launch).decode()):
            found = [s for s in strings(json.loads(text)) for p in host_paths if p in s]
            assert not found, f"host paths in {text}: {found}"
            assert "token" not in text


# --- the group of sites ---------------------------------------------------------------------


class FakePlacement:
    """Records what it is asked, in which thread, and fails where told."""

    def __init__(self, name: str, fail_open: bool = False, slow: float = 0.0) -> None:
        self.name = name
        self.fail_open = fail_open
        self.slow = slow
        self.calls: list[str] = []
        self.threads: set[str] = set()

    def open(self) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.slow)
        if self.fail_open:
            raise OSError("no network here")
        self.calls.append("open")

    def close(self) -> None:
        self.calls.append("close")


class Family:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def group_of(*placements: FakePlacement) -> tuple[SiteGroup, Family]:
    family = Family()
    return SiteGroup({p.name: p for p in placements}, [family]), family  # type: ignore[misc]


def test_sites_open_at_the_same_time() -> None:
    sites = [FakePlacement(f"s{i}", slow=0.3) for i in range(4)]
    group, family = group_of(*sites)
    started = time.monotonic()
    group.open()
    assert time.monotonic() - started < 1.0  # four times 0.3 s, not one after another
    assert len(set().union(*(s.threads for s in sites))) == 4
    group.close()
    group.close()  # idempotent
    assert all(s.calls == ["open", "close"] for s in sites)
    assert family.closed == 1


def test_a_site_that_cannot_open_is_named_and_the_others_are_closed() -> None:
    good, bad = FakePlacement("good"), FakePlacement("bad", fail_open=True)
    group, family = group_of(good, bad)
    with pytest.raises(SiteFailed, match=r"site bad failed to open: OSError: no network here"):
        group.open()
    assert good.calls == ["open", "close"] and family.closed == 1


def test_fedsims_own_errors_keep_their_kind_and_gain_the_sites_name() -> None:
    group, _ = group_of(FakePlacement("a"), FakePlacement("b"))

    def clash(name: str, _: object) -> None:
        if name == "b":
            raise ConfigError("inputs x and y both provide data.csv")

    with pytest.raises(ConfigError, match=r"^site b: inputs x and y both provide data.csv$"):
        group.each("take its inputs", clash)
    group.close()


# --- a real workflow ------------------------------------------------------------------------


def test_a_workflows_sites_are_opened_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    local = factory.KINDS["local"]

    class Counting:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, attr: str) -> Any:
            method = getattr(self._inner, attr)
            if callable(method) and attr != "describe":  # a query, asked by every summary
                calls.append((self._inner.name, attr))
            return method

    class CountingFamily:
        def __init__(self, *args: Any) -> None:
            self._inner = local(*args)

        def placement(self, site: Any) -> Any:
            return Counting(self._inner.placement(site))

        def close(self) -> None:
            self._inner.close()

    monkeypatch.setitem(factory.KINDS, "local", CountingFamily)
    config = load_config(workflow_config(tmp_path, {"app": str(MEAN_APP)}))
    result = run(config)
    assert result.summary["status"] == "finished"
    for site in ("hub", "clinic", "lab"):
        mine = [attr for name, attr in calls if name == site]
        assert mine.count("open") == 1 and mine.count("close") == 1, mine
        assert mine.count("prepare") == 2  # one per app, before any step
        assert mine.count("spawn") == 2 and mine.count("fetch_outputs") == 2
        assert mine[0] == "open" and mine[-1] == "close"
