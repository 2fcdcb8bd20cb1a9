"""What a share holder still owes secure aggregation, so that its agent outlives its app.

A participant's app may finish right after it sent its own shares, while a slower site's
share for the same round is still on its way to this site. Only this site can add that
share and pass on its partial sum; if its agent left with the app, the coordinator would
wait for ever. So the agent counts, per memo, the rounds it holds shares of (counted when
its own shares leave, before any of them can come back) and the partial sums it has sent,
and stays until the two agree.
"""

from __future__ import annotations

import threading
from collections import Counter


class Duties:
    """Shared by the agent's main thread (``owe``) and its inbox thread (``done``)."""

    def __init__(self) -> None:
        self._owed: Counter[str | None] = Counter()
        self._changed = threading.Condition()

    def owe(self, memo: str | None) -> None:
        with self._changed:
            self._owed[memo] += 1

    def done(self, memo: str | None) -> None:
        with self._changed:
            self._owed[memo] -= 1
            self._changed.notify_all()

    def outstanding(self) -> dict[str | None, int]:
        """Memo -> rounds of it whose partial sum this site has not sent yet."""
        with self._changed:
            return {memo: n for memo, n in self._owed.items() if n > 0}

    def wait(self, timeout: float) -> dict[str | None, int]:
        """Wait up to ``timeout`` for a round to complete; what is still outstanding."""
        with self._changed:
            if any(n > 0 for n in self._owed.values()):
                self._changed.wait(timeout)
        return self.outstanding()
