"""Which URLs the admin API may make a backend of: no server-side request forgery.

A backend receives every prompt of its pool and its answers go back to clients, so a URL is
an instruction to the gateways to connect somewhere. Public addresses are allowed (remote
APIs); loopback, link-local (cloud metadata at 169.254.169.254), private, shared and reserved
ranges need an entry in the allow-list (`--backend-allow`). Hosts are checked by every address
they resolve to; IPv4 written in the forms only inet_aton accepts (hex, octal, a bare
integer, fewer than four parts) is refused, as are credentials, queries and fragments.
Backends from the operator's config file are not checked: that file is the operator's word.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from llmpool.errors import InvalidArgumentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Numbers-and-dots hosts that are not dotted-decimal IPv4: 0x7f000001, 2130706433, 0177.1.
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?\Z", re.I)
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?)+\Z", re.I)
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
RESOLVE_TIMEOUT_S = 3.0
MAX_URL_CHARS = 2048


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class AllowEntry:
    """One --backend-allow entry: a network ("10.0.0.0/8", "::1"), a host ("gpu-1.internal"),
    a domain ("*.internal"), each optionally with ":PORT" (IPv6 in brackets)."""

    network: IPNetwork | None = None
    host: str = ""
    suffix: str = ""
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        raw = text.strip()
        port: int | None = None
        body = raw
        if raw.startswith("["):
            inner, _, rest = raw[1:].partition("]")
            body = inner
            if rest:
                port = _port(rest.removeprefix(":"), text)
        elif raw.count(":") == 1:
            body, port_text = raw.split(":")
            port = _port(port_text, text)
        if not body:
            raise ValueError(f"--backend-allow {text!r}: empty host")
        if body.startswith("*."):
            domain = body[2:].lower().rstrip(".")
            if not _HOSTNAME.match(domain):
                raise ValueError(f"--backend-allow {text!r}: not a domain")
            return cls(suffix="." + domain, port=port)
        try:
            return cls(network=ipaddress.ip_network(body, strict=False), port=port)
        except ValueError:
            pass
        if _NUMERIC_HOST.match(body) or not _HOSTNAME.match(body):
            raise ValueError(
                f"--backend-allow {text!r}: give a network (10.0.0.0/8), an address, a host "
                "name or *.domain, optionally with :PORT"
            )
        return cls(host=body.lower().rstrip("."), port=port)

    def matches_host(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host:
            return host == self.host
        if self.suffix:
            return host.endswith(self.suffix)
        return False

    def matches_ip(self, ip: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.version == self.network.version and ip in self.network


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"--backend-allow {entry!r}: bad port {text!r}")
    return int(text)


def parse_allow(texts: Iterable[str]) -> tuple[AllowEntry, ...]:
    return tuple(AllowEntry.parse(t) for t in texts if t.strip())


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
    )
    found = []
    for info in infos:
        ip = _ip(str(info[4][0]).split("%", 1)[0])
        if ip is not None:
            found.append(ip)
    return found


@dataclass(frozen=True)
class BackendUrlPolicy:
    allow: tuple[AllowEntry, ...] = ()
    schemes: tuple[str, ...] = ("http", "https")
    resolve: bool = True
    # Tests inject a resolver; the default asks the system's (off the loop).
    resolver: Callable[[str, int], Awaitable[list[IPAddress]]] | None = field(
        default=None, compare=False
    )

    async def check(self, url: str) -> str:
        """The URL without a trailing slash, or InvalidArgumentError saying what to change."""
        if len(url) > MAX_URL_CHARS:
            raise InvalidArgumentError(f"url is longer than {MAX_URL_CHARS} characters")
        if _BAD_CHARS.search(url):
            raise InvalidArgumentError(
                f"url {url[:200]!r} contains whitespace, control characters or backslashes"
            )
        parts = urlsplit(url)
        shown = url[:200]
        if parts.scheme not in self.schemes or not parts.netloc:
            raise InvalidArgumentError(
                f"url {shown!r} is not valid: give a base URL like https://api.example.com "
                f"(schemes allowed: {', '.join(self.schemes)})"
            )
        if "?" in url or "#" in url:
            raise InvalidArgumentError(
                f"url {shown!r}: a backend URL has no query or fragment (the gateway appends "
                "the API path to it)"
            )
        if "@" in parts.netloc:
            raise InvalidArgumentError(
                "backend url: no credentials in the URL; they would be in every snapshot"
            )
        try:
            port = parts.port
        except ValueError:
            raise InvalidArgumentError(f"url {shown!r} has an invalid port") from None
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidArgumentError(f"url {shown!r} has no host")
        port = port or (443 if parts.scheme == "https" else 80)
        ip = _ip(host.split("%", 1)[0])
        if ip is None and _NUMERIC_HOST.match(host):
            raise InvalidArgumentError(
                f"url {shown!r}: write IPv4 addresses in dotted-decimal form (a.b.c.d)"
            )
        if ip is None and not _HOSTNAME.match(host):
            raise InvalidArgumentError(f"url {shown!r}: {host!r} is not a valid host name")
        if ip is not None:
            self._check_ip(ip, port, shown)
            return url.rstrip("/")
        bare = host.rstrip(".")
        if any(e.matches_host(bare, port) for e in self.allow):
            return url.rstrip("/")
        if bare == "localhost" or bare.endswith(".localhost"):
            self._refuse(shown, "localhost", port)
        if not self.resolve:
            return url.rstrip("/")
        try:
            addresses = await (self.resolver or _resolve)(bare, port)
        except (OSError, TimeoutError, UnicodeError):
            raise InvalidArgumentError(
                f"url {shown!r}: the controller cannot resolve {bare!r}; if only the gateways "
                "can, name it in the controller's --backend-allow"
            ) from None
        for address in addresses:
            self._check_ip(address, port, shown, via=bare)
        return url.rstrip("/")

    def _check_ip(self, ip: IPAddress, port: int, shown: str, via: str = "") -> None:
        if is_public(ip) or any(e.matches_ip(ip, port) for e in self.allow):
            return
        self._refuse(shown, f"{ip} (from {via})" if via else str(ip), port)

    def _refuse(self, shown: str, what: str, port: int) -> None:
        raise InvalidArgumentError(
            f"url {shown!r}: {what} is a loopback, link-local, private or reserved address; "
            f"backends there need an entry in the controller's --backend-allow (for example "
            f"--backend-allow 10.0.0.0/8 or host:{port})"
        )
