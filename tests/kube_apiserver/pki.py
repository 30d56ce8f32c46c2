"""The test cluster's certificates, made once per process with `cryptography`: a CA, the server's certificate
(SAN 127.0.0.1 and localhost, like kubeadm's), client certificates whose CN is the user, and the bad
ones tests need (signed by another CA, expired).

EC P-256 keys: generating them takes microseconds, where RSA keys would add up across a test session.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import ipaddress
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its key, as PEM, and as files for the tools that want paths."""

    cert_pem: bytes
    key_pem: bytes
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:  # the API server reads O as the user's group
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return KeyPair(cert_pem, key_pem, cert_file, key_file)


def _make_ca(common_name: str) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - ONE_DAY)
        .not_valid_after(_now() + 30 * ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert, key)


def _issue(
    issuer: _Issuer, subject: x509.Name, server: bool, expired: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = (_now() - 3 * ONE_DAY, _now() - ONE_DAY) if expired else (_now() - ONE_DAY, _now() + 30 * ONE_DAY)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer.key, hashes.SHA256()), key


class Pki:
    """Everything a TLS test cluster needs, in one temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca = _make_ca("conveyor-test-ca")
        self.ca = _write(directory, "ca", self._ca.cert, self._ca.key)
        self.server = _write(directory, "server", *_issue(self._ca, _name("kube-apiserver"), server=True))
        # Another CA, for "the kubeconfig trusts the wrong CA", and a server certificate past its date.
        other = _make_ca("some-other-ca")
        self.wrong_ca = _write(directory, "wrong-ca", other.cert, other.key)
        self.expired_server = _write(
            directory, "expired-server", *_issue(self._ca, _name("kube-apiserver"), server=True, expired=True)
        )

    @functools.cache  # noqa: B019 - one Pki per process, certificates are cached for its lifetime
    def client(self, user: str, group: str | None = None, expired: bool = False) -> KeyPair:
        """A client certificate for `user` (its CN), signed by the cluster's CA."""
        stem = f"client-{user}{'-expired' if expired else ''}"
        return _write(self.directory, stem, *_issue(self._ca, _name(user, group), server=False, expired=expired))


@functools.cache
def session_pki() -> Pki:
    """The certificates of this test session (process): made on first use, shared by every test server."""
    directory = Path(tempfile.mkdtemp(prefix="kube-pki-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Pki(directory)
