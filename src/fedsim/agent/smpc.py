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

from fedsim.agent.jsonvalues import (
    ShapeError,
    Skeleton,
    count_numbers,
    flatten,
    merge_skeletons,
    unflatten,
)

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


@dataclass(frozen=True)
class Part:
    """One share or partial sum, checked: a malformed one must never reach a sum."""

    skeleton: Skeleton
    values: list[int]
    exponent: int


def parse_part(payload: bytes) -> Part:
    """The checked content of a share or partial sum; SmpcError says what is wrong with it."""
    try:
        part = json.loads(payload)
    except ValueError:
        raise SmpcError("its payload is not JSON") from None
    if not isinstance(part, dict):
        raise SmpcError(f"its payload is a JSON {type(part).__name__}, not an object")
    values, exponent = part.get("values"), part.get("exponent")
    if not isinstance(values, list) or not all(type(v) is int and 0 <= v < MODULUS for v in values):
        raise SmpcError(f"its values are not a list of integers modulo {MODULUS}")
    if type(exponent) is not int or not 0 <= exponent <= 30:
        raise SmpcError(f"its exponent {exponent!r} is not an integer between 0 and 30")
    try:
        if count_numbers(part.get("skeleton")) != len(values):
            raise SmpcError("its shape does not hold as many numbers as it has values")
    except ShapeError as exc:
        raise SmpcError(f"its shape is malformed ({exc})") from None
    return Part(part["skeleton"], values, exponent)


@dataclass
class _Round:
    allowed: frozenset[str]
    """Who contributes: every site for shares, the round's share holders for partial sums."""
    exponent: int | None = None
    skeleton: Skeleton = None
    total: list[int] = field(default_factory=list)
    senders: set[str] = field(default_factory=set)

    def add(self, sender: str, part: Part) -> bool:
        """Add one contribution; True when the last expected one has arrived."""
        if self.exponent is not None and part.exponent != self.exponent:
            raise SmpcError(f"its exponent {part.exponent} is not this round's {self.exponent}")
        if self.skeleton is None:
            self.skeleton, self.total = part.skeleton, list(part.values)
        else:
            self.skeleton = merge_skeletons(self.skeleton, part.skeleton)
            self.total = [(a + b) % MODULUS for a, b in zip(self.total, part.values, strict=True)]
        self.exponent = part.exponent
        self.senders.add(sender)
        return self.senders == self.allowed


class Aggregator:
    """Collects one stage's contributions, by memo: shares at a holder, or partial sums at
    the coordinator.

    A memo may be reused round after round (apps that name their rounds ``"sum"``): a
    sender's next contribution under a memo belongs to the first open round it has not
    contributed to yet. Each sender's messages arrive in the order it sent them, so rounds
    fill, and complete, in order.

    With ``planned`` (the coordinator's partial sums) a round must have been announced with
    ``expect`` (the coordinator's own SMPC send, which names the round's share holders)
    before anything is added to it; anything else is refused as forged. Without it (shares)
    a round opens with its first share, and every site contributes once.
    """

    def __init__(self, stage: str, clients: list[str], planned: bool = False) -> None:
        self.stage, self.clients, self.planned = stage, frozenset(clients), planned
        self._rounds: dict[str | None, list[_Round]] = {}

    def expect(self, memo: str | None, holders: list[str], exponent: int) -> None:
        self._rounds.setdefault(memo, []).append(_Round(frozenset(holders), exponent))

    def open_rounds(self) -> int:
        return sum(len(rounds) for rounds in self._rounds.values())

    def add(
        self, memo: str | None, sender: str, payload: bytes
    ) -> tuple[Skeleton, list[int], int] | None:
        """(shape, sum, exponent) once the round's last contribution arrives, else None.

        Raises SmpcError naming the sender for a contribution that cannot be genuine.
        """
        where = f"{self.stage} from {sender} (memo {memo!r})"
        try:
            part = parse_part(payload)
            rounds = self._rounds.setdefault(memo, [])
            current = next((r for r in rounds if sender not in r.senders), None)
            if current is None and self.planned:
                if any(sender in r.allowed for r in rounds):
                    raise SmpcError(f"{sender} already sent its {self.stage} for this round")
                raise SmpcError("no secure aggregation of this memo is open here")
            if current is None:
                current = _Round(self.clients)
                rounds.append(current)
            if sender not in current.allowed:
                role = "a share holder of" if self.planned else "a site of"
                raise SmpcError(f"{sender} is not {role} this round")
            done = current.add(sender, part)
        except (SmpcError, ShapeError) as exc:
            raise SmpcError(f"refused a {where}: {exc}") from None
        if not done:
            return None
        rounds.remove(current)
        if not rounds:
            del self._rounds[memo]
        return current.skeleton, current.total, part.exponent


def partial_payload(skeleton: Skeleton, total: list[int], meta: dict[str, Any]) -> bytes:
    return json.dumps({**meta, "skeleton": skeleton, "values": total}).encode()


def reveal(skeleton: Skeleton, total: list[int], exponent: int) -> bytes:
    """The aggregate as the coordinator app expects it: one JSON item, the senders' shape."""
    return json.dumps(unflatten(skeleton, [decode(v, exponent) for v in total])).encode()
