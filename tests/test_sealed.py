"""Secrets sealed to one site's task (``sites/sealed.py``): only its key opens them."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from fedsim.sites.sealed import SealKey, seal


def test_only_the_recipient_opens_what_was_sealed_to_it() -> None:
    site, other = SealKey(), SealKey()
    secret = b"FEDSIM_SECRET=hunter2\n"
    sealed = seal(site.public, secret)
    assert secret not in sealed
    assert site.open(sealed) == secret
    assert seal(site.public, secret) != sealed, "a fresh key and nonce every time"
    with pytest.raises(InvalidTag):
        other.open(sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(InvalidTag):
        site.open(tampered)
