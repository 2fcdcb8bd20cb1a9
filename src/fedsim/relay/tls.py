"""A certificate authority of the run's own, for the relay's TCP listener.

Remote sites reach the relay over TCP, so the connection needs TLS; but no public
certificate authority knows the relay's address, and trusting the system's store would let
any certificate it vouches for impersonate the relay. So fedsim makes a CA for each run,
signs the relay's server certificate with it and gives the CA certificate (public) to the
agents in their launch description: an agent trusts that CA and nothing else. The CA lives
only as long as the run (plus a margin), so a leaked key is worth little afterwards.

Keys are written 0600 into a folder that must be private to this user (the run's private
folder, never the run directory, which is kept and shared). Needs ``cryptography``; only the
orchestrator imports this module, the agent verifies with the standard library's ``ssl``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.agent.launch import RELAY_TLS_NAME
from fedsim.logs import get_logger

log = get_logger("relay")

DEFAULT_HOSTS = (RELAY_TLS_NAME, "localhost", "127.0.0.1", "::1")
"""``relay``: the name agents check when TLS runs through a socket (an SSH forward)."""
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates are valid from a little before now: a remote site's clock may run behind."""
MARGIN = dt.timedelta(days=1)
"""Added to the run's own time limit, so a certificate never expires under a live run."""


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 from the start (never world-readable, even for an instant); an
    existing file is an error rather than silently overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _check_private_folder(folder: Path) -> None:
    """Keys go only where nobody else can read them: our folder, no group or other access."""
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ValueError(f"{folder} is not a private folder (want a directory of ours, mode 0700)")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise ValueError("a server certificate needs at least one host name or address")
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class ServerCertificate:
    """The relay's certificate and key, as files for the TLS listener."""

    cert_file: Path
    key_file: Path
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class RunCA:
    """The run's certificate authority. ``cert_pem`` is public (it travels to the agents);
    the key stays in ``key_file``, 0600, and signs the relay's certificates."""

    cert_pem: str
    key_file: Path
    not_after: dt.datetime

    @classmethod
    def create(cls, folder: Path, run_id: str, valid_for: dt.timedelta) -> RunCA:
        """A new CA in ``folder`` (private), valid for ``valid_for`` plus ``MARGIN``."""
        _check_private_folder(folder)
        now = dt.datetime.now(dt.UTC)
        not_after = now + valid_for + MARGIN
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fedsim run {run_id} CA")])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_file = folder / "relay-ca.key"
        _write_private(key_file, _pem_key(key))
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        (folder / "relay-ca.pem").write_text(cert_pem, encoding="ascii")
        log.debug("made the run's relay CA, valid until %s", not_after.isoformat())
        return cls(cert_pem=cert_pem, key_file=key_file, not_after=not_after)

    def issue_server(
        self, folder: Path, hosts: Iterable[str] = DEFAULT_HOSTS, name: str = "relay"
    ) -> ServerCertificate:
        """A server certificate for ``hosts`` (names and IP addresses, all in its
        SubjectAltName: that is what clients check), expiring with the CA."""
        _check_private_folder(folder)
        hosts = tuple(hosts)
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem.encode("ascii"))
        ca_key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_file} does not hold the CA's key")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim relay")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_file = folder / f"{name}.key"
        cert_file = folder / f"{name}.pem"
        _write_private(key_file, _pem_key(key))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ServerCertificate(cert_file=cert_file, key_file=key_file, hosts=hosts)
