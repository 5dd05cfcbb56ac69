"""Transport security of the control plane: mutual TLS by default, plaintext only when asked.

Every gRPC listener and client takes the same flags (`add_tls_options`): a directory holding
the CA certificate and this component's certificate and key, or the three files named one by
one. `--insecure` turns TLS off, and only for loopback addresses; a second flag,
`--insecure-allow-remote`, is needed to speak plaintext across a network.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from llmpool.addr import split_host_port
from llmpool.certs import CA_CERT, cert_path, key_path
from llmpool.cliargs import bad_env, env_help, env_option, parse_bool
from llmpool.errors import FailedPreconditionError

DEFAULT_TLS_DIR = "data/tls"


@dataclass(frozen=True)
class TlsFiles:
    """This component's certificate and key, and the CA that its peers' certificates must have."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TlsFiles:
        return cls(
            ca=directory / CA_CERT, cert=cert_path(directory, name), key=key_path(directory, name)
        )

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes; a missing file is a FailedPreconditionError saying how to
        make it."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise FailedPreconditionError(
                    f"cannot read {path} ({exc.strerror}): make certificates with "
                    "`llm-pool certs init` and `llm-pool certs issue --role ROLE` (`llm-pool up` "
                    "makes them itself), or run with --insecure on loopback"
                ) from None
        return out[0], out[1], out[2]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        ca, cert, key = self.read()
        # Clients must present a certificate of our CA: no certificate, no connection.
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )


def aio_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS with `credentials` (TlsFiles.channel_credentials(),
    read once at start-up), plaintext when they are None (--insecure)."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=RECONNECT_OPTIONS)
    return grpc.aio.secure_channel(target, credentials, options=RECONNECT_OPTIONS)


# The channel's own reconnect backoff (gRPC's default grows to 120 s): while it waits, every
# call fails at once, so after a controller outage agents and gateways came back only when it
# ran out (7 s after a 10 s outage), whatever llmpool.backoff said. 3 s, like that backoff.
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 3000),
)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_tls_options(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, role: str, what: str
) -> None:
    """--tls-dir, --tls-ca, --tls-cert, --tls-key, --insecure, --insecure-allow-remote.

    `role` names the default certificate in the directory (agent.crt, gateway.crt, ...);
    `what` says in the help which connection they secure.
    """
    env_option(
        parser,
        "--tls-dir",
        env,
        "LLMPOOL_TLS_DIR",
        DEFAULT_TLS_DIR,
        f"directory with ca.crt, {role}.crt and {role}.key for {what} (mutual TLS)",
    )
    env_option(
        parser, "--tls-ca", env, "LLMPOOL_TLS_CA", "", "CA certificate file", shown="TLS_DIR/ca.crt"
    )
    env_option(
        parser,
        "--tls-cert",
        env,
        "LLMPOOL_TLS_CERT",
        "",
        "this component's certificate file",
        shown=f"TLS_DIR/{role}.crt",
    )
    env_option(
        parser,
        "--tls-key",
        env,
        "LLMPOOL_TLS_KEY",
        "",
        "this component's private key file",
        shown=f"TLS_DIR/{role}.key",
    )
    _flag(
        parser,
        env,
        "--insecure",
        "LLMPOOL_INSECURE",
        f"INSECURE: plaintext gRPC for {what}, no authentication; loopback addresses only",
    )
    _flag(
        parser,
        env,
        "--insecure-allow-remote",
        "LLMPOOL_INSECURE_ALLOW_REMOTE",
        "INSECURE: with --insecure, allow plaintext to or on a non-loopback address",
    )


def _flag(
    parser: argparse.ArgumentParser, env: Mapping[str, str], flag: str, name: str, text: str
) -> None:
    raw = env.get(name, "")
    default = False
    if raw:
        try:
            default = parse_bool(raw)
        except ValueError as exc:
            bad_env(parser, name, raw, flag, str(exc))
    parser.add_argument(
        flag, action="store_true", default=default, help=env_help(text, name, "default: off")
    )


def tls_from_args(args: argparse.Namespace, *, role: str, address: str) -> TlsFiles | None:
    """The TLS files the flags name, or None for plaintext. ValueError when plaintext is asked
    for on a non-loopback `address` without --insecure-allow-remote."""
    if args.insecure:
        host, _ = split_host_port(address)
        if not is_loopback(host) and not args.insecure_allow_remote:
            raise ValueError(
                f"--insecure on {address}, which is not a loopback address: plaintext gRPC there "
                "lets anyone on the network run the control plane; add --insecure-allow-remote "
                "if you mean it"
            )
        return None
    directory = Path(args.tls_dir)
    base = TlsFiles.in_dir(directory, role)
    return TlsFiles(
        ca=Path(args.tls_ca) if args.tls_ca else base.ca,
        cert=Path(args.tls_cert) if args.tls_cert else base.cert,
        key=Path(args.tls_key) if args.tls_key else base.key,
    )
