"""Who is calling: the identity and role in a verified client certificate, or a bearer token.

The TLS layer has already checked the certificate against the CA; this reads the role from it
(cached per certificate, so a long-lived stream or a busy admin client pays the parse once). A
bearer token, when sent, names the caller instead (a person's token over a shared client
certificate). Without TLS (--insecure) an unauthenticated caller may do everything.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import grpc

from llmpool.certs import identity_of

from .tokens import TokenBook

# Distinct client certificates remembered; a certificate is re-parsed after falling out.
_CACHE_SIZE = 256
INSECURE_ROLE = "*"


@dataclass(frozen=True)
class Caller:
    """identity: certificate CN or token name; role: one of llmpool.certs.ROLES, or "*" for an
    anonymous caller of an --insecure controller."""

    identity: str
    role: str
    via: str
    # A tenant-admin's tenant; "" for every other caller.
    tenant: str = ""

    @property
    def anonymous(self) -> bool:
        return self.role == INSECURE_ROLE


# Admin calls made by the controller itself (seeding) or by tests that call Admin directly.
LOCAL = Caller("local", "admin", "process")


class AuthError(Exception):
    """The caller could not be authenticated; the message says why without echoing secrets."""


class Authenticator:
    def __init__(self, *, tls: bool, tokens: TokenBook) -> None:
        self._tls = tls
        self._tokens = tokens
        self._cache: OrderedDict[bytes, Caller | None] = OrderedDict()

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller of this RPC; AuthError when neither certificate nor token says who."""
        token = _bearer(context)
        if token is not None:
            record = self._tokens.verify(token)
            if record is None:
                raise AuthError("the bearer token is unknown, revoked or expired")
            return Caller(record.name, record.role, "token", record.tenant)
        if not self._tls:
            return Caller("anonymous", INSECURE_ROLE, "insecure")
        return self._from_cert(context)

    def peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The certificate's identity when there is one, else the peer address (for the audit
        log of a call that could not be authenticated)."""
        if self._tls:
            try:
                return self._from_cert(context).identity
            except AuthError:
                pass
        return str(context.peer())[:100]

    def _from_cert(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        pems = list(context.auth_context().get("x509_pem_cert") or ())
        if not pems:
            raise AuthError("no client certificate")
        pem = pems[0]
        if pem in self._cache:
            self._cache.move_to_end(pem)
            found = self._cache[pem]
        else:
            ident = identity_of(pem)
            found = None if ident is None else Caller(ident.name, ident.role, "certificate")
            self._cache[pem] = found
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        if found is None:
            raise AuthError("the client certificate names no llm-pool role")
        return found


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("latin-1")
            scheme, _, credential = text.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise AuthError("the authorization metadata is not 'Bearer TOKEN'")
            return credential.strip()
    return None
