"""The Dask placement: sites on the workers of a Dask cluster, separated as local ones.

The family connects one ``distributed.Client`` per run (to a running scheduler, or to a
cluster it starts from the config's deployment class). How many sites a worker holds is a
Dask worker resource: every worker declares ``SITE_RESOURCE`` = ``sites_per_worker`` and
each site's task takes one unit, so a worker never runs more than that many sites, whatever
its threads; the family deals the sites to the workers with units free
(``DaskFamily._assign_workers`` says why it, not the scheduler, picks). Each site is one
long-running task on its worker (``dask_task.py``), which holds the site with the same site
host an SSH site runs (``remote_host.py``: network of its own, sandboxes, uids, seccomp,
limits) in the worker's own process tree. This side drives it as ``ssh.py`` drives its
host, with the same requests, through two ``distributed.Queue``s per site instead of an SSH
channel; the site's own files (app, inputs, env file; outputs back) travel inside those
messages, nowhere else.

The relay listens with TLS on the ``[dask]`` table's ``relay_address`` (``relay_bind``):
workers on a cluster have no path back but the network. The worker-side task joins a Unix
socket in the agent's sandbox to it; TLS ends in the agent, pinned to the run's CA, and each
site has its own token, as for SSH sites.

A worker that leaves the cluster (killed, lost) is noticed by the family's watcher, which
asks the scheduler for its workers every ``WATCH_INTERVAL``: the sites it held fail, naming
the worker, within seconds. The app's environment is made at each worker from its wheelhouse
(``wheelhouse.py``, shipped in a request once per worker, installed with the SSH sites'
script, ``install.py``, and kept in the worker's cache for later runs); fedsim itself must
be installed where the workers run, as any Dask task's code must be.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import math
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fedsim.errors import ConfigError, SiteFailed, SiteUnreachable
from fedsim.logs import FIELD_SEPARATOR, get_logger
from fedsim.safefiles import Skipped, copy_inputs, prune_tree
from fedsim.sites.bare import unsandboxed_warning
from fedsim.sites.base import AgentLaunch, AppBundle, LineSink, SiteStep
from fedsim.sites.install import INSTALL_TIMEOUT
from fedsim.sites.limits import Limits
from fedsim.sites.remote_running import RemoteRunningSite, dispatch
from fedsim.sites.sealed import seal
from fedsim.sites.ssh import AGENT_SOCKET
from fedsim.sites.tarball import pack, unpack
from fedsim.sites.wheelhouse import Wheelhouse, app_wheelhouse

if TYPE_CHECKING:
    from distributed import Client

    from fedsim.config import DaskConfig, RunConfig, SiteConfig

log = get_logger("dask")

REQUEST_TIMEOUT = 120.0
WATCH_INTERVAL = 0.5
TASK_ANSWER_TIMEOUT = 5.0
"""How long the watcher waits for an ended task's reason before it says the task's status."""
CLOCK_ROUNDS = 3
WORKERS_TIMEOUT = 60.0
"""How long a run waits for the cluster to have the workers its sites need."""
SITE_RESOURCE = "fedsim_site"
"""The Dask worker resource a site's task takes one of (``sites_per_worker`` per worker)."""


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - a dependency of fedsim
        raise ConfigError(
            'sites with location = "dask" need dask\'s distributed: pip install distributed'
        ) from exc
    return distributed


def _cluster_class(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"dask.cluster: {name} cannot be imported: {exc}") from exc


def _warn_if_data_in_clear(address: str) -> None:
    """Each site's inputs and outputs reach its worker through the scheduler (its token and
    env file sealed, ``sealed.py``, its data not): over plain TCP to another machine, anyone
    on that path could read them. Said once, plainly."""
    parts = urlsplit(address)
    host = parts.hostname or ""
    if parts.scheme == "tcp" and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the Dask scheduler %s is reached over plain TCP: each site's inputs and outputs "
            "pass through it unencrypted (its token and env file are sealed to its task); use "
            "a tls:// scheduler (dask's Security) for clusters beyond this machine",
            address,
        )


