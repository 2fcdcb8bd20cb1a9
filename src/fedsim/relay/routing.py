"""Where a message goes, by the FeatureCloud rules; pure, so it is tested without sockets."""

from __future__ import annotations

from dataclasses import dataclass


class UnknownDestination(ValueError):
    pass


@dataclass(frozen=True)
class Routing:
    sites: tuple[str, ...]
    coordinator: str

    def receivers(self, sender: str, destination: str | None) -> list[str]:
        """``None`` means the coordinator for a participant and everyone else for the coordinator.

        An explicit destination may name the sender itself: the FeatureCloud engine does that
        when the coordinator sends to itself with differential privacy.
        """
        if destination is not None:
            if destination not in self.sites:
                raise UnknownDestination(f"no site named {destination!r} in this run")
            return [destination]
        if sender == self.coordinator:
            return [s for s in self.sites if s != sender]
        return [self.coordinator]
