"""Additive secret sharing, as the FeatureCloud controller does for ``smpc`` items.

Every site encodes its numbers as fixed-point integers (``exponent`` decimal digits), splits
each into random shares modulo a large prime, and sends one share to each share holder.
A holder adds the shares it got for a memo and sends that partial sum to the coordinator,
which adds the partial sums and decodes: the aggregate, and nothing else, is revealed. A
single share or partial sum is uniformly random, so the relay never sees a plaintext value.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from fedsim.agent.jsonvalues import Skeleton, flatten, merge_skeletons, unflatten

MODULUS = 2**127 - 1
"""A Mersenne prime; fixed-point sums far below half of it decode without wrapping."""


class SmpcError(ValueError):
    pass


def check_operation(smpc: dict[str, Any]) -> None:
    operation = smpc.get("operation", "add")
    if operation != "add":
        raise SmpcError(
            f"secure aggregation with operation {operation!r} is not supported by fedsim "
            "(only 'add'); run the app without SMPC multiply"
        )
    if smpc.get("serialization", "json") != "json":
        raise SmpcError(f"SMPC serialization {smpc.get('serialization')!r} is not supported")


def share_holders(clients: list[str], shards: int) -> list[str]:
    """``shards: 0`` means one share per participant; otherwise the first ``shards`` sites."""
    if shards < 0 or shards > len(clients):
        raise SmpcError(f"SMPC shards must be between 0 and {len(clients)}, not {shards}")
    return list(clients) if shards == 0 else list(clients)[:shards]


def encode(value: float | int, exponent: int) -> int:
    return round(value * 10**exponent) % MODULUS


def decode(residue: int, exponent: int) -> float:
    signed = residue - MODULUS if residue > MODULUS // 2 else residue
    return signed / 10**exponent


def split(
    payload: bytes,
    holders: list[str],
    exponent: int,
    rng: random.Random,
    meta: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """One share per holder; the shares of each number add up to it modulo MODULUS."""
    skeleton, numbers = flatten(json.loads(payload))
    remainder = [encode(x, exponent) for x in numbers]
    masks = []
    for _ in holders[1:]:
        mask = [rng.randrange(MODULUS) for _ in remainder]
        masks.append(mask)
        remainder = [(r - m) % MODULUS for r, m in zip(remainder, mask, strict=True)]
    shares = [remainder, *masks]
    return {
        holder: json.dumps({**(meta or {}), "skeleton": skeleton, "values": values}).encode()
        for holder, values in zip(holders, shares, strict=True)
    }


@dataclass
class _Round:
    expected: int
    skeleton: Skeleton = None
    total: list[int] = field(default_factory=list)
    senders: set[str] = field(default_factory=set)

    def add(self, sender: str, payload: bytes) -> bool:
        """Add one contribution; True when the last expected one has arrived."""
        if sender in self.senders:
            raise SmpcError(f"{sender} sent twice in one secure aggregation")
        part = json.loads(payload)
        values = [int(v) for v in part["values"]]
        if self.skeleton is None:
            self.skeleton, self.total = part["skeleton"], values
        else:
            self.skeleton = merge_skeletons(self.skeleton, part["skeleton"])
            self.total = [(a + b) % MODULUS for a, b in zip(self.total, values, strict=True)]
        self.senders.add(sender)
        return len(self.senders) == self.expected


class Aggregator:
    """Collects shares (at every holder) or partial sums (at the coordinator), by memo."""

    def __init__(self) -> None:
        self._rounds: dict[tuple[str, str | None], _Round] = {}

    def add(
        self, stage: str, memo: str | None, sender: str, payload: bytes
    ) -> tuple[Skeleton, list[int]] | None:
        """The sum once the last contribution arrives; each says how many to expect."""
        key = (stage, memo)
        current = self._rounds.setdefault(key, _Round(int(json.loads(payload)["expected"])))
        if not current.add(sender, payload):
            return None
        del self._rounds[key]
        return current.skeleton, current.total


def partial_payload(skeleton: Skeleton, total: list[int], meta: dict[str, Any]) -> bytes:
    return json.dumps({**meta, "skeleton": skeleton, "values": total}).encode()


def reveal(skeleton: Skeleton, total: list[int], exponent: int) -> bytes:
    """The aggregate as the coordinator app expects it: one JSON item, the senders' shape."""
    return json.dumps(unflatten(skeleton, [decode(v, exponent) for v in total])).encode()
