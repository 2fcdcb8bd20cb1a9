"""Secrets sealed to one site's task, for placements whose messages pass through a broker.

A Dask site is driven through queues held by the scheduler: whatever a request carries is
seen by the scheduler and, over plain ``tcp://``, by anyone on the path to it. A site's
relay token and its env file must reach only that site, so its task makes a key pair when
it starts (the private half never leaves the task), sends the public half back in its
``open`` answer, and the orchestrator seals the secrets to it: X25519 with a fresh key per
message, HKDF-SHA256, ChaCha20-Poly1305. What the scheduler then holds is ciphertext that
only that task can open. This protects against whoever reads the traffic or the scheduler's
memory; it cannot protect against a scheduler that lies about the key, which could as well
run code on the workers (Dask's own trust model: use a ``tls://`` scheduler you control).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

INFO = b"fedsim sealed site secret v1"
KEY_BYTES = 32
NONCE_BYTES = 12


def _key(shared: bytes, sender: bytes, recipient: bytes) -> bytes:
    """Bound to both public keys, so a sealed message opens only for its recipient."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=sender + recipient, info=INFO)
    return hkdf.derive(shared)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


class SealKey:
    """The task's key pair: ``public`` goes to the orchestrator, ``open`` reads what it sealed."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = _raw(self._private.public_key())

    def open(self, sealed: bytes) -> bytes:
        """Raises ``cryptography.exceptions.InvalidTag`` for anything not sealed to this key."""
        sender = sealed[:KEY_BYTES]
        nonce = sealed[KEY_BYTES : KEY_BYTES + NONCE_BYTES]
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(sender))
        cipher = ChaCha20Poly1305(_key(shared, sender, self.public))
        return cipher.decrypt(nonce, sealed[KEY_BYTES + NONCE_BYTES :], None)


def seal(recipient: bytes, secret: bytes) -> bytes:
    """``secret`` for the holder of the private half of ``recipient`` only."""
    ephemeral = X25519PrivateKey.generate()
    sender = _raw(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    nonce = os.urandom(NONCE_BYTES)
    cipher = ChaCha20Poly1305(_key(shared, sender, recipient))
    return sender + nonce + cipher.encrypt(nonce, secret, None)
