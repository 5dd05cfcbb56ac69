"""A private CA and per-component certificates for mutual TLS (`llm-pool certs`).

A certificate's common name is its holder's identity and its organizational unit is its role;
the controller trusts only certificates signed by its CA and reads the role from them. Keys are
ECDSA P-256 and written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llmpool.errors import FailedPreconditionError, InvalidArgumentError

# Roles a certificate may carry. admin > operator > viewer on the admin API; agent and gateway
# may call only their own service; controller is the server's own certificate.
ROLES = ("admin", "operator", "viewer", "agent", "gateway", "controller")
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
# Names the controller's certificate always answers to, so that local clients verify it.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate says its holder is."""

    name: str
    role: str


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.crt"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgumentError(
            f"certificate name {name!r}: use 1-63 of a-z, 0-9, '.', '_', '-', starting with a "
            "letter or digit"
        )
    return name


def init_ca(directory: Path, *, force: bool = False) -> Path:
    """Creates ca.crt and ca.key in `directory`; refuses to replace an existing CA unless force."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    crt = directory / CA_CERT
    if crt.exists() and not force:
        raise FailedPreconditionError(
            f"{crt} exists; every certificate it signed would stop working if it were replaced "
            "(--force replaces it)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-pool CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, _key_pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = directory / CA_CERT, directory / CA_KEY
    if not crt.exists() or not key.exists():
        raise FailedPreconditionError(
            f"no CA in {directory}: run `llm-pool certs init --dir {directory}` first"
        )
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise FailedPreconditionError(f"{key} is not an EC private key")
    return cert, private


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    directory: Path,
    role: str,
    name: str | None = None,
    hosts: tuple[str, ...] = (),
    *,
    out: Path | None = None,
    days: int = LEAF_DAYS,
) -> tuple[Path, Path]:
    """Signs a certificate for `role` (identity `name`, the role by default) with the CA in
    `directory`; writes NAME.crt and NAME.key into `out` (the same directory by default).

    The controller's certificate is a server certificate for localhost plus `hosts`; the others
    are client certificates (an agent's or gateway's may also list hosts, harmlessly).
    """
    if role not in ROLES:
        raise InvalidArgumentError(f"role {role!r}: choose from {', '.join(ROLES)}")
    ident = check_name(name or role)
    ca_cert, ca_key = _load_ca(directory)
    target = out or directory
    target.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    server = role == "controller"
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, ident),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # Both: the gateway may serve HTTPS with its certificate, too.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    san_hosts = (*LOCAL_HOSTS, *hosts) if server else hosts
    if san_hosts:
        builder = builder.add_extension(_san(san_hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    crt = cert_path(target, ident)
    _write_private(key_path(target, ident), _key_pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if target != directory and not (target / CA_CERT).exists():
        (target / CA_CERT).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path(target, ident)


def identity_of(pem: bytes) -> Identity | None:
    """The identity in a PEM certificate the TLS layer already verified against the CA, or None
    when it names no known role."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1:
        return None
    role = str(ous[0].value)
    if role not in ROLES:
        return None
    return Identity(name=str(cns[0].value), role=role)


def ensure_local_pki(
    directory: Path, roles: tuple[str, ...], controller_hosts: tuple[str, ...] = ()
) -> bool:
    """For `llm-pool up`: a CA and a certificate per role in `directory` (the controller's also
    for `controller_hosts`), made once. Returns whether anything was created."""
    created = False
    if not (directory / CA_CERT).exists():
        init_ca(directory)
        created = True
    for role in roles:
        if not cert_path(directory, role).exists() or not key_path(directory, role).exists():
            issue(directory, role, hosts=controller_hosts if role == "controller" else ())
            created = True
    return created