class DaskFamily:
    """A run's Dask sites: the client, the cluster it started (if any), each site's worker,
    and the watcher that notices a worker leaving."""

    def __init__(self, config: RunConfig, sites: Sequence[SiteConfig], workdir: Path, run_id: str):
        assert config.dask is not None
        self._config = config
        self.settings: DaskConfig = config.dask
        self._sites = list(sites)
        self._workdir = workdir
        self._run_id = run_id
        distributed = _import_distributed()
        self._lock = threading.Lock()
        self._wheels: dict[Path, Wheelhouse] = {}
        self._provisioning: dict[tuple[str, str], threading.Lock] = {}
        self.environments: dict[tuple[str, str], str] = {}
        """(worker, wheelhouse key) -> the environment's path there, once a site asked."""
        self._cluster: Any = None
        address = self.settings.scheduler
        try:
            if address is None:
                assert self.settings.cluster is not None
                cls = _cluster_class(self.settings.cluster)
                self._cluster = cls(**self.settings.cluster_options)
                address = str(self._cluster.scheduler_address)
            self.address = address
            _warn_if_data_in_clear(address)
            self.client: Client = distributed.Client(address, timeout="20s", set_as_default=False)
            self.workers = self._assign_workers()
        except BaseException:
            self.close()
            raise
        self._placements: list[DaskPlacement] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="dask-watch", daemon=True)
        self._watcher.start()

    def app_wheels(self, env: Path) -> Wheelhouse:
        """The app environment's wheelhouse, built here once per run and environment."""
        with self._lock:
            if env not in self._wheels:
                self._wheels[env] = app_wheelhouse(env)
            return self._wheels[env]

    def provisioning(self, worker: str, key: str) -> threading.Lock:
        """Held while one site makes sure its worker has environment ``key``."""
        with self._lock:
            return self._provisioning.setdefault((worker, key), threading.Lock())

    @property
    def relay_bind(self) -> tuple[str, int]:
        """The relay's TLS listener listens where the workers can reach it."""
        return self.settings.relay_bind

    def _assign_workers(self) -> dict[str, str]:
        """Site -> worker. Waits for as many workers as the sites need, gives each worker
        ``sites_per_worker`` units of ``SITE_RESOURCE`` (set at the worker, which tells the
        scheduler; left alone where already so, as a reset would forget the units other
        runs' sites hold), then deals the sites to the workers with the most units free.
        The sites are pinned there because Dask's scheduler, placing a task that asks for
        a resource, checks only that a worker has that much in all, not free
        (``Scheduler.valid_workers``): a second site sent to a full worker would wait there
        for the first to end, which a site never does before the run."""
        per_worker = self.settings.sites_per_worker
        needed = math.ceil(len(self._sites) / per_worker)
        names = ", ".join(s.name for s in self._sites)
        try:
            self.client.wait_for_workers(needed, timeout=WORKERS_TIMEOUT)
        except TimeoutError as exc:
            have = len(self.client.nthreads())
            raise SiteUnreachable(
                names,
                self.address,
                f"{len(self._sites)} dask sites with sites_per_worker = {per_worker} need "
                f"{needed} workers; the cluster has {have} after {WORKERS_TIMEOUT:g} s",
            ) from exc

        async def declare(dask_worker: Any) -> None:
            if dask_worker.state.total_resources.get(SITE_RESOURCE) != per_worker:
                await dask_worker.set_resources(**{SITE_RESOURCE: per_worker})

        def free(dask_scheduler: Any) -> dict[str, float]:
            return {
                address: worker.resources.get(SITE_RESOURCE, 0)
                - worker.used_resources.get(SITE_RESOURCE, 0)
                for address, worker in dask_scheduler.workers.items()
            }

        self.client.run(declare)
        slots = {address: int(n) for address, n in self.client.run_on_scheduler(free).items()}
        assigned = {}
        for site in self._sites:
            worker = max(sorted(slots), key=slots.__getitem__)
            if slots[worker] <= 0:
                raise SiteUnreachable(
                    names,
                    self.address,
                    f"{len(self._sites)} dask sites with sites_per_worker = {per_worker}: the "
                    f"cluster's workers have {len(assigned)} site slots free (other runs' "
                    "sites hold the rest)",
                )
            assigned[site.name] = worker
            slots[worker] -= 1
        return assigned

    def placement(self, site: SiteConfig) -> DaskPlacement:
        placement = DaskPlacement(
            site.name,
            self.workers[site.name],
            family=self,
            limits=self._config.limits_of(site),
            run_id=self._run_id,
            staging=self._workdir / "dask-staging" / site.name,
        )
        self._placements.append(placement)
        return placement

    def _watch(self) -> None:
        """Every site whose worker is gone, or whose task ended unasked, is lost."""
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                alive = set(self.client.nthreads())
            except Exception as exc:  # the scheduler itself is gone
                for placement in self._placements:
                    placement.lose(f"the scheduler at {self.address} stopped answering: {exc}")
                continue
            for placement in self._placements:
                placement.check(alive)

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._watcher.join(timeout=10)
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()


