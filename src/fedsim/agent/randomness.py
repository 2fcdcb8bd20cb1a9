"""Where the agent's randomness comes from: the run's seed when there is one, else the OS.

With a seed, each use (site, purpose, memo, how many times before) gets its own stream, so
the same config and seed give the same SMPC masks and DP noise, byte for byte. numpy is
imported only when DP noise is drawn: an agent that never adds noise (most runs) stays
small, which counts at hundreds of sites.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def _derive(seed: int, *labels: str) -> int:
    digest = hashlib.sha256(str(seed).encode())
    for label in labels:
        digest.update(b"\0" + label.encode())
    return int.from_bytes(digest.digest()[:16], "big")


def python_rng(seed: int | None, *labels: str) -> random.Random:
    return random.SystemRandom() if seed is None else random.Random(_derive(seed, *labels))


def numpy_rng(seed: int | None, *labels: str) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng(None if seed is None else _derive(seed, *labels))
