"""The relay: routes opaque messages between site agents, authenticated per site."""

from fedsim.relay.routing import Routing
from fedsim.relay.server import RelayServer
from fedsim.relay.state import RelayState, TrafficRecord

__all__ = ["RelayServer", "RelayState", "Routing", "TrafficRecord"]
