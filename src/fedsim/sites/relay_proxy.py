"""A Unix socket in a remote site's folder that carries bytes to the relay's TLS listener.

An agent's sandbox has loopback only; it reaches the relay through a socket bound into it.
For an SSH site, sshd's reverse forward provides that socket; a Dask worker has no such path
back, so the site's host process provides it: every connection to the socket is joined to a
new TCP connection to the relay. The proxy sees only ciphertext: TLS runs from the agent to
the relay, pinned to the run's CA, and the token travels inside it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

CHUNK = 65536


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Bytes one way until the source ends; then the target's writing half is closed, so
    the other direction can still finish."""
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


class RelayProxy:
    """Listens on ``path`` (mode 0666: agents run as their own uids, the folder around it
    is private) and joins each connection to ``host:port``; ``close`` stops listening.
    ``warn`` hears, in words, a connection the relay refused (it becomes a line of the
    site's log, where the user looks)."""

    def __init__(self, path: Path, host: str, port: int, warn: Callable[[str], None]) -> None:
        self.path = path
        self._target = (host, port)
        self._warn = warn
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        path.chmod(0o666)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept, name="relay-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._join, args=(inner,), daemon=True).start()

    def _join(self, inner: socket.socket) -> None:
        try:
            outer = socket.create_connection(self._target, timeout=10)
        except OSError as exc:
            self._warn(f"the relay at {self._target[0]}:{self._target[1]} cannot be reached: {exc}")
            inner.close()
            return
        outer.settimeout(None)
        back = threading.Thread(target=_pump, args=(outer, inner), daemon=True)
        back.start()
        _pump(inner, outer)
        back.join()
        inner.close()
        outer.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
