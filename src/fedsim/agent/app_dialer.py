"""Connections to the app made inside its site and handed to the agent, for a forked agent,
which lives in a network of its own (``sites/agent_forkserver_main.py``).

The site's pid 1 (``sites/forkserver_main.py``, ``dial``) holds the other end of a
``SOCK_SEQPACKET`` socket pair: asked ``ADDRESS PORT`` (numeric: the agent resolves the name,
with the same ``/etc/hosts`` as its site), it connects there in the site's network and
answers ``ok`` with the connected socket, or ``error ERRNO``. So the agent needs
no way into the site's network namespace (which, for an ordinary user, only a process in the
app fork-server's user namespace could enter) and sees no network at all besides.
"""

from __future__ import annotations

import os
import socket
import threading

MAX_MESSAGE = 64


class AppDialer:
    """The agent's end of its site's dialer; its threads share it, one dial at a time."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()

    def connect(self, host: str, port: int, timeout: float | None) -> socket.socket:
        """A socket connected to ``host:port`` in the site's network (each address the name
        has here, in turn, as ``socket.create_connection`` tries them), or the ``OSError``
        of the last (``ConnectionRefusedError`` while the app is not listening)."""
        error: OSError = OSError(f"{host} has no address")
        for *_kind, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            try:
                return self._dial(str(address[0]), port, timeout)
            except OSError as exc:
                error = exc
        raise error

    def _dial(self, address: str, port: int, timeout: float | None) -> socket.socket:
        with self._lock:
            self._sock.send(f"{address} {port}".encode())
            message, fds, _flags, _addr = socket.recv_fds(self._sock, MAX_MESSAGE, 1)
        if message == b"ok" and len(fds) == 1:
            connected = socket.socket(fileno=fds[0])
            connected.settimeout(timeout)
            return connected
        for fd in fds:
            os.close(fd)
        said = message.decode(errors="replace")
        if said.startswith("error ") and said[6:].isdigit():
            number = int(said[6:])
            raise OSError(number, os.strerror(number))
        raise ConnectionError(f"the site's dialer answered {said!r}" if said else "no dialer")