class DaskPlacement:
    """One site as a task on one worker (see the module docstring)."""

    remote = True

    def __init__(
        self,
        name: str,
        worker: str,
        *,
        family: DaskFamily,
        limits: Limits,
        run_id: str,
        staging: Path,
    ) -> None:
        self.name = name
        self.worker = worker
        self._family = family
        self._limits = limits
        self._run_id = run_id
        self._staging = staging
        self._requests: Any = None
        self._events: Any = None
        self._task: Any = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._closing = False
        self._sink: LineSink | None = None
        self._running: RemoteRunningSite | None = None
        self._apps: dict[AppBundle, tuple[str, str]] = {}
        """App -> its folder and its environment at the worker."""
        self.sandboxed = True
        self.clock_offset = 0.0
        self.clock_rtt = 0.0
        self._seal_key = b""
        """The task's public key: the site's secrets are sealed to it (``sealed.py``)."""

    # --- Placement -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "dask",
            "worker": self.worker,
            "sandboxed": self.sandboxed,
            "clock_offset_s": round(self.clock_offset, 4),
            "clock_rtt_s": round(self.clock_rtt, 4),
            "app_envs": sorted({env for _, env in self._apps.values()}),
        }

    @property
    def where(self) -> str:
        """The site's worker in words, for errors."""
        return f"dask worker {self.worker}"

    def open(self) -> None:
        """The site's task on its worker, taking one ``SITE_RESOURCE``, its queues, and the
        site's folder and network; then the worker's clock (the offset corrects the lines'
        stamps, as for SSH sites)."""
        distributed = _import_distributed()
        from fedsim.sites.dask_task import run_site

        client = self._family.client
        prefix = f"fedsim-{self._run_id}-{self.name}"
        self._requests = distributed.Queue(f"{prefix}-requests", client=client)
        self._events = distributed.Queue(f"{prefix}-events", client=client)
        self._task = client.submit(
            run_site,
            self._requests,
            self._events,
            key=f"{prefix}-site",
            pure=False,
            workers=[self.worker],
            allow_other_workers=False,
            resources={SITE_RESOURCE: 1},
            retries=0,
        )
        self._reader = threading.Thread(target=self._read, name=f"dask-{self.name}", daemon=True)
        self._reader.start()
        answer = self._request(
            "open", site=self.name, run_id=self._run_id, limits=asdict(self._limits)
        )
        self._seal_key = bytes(answer["seal_key"])
        self._measure_clock()
        self.sandboxed = bool(answer.get("sandboxed", False))
        if not self.sandboxed:
            log.warning("%s (%s)", unsandboxed_warning(self.name), self.worker)
        log.info(
            "site %s: on dask worker %s, clock offset %+.3f s (round trip %.3f s)",
            self.name,
            self.worker,
            self.clock_offset,
            self.clock_rtt,
        )

    def _measure_clock(self) -> None:
        """The worker's clock against ours, from the quickest of ``CLOCK_ROUNDS`` round
        trips (the task answers them itself). The answers wait in queues at the scheduler
        and the worker, unevenly: an offset within half the round trip cannot be told from
        none, and is taken as none."""
        best: tuple[float, float] | None = None
        for _ in range(CLOCK_ROUNDS):
            before = time.time()
            remote = float(self._request("clock")["time"])
            after = time.time()
            if best is None or after - before < best[0]:
                best = (after - before, remote - (before + after) / 2)
        assert best is not None
        self.clock_rtt, offset = best
        self.clock_offset = offset if abs(offset) > self.clock_rtt / 2 else 0.0

    def prepare(self, app: AppBundle) -> None:
        """The app's environment made at the worker from its wheelhouse, unless the worker
        has it from an earlier site or run (one site per worker at a time asks, so the wheels
        travel once, and the others on that worker take the answer without asking); the
        app's folder travels with the request."""
        wheels = self._family.app_wheels(app.env)
        fields = {"key": wheels.key, "python": wheels.python}
        known = self._family.environments
        with self._family.provisioning(self.where, wheels.key):
            if (self.where, wheels.key) not in known:
                answer = self._request("provision", **fields)
                if answer["env"] is None:
                    log.info("site %s: installing %s at %s", self.name, wheels.key, self.where)
                    data = pack(wheels.path)
                    answer = self._request("provision", INSTALL_TIMEOUT, wheels=data, **fields)
                known[self.where, wheels.key] = str(answer["env"])
            env = known[self.where, wheels.key]
        prepared = self._request("prepare", app=pack(app.app_dir), env=env)
        self._apps[app] = (str(prepared["app_dir"]), env)

    def put_inputs(self, inputs: Sequence[Path], overrides: Sequence[Path] = ()) -> None:
        """Merged here exactly as for a local site, then sent as one folder."""
        local = self._staging / "inputs"
        shutil.rmtree(local, ignore_errors=True)
        try:
            copy_inputs(inputs, local, overrides)
            data = pack(local)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        self._request("inputs", inputs_tar=data)

    def spawn(self, launch: AgentLaunch, step: SiteStep, on_line: LineSink) -> RemoteRunningSite:
        if step.relay_tls is None:
            raise SiteFailed(f"site {self.name}: a Dask site needs the relay's TLS listener")
        if self._running is not None:
            self._running.stop()
        self._sink = on_line
        env = None if step.env_file is None else step.env_file.read_bytes()
        running = RemoteRunningSite(self)
        self._running = running
        self._request(
            "spawn",
            launch=replace(
                launch, relay_url=AGENT_SOCKET, relay_ca=step.relay_tls.ca_pem
            ).to_json(),
            token_sealed=seal(self._seal_key, step.token.encode()),
            relay=[step.relay_tls.host, step.relay_tls.port],
            env_sealed=None if env is None else seal(self._seal_key, env),
            app_dir=self._apps[step.app][0],
            env=self._apps[step.app][1],
        )
        return running

    def fetch_outputs(self, dest: Path) -> list[Skipped]:
        """Pruned at the worker, sent back as a tar, pruned here again (what arrives is what
        this machine trusts)."""
        if self._running is None:
            return []
        answer = self._request("collect")
        skipped = [Skipped(path, reason) for path, reason in answer.get("skipped", [])]
        unpack(answer["output"], dest)
        return skipped + prune_tree(dest)

    def close(self) -> None:
        """The task stops the site, removes its folder at the worker and ends."""
        self._closing = True
        if self._task is None:
            return
        if self._lost is None:
            with contextlib.suppress(SiteUnreachable, SiteFailed):
                self._request("close", timeout=60)
            with contextlib.suppress(Exception):
                self._task.result(timeout=30)
        with contextlib.suppress(Exception):
            self._task.cancel()
        self._task = None
        with contextlib.suppress(Exception):  # the reader's last message
            self._events.put(None)

    # --- the task --------------------------------------------------------------------------

    def _request(self, op: str, timeout: float = REQUEST_TIMEOUT, **fields: Any) -> dict[str, Any]:
        if self._lost is not None:
            raise SiteUnreachable(self.name, self.where, self._lost)
        ident = next(self._ids)
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[ident] = future
        try:
            self._requests.put({"id": ident, "op": op, **fields})
            answer = future.result(timeout)
        except TimeoutError as exc:
            raise SiteUnreachable(
                self.name, self.where, f"no answer to {op} in {timeout:g} s"
            ) from exc
        finally:
            with self._lock:
                self._pending.pop(ident, None)
        if "error" in answer:
            raise SiteFailed(f"site {self.name} ({self.where}): {op}: {answer['error']}")
        return answer

    def _read(self) -> None:
        """The task's messages, in batches, until ``close`` puts ``None`` after them. The get
        waits without a timeout: every get that times out costs the scheduler a logged
        traceback, which at fifty idle sites was most of its work."""
        while True:
            try:
                batch = self._events.get()
            except Exception as exc:  # the client closed, the scheduler went away
                if not self._closing:
                    self.lose(f"the site's messages stopped: {type(exc).__name__}: {exc}")
                return
            if batch is None:
                return
            for message in batch:
                dispatch(message, self._reply, self._line, self._running)

    def _reply(self, ident: int) -> Future[dict[str, Any]] | None:
        with self._lock:
            return self._pending.get(ident)

    def _line(self, line: str, stamp: float | None) -> None:
        at = None if stamp is None else stamp - self.clock_offset
        if self._sink is not None:
            self._sink(line, at)
        else:
            log.info("site %s: %s", self.name, line.split(FIELD_SEPARATOR)[-1])

    def check(self, alive: set[str]) -> None:
        """From the family's watcher: is the worker still there, the task still running?"""
        if self._task is None or self._lost is not None or self._closing:
            return
        if self.worker not in alive:
            self.lose(f"dask worker {self.worker} left the cluster (it died or was stopped)")
        elif self._task.done():
            try:  # why it ended is a short string at the worker (or its error)
                error = self._task.exception(timeout=TASK_ANSWER_TIMEOUT)
                reason = error or self._task.result(timeout=TASK_ANSWER_TIMEOUT)
            except Exception as exc:
                reason = f"{self._task.status} ({type(exc).__name__}: {exc})"
            self.lose(f"the site's task ended: {reason}")

    def lose(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        log.error("site %s: %s", self.name, reason)
        with self._lock:
            pending = list(self._pending.values())
        for future in pending:
            if not future.done():
                future.set_exception(SiteUnreachable(self.name, self.where, reason))

    def stop_running(self) -> None:
        if self._lost is None:
            with contextlib.suppress(SiteUnreachable, SiteFailed):
                self._request("stop", timeout=60)

    def lost_failure(self) -> str | None:
        """The loss (it names the worker), for the running step's failure."""
        return self._lost
