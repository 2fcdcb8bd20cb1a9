"""Moving items between the app and the relay, with what the controller adds on the way.

Out: an item the app emits leaves the site as it is, or noised (``dp``), or as secret shares
(``smpc``), one per share holder. In: an app message is delivered to the app; a share is
added to this site's running sum for its memo, and when the last one arrives the partial sum
goes to the coordinator; at the coordinator, the partial sums add up to the one aggregate
that the coordinator app receives.
"""

from __future__ import annotations

import itertools
from urllib.parse import quote

from fedsim.agent import smpc
from fedsim.agent.app_client import AppClient
from fedsim.agent.duties import Duties
from fedsim.agent.protocol import AppStatus
from fedsim.agent.randomness import numpy_rng, python_rng
from fedsim.logs import get_logger
from fedsim.relay.client import Incoming, RelayClient
from fedsim.relay.kinds import APP_KIND, PARTIAL_KIND, SHARE_KIND

log = get_logger("agent")


class Exchange:
    def __init__(
        self,
        site: str,
        clients: list[str],
        coordinator: str,
        seed: int | None,
        app: AppClient,
        relay: RelayClient,
    ) -> None:
        """``app`` and ``relay`` belong to the inbox thread; ``send`` gets the main thread's."""
        self.site, self.clients, self.coordinator, self.seed = site, clients, coordinator, seed
        self._app, self._relay = app, relay
        self._shares = smpc.Aggregator("share", clients)
        self._partials = smpc.Aggregator("partial sum", clients, planned=True)
        self.duties = Duties()
        """The partial sums this site owes as a share holder: they outlive its app."""
        self._uses = itertools.count()
        self.template = "v2"

    # --- out: main thread ------------------------------------------------------------------

    def send(self, relay: RelayClient, status: AppStatus, payload: bytes) -> None:
        use = str(next(self._uses))
        memo = status.memo or ""
        if status.dp:
            from fedsim.agent.dp import privatise  # numpy: only for an app that asks for DP

            payload = privatise(
                payload, status.dp, numpy_rng(self.seed, self.site, "dp", memo, use)
            )
        if status.smpc:
            smpc.check_operation(status.smpc)
            holders = smpc.share_holders(self.clients, int(status.smpc.get("shards", 0)))
            exponent = int(status.smpc.get("exponent", 8))
            masks = python_rng(self.seed, self.site, "smpc", memo, use)
            shares = smpc.split(payload, holders, exponent, masks, {"exponent": exponent})
            # recorded before the first share leaves: this site's own share may come back,
            # and its partial sum be owed, before this method returns
            if self.site == self.coordinator:
                self._partials.expect(status.memo, holders, exponent)
            if self.site in holders:
                self.duties.owe(status.memo)
            for holder, share in shares.items():
                relay.send(share, holder, status.memo, kind=SHARE_KIND)
            log.debug("sent %d secret shares memo=%s", len(shares), status.memo)
            return
        receivers = relay.send(payload, status.destination, status.memo)
        log.debug("sent %d bytes memo=%s to %s", len(payload), status.memo, ",".join(receivers))

    # --- in: inbox thread ------------------------------------------------------------------

    def receive(self, message: Incoming) -> None:
        if message.kind == APP_KIND:
            self._deliver(message.sender, message.memo, message.payload)
        elif message.kind == SHARE_KIND:
            self._add_share(message)
        elif message.kind == PARTIAL_KIND and self.site == self.coordinator:
            self._add_partial(message)
        else:
            raise smpc.SmpcError(f"unexpected {message.kind!r} message from {message.sender}")

    def _deliver(self, sender: str, memo: str | None, payload: bytes) -> None:
        if self.template == "v1":
            params = {}  # the older template takes the body only
        else:
            params = {"client": sender}
            if memo is not None:
                params["memo"] = quote(memo)  # the engine keys its queues by the URL-encoded memo
        self._app.post("/api/data", params=params, content=payload)
        log.debug("delivered %d bytes from %s memo=%s", len(payload), sender, memo)

    def _add_share(self, message: Incoming) -> None:
        total = self._shares.add(message.memo, message.sender, message.payload)
        if total is None:
            return
        skeleton, values, exponent = total
        partial = smpc.partial_payload(skeleton, values, {"exponent": exponent})
        self._relay.send(partial, self.coordinator, message.memo, kind=PARTIAL_KIND)
        self.duties.done(message.memo)
        log.debug("sent the partial sum of memo=%s", message.memo)

    def _add_partial(self, message: Incoming) -> None:
        total = self._partials.add(message.memo, message.sender, message.payload)
        if total is None:
            return
        aggregate = smpc.reveal(*total)
        log.info("secure aggregation of memo %s complete", message.memo)
        self._deliver(self.site, message.memo, aggregate)
